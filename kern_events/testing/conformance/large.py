"""Large payloads: any event up to the store's ``max_event_size`` round-trips through every read,
stored out of line in chunks when it is above the backend's inline limit; retries, deletion and
damage behave as for any other event.

The stores here get the backend's :attr:`~kern_events.testing.Backend.inline_limit` (small), so a
few kilobytes already exercise chunking; the "big" event (the backend's
:attr:`~kern_events.testing.Backend.large_event_size`, 5 MB unless its appends hold less) is the size a
big channel value reaches.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from kern_events import (
    CorruptRecordError,
    IdempotencyError,
    MessageAdded,
    PayloadTooLargeError,
    SessionAppend,
    Snapshot,
    SummaryUpdated,
)
from kern_events.codec import MsgpackCodec
from kern_events.stores._base import BaseEventStore
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled


def _store(backend: Backend) -> BaseEventStore:
    store = backend.store()
    if backend.inline_limit is not None:
        store.inline_limit = backend.inline_limit
    return store


def _sized(size: int, tag: str = "") -> MessageAdded:
    """A message whose encoded payload is exactly ``size`` bytes."""
    codec, length = MsgpackCodec(), max(size - 64, 0)
    for _ in range(4):
        event = MessageAdded(run_id="r", role="tool", content=tag + "x" * length)
        length += size - len(codec.encode(event, uuid.uuid4()).data)
    assert len(codec.encode(event, uuid.uuid4()).data) == size, size
    return event


def _limit(store: BaseEventStore) -> int:
    return store.inline_limit if store.inline_limit is not None else 64 * 1024


async def test_large_payloads_round_trip_through_every_read(backend: Backend) -> None:
    async with _store(backend) as store:
        limit = _limit(store)
        large = [
            _sized(limit - 1, "below"),
            _sized(limit, "at"),
            _sized(limit + 1, "above"),
            _sized(backend.large_event_size, "big"),
        ]
        small = [SummaryUpdated(summary=f"s{n}") for n in range(len(large) + 1)]
        events: list[MessageAdded | SummaryUpdated] = [small[0]]
        for event, after in zip(large, small[1:], strict=True):
            events += [event, after]
        store.read_page_size = 3  # large events on several pages, at their starts and ends
        await store.append("other", [SummaryUpdated(summary="first")])
        await store.append("s", events)
        await store.append("other", [_sized(limit * 3, "other")])

        assert [record.event async for record in store.read("s")] == events
        assert [record.event async for record in store.read("s", backwards=True)] == events[::-1]
        assert [record.event async for record in store.read("s", types=["message_added"])] == large
        assert [record.event async for record in store.read("s", from_version=4, limit=2)] == events[3:5]
        if not backend.global_feed:
            return
        await feed_settled(store)
        feed = [record.event async for record in store.read_all()]
        assert feed == [SummaryUpdated(summary="first"), *events, _sized(limit * 3, "other")]
        delivered: list[object] = []
        async with store.subscribe(poll_interval=0.05) as subscription:

            async def follow() -> None:
                async for record in subscription:
                    delivered.append(record.event)
                    if len(delivered) == len(feed):
                        return

            await asyncio.wait_for(follow(), 30)
        assert delivered == feed


async def test_a_large_payload_reads_back_in_another_store(backend: Backend) -> None:
    if not backend.persistent:
        pytest.skip("needs a second store on the same database")
    big = _sized(backend.large_event_size, "big")
    async with _store(backend) as store:
        await store.append("s", [big])
    async with backend.store() as reader:  # the backend's own inline limit: chunks are read all the same
        assert [record.event async for record in reader.read("s")] == [big]


async def test_a_page_of_large_events_fetches_its_chunks_in_one_round_trip(backend: Backend) -> None:
    async with _store(backend) as store:
        limit = _limit(store)
        events = [_sized(limit * 2 + n, str(n)) for n in range(6)]
        await store.append("s", events)
        calls = counted_chunk_reads(store)
        assert [record.event async for record in store.read("s")] == events
        if backend.inline_limit is not None or store.inline_limit is not None:
            assert calls == [6]
        store.read_page_size = 4
        calls.clear()
        assert [record.event async for record in store.read("s")] == events
        if backend.inline_limit is not None or store.inline_limit is not None:
            assert calls == [4, 2]


async def test_a_retried_append_of_a_large_event_is_recognised(backend: Backend) -> None:
    async with _store(backend) as store:
        big, ids = _sized(backend.large_event_size, "big"), [uuid.uuid4(), uuid.uuid4()]
        first = await store.append("s", [big, SummaryUpdated(summary="after")], event_ids=ids)
        again = await store.append("s", [big, SummaryUpdated(summary="after")], event_ids=ids, expected_version=0)
        assert again == first
        with pytest.raises(IdempotencyError, match="different content"):
            await store.append(
                "s", [_sized(backend.large_event_size, "bIg"), SummaryUpdated(summary="after")], event_ids=ids
            )
        assert [record.event async for record in store.read("s")] == [big, SummaryUpdated(summary="after")]
    if backend.persistent:  # another inline limit (chunks of another size) still recognises the retry
        async with backend.store() as other:
            other.inline_limit = None if store.inline_limit is None else store.inline_limit * 2
            assert await other.append("s", [big, SummaryUpdated(summary="after")], event_ids=ids) == first


async def test_deleting_a_session_removes_its_large_payloads(backend: Backend) -> None:
    async with _store(backend) as store:
        big, event_id = _sized(backend.large_event_size, "big"), uuid.uuid4()
        await store.append("s", [big], event_ids=[event_id])
        await store.append("kept", [_sized(_limit(store) * 2, "kept")])
        assert await store.delete_session("s")
        assert [record async for record in store.read("s")] == []
        # The id is free again, chunks included: appending it anew stores the new content.
        other = _sized(backend.large_event_size, "new")
        await store.append("s", [other], event_ids=[event_id])
        assert [record.event async for record in store.read("s")] == [other]
        assert [record.event async for record in store.read("kept")] == [_sized(_limit(store) * 2, "kept")]


async def test_an_event_above_max_event_size_is_refused_naming_it(backend: Backend) -> None:
    async with _store(backend) as store:
        too_big = MessageAdded(run_id="r", role="tool", content="x" * store.max_event_size)
        with pytest.raises(PayloadTooLargeError, match=r"events\[1\].*message_added") as caught:
            await store.append("s", [SummaryUpdated(summary="fine"), too_big])
        assert caught.value.argument == "events[1]"
        assert caught.value.limit == store.max_event_size
        assert await store.current_version("s") == 0


def counted_chunk_reads(store: BaseEventStore) -> list[int]:
    """From now on, how many events each of the store's chunk reads (one round trip each) asked for."""
    calls: list[int] = []
    read_chunks = store._read_chunks

    async def counted(event_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, Sequence[bytes]]:
        calls.append(len(event_ids))
        return await read_chunks(event_ids)

    store._read_chunks = counted  # type: ignore[method-assign]
    return calls


def _tampered(store: BaseEventStore, change: Any) -> None:
    """Make the store's chunk reads return what ``change(chunks)`` makes of each event's chunks."""
    read_chunks = store._read_chunks

    async def tampered(event_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, Sequence[bytes]]:
        found = await read_chunks(event_ids)
        return {event_id: change(list(chunks)) for event_id, chunks in found.items()}

    store._read_chunks = tampered  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "change",
    [
        lambda chunks: [chunks[0][:-1] + b"?", *chunks[1:]],
        lambda chunks: chunks[:-1],
        lambda chunks: [*chunks, b"extra"],
        lambda chunks: [chunks[0] + chunks[1], *chunks[2:]],
        lambda chunks: [chunks[1], chunks[0], *chunks[2:]],
    ],
    ids=["altered", "missing", "extra", "merged", "reordered"],
)
async def test_a_damaged_chunk_is_a_corrupt_record_naming_its_event(backend: Backend, change: Any) -> None:
    if backend.inline_limit is None:
        pytest.skip("the backend stores every payload inline")
    async with _store(backend) as store:
        limit = _limit(store)
        events = [SummaryUpdated(summary="before"), _sized(limit * 3, "a"), SummaryUpdated(summary="after")]
        await store.append("s", events)
        _tampered(store, change)
        read: list[object] = []

        async def read_all_of_s() -> None:
            async for record in store.read("s"):
                read.append(record.event)

        with pytest.raises(CorruptRecordError) as caught:
            await read_all_of_s()
        assert read == events[:1]
        assert (caught.value.session_id, caught.value.version, caught.value.event_type) == ("s", 2, "message_added")
        resumed = [record.event async for record in store.read("s", from_version=caught.value.version + 1)]
        assert resumed == events[2:]
        if backend.global_feed:
            await feed_settled(store)
            with pytest.raises(CorruptRecordError, match="session 's' version 2"):
                _ = [record async for record in store.read_all()]


async def test_a_large_snapshot_round_trips(backend: Backend) -> None:
    async with _store(backend) as store:
        await store.append("s", [SummaryUpdated(summary="one")])
        data = bytes(range(256)) * (backend.large_event_size // 256)
        await store.save_snapshot(Snapshot(session_id="s", name="state", schema_version=1, version=1, data=data))
        loaded = await store.load_snapshot("s", "state")
        assert loaded is not None
        assert loaded.data == data


async def test_concurrent_appends_of_large_events_each_land_whole(backend: Backend) -> None:
    async with _store(backend) as store:
        limit = _limit(store)

        async def write(n: int) -> None:
            events = [SummaryUpdated(summary=f"{n}"), _sized(limit * 2 + n, f"{n}")]
            await store.append(f"s{n}", events if n % 2 else events[1:])

        await asyncio.gather(*(write(n) for n in range(12)))
        for n in range(12):
            expected = [_sized(limit * 2 + n, f"{n}")]
            assert [record.event async for record in store.read(f"s{n}")][-1:] == expected


async def test_skip_existing_keeps_a_stored_large_event_and_appends_new_ones_whole(backend: Backend) -> None:
    async with _store(backend) as store:
        limit, ids = _limit(store), [uuid.uuid4() for _ in range(3)]
        first = [_sized(limit * 2, "first"), _sized(limit + 1, "second")]
        await store.append("s", first, event_ids=ids[:2])
        again = [
            _sized(limit * 3, "other content"),
            _sized(limit + 1, "second"),
            _sized(backend.large_event_size, "third"),
        ]
        result = await store.append("s", again, event_ids=ids, skip_existing=True)
        assert (result.from_version, result.to_version) == (3, 3)
        assert [record.event async for record in store.read("s")] == [*first, again[2]]


async def test_append_many_stores_large_events_whole_in_every_part(backend: Backend) -> None:
    backend.require("appends_many")
    async with _store(backend) as store:
        limit = _limit(store)
        a, b = [_sized(limit * 2, "a"), SummaryUpdated(summary="a")], [_sized(backend.large_event_size, "b")]
        ids = [[uuid.uuid4(), uuid.uuid4()], [uuid.uuid4()]]
        parts = [SessionAppend("a", a, event_ids=ids[0]), SessionAppend("b", b, event_ids=ids[1])]
        first = await store.append_many(parts)
        assert await store.append_many(parts) == first  # a retry, recognised from the manifests
        assert [record.event async for record in store.read("a")] == a
        assert [record.event async for record in store.read("b")] == b


async def test_truncate_before_removes_the_large_payloads_of_the_prefix(backend: Backend) -> None:
    backend.require("truncates")
    async with _store(backend) as store:
        limit, gone = _limit(store), uuid.uuid4()
        kept = [_sized(limit * 2, "kept"), SummaryUpdated(summary="kept")]
        await store.append("s", [_sized(limit * 3, "old"), *kept], event_ids=[gone, uuid.uuid4(), uuid.uuid4()])
        assert await store.truncate_before("s", 2) == 1
        assert [record.event async for record in store.read("s")] == kept
        # The removed id is forgotten, chunks included: another session may store it anew.
        other = _sized(limit * 4, "new")
        await store.append("other", [other], event_ids=[gone])
        assert [record.event async for record in store.read("other")] == [other]
