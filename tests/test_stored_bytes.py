"""What a stored event costs in bytes: the type tag lives in the row's type column only, payloads written
with it inside still read, upcasters still see it, and a retry of an append an older release stored is
still recognized as a retry."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kern_events import (
    Event,
    InMemoryDb,
    MessageAdded,
    MsgpackCodec,
    RunCompleted,
    RunMetrics,
    SessionStateChanged,
    SqliteDb,
    StoredEvent,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
    event_id_for,
    register_event_type,
    register_upcaster,
)
from kern_events._references import Remembered, resolve
from kern_events.codec import tagged_payload, untagged_payload
from kern_events.events import RunStarted, SessionStarted
from kern_events.records import PendingEvent, Record
from kern_events.replay import replay
from kern_events.sessions import Session, _stored_once
from kern_events.stores._chain import CHAIN_SIZE
from kern_events.stores.sqlite import SqliteEventStore
from projections.session import fold_records

_EVENTS = [
    MessageAdded(run_id="r", role="user", content="hello"),
    RunCompleted(run_id="r", output="done", metrics=RunMetrics(input_tokens=3)),
    SessionStateChanged(),  # every field at its default: an empty map
    SessionStateChanged(set={f"k{n}": n for n in range(20)}),
]


def _stored(data: bytes, tag: str, schema_version: int = 1) -> StoredEvent:
    return StoredEvent(
        session_id="s",
        version=1,
        position=1,
        event_id=event_id_for("s", tag),
        type=tag,
        schema_version=schema_version,
        data=data,
        recorded_at=0.0,
    )


@pytest.mark.parametrize("event", _EVENTS, ids=lambda event: type(event).__name__)
def test_the_payload_leaves_the_tag_to_the_type_column_and_older_tagged_bytes_still_read(event: Event) -> None:
    codec = MsgpackCodec()
    pending = codec.encode(event, event_id_for("s", "e"))
    assert "type" not in msgspec.msgpack.decode(pending.data)
    old = msgspec.msgpack.encode(event)  # what releases before wrote: the tag first, inside the map
    assert msgspec.msgpack.decode(old)["type"] == pending.type
    assert tagged_payload(pending.data, pending.type) == old
    assert untagged_payload(old, pending.type) == pending.data
    assert len(pending.data) == len(old) - len(msgspec.msgpack.encode(["type", pending.type])) + 1
    for data in (pending.data, old):
        assert codec.decode(_stored(data, pending.type)).event == event


@register_event_type
class Renamed(Event, tag="tests.stored_bytes.renamed", frozen=True):
    schema_version: ClassVar[int] = 2
    title: str


seen: list[dict[str, Any]] = []


@register_upcaster(Renamed, 1)
def _title_from_name(payload: dict[str, Any]) -> dict[str, Any]:
    seen.append(dict(payload))
    return {"type": payload["type"], "title": payload.pop("name")}


def test_upcasters_are_handed_the_tag_whether_or_not_the_payload_carries_it() -> None:
    codec = MsgpackCodec()
    tag = "tests.stored_bytes.renamed"
    seen.clear()
    for payload in ({"type": tag, "name": "a"}, {"name": "a"}):
        record = codec.decode(_stored(msgspec.msgpack.encode(payload), tag))
        assert record.event == Renamed(title="a")
    assert seen == [{"type": tag, "name": "a"}] * 2


class _TaggingCodec(MsgpackCodec):
    """Encodes as releases that kept the tag inside the payload did."""

    def encode(self, event: Event, event_id: UUID) -> PendingEvent:
        pending = super().encode(event, event_id)
        return msgspec.structs.replace(pending, data=tagged_payload(pending.data, pending.type))


async def test_a_retry_of_an_append_an_older_release_stored_with_the_tag_inside_is_a_retry(tmp_path: Path) -> None:
    ids = [event_id_for("s", n) for n in range(2)]
    events = [MessageAdded(run_id="r", role="user", content="hi"), RunCompleted(run_id="r", output="yo")]
    async with SqliteEventStore(tmp_path / "old.db", codec=_TaggingCodec()) as old:
        first = await old.append("s", events, event_ids=ids)
    async with SqliteEventStore(tmp_path / "old.db") as new:
        again = await new.append("s", events, event_ids=ids)
        stored = [record async for record in new.read("s")]
    assert again == first
    assert [record.event for record in stored] == events


def _records(events: list[Event], at: float = 1_000.0) -> list[Record]:
    return [
        Record(session_id="s", version=n, position=n, event_id=event_id_for("s", n), recorded_at=at, event=event)
        for n, event in enumerate(events, start=1)
    ]


async def test_a_tool_call_recorded_whole_is_one_event_and_folds_as_its_start_and_completion_did() -> None:
    async with InMemoryDb() as db:
        session = await db.open_session("s")
        run = await session.start_run("r")
        run.tool_call("c1", "search", {"to": "Oslo"}, result=["SK123"], duration=0.5)
        run.tool_call("c2", "clock", result="noon")
        await run.complete("done")
        events = [record.event async for record in db.store.read("s")]
    calls = [event for event in events if isinstance(event, ToolCallStarted | ToolCallCompleted)]
    assert calls == [
        ToolCallCompleted(
            run_id="r", tool_call_id="c1", tool_name="search", result=["SK123"], duration=0.5, arguments={"to": "Oslo"}
        ),
        ToolCallCompleted(run_id="r", tool_call_id="c2", tool_name="clock", result="noon", arguments={}),
    ]
    # What releases before stored for the same calls: a start with the arguments, then the completion.
    before = [
        ToolCallStarted(run_id="r", tool_call_id="c1", tool_name="search", arguments={"to": "Oslo"}),
        ToolCallCompleted(run_id="r", tool_call_id="c1", tool_name="search", result=["SK123"], duration=0.5),
        ToolCallStarted(run_id="r", tool_call_id="c2", tool_name="clock"),
        ToolCallCompleted(run_id="r", tool_call_id="c2", tool_name="clock", result="noon"),
    ]
    head = [event for event in events if not isinstance(event, ToolCallCompleted)]
    now, then = fold_records(_records(events)), fold_records(_records([*head[:-1], *before, head[-1]]))
    assert now is not None and then is not None
    assert now.runs[0] == then.runs[0]
    assert now.runs[0].tool_calls[0].arguments == {"to": "Oslo"}
    # A completion stored alone by an older release (no arguments in it) still folds without any.
    lone = fold_records(_records([*head[:-1], before[1]]))
    assert lone is not None and lone.runs[0].tool_calls[0].arguments == {}


async def test_a_run_stores_its_input_and_its_answer_once_and_its_view_reads_them_where_they_were() -> None:
    async with InMemoryDb() as db:
        session = await db.open_session("s")
        run = await session.start_run("r", input="what time is it?")
        run.message("user", "what time is it?")
        run.message("assistant", "noon")
        await run.complete("noon")
        other = await session.start_run("o", input="a different input")
        other.message("user", "hi")  # not the input: stored as it is
        other.message("assistant", "hello")
        await other.complete("bye")  # not the last message: stored as it is
        events = [record.event async for record in db.store.read("s")]
        view = await db.get_session("s")
    messages = [event for event in events if isinstance(event, MessageAdded)]
    assert messages[0] == MessageAdded(run_id="r", role="user", content_from_input=True)
    assert messages[2] == MessageAdded(run_id="o", role="user", content="hi")
    completed = [event for event in events if isinstance(event, RunCompleted)]
    assert completed == [
        RunCompleted(run_id="r", output_from_message=True),
        RunCompleted(run_id="o", output="bye"),
    ]
    run_view, other_view = view.runs
    assert [(m.role, m.content) for m in run_view.messages] == [("user", "what time is it?"), ("assistant", "noon")]
    assert (run_view.input, run_view.output) == ("what time is it?", "noon")
    assert [m.content for m in other_view.messages] == ["hi", "hello"] and other_view.output == "bye"
    assert view.session_name == "what time is it?"  # the automatic name still comes from the user's text
    # The same runs as releases before stored them fold to the same view.
    before = [
        record.event
        if not isinstance(record.event, MessageAdded | RunCompleted) or record.event.run_id != "r"
        else (
            MessageAdded(run_id="r", role="user", content="what time is it?")
            if isinstance(record.event, MessageAdded) and record.event.role == "user"
            else RunCompleted(run_id="r", output="noon")
            if isinstance(record.event, RunCompleted)
            else record.event
        )
        for record in _records(events)
    ]
    then, now = fold_records(_records(before)), fold_records(_records(events))
    assert then is not None and now is not None and then.runs == now.runs


async def test_a_tool_message_repeating_its_calls_result_stores_it_once_and_reads_it_from_the_call() -> None:
    async with InMemoryDb() as db:
        session = await db.open_session("s")
        run = await session.start_run("r")
        run.tool_call("c1", "search", {"to": "Oslo"}, result={"flights": ["SK123"], "n": 1})
        run.message("tool", {"flights": ["SK123"], "n": 1}, name="search", tool_call_id="c1")
        run.tool_call("c2", "search", {"to": "Rome"}, result={"n": 1})
        run.message("tool", {"n": 1.0}, name="search", tool_call_id="c2")  # equal, not the same bytes
        run.tool_call("c3", "book", error="no seats")
        run.message("tool", "no seats", name="book", tool_call_id="c3")
        await run.complete()
        events = [record.event async for record in db.store.read("s")]
        view = await db.get_session("s")
        replayed = [step.text async for step in replay(db.store, "s")]
    tools = [event for event in events if isinstance(event, MessageAdded)]
    assert [(m.content, m.content_from_tool_result) for m in tools] == [
        (None, True),
        ({"n": 1.0}, False),
        ("no seats", False),
    ]
    assert [m.content for m in view.runs[0].messages] == [{"flights": ["SK123"], "n": 1}, {"n": 1.0}, "no seats"]
    assert 'tool (search): {"flights":["SK123"],"n":1}' in replayed  # replay tells it as stored before


async def test_a_tool_calls_arguments_repeating_the_assistants_request_are_stored_once() -> None:
    async with InMemoryDb() as db:
        session = await db.open_session("s")
        run = await session.start_run("r")
        requests = [
            ToolCallRequest(tool_call_id="c1", tool_name="search", arguments={"to": "Oslo"}),
            ToolCallRequest(tool_call_id="c2", tool_name="search", arguments={"n": 1}),
        ]
        run.message("assistant", None, tool_calls=requests)
        run.tool_call("c1", "search", {"to": "Oslo"}, result="SK123")
        run.tool_call("c2", "search", {"n": 1.0}, result="none")  # equal, not the same bytes: kept
        await run.complete()
        events = [record.event async for record in db.store.read("s")]
        view = await db.get_session("s")
        replayed = [step.text async for step in replay(db.store, "s")]
    calls = [event for event in events if isinstance(event, ToolCallCompleted)]
    assert [(call.arguments, call.arguments_from_message) for call in calls] == [(None, True), ({"n": 1.0}, False)]
    assert [call.arguments for call in view.runs[0].tool_calls] == [{"to": "Oslo"}, {"n": 1.0}]
    assert 'tool search({"to":"Oslo"}) returned: SK123' in replayed


def test_a_payload_of_sixteen_entries_or_more_loses_and_regains_its_tag_too() -> None:
    fields = {f"f{n:02d}": n for n in range(17)}
    old = msgspec.msgpack.encode({"type": "tests.wide", **fields})  # a map16 header
    assert old[0] == 0xDE
    new = untagged_payload(old, "tests.wide")
    assert msgspec.msgpack.decode(new) == fields and new[0] == 0xDE
    assert tagged_payload(new, "tests.wide") == old
    assert untagged_payload(old, "tests.other") == old  # another tag: left as it is


async def test_a_tool_message_repeating_a_result_its_call_replaced_since_keeps_its_content() -> None:
    async with InMemoryDb() as db:
        session = await db.open_session("s")
        run = await session.start_run("r")
        run.tool_call("c1", "lookup", {"city": "Oslo"}, result="sunny")
        run.tool_call("c1", "lookup", {"city": "Oslo"}, error="timeout")  # the same call again, failed
        run.message("tool", "sunny", name="lookup", tool_call_id="c1")
        await run.complete()
        view = await db.get_session("s")
        replayed = [step.text async for step in replay(db.store, "s")]
    assert [m.content for m in view.runs[0].messages] == ["sunny"]
    assert "tool (lookup): sunny" in replayed


async def test_a_tool_call_id_used_again_after_its_call_finished_keeps_both_calls_in_the_view() -> None:
    async with InMemoryDb() as db:
        session = await db.open_session("s")
        run = await session.start_run("r")
        run.tool_call("call_0", "weather", {"city": "Oslo"}, result="sunny")  # some models number per turn
        await run.flush()
        run.tool_call("call_0", "weather", {"city": "Rome"}, error="timeout")
        run.stage(ToolCallStarted(run_id="r", tool_call_id="call_0", tool_name="weather", arguments={"city": "Bern"}))
        run.stage(ToolCallCompleted(run_id="r", tool_call_id="call_0", tool_name="weather", result="rain"))
        await run.complete()
        view = await db.get_session("s")
    calls = [(c.arguments, c.status, c.result, c.error) for c in view.runs[0].tool_calls]
    assert calls == [
        ({"city": "Oslo"}, "completed", "sunny", None),
        ({"city": "Rome"}, "failed", None, "timeout"),
        ({"city": "Bern"}, "completed", "rain", None),
    ]


async def test_a_call_whose_id_the_assistant_gave_twice_reads_the_arguments_it_was_recorded_with() -> None:
    async with InMemoryDb() as db:
        session = await db.open_session("s")
        run = await session.start_run("r")
        cities = ({"city": "Oslo"}, {"city": "Rome"})  # a model's slip: one id for two calls
        run.message(
            "assistant",
            None,
            tool_calls=[ToolCallRequest(tool_call_id="c1", tool_name="weather", arguments=city) for city in cities],
        )
        run.tool_call("c1", "weather", {"city": "Rome"}, result="sunny")
        await run.complete()
        view = await db.get_session("s")
    assert [call.arguments for call in view.runs[0].tool_calls] == [{"city": "Rome"}]


_values = st.sampled_from(["a", 1, 1.0, None, {"n": 1}])  # 1 and 1.0 are equal, not the same bytes
_arguments = st.sampled_from([{}, {"n": 1}, {"n": 1.0}])
_ids = st.sampled_from(["c1", "c1", "c1", "c2"])
_step_events = st.one_of(
    st.builds(MessageAdded, run_id=st.just("r"), role=st.sampled_from(["user", "assistant"]), content=_values),
    st.builds(MessageAdded, run_id=st.just("r"), role=st.just("tool"), content=_values, tool_call_id=_ids),
    st.builds(
        MessageAdded,
        run_id=st.just("r"),
        role=st.just("assistant"),
        content=_values,
        tool_calls=st.lists(
            st.builds(ToolCallRequest, tool_call_id=_ids, tool_name=st.just("t"), arguments=_arguments), max_size=3
        ).map(tuple),
    ),
    st.builds(ToolCallStarted, run_id=st.just("r"), tool_call_id=_ids, tool_name=st.just("t"), arguments=_arguments),
    st.builds(
        ToolCallCompleted,
        run_id=st.just("r"),
        tool_call_id=_ids,
        tool_name=st.just("t"),
        result=_values,
        error=st.sampled_from([None, "failed"]),
        arguments=st.one_of(st.none(), _arguments),
    ),
    st.builds(RunCompleted, run_id=st.just("r"), output=_values),
)


_DONE = ToolCallCompleted(run_id="r", tool_call_id="c1", tool_name="t", result="a")
_TOLD = MessageAdded(run_id="r", role="tool", content="a", tool_call_id="c1")


@settings(max_examples=1000, deadline=None)
@example(input_="a", events=[_DONE, ToolCallStarted(run_id="r", tool_call_id="c1", tool_name="t"), _TOLD])  # again
@example(input_="a", events=[_DONE, msgspec.structs.replace(_DONE, result=None, error="x"), _TOLD])  # and failed
@given(input_=_values, events=st.lists(_step_events, max_size=8))
def test_whatever_a_step_stores_once_every_reader_reads_back_as_it_was_given(input_: Any, events: list[Event]) -> None:
    step = [SessionStarted(session_type="agent"), RunStarted(run_id="r", input=input_), *events]
    stored = _stored_once(step)
    given_view, stored_view = fold_records(_records(step)), fold_records(_records(stored))
    assert given_view is not None and stored_view is not None
    assert msgspec.msgpack.encode(stored_view.runs) == msgspec.msgpack.encode(given_view.runs)  # the run view
    said = Remembered()
    told = []
    for event in stored:
        told.append(resolve(event, said))
        said.note(told[-1])
    assert msgspec.msgpack.encode(told) == msgspec.msgpack.encode(step)  # the replay


async def test_an_agent_run_stores_one_chain_hash_per_append_not_per_event(tmp_path: Path) -> None:
    """The Agent's three appends of a run (seven events, and the session's name on its first run)
    keep three 32-byte hashes, not eight."""
    async with SqliteDb(tmp_path / "run.db") as db:
        session = await Session.open(db, "s", agent_id="agent", user_id="user")
        recorded = await session.start_run("r1", input="question", model_id="model")
        recorded.message("user", "question")
        await recorded.flush()
        async with recorded.step():
            call = ToolCallRequest(tool_call_id="c1", tool_name="search", arguments={"q": "x"})
            recorded.message("assistant", None, tool_calls=[call])
            recorded.tool_call("c1", "search", {"q": "x"}, result="found", duration=0.01)
            recorded.message("tool", "found", name="search", tool_call_id="c1")
        recorded.message("assistant", "answer")
        await recorded.complete("answer", metrics=RunMetrics(input_tokens=3))
        assert (await db.verify()).ok
    with sqlite3.connect(tmp_path / "run.db") as raw:
        events, appends, hash_bytes = raw.execute(
            "SELECT count(*), count(DISTINCT recorded_at), sum(length(chain)) FROM kern_events WHERE version > 1"
        ).fetchone()  # after the session's start, its own append
    raw.close()
    assert (events, appends) == (8, 3)
    assert hash_bytes == 3 * CHAIN_SIZE
