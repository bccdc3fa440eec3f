"""Reads: per-session ranges streamed in version order, and the global feed in position order."""

from __future__ import annotations

import gc

import msgspec
import pytest

from kern_events import (
    CorruptRecordError,
    FeedCursor,
    InvalidArgumentError,
    MessageAdded,
    SessionRenamed,
    SessionStarted,
    SummaryUpdated,
    UnknownEvent,
)
from kern_events.stores._base import Page
from kern_events.testing._backend import Backend
from kern_events.testing._codecs import CorruptingCodec, FutureCodec, ReadingCodec
from kern_events.testing._feed import feed_reaches, feed_settled
from projections import fold_records


def _message(n: int) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=f"m{n}")


async def test_read_ranges_limits_and_backwards(backend: Backend) -> None:
    async with backend.store() as store:
        store.read_page_size = 4  # force several pages
        await store.append("s", [_message(n) for n in range(1, 26)])

        async def versions(**options: object) -> list[int]:
            return [record.version async for record in store.read("s", **options)]  # type: ignore[arg-type]

        assert await versions() == list(range(1, 26))
        assert await versions(from_version=10, to_version=17) == list(range(10, 18))
        assert await versions(from_version=10, limit=5) == list(range(10, 15))
        assert await versions(backwards=True) == list(range(25, 0, -1))
        assert await versions(backwards=True, limit=6) == list(range(25, 19, -1))
        assert await versions(backwards=True, from_version=3, to_version=9) == list(range(9, 2, -1))
        assert await versions(limit=0) == []
        assert await versions(from_version=30) == []
        assert await versions(from_version=5, to_version=4) == []
        assert [record.version async for record in store.read("missing")] == []
        with pytest.raises(InvalidArgumentError, match="from_version"):
            await versions(from_version=-1)


async def test_read_asks_for_one_row_ahead_instead_of_an_empty_last_page(backend: Backend) -> None:
    """A read whose last page is full learns that nothing follows from one extra row asked for with
    it, not from another (empty) page read; a read that wants no more than a page asks no extra row."""
    async with backend.store() as store:
        store.read_page_size = 4
        await store.append("s", [_message(n) for n in range(1, 9)])
        asked: list[int] = []
        read_page, read_all_page = store._read_session_page, store._read_all_page

        async def counted_page(
            session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
        ) -> object:
            asked.append(limit)
            return await read_page(session_id, low, high, limit, backwards, types)

        async def counted_all_page(from_position: int, limit: int) -> Page:
            asked.append(limit)
            return await read_all_page(from_position, limit)

        read_feed_page = store._read_feed_page

        async def counted_feed_page(cursor: FeedCursor, limit: int) -> Page:  # a sharded feed's page
            asked.append(limit)
            return await read_feed_page(cursor, limit)

        store._read_session_page, store._read_all_page = counted_page, counted_all_page  # type: ignore[method-assign,assignment]
        store._read_feed_page = counted_feed_page  # type: ignore[method-assign]
        assert [record.version async for record in store.read("s")] == list(range(1, 9))
        assert asked == [5, 5]  # two full pages of 4, each with one row ahead; no third, empty one
        asked.clear()
        assert [record.version async for record in store.read("s", limit=4)] == [1, 2, 3, 4]
        assert [record.version async for record in store.read("s", limit=6)] == list(range(1, 7))
        assert asked == [4, 5, 2]
        asked.clear()
        if backend.global_feed:
            await feed_settled(store)  # another client's open transaction may hold the feed back
            assert [record.version async for record in store.read_all()] == list(range(1, 9))
            assert asked == [5, 5]


async def test_read_records_are_not_tracked_by_the_garbage_collector(backend: Backend) -> None:
    """A read makes one record per event; tracking them made collections run about twice as often
    as the events alone do (a record refers only to its event, so no cycle runs through it)."""
    async with backend.store() as store:
        await store.append("s", [_message(n) for n in range(1, 4)])
        records = [record async for record in store.read("s")]
        records += [record async for record in store.read("s", backwards=True, limit=2)]
        assert len(records) == 5
        assert not any(gc.is_tracked(record) for record in records)


async def test_read_filtered_by_type_skips_the_rest_across_pages(backend: Backend) -> None:
    async with backend.store() as store:
        store.read_page_size = 3  # matches spread over several pages
        events: list[MessageAdded | SummaryUpdated] = []
        for n in range(1, 31):
            events.append(SummaryUpdated(summary=f"s{n}") if n % 4 == 0 else _message(n))
        await store.append("s", events)
        summaries = list(range(4, 31, 4))

        async def versions(**options: object) -> list[int]:
            records = store.read("s", types=["summary_updated"], **options)  # type: ignore[arg-type]
            return [record.version async for record in records]

        assert await versions() == summaries
        assert await versions(backwards=True) == summaries[::-1]
        assert await versions(backwards=True, limit=2) == [28, 24]
        assert await versions(from_version=9, to_version=21, limit=2) == [12, 16]
        both = [r.version async for r in store.read("s", types={"summary_updated", "message_added"})]
        assert both == list(range(1, 31))
        assert [r async for r in store.read("s", types=["session_started"])] == []
        with pytest.raises(InvalidArgumentError, match="'summary_updatd'"):
            await versions_of(store, types=["summary_updatd"])
        with pytest.raises(InvalidArgumentError, match="types"):
            await versions_of(store, types="summary_updated")


async def versions_of(store: object, **options: object) -> list[int]:
    return [record.version async for record in store.read("s", **options)]  # type: ignore[attr-defined]


async def test_read_all_interleaves_sessions_in_global_order(backend: Backend) -> None:
    backend.require("global_feed")
    async with backend.store() as store:
        store.read_page_size = 3
        written = []
        for n in range(20):
            session = f"s{n % 4}"
            result = await store.append(session, [_message(n)])
            written.append((session, result.positions[0]))
        await feed_reaches(store, written[-1][1])
        records = [record async for record in store.read_all()]
        assert [(record.session_id, record.position) for record in records] == written
        middle = written[7][1]
        assert [record.position async for record in store.read_all(from_position=middle)] == [
            position for _, position in written[7:]
        ]
        assert [record.position async for record in store.read_all(from_position=middle, limit=4)] == [
            position for _, position in written[7:11]
        ]


async def test_the_feed_lag_is_zero_once_the_feed_has_passed_every_append(backend: Backend) -> None:
    async with backend.store() as store:
        result = await store.append("s", [_message(1), _message(2)])
        await feed_reaches(store, result.positions[-1])
        lag = await store.feed_lag()
    assert lag.held_back == 0 and lag.since is None and lag.holder_pid is None
    assert lag.fence is None or lag.fence > result.positions[-1]


async def test_an_unknown_event_type_is_returned_raw_and_skipped_by_projections(backend: Backend) -> None:
    async with backend.store(codec=FutureCodec()) as store:
        written = await store.append(
            "s", [SessionStarted(session_type="agent", user_id="u"), SessionRenamed(name="x"), _message(1)]
        )
        records = [record async for record in store.read("s")]
        everything = records  # a store without a global feed: its session's reads stand in
        if backend.global_feed:
            await feed_reaches(store, written.positions[-1])
            everything = [record async for record in store.read_all()]
    unknown = records[1].event
    assert isinstance(unknown, UnknownEvent)
    assert (unknown.type, unknown.schema_version, records[1].type) == ("from_the_future", 7, "from_the_future")
    assert msgspec.msgpack.decode(unknown.data) == {"name": "x"}  # raw, untouched (the tag is in the type column)
    assert len(everything) == 3
    view = fold_records(records)
    assert view is not None and view.session_name is None and view.user_id == "u"


async def test_a_codec_that_overrides_only_decode_is_read_through_on_every_path(backend: Backend) -> None:
    """A store may decode a page in one pass where its codec offers it, but never around the codec's
    own ``decode``: a subclass that changes only that reads its way through every read."""
    async with backend.store(codec=ReadingCodec()) as store:
        written = await store.append("s", [SessionStarted(session_type="agent"), _message(1), _message(2)])
        contents = [
            [record.event.content async for record in reads if isinstance(record.event, MessageAdded)]
            for reads in (store.read("s"), store.read("s", backwards=True, limit=1))
        ]
        if backend.global_feed:
            await feed_reaches(store, written.positions[-1])
            contents.append([r.event.content async for r in store.read_all() if isinstance(r.event, MessageAdded)])
    assert contents[:2] == [["M1", "M2"], ["M2"]]
    assert all(found == ["M1", "M2"] for found in contents[2:])


async def test_corrupt_bytes_raise_an_error_naming_session_and_version(backend: Backend) -> None:
    async with backend.store(codec=CorruptingCodec()) as store:
        written = await store.append("s", [_message(1), SummaryUpdated(summary="lost"), _message(3)])
        with pytest.raises(CorruptRecordError) as caught:
            _ = [record async for record in store.read("s")]
        assert [record.version async for record in store.read("s", limit=1)] == [1]
        assert [record.version async for record in store.read("s", from_version=3)] == [3]
    error = caught.value
    assert (error.session_id, error.version, error.event_type) == ("s", 2, "summary_updated")
    assert error.position == written.positions[1]
    assert "'s' version 2" in str(error)
