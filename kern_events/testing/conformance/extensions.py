"""Extension events (registered by third parties, tags ``vendor.name``) and session types of their own:
stored, read back typed, filtered by type name, folded, and listed like the built-in ones."""

from __future__ import annotations

import msgspec
import pytest

from kern_events import (
    InvalidArgumentError,
    InvalidEventError,
    MessageAdded,
    Record,
    SessionStarted,
    UnknownEvent,
)
from kern_events.db import BaseDb
from kern_events.testing._backend import Backend
from kern_events.testing._codecs import UnregisteredCodec
from kern_events.testing._feed import feed_reaches
from kern_events.testing._samples import ConformanceCounter, ConformanceNote, conversation


def _mixed() -> list[object]:
    return [
        SessionStarted(session_type="conformance-kind", user_id="u"),
        ConformanceNote(text="first", tags=("a", "b"), detail={"k": 1}, run_id="r"),
        MessageAdded(run_id="r", role="user", content="hi"),
        ConformanceCounter(by=2),
        ConformanceCounter(),
        ConformanceNote(text="last"),
    ]


async def test_extension_events_read_back_typed_in_reads_and_the_feed(backend: Backend) -> None:
    events = _mixed()
    async with backend.store() as store:
        written = await store.append("s", events)  # type: ignore[arg-type]
        again = await store.append("s", events, event_ids=written.event_ids)  # type: ignore[arg-type]
        records = [record async for record in store.read("s")]
        backwards = [record.event async for record in store.read("s", backwards=True, limit=2)]
        everything = records  # a store without a global feed: its session's reads stand in
        if backend.global_feed:
            await feed_reaches(store, written.positions[-1])
            everything = [record async for record in store.read_all()]
    assert again == written  # an exact retry of extension events is idempotent too
    assert [record.event for record in records] == events
    assert [type(record.event) for record in records] == [type(event) for event in events]
    assert [record.type for record in records[1:]] == [
        "conformance.note",
        "message_added",
        "conformance.counter",
        "conformance.counter",
        "conformance.note",
    ]
    assert backwards == [events[5], events[4]]
    assert [record.event for record in everything if record.session_id == "s"] == events


async def test_reads_filter_by_extension_type_names(backend: Backend) -> None:
    async with backend.store() as store:
        store.read_page_size = 2  # filtered reads page too
        await store.append("s", _mixed())  # type: ignore[arg-type]

        async def versions(*types: str, **options: object) -> list[int]:
            return [record.version async for record in store.read("s", types=types, **options)]  # type: ignore[arg-type]

        assert await versions("conformance.note") == [2, 6]
        assert await versions("conformance.counter", "message_added") == [3, 4, 5]
        assert await versions("conformance.counter", backwards=True, limit=1) == [5]
        with pytest.raises(InvalidArgumentError, match=r"conformance\.unregistered"):
            await versions("conformance.unregistered")


async def test_an_unregistered_extension_tag_reads_as_an_unknown_event(backend: Backend) -> None:
    async with backend.store(codec=UnregisteredCodec()) as store:
        await store.append("s", [ConformanceNote(text="kept"), ConformanceCounter(by=3)])
        records = [record async for record in store.read("s")]
    assert records[0].event == ConformanceNote(text="kept")
    unknown = records[1].event
    assert isinstance(unknown, UnknownEvent)
    assert (unknown.type, records[1].type) == ("conformance.unregistered", "conformance.unregistered")
    assert msgspec.msgpack.decode(unknown.data) == {"by": 3}  # raw, untouched (the tag is in the type column)


async def test_extension_events_are_checked_strictly_on_encode(backend: Backend) -> None:
    async with backend.store() as store:
        with pytest.raises(InvalidEventError, match=r"events\[1\].*conformance\.note.*text") as caught:
            await store.append("s", [ConformanceCounter(), ConformanceNote(text=5)])  # type: ignore[arg-type]
        assert caught.value.field == "text"
        with pytest.raises(InvalidEventError, match=r"conformance\.note.*detail"):
            await store.append("s", [ConformanceNote(text="x", detail={"k": "not an int"})])  # type: ignore[dict-item]
        assert await store.current_version("s") == 0


async def test_session_types_beyond_the_reference_ones_are_indexed_and_listed(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("g", [SessionStarted(session_type="langgraph", user_id="u")])
        await store.append("o", [SessionStarted(session_type="openai-agents", user_id="u"), ConformanceCounter()])
        await store.append("a", [SessionStarted(session_type="agent", user_id="u")])
        info = await store.get_session_info("o")
        langgraph = await store.list_sessions(session_type="langgraph")
        mine = await store.list_sessions(user_id="u", session_type="openai-agents")
        everyone = await store.list_sessions(user_id="u")
    assert info is not None and (info.session_type, info.version) == ("openai-agents", 2)
    assert [row.session_id for row in langgraph] == ["g"]
    assert [row.session_id for row in mine] == ["o"]
    assert sorted(row.session_id for row in everyone) == ["a", "g", "o"]


def _count(total: int, record: Record) -> int:
    """A projection of one extension event type: a pure fold that ignores every other event."""
    event = record.event
    return total + event.by if isinstance(event, ConformanceCounter) else total


async def test_extension_events_fold_into_projections_and_leave_session_views_intact(backend: Backend) -> None:
    async with BaseDb(backend.store()) as db:
        for batch in conversation():
            await db.store.append("s", batch)
        before = await db.get_session("s")
        run_id = before.runs[0].run_id
        await db.store.append("s", [ConformanceCounter(by=2), ConformanceNote(text="n", run_id=run_id)])
        await db.store.append("s", [ConformanceCounter(by=5)])
        view = await db.get_session("s")
        total = 0
        async for record in db.store.read("s", types=["conformance.counter"]):
            total = _count(total, record)
        everything = 0
        async for record in db.store.read("s"):
            everything = _count(everything, record)
    assert total == everything == 7
    assert view.runs == before.runs and view.session_data == before.session_data
