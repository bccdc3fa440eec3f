"""The sharded JetStream store (``shards=3``) beyond the conformance suite: where sessions go, the feed
cursor that resumes exactly across restarts while writers on different shards append, and the typed
errors for a cursor or a shard count of another layout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kern_events import SqliteDb, export_events, import_events
from kern_events.errors import IdempotencyError, InvalidArgumentError, ShardLayoutError
from kern_events.events import MessageAdded
from kern_events.records import FEED_SHARD_SHIFT, FeedCursor, Record, next_position
from tests import _nats

pytest.importorskip("nats", reason="the nats extra is not installed")

from kern_events.stores.nats import NatsEventStore


def _message(content: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=content)


@pytest.fixture
def prefix(nats_server: _nats.Cluster) -> Iterator[str]:
    name = f"Shards{uuid.uuid4().hex[:8]}"
    yield name
    for stream in (name, f"{name}~1", f"{name}~2"):
        _nats.delete_stream(nats_server.urls, stream)


def _sharded(cluster: _nats.Cluster, prefix: str) -> NatsEventStore:
    return NatsEventStore(cluster.urls, prefix=prefix, replicas=1, shards=3)


def _one_per_shard(store: NatsEventStore) -> list[str]:
    """Session ids landing in shards 0, 1 and 2."""
    found: dict[str, str] = {}
    for n in range(100):
        found.setdefault(store._stream_for(f"s{n}"), f"s{n}")
    return [found[stream] for stream in store._streams]


def test_a_session_s_shard_is_a_stable_hash_of_its_id() -> None:
    """The shard must be the same in every process (Python's hash() of a str is salted per process)."""
    store = NatsEventStore(prefix="K", shards=3)
    assert [store._stream_for(session) for session in ("a", "b", "new", "s", "t", "x")] == [
        "K~2",
        "K~2",
        "K",
        "K~1",
        "K~1",
        "K",
    ]
    assert NatsEventStore(prefix="K")._stream_for("a") == "K"


async def test_a_feed_cursor_resumes_exactly_across_restarts_while_writers_on_each_shard_append(
    nats_server: _nats.Cluster, prefix: str
) -> None:
    """Three writers, one per shard, append while a reader takes the feed a page at a time, saving
    ``str(cursor)`` as its checkpoint and reopening the store (a restart) from it after every page:
    every record arrives once, none is skipped, and each session's records come in version order."""
    async with _sharded(nats_server, prefix) as writer_store:
        sessions = _one_per_shard(writer_store)
        per_writer = 40

        async def write(session: str) -> None:
            for n in range(per_writer):
                await writer_store.append(session, [_message(f"{session}-{n}")])

        writers = asyncio.gather(*(write(session) for session in sessions))
        checkpoint = str(await writer_store.feed_cursor(0))
        delivered: list[Record] = []
        while len(delivered) < per_writer * len(sessions):
            async with _sharded(nats_server, prefix) as reader:  # a new process resumes from the checkpoint
                reader.read_page_size = 3  # pages end inside the read, so the store moves its cursor too
                cursor = await reader.feed_cursor(FeedCursor.parse(checkpoint))
                async for record in reader.read_all(from_position=cursor, limit=7):
                    delivered.append(record)
                    cursor = next_position(cursor, record.position)
                checkpoint = str(cursor)
            assert not writers.done() or delivered, "the reader makes progress"
        await writers
        everything = {(record.session_id, record.version) async for record in writer_store.read_all()}
    keys = [(record.session_id, record.version) for record in delivered]
    assert len(keys) == len(set(keys)) == len(everything) == per_writer * len(sessions)
    assert set(keys) == everything
    for session in sessions:
        assert [version for name, version in keys if name == session] == list(range(1, per_writer + 1))
    assert {record.position >> FEED_SHARD_SHIFT for record in delivered} == {0, 1, 2}


async def test_a_subscription_resumes_from_its_cursor_without_gap_or_repeat(
    nats_server: _nats.Cluster, prefix: str
) -> None:
    async with _sharded(nats_server, prefix) as store:
        sessions = _one_per_shard(store)
        for n in range(6):
            await store.append(sessions[n % 3], [_message(f"m{n}")])
        async with store.subscribe(poll_interval=30) as subscription:
            taken = []
            async for record in subscription:
                taken.append(record)
                if len(taken) == 4:
                    break
        saved = str(subscription.position)
        for n in range(6, 9):
            await store.append(sessions[n % 3], [_message(f"m{n}")])
    again = _sharded(nats_server, prefix)
    async with again, again.subscribe(from_position=FeedCursor.parse(saved), poll_interval=30) as resumed:
        rest = []
        async for record in resumed:
            rest.append(record)
            if len(rest) == 5:
                break
    contents = sorted(str(record.event.content) for record in taken + rest)  # type: ignore[union-attr]
    assert contents == [f"m{n}" for n in range(9)]


async def test_a_cursor_or_a_shard_count_of_another_layout_is_a_typed_error(
    nats_server: _nats.Cluster, prefix: str
) -> None:
    async with _sharded(nats_server, prefix) as store:
        await store.append("s", [_message("a")])
        cursor = await store.feed_cursor(0)
        assert isinstance(cursor, FeedCursor) and cursor.layout == f"nats:{prefix}:3"
        other = FeedCursor(layout="nats:Elsewhere:3", positions=(0, 0, 0))
        with pytest.raises(ShardLayoutError) as caught:
            _ = [record async for record in store.read_all(from_position=other)]
        assert (caught.value.argument, caught.value.expected) == ("from_position", f"nats:{prefix}:3")
        with pytest.raises(ShardLayoutError):
            store.subscribe(from_position=other)
    with pytest.raises(ShardLayoutError) as opened:
        async with NatsEventStore(nats_server.urls, prefix=prefix, replicas=1, shards=2) as wrong:
            await wrong.current_version("s")
    assert opened.value.argument == "shards"
    async with NatsEventStore(nats_server.urls, prefix=f"{prefix}x", replicas=1) as single:
        with pytest.raises(ShardLayoutError):
            _ = [record async for record in single.read_all(from_position=cursor)]
        assert await single.feed_cursor(5) == 5
    _nats.delete_stream(nats_server.urls, f"{prefix}x")


def test_a_cursor_reads_back_from_its_text_and_bad_text_is_refused() -> None:
    cursor = FeedCursor(layout="nats:K:3", positions=(0, 65536, 7))
    assert FeedCursor.parse(str(cursor)) == cursor
    assert cursor.after(2 << FEED_SHARD_SHIFT | 9).positions == (0, 65536, 10)
    with pytest.raises(ShardLayoutError):
        cursor.after(3 << FEED_SHARD_SHIFT)  # a record of a fourth shard is not of this layout
    for text in ("", "nats:K:3", "@1,2", "nats:K:3@1,x", "nats:K:3@-1"):
        with pytest.raises(InvalidArgumentError):
            FeedCursor.parse(text)


async def test_an_event_id_stored_in_another_shard_s_session_is_refused(
    nats_server: _nats.Cluster, prefix: str
) -> None:
    """The server keeps an event id once per stream; across shards the store looks before appending."""
    async with _sharded(nats_server, prefix) as store:
        first, second, _ = _one_per_shard(store)
        event_id = uuid.uuid4()
        await store.append(first, [_message("a")], event_ids=[event_id])
        with pytest.raises(IdempotencyError):
            await store.append(second, [_message("a")], event_ids=[event_id])
        again = await store.append(first, [_message("a")], event_ids=[event_id])  # a retry, in its own shard
        assert again.to_version == 1 and await store.current_version(second) == 0


async def test_a_sharded_store_exports_every_session_and_imports_into_sqlite(
    nats_server: _nats.Cluster, prefix: str, tmp_path: Path
) -> None:
    """Export reads the merged feed of every shard (not shard 0's positions alone); each shard's
    order survives the round trip."""
    store = _sharded(nats_server, prefix)
    sessions = _one_per_shard(store)
    async with store:
        for round_ in range(3):
            for session in sessions:
                await store.append(session, [_message(f"{session} {round_}")])
        path = tmp_path / "export.jsonl"
        with path.open("wb") as file:
            async for line in export_events(store):
                file.write(line)
    async with SqliteDb(tmp_path / "copy.db") as copy:
        report = await import_events(copy, path)
        assert report.events == 9
        for session in sessions:
            contents = [record.event.content async for record in copy.store.read(session)]  # type: ignore[union-attr]
            assert contents == [f"{session} {n}" for n in range(3)]
