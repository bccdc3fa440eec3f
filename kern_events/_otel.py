"""The OpenTelemetry probe: spans and metrics over the OpenTelemetry API (``kern-events[otel]``).

Imported only by :func:`kern_events.telemetry.instrument`. Store operations are ``CLIENT`` spans
named ``kern_events.<operation>`` with the database semantic conventions where they fit
(``db.system.name``, ``db.operation.name``); the session id is ``gen_ai.conversation.id`` (a
session is a conversation), and tool calls carry ``gen_ai.tool.name`` / ``gen_ai.tool.call.id``.
Message contents, tool arguments and results are never recorded: traces leave the process, and a
session's text is the user's. Reads are streams, so their spans are never made current (a context
attached in an async generator would be detached in another task's context); they end when the
stream does.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from kern_events.errors import ConcurrencyError
from kern_events.events import (
    MessageAdded,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunPaused,
    RunStarted,
    ToolCallCompleted,
    ToolCallStarted,
)
from kern_events.records import AppendResult, FeedPosition, Record

if TYPE_CHECKING:
    from kern_events.sessions import Run

__all__ = ["OtelProbe"]

INSTRUMENTATION = "kern_events"

_BACKENDS = {
    "InMemoryEventStore": "memory",
    "SqliteEventStore": "sqlite",
    "PostgresEventStore": "postgresql",
    "NatsEventStore": "nats",
}
"""Our stores' names as telemetry reports them (``kern_events.backend``); another class reports its own."""
_DB_SYSTEMS = frozenset({"sqlite", "postgresql"})
"""Backends that are a database named by the semantic conventions' ``db.system.name``."""

_SECONDS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
_LAG = [0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0]
_BATCH = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]

_STEP_NAMES: Sequence[tuple[type, str]] = (
    (RunPaused, "kern_events.run.pause"),
    (RunCompleted, "kern_events.run.complete"),
    (RunFailed, "kern_events.run.fail"),
    (RunCancelled, "kern_events.run.cancel"),
    (RunStarted, "kern_events.run.start"),
)
"""A flushed step's span is named by the first of these it holds (an ending before a start: a run
started and completed in one step completes); a step with none of them is ``kern_events.run.step``."""


def _count(events: object) -> int:
    """Events in an argument the append's own checks have not seen yet (0 if it is not sized)."""
    try:
        return len(events)  # type: ignore[arg-type]
    except TypeError:
        return 0


def _error_type(error: BaseException) -> str:
    kind = type(error)
    return f"{kind.__module__}.{kind.__qualname__}"


def _failed(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, str(error)))
    span.set_attribute("error.type", _error_type(error))


class OtelProbe:
    """Records spans through ``tracer_provider`` and metrics through ``meter_provider`` (the global
    providers when ``None``, looked up on each use, so providers set later are used too)."""

    def __init__(self, *, tracer_provider: trace.TracerProvider | None, meter_provider: metrics.MeterProvider | None):
        from kern_events import __version__

        self._tracer = trace.get_tracer(INSTRUMENTATION, __version__, tracer_provider)
        meter = metrics.get_meter(INSTRUMENTATION, __version__, meter_provider)
        self._append_duration = meter.create_histogram(
            "kern_events.append.duration",
            unit="s",
            description="Duration of appends (append and append_many), from the call to its answer",
            explicit_bucket_boundaries_advisory=_SECONDS,
        )
        self._conflicts = meter.create_counter(
            "kern_events.append.conflicts",
            unit="{conflict}",
            description="Appends refused because the session was not at the expected version",
        )
        self._batch_size = meter.create_histogram(
            "kern_events.group_commit.batch_size",
            unit="{append}",
            description="Appends committed together in one transaction by group commit",
            explicit_bucket_boundaries_advisory=_BATCH,
        )
        self._feed_lag = meter.create_histogram(
            "kern_events.feed.lag",
            unit="s",
            description="Age of the first event a subscription's pass over the global feed delivers",
            explicit_bucket_boundaries_advisory=_LAG,
        )
        self._labels: dict[type, dict[str, str]] = {}

    def _backend(self, store: object) -> dict[str, str]:
        """The attributes naming ``store``'s backend (cached per class)."""
        kind = type(store)
        labels = self._labels.get(kind)
        if labels is None:
            backend = _BACKENDS.get(kind.__name__, kind.__qualname__)
            labels = {"kern_events.backend": backend}
            if backend in _DB_SYSTEMS:
                labels["db.system.name"] = backend
            self._labels[kind] = labels
        return labels

    @contextmanager
    def _timed_append(self, store: object, operation: str, attributes: dict[str, Any]) -> Iterator[Span]:
        labels = self._backend(store)
        with self._tracer.start_as_current_span(
            f"kern_events.{operation}",
            kind=SpanKind.CLIENT,
            attributes={**labels, "db.operation.name": operation, **attributes},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            started = time.perf_counter()
            outcome = labels
            try:
                yield span
            except Exception as error:
                _failed(span, error)
                outcome = {**labels, "error.type": _error_type(error)}
                if isinstance(error, ConcurrencyError):
                    self._conflicts.add(1, labels)
                raise
            finally:
                self._append_duration.record(time.perf_counter() - started, {**outcome, "db.operation.name": operation})

    async def append(
        self, store: object, session_id: object, events: object, call: Callable[[], Awaitable[AppendResult]]
    ) -> AppendResult:
        attributes = {"gen_ai.conversation.id": str(session_id), "kern_events.event_count": _count(events)}
        with self._timed_append(store, "append", attributes) as span:
            result = await call()
            span.set_attribute("kern_events.version", result.to_version)
            return result

    async def append_many(
        self, store: object, appends: object, call: Callable[[], Awaitable[list[AppendResult]]]
    ) -> list[AppendResult]:
        with self._timed_append(store, "append_many", {"kern_events.session_count": _count(appends)}) as span:
            results = await call()
            span.set_attribute("kern_events.event_count", sum(r.to_version - r.from_version + 1 for r in results))
            return results

    async def _streamed(
        self, store: object, operation: str, attributes: dict[str, Any], records: AsyncIterator[Record]
    ) -> AsyncIterator[Record]:
        span = self._tracer.start_span(
            f"kern_events.{operation}",
            kind=SpanKind.CLIENT,
            attributes={**self._backend(store), "db.operation.name": operation, **attributes},
        )
        count = 0
        last: Record | None = None
        try:
            async for record in records:
                count += 1
                last = record
                yield record
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            span.set_attribute("kern_events.event_count", count)
            if last is not None:
                span.set_attribute("kern_events.version", last.version)
                span.set_attribute("kern_events.position", last.position)
            span.end()
            close = getattr(records, "aclose", None)
            if close is not None:
                await close()

    def read(self, store: object, session_id: object, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        return self._streamed(store, "read", {"gen_ai.conversation.id": str(session_id)}, records)

    def read_all(self, store: object, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        return self._streamed(store, "read_all", {}, records)

    async def subscription_pass(
        self, store: object, position: FeedPosition, records: AsyncIterator[Record]
    ) -> AsyncGenerator[Record]:
        started = time.time_ns()
        labels = self._backend(store)
        span: Span | None = None
        count = 0
        try:
            async for record in records:
                if span is None:  # an idle pass (a poll that found nothing) leaves no span
                    span = self._tracer.start_span(
                        "kern_events.subscribe",
                        kind=SpanKind.CONSUMER,
                        attributes={
                            **labels,
                            "db.operation.name": "subscribe",
                            "kern_events.from_position": position if isinstance(position, int) else str(position),
                        },
                        start_time=started,
                    )
                    self._feed_lag.record(max(0.0, time.time() - record.recorded_at), labels)
                count += 1
                span.set_attribute("kern_events.position", record.position)
                yield record
        except Exception as error:
            if span is not None:
                _failed(span, error)
            raise
        finally:
            if span is not None:
                span.set_attribute("kern_events.event_count", count)
                span.end()
            close = getattr(records, "aclose", None)
            if close is not None:
                await close()

    def batch(self, backend: str, size: int) -> None:
        labels = {"kern_events.backend": backend}
        if backend in _DB_SYSTEMS:
            labels["db.system.name"] = backend
        self._batch_size.record(size, labels)

    async def flush(self, run: Run, call: Callable[[], Awaitable[AppendResult | None]]) -> AppendResult | None:
        unsettled = run._unsettled
        events = [*(unsettled.events if unsettled is not None else ()), *(event for event, _ in run._staged)]
        name = next(
            (label for kind, label in _STEP_NAMES if any(isinstance(e, kind) for e in events)), "kern_events.run.step"
        )
        session = run.session
        attributes: dict[str, Any] = {
            **self._backend(session.db.store),
            "gen_ai.conversation.id": session.session_id,
            "kern_events.run_id": run.run_id,
            "kern_events.event_count": len(events),
            "kern_events.run.messages": sum(isinstance(e, MessageAdded) for e in events),
            "kern_events.run.tool_calls": sum(
                isinstance(e, ToolCallStarted)
                or (isinstance(e, ToolCallCompleted) and (e.arguments is not None or e.arguments_from_message))
                for e in events
            ),
        }
        with self._tracer.start_as_current_span(name, attributes=attributes) as span:
            for event in events:
                if isinstance(event, MessageAdded):
                    span.add_event("message", {"kern_events.message.role": event.role})
                elif isinstance(event, ToolCallStarted | ToolCallCompleted):
                    tool = {"gen_ai.tool.name": event.tool_name, "gen_ai.tool.call.id": event.tool_call_id}
                    if isinstance(event, ToolCallStarted):
                        span.add_event("tool_call", tool)
                        continue
                    if event.arguments is not None or event.arguments_from_message:  # a call recorded whole
                        span.add_event("tool_call", dict(tool))
                    if event.error is not None:
                        tool["error.type"] = "tool_error"
                    span.add_event("tool_call.completed", tool)
            result = await call()
            if result is not None:
                span.set_attribute("kern_events.version", result.to_version)
            return result
