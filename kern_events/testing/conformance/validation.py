"""Bad input fails the same typed way on every backend, before anything is stored (#11.14, 17, 18).

An event whose fields do not have their declared types, or that the codec cannot encode, is refused
with :class:`InvalidEventError` naming the event and the field; an argument of the wrong type or out
of what every driver can bind is refused with :class:`InvalidArgumentError` naming the argument.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from kern_events import (
    InvalidArgumentError,
    InvalidEventError,
    InvalidIdentifierError,
    MediaAdded,
    MessageAdded,
    RunCompleted,
    RunMetrics,
    RunStarted,
    SessionStarted,
    SessionStateChanged,
    Snapshot,
    SummaryUpdated,
    ToolCallCompleted,
)
from kern_events.events import Event
from kern_events.store import EventStore
from kern_events.testing._backend import Backend

MAX_INT64 = 2**63 - 1


def _nested(depth: int, leaf: object = None) -> list[Any]:
    outer: list[Any] = []
    inner = outer
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    inner.append(leaf)
    return outer


def _self_referencing() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


async def _nothing_more_stored(store: EventStore, before: int) -> None:
    # per session, not through read_all: PostgreSQL's global feed waits for every open transaction
    # of the (shared) cluster, so it may lag behind a commit this test just made
    assert await store.current_version("s") == before
    assert len([record async for record in store.read("s")]) == before


def _containing_itself() -> MediaAdded:
    media: list[Any] = []
    event = MediaAdded(media=media)  # type: ignore[arg-type]
    media.append(event)
    return event


# (event that must be refused, the field its error names)
_REFUSED_EVENTS: list[tuple[Event, str]] = [
    (RunCompleted(run_id="r1", metrics={"a": 1}), "metrics"),  # type: ignore[arg-type]
    (SessionStateChanged(set={"k": {1, 2}}), "set.k"),
    (SummaryUpdated(summary="s", topics=["a"]), "topics"),  # type: ignore[arg-type]
    (RunStarted(run_id="r1", input=(1, 2)), "input"),
    (RunStarted(run_id="r1", input={"deep": [1, {"x": (3,)}]}), "input.deep[1].x"),
    (RunStarted(run_id="r1", input=_nested(5000)), "input"),
    # deeper than Python's recursion limit: refused by msgspec on 3.11, by the comparison on 3.12+
    (RunStarted(run_id="r1", input=_nested(1100, leaf=(1,))), "input"),
    (RunStarted(run_id="r1", input=_self_referencing()), "input"),
    (RunStarted(run_id="r1", input=2**70), "input"),
    (_containing_itself(), "media[0].media[0].media[0].media[0]"),
    (MessageAdded(run_id="r1", role="user", content="lone \ud800 surrogate"), "content"),
    (MessageAdded(run_id="r1", role="user", content={"\udc80": 1}), "content"),
    (RunStarted(run_id=5), "run_id"),  # type: ignore[arg-type]
    (RunCompleted(run_id="r1", metrics=RunMetrics(input_tokens=2**64)), "metrics.input_tokens"),
]


@pytest.mark.parametrize(("event", "field"), _REFUSED_EVENTS, ids=[field for _, field in _REFUSED_EVENTS])
async def test_an_event_that_would_not_read_back_as_given_is_refused_naming_its_field(
    backend: Backend, event: Event, field: str
) -> None:
    async with backend.store() as store:
        await store.append("s", [RunStarted(run_id="r0")])
        with pytest.raises(InvalidEventError) as caught:
            await store.append("s", [RunStarted(run_id="r1"), event])
        assert caught.value.argument == "events[1]"
        assert caught.value.field == field, str(caught.value)
        assert field in str(caught.value)
        await _nothing_more_stored(store, 1)


async def test_an_event_carrying_nan_is_stored_and_reads_back_as_nan(backend: Backend) -> None:
    event = ToolCallCompleted(
        run_id="r1", tool_call_id="c", tool_name="t", result={"x": [math.nan, -0.0, math.inf]}, duration=math.nan
    )
    async with backend.store() as store:
        await store.append("s", [event])
        [record] = [record async for record in store.read("s")]
    assert isinstance(record.event, ToolCallCompleted)
    assert record.event.duration is not None and math.isnan(record.event.duration)
    nan, zero, inf = record.event.result["x"]
    assert math.isnan(nan) and math.copysign(1.0, zero) == -1.0 and inf == math.inf


_STORE_CALLS: dict[str, Callable[[EventStore], Awaitable[object]]] = {
    "events=None": lambda s: s.append("s", None),  # type: ignore[arg-type]
    "events=event": lambda s: s.append("s", RunStarted(run_id="r")),  # type: ignore[arg-type]
    "events=str": lambda s: s.append("s", "events"),  # type: ignore[arg-type]
    "event_ids=int": lambda s: s.append("s", [RunStarted(run_id="r")], event_ids=5),  # type: ignore[arg-type]
    "expected_version=str": lambda s: s.append("s", [RunStarted(run_id="r")], expected_version="1"),  # type: ignore[arg-type]
    "expected_version=float": lambda s: s.append("s", [RunStarted(run_id="r")], expected_version=1.0),  # type: ignore[arg-type]
    "expected_version=2**63": lambda s: s.append("s", [RunStarted(run_id="r")], expected_version=2**63),
    "session_id=surrogate": lambda s: s.append("a\ud800b", [RunStarted(run_id="r")]),
    "user_id=surrogate": lambda s: s.append("s", [SessionStarted(session_type="agent", user_id="\udfff")]),
    "name=surrogate": lambda s: s.append("s", [SessionStarted(session_type="agent", name="n\ud800")]),
    "read.session_id=surrogate": lambda s: _drain(s.read("\ud800")),
    "read.from_version=2**63": lambda s: _drain(s.read("s", from_version=2**63)),
    "read.to_version=str": lambda s: _drain(s.read("s", to_version="9")),  # type: ignore[arg-type]
    "read.limit=2**64": lambda s: _drain(s.read("s", limit=2**64)),
    "read.backwards=str": lambda s: _drain(s.read("s", backwards="no")),  # type: ignore[arg-type]
    "read.types=int": lambda s: _drain(s.read("s", types=5)),  # type: ignore[arg-type]
    "read.types=unhashable": lambda s: _drain(s.read("s", types=[["run_started"]])),  # type: ignore[list-item]
    "read_all.from_position=2**63": lambda s: _drain(s.read_all(from_position=2**63)),
    "read_all.limit=float": lambda s: _drain(s.read_all(limit=1.5)),  # type: ignore[arg-type]
    "current_version=surrogate": lambda s: s.current_version("\ud800"),
    "get_session_info=bytes": lambda s: s.get_session_info(b"s"),  # type: ignore[arg-type]
    "delete_session=surrogate": lambda s: s.delete_session("\ud800"),
    "list_sessions.session_type=list": lambda s: s.list_sessions(session_type=["agent"]),  # type: ignore[arg-type]
    "list_sessions.sort_by=list": lambda s: s.list_sessions(sort_by=["created_at"]),  # type: ignore[arg-type]
    "list_sessions.descending=str": lambda s: s.list_sessions(descending="yes"),  # type: ignore[arg-type]
    "list_sessions.limit=2**63": lambda s: s.list_sessions(limit=2**63),
    "list_sessions.user_id=surrogate": lambda s: s.list_sessions(user_id="\ud800"),
    "load_snapshot.schema_version=str": lambda s: s.load_snapshot("s", "n", schema_version="1"),  # type: ignore[arg-type]
    "load_snapshot.schema_version=2**31": lambda s: s.load_snapshot("s", "n", schema_version=2**31),
    "load_snapshot.max_version=2**63": lambda s: s.load_snapshot("s", "n", max_version=2**63),
    "save_snapshot=dict": lambda s: s.save_snapshot({"session_id": "s"}),  # type: ignore[arg-type]
    "save_snapshot.data=str": lambda s: s.save_snapshot(_snapshot(data="text")),
    "save_snapshot.schema_version=2**40": lambda s: s.save_snapshot(_snapshot(schema_version=2**40)),
    "save_snapshot.schema_version=str": lambda s: s.save_snapshot(_snapshot(schema_version="1")),
    "save_snapshot.created_at=nan": lambda s: s.save_snapshot(_snapshot(created_at=math.nan)),
    "save_snapshot.created_at=str": lambda s: s.save_snapshot(_snapshot(created_at="now")),
    "save_snapshot.version=2**63": lambda s: s.save_snapshot(_snapshot(version=2**63)),
    "save_snapshot.session_id=surrogate": lambda s: s.save_snapshot(_snapshot(session_id="\ud800")),
}


def _snapshot(**fields: Any) -> Snapshot:
    values: dict[str, Any] = {"session_id": "s", "name": "n", "schema_version": 1, "version": 1, "data": b"x"}
    return Snapshot(**(values | fields))


async def _drain(records: Any) -> None:
    async for _ in records:
        pass


@pytest.mark.parametrize("call", list(_STORE_CALLS.values()), ids=list(_STORE_CALLS))
async def test_a_store_argument_of_the_wrong_type_or_range_is_refused_before_anything_is_stored(
    backend: Backend, call: Callable[[EventStore], Awaitable[object]]
) -> None:
    async with backend.store() as store:
        await store.append("s", [RunStarted(run_id="r0")])
        with pytest.raises(InvalidArgumentError):
            await call(store)
        await _nothing_more_stored(store, 1)
        assert await store.load_snapshot("s", "n") is None


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"poll_interval": True}, "poll_interval"),
        ({"poll_interval": math.nan}, "poll_interval"),
        ({"from_position": 2**63}, "from_position"),
        ({"from_position": "0"}, "from_position"),
    ],
)
async def test_subscribe_refuses_arguments_of_the_wrong_type_or_range(
    backend: Backend, options: dict[str, Any], argument: str
) -> None:
    async with backend.store() as store:
        with pytest.raises(InvalidArgumentError) as caught:
            store.subscribe(**options)
    assert caught.value.argument == argument


async def test_a_surrogate_session_id_gets_the_same_typed_error_on_every_backend(backend: Backend) -> None:
    async with backend.store() as store:
        with pytest.raises(InvalidIdentifierError, match="session_id") as caught:
            await store.append("a\ud800", [RunStarted(run_id="r")])
    assert "UTF-8" in str(caught.value)


_DB_CALLS: dict[str, tuple[str, Callable[[Any], Awaitable[object]]]] = {
    "get_session.as_of=str": ("as_of", lambda db: db.get_session("s", as_of="x")),
    "get_session.as_of=nan": ("as_of", lambda db: db.get_session("s", as_of=math.nan)),
    "get_session.version=str": ("version", lambda db: db.get_session("s", version="1")),
    "version_at.timestamp=str": ("timestamp", lambda db: db.version_at("s", "x")),
    "get_run.version=str": ("version", lambda db: db.get_run("s", "r0", version="1")),
    "fork_session.version=-1": ("version", lambda db: db.fork_session("s", "t", version=-1)),
    "get_history.num_history_runs=2**63": ("num_history_runs", lambda db: db.get_history("s", num_history_runs=2**63)),
    "get_history.include_tool_messages=str": (
        "include_tool_messages",
        lambda db: db.get_history("s", include_tool_messages="no"),
    ),
    "get_context.num_history_messages=-1": (
        "num_history_messages",
        lambda db: db.get_context("s", num_history_messages=-1),
    ),
    "get_context.include_tool_messages=str": (
        "include_tool_messages",
        lambda db: db.get_context("s", include_tool_messages="no"),
    ),
    "get_context.user_id=surrogate": ("user_id", lambda db: db.get_context("s", user_id="\ud800")),
    "get_paused_runs.limit=str": ("limit", lambda db: db.get_paused_runs(limit="10")),
    "get_paused_runs.session_id=surrogate": ("session_id", lambda db: db.get_paused_runs(session_id="\ud800")),
    "save_checkpoint.paused_run_id=int": ("paused_run_id", lambda db: db.save_checkpoint("s", paused_run_id=5)),
    "get_sessions.offset=2**63": ("offset", lambda db: db.get_sessions(offset=2**63)),
    "rename_session.name=surrogate": ("name", lambda db: db.rename_session("s", "\ud800")),
    "delete_session.user_id=surrogate": ("user_id", lambda db: db.delete_session("s", user_id="\ud800")),
}


@pytest.mark.parametrize("case", list(_DB_CALLS.values()), ids=list(_DB_CALLS))
async def test_a_db_argument_of_the_wrong_type_or_range_is_refused(
    backend: Backend, case: tuple[str, Callable[[Any], Awaitable[object]]]
) -> None:
    argument, call = case
    async with backend.db() as db:
        await db.store.append("s", [SessionStarted(session_type="agent"), RunStarted(run_id="r0")])
        with pytest.raises(InvalidArgumentError) as caught:
            await call(db)
        assert caught.value.argument == argument
        assert await db.store.current_version("s") == 2
        assert await db.store.current_version("t") == 0


async def test_event_ids_of_the_wrong_type_are_refused(backend: Backend) -> None:
    async with backend.store() as store:
        with pytest.raises(InvalidArgumentError, match=r"event_ids\[0\]"):
            await store.append("s", [RunStarted(run_id="r")], event_ids=[str(uuid.uuid4())])  # type: ignore[list-item]
        assert await store.current_version("s") == 0


async def test_a_run_id_of_the_longest_allowed_length_can_be_checkpointed_and_read(backend: Backend) -> None:
    run_id = "r" * 255  # its checkpoint's name ("run:" + run_id) is longer than an id may be
    async with backend.db() as db:
        await db.store.append("s", [SessionStarted(session_type="agent"), RunStarted(run_id=run_id)])
        await db.save_checkpoint("s", paused_run_id=run_id)
        assert (await db.get_run("s", run_id)).run_id == run_id
        assert await db.store.load_snapshot("s", f"run:{run_id}") is not None
