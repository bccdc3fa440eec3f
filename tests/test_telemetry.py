"""OpenTelemetry (kern_events.telemetry): spans and metrics through the SDK's in-memory exporter and
metric reader on memory, SQLite and PostgreSQL; nothing imported or recorded while it is off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel-test extra is not installed")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import kern_events
from kern_events import ConcurrencyError, MessageAdded, SessionAppend, ToolConfirmation
from kern_events.telemetry import instrument, is_instrumented, uninstrument
from tests._backends import Backend

ROOT = Path(__file__).parent.parent
BACKENDS = ["memory", "sqlite", "postgres"]
SYSTEMS = {"memory": None, "sqlite": "sqlite", "postgres": "postgresql"}
NAMES = {"memory": "memory", "sqlite": "sqlite", "postgres": "postgresql"}


class Telemetry:
    """An instrumented process: finished spans and collected metrics, read back from the SDK."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if name is None or span.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for found in scope.metrics
            if found.name == metric
            for point in found.data.data_points
        ]

    def histogram(self, metric: str) -> list[HistogramDataPoint]:
        return [point for point in self.points(metric) if isinstance(point, HistogramDataPoint)]

    def counter(self, metric: str) -> int:
        return sum(int(point.value) for point in self.points(metric) if isinstance(point, NumberDataPoint))


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    recorded = Telemetry()
    instrument(tracer_provider=recorded.tracer_provider, meter_provider=recorded.meter_provider)
    try:
        yield recorded
    finally:
        uninstrument()
        recorded.tracer_provider.shutdown()
        recorded.meter_provider.shutdown()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(request.param, tmp_path)
    try:
        yield backend
    finally:
        backend.cleanup()


def _messages(count: int) -> list[MessageAdded]:
    return [MessageAdded(run_id="r", role="user", content=f"message {n}") for n in range(count)]


def _backend_attributes(backend: Backend, attributes: Any) -> None:
    assert attributes["kern_events.backend"] == NAMES[backend.name]
    assert attributes.get("db.system.name") == SYSTEMS[backend.name]


async def test_append_read_and_subscribe_are_spans_with_session_version_count_and_backend(
    backend: Backend, telemetry: Telemetry
) -> None:
    async with backend.store() as store:
        await store.append("s1", _messages(3))
        assert [record.version async for record in store.read("s1")] == [1, 2, 3]
        assert len([record async for record in store.read_all()]) == 3
        async with store.subscribe(from_position=0, poll_interval=0.05) as subscription:
            delivered = []
            async for record in subscription:
                delivered.append(record)
                if len(delivered) == 3:
                    break

    (append,) = telemetry.spans("kern_events.append")
    assert append.kind is SpanKind.CLIENT
    assert append.attributes is not None
    _backend_attributes(backend, append.attributes)
    assert append.attributes["db.operation.name"] == "append"
    assert append.attributes["gen_ai.conversation.id"] == "s1"
    assert append.attributes["kern_events.event_count"] == 3
    assert append.attributes["kern_events.version"] == 3

    (read,) = telemetry.spans("kern_events.read")
    assert read.attributes is not None
    _backend_attributes(backend, read.attributes)
    assert read.attributes["gen_ai.conversation.id"] == "s1"
    assert read.attributes["kern_events.event_count"] == 3
    assert read.attributes["kern_events.version"] == 3

    read_all = telemetry.spans("kern_events.read_all")
    assert read_all[0].attributes is not None
    assert read_all[0].attributes["kern_events.event_count"] == 3
    (subscribed,) = telemetry.spans("kern_events.subscribe")
    assert subscribed.attributes is not None
    _backend_attributes(backend, subscribed.attributes)
    assert subscribed.attributes["kern_events.from_position"] == 0
    assert subscribed.attributes["kern_events.event_count"] == 3
    assert subscribed.attributes["kern_events.position"] == delivered[-1].position
    (lag,) = telemetry.histogram("kern_events.feed.lag")
    assert lag.count == 1
    assert 0 <= lag.sum < 60


async def test_a_conflict_is_an_error_span_and_counted(backend: Backend, telemetry: Telemetry) -> None:
    async with backend.store() as store:
        await store.append("s1", _messages(1))
        with pytest.raises(ConcurrencyError):
            await store.append("s1", _messages(1), expected_version=0)
        await store.append_many([SessionAppend(session_id="s2", events=_messages(2))])

    failed = telemetry.spans("kern_events.append")[1]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "kern_events.errors.ConcurrencyError"
    assert telemetry.counter("kern_events.append.conflicts") == 1
    (many,) = telemetry.spans("kern_events.append_many")
    assert many.attributes is not None
    assert many.attributes["kern_events.event_count"] == 2
    durations = telemetry.histogram("kern_events.append.duration")
    assert sum(point.count for point in durations) == 3
    assert {point.attributes.get("error.type") for point in durations} == {
        None,
        "kern_events.errors.ConcurrencyError",
    }


async def test_run_steps_are_spans_with_their_messages_and_tool_calls(backend: Backend, telemetry: Telemetry) -> None:
    async with backend.db() as db:
        session = await db.open_session("s1")
        run = await session.start_run("run1")
        run.message("user", "book a flight")
        await run.flush()
        run.tool_call("c1", "search", {"to": "Oslo"}, result=["SK123"])
        run.message("assistant", "found one")
        await run.flush()
        confirm = ToolConfirmation(requirement_id="q1", tool_call_id="c2", tool_name="book")
        await run.pause([confirm])
        await session.resolve("run1", "q1", confirmed=True)
        resumed = await session.continue_run("run1")
        await resumed.complete("booked")
        head = await db.store.current_version("s1")

    names = [span.name for span in telemetry.spans() if span.name.startswith("kern_events.run.")]
    assert names == [
        "kern_events.run.start",
        "kern_events.run.step",
        "kern_events.run.pause",
        "kern_events.run.complete",
    ]
    start, step, pause, complete = (telemetry.spans(name)[0] for name in names)
    for span in (start, step, pause, complete):
        assert span.attributes is not None
        _backend_attributes(backend, span.attributes)
        assert span.attributes["gen_ai.conversation.id"] == "s1"
        assert span.attributes["kern_events.run_id"] == "run1"
    assert start.attributes is not None and step.attributes is not None and complete.attributes is not None
    assert start.attributes["kern_events.run.messages"] == 1
    assert step.attributes["kern_events.run.tool_calls"] == 1
    assert step.attributes["kern_events.event_count"] == 2  # the tool call recorded whole is one event
    assert [(event.name, dict(event.attributes or {})) for event in step.events] == [
        ("tool_call", {"gen_ai.tool.name": "search", "gen_ai.tool.call.id": "c1"}),
        ("tool_call.completed", {"gen_ai.tool.name": "search", "gen_ai.tool.call.id": "c1"}),
        ("message", {"kern_events.message.role": "assistant"}),
    ]
    assert complete.attributes["kern_events.version"] == head
    # Each step's append is a child of the step's span.
    appends = {span.parent.span_id for span in telemetry.spans("kern_events.append") if span.parent is not None}
    assert {span.context.span_id for span in (start, step, pause, complete)} <= appends


async def test_group_commit_batch_sizes_add_up_to_the_appends(backend: Backend, telemetry: Telemetry) -> None:
    if backend.name == "memory":
        pytest.skip("the in-memory store has no group commit")
    async with backend.store() as store:
        await asyncio.gather(*(store.append(f"s{n}", _messages(1)) for n in range(20)))
    batches = telemetry.histogram("kern_events.group_commit.batch_size")
    assert sum(point.sum for point in batches) == 20
    assert {point.attributes["kern_events.backend"] for point in batches} == {NAMES[backend.name]}


async def test_after_uninstrument_nothing_is_recorded(backend: Backend, telemetry: Telemetry) -> None:
    assert is_instrumented()
    uninstrument()
    assert not is_instrumented()
    async with backend.store() as store:
        await store.append("s1", _messages(2))
        assert len([record async for record in store.read("s1")]) == 2
    assert telemetry.spans() == []
    assert telemetry.histogram("kern_events.append.duration") == []


def test_kern_events_in_use_without_instrument_imports_no_opentelemetry(tmp_path: Path) -> None:
    code = f"""
import asyncio, sys
import kern_events

async def main():
    async with kern_events.SqliteDb({str(tmp_path / "kern.db")!r}) as db:
        session = await db.open_session("s1")
        run = await session.start_run()
        run.message("user", "hello")
        await run.complete("hi")
        await db.get_session("s1")
        async with db.store.subscribe() as subscription:
            async for record in subscription:
                break

asyncio.run(main())
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_instrument_without_opentelemetry_installed_says_what_to_install() -> None:
    code = """
import sys
sys.modules["opentelemetry"] = None  # as if opentelemetry-api were not installed
import kern_events
try:
    kern_events.instrument()
except kern_events.UnsupportedError as error:
    print(error.capability, "|", error)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.startswith("telemetry | ")
    assert "pip install 'kern-events[otel]'" in out.stdout


def test_instrument_is_public() -> None:
    assert kern_events.instrument is instrument
    assert kern_events.uninstrument is uninstrument
