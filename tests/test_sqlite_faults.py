"""SQLite under faults: one failing append in a group-commit batch, and a writer whose rollback fails.

The group committer puts concurrent appends into one transaction; each must succeed or fail on its
own, whatever makes it fail (a conflict, a reused id far into a large batch, or input the driver
cannot bind). Faults are made with SQLite's own mechanisms (an authorizer that refuses statements),
never with a mock of the database.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kern_events import (
    ConcurrencyError,
    CorruptRecordError,
    IdempotencyError,
    KernEventsError,
    MessageAdded,
    SqliteEventStore,
    StorageError,
)
from kern_events.codec import MsgpackCodec
from kern_events.events import Event
from kern_events.records import PendingEvent, Record


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


async def test_a_large_append_failing_in_a_group_commit_rolls_back_alone(tmp_path: Path) -> None:
    taken = uuid.uuid4()
    big = [_message(f"m{n}") for n in range(4_500)]
    ids = [uuid.uuid4() for _ in big]
    ids[4_200] = taken
    async with SqliteEventStore(tmp_path / "batch.db") as store:
        await store.append("owner", [_message("owner")], event_ids=[taken])

        async def small(n: int) -> int:
            return (await store.append(f"small-{n}", [_message("a"), _message("b")])).to_version

        async def large() -> None:
            await store.append("big", big, event_ids=ids)

        # The first append commits alone; everything started meanwhile queues into one batch.
        outcomes = await asyncio.gather(
            small(0), small(1), large(), *(small(n) for n in range(2, 10)), return_exceptions=True
        )
        assert [type(outcome) for outcome in outcomes[:2] + outcomes[3:]] == [int] * 10
        assert isinstance(outcomes[2], IdempotencyError)
        assert await store.current_version("big") == 0
        assert [record async for record in store.read("big", limit=1)] == []
        assert len([record async for record in store.read_all()]) == 1 + 2 * 10
        result = await store.append("big", big[:3], expected_version=0)
        assert (result.from_version, result.to_version) == (1, 3)


async def test_a_batch_whose_savepoint_cannot_be_rolled_back_fails_whole_and_stores_nothing(tmp_path: Path) -> None:
    taken = uuid.uuid4()
    big = [_message(f"m{n}") for n in range(4_500)]
    ids = [uuid.uuid4() for _ in big]
    ids[4_200] = taken

    def refuse_rollback_to(action: int, argument: str | None, *_: object) -> int:
        refused = action == sqlite3.SQLITE_SAVEPOINT and argument == "ROLLBACK"
        return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

    async with SqliteEventStore(tmp_path / "batch.db") as store:
        await store.append("owner", [_message("owner")], event_ids=[taken])
        await _on_writer(store, refuse_rollback_to)
        outcomes = await asyncio.gather(
            store.append("first", [_message("alone")]),
            store.append("big", big, event_ids=ids),
            *(store.append(f"small-{n}", [_message("a")]) for n in range(5)),
            return_exceptions=True,
        )
        assert not isinstance(outcomes[0], BaseException)
        assert all(isinstance(outcome, StorageError) for outcome in outcomes[1:]), outcomes
        assert [record.session_id async for record in store.read_all()] == ["owner", "first"]
        assert await store.current_version("big") == 0
        assert (await store.append("big", big[:2], expected_version=0)).to_version == 2


class _PoisonCodec(MsgpackCodec):
    """Encodes some messages as what SQLite cannot bind: a payload of the wrong type, a type name with
    a lone surrogate. Validation cannot see these: the codec is trusted to produce bytes and a name."""

    def encode(self, event: Event, event_id: uuid.UUID) -> PendingEvent:
        pending = super().encode(event, event_id)
        if isinstance(event, MessageAdded) and event.content == "poison-data":
            return PendingEvent(event_id=event_id, type=pending.type, schema_version=1, data=[1, 2])  # type: ignore[arg-type]
        if isinstance(event, MessageAdded) and event.content == "poison-type":
            return PendingEvent(event_id=event_id, type="message\ud800", schema_version=1, data=pending.data)
        return pending


async def test_poisoned_appends_in_a_group_commit_fail_alone_with_typed_errors(tmp_path: Path) -> None:
    poisoned = {
        1: ("s\ud800-1", "fine"),
        100: ("poison-100", "poison-data"),
        250: ("s\ud800-250", "fine"),
        400: ("poison-400", "poison-type"),
        499: ("poison-499", "poison-data"),
    }
    async with SqliteEventStore(tmp_path / "poison.db", codec=_PoisonCodec()) as store:

        async def one(n: int) -> Any:
            session_id, text = poisoned.get(n, (f"s-{n}", "fine"))
            return await store.append(session_id, [_message(text)])

        outcomes = await asyncio.gather(*(one(n) for n in range(500)), return_exceptions=True)
        failed = {n: outcome for n, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)}
        assert set(failed) == set(poisoned), failed
        assert all(isinstance(error, KernEventsError) for error in failed.values()), failed
        stored = [record.session_id async for record in store.read_all()]
        assert sorted(stored) == sorted(f"s-{n}" for n in range(500) if n not in poisoned)
        for n in (0, 2, 499 - 1):
            assert await store.current_version(f"s-{n}") == 1
        assert (await store.append("s-0", [_message("again")], expected_version=1)).to_version == 2


def _refuse(*statements: str) -> Any:
    """An authorizer that makes SQLite refuse the given transaction statements (``COMMIT``, ``ROLLBACK``)."""

    def authorize(action: int, argument: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_TRANSACTION and argument in statements:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    return authorize


async def _on_writer(store: SqliteEventStore, authorizer: Any) -> None:
    """Install ``authorizer`` on the store's writer connection, on that connection's thread."""
    await store._call(store._writer, lambda db: db.set_authorizer(authorizer))


async def test_a_writer_left_in_a_transaction_by_a_failed_rollback_is_reopened(tmp_path: Path) -> None:
    async with SqliteEventStore(tmp_path / "stuck.db") as store:
        await store.append("s", [_message("kept")])
        await _on_writer(store, _refuse("COMMIT", "ROLLBACK"))
        with pytest.raises(StorageError):
            await store.append("s", [_message("lost")])
        assert (await store.append("s", [_message("next")], expected_version=1)).to_version == 2
        assert [record.event async for record in store.read("s")] == [_message("kept"), _message("next")]
        assert await store.delete_session("s")


async def test_concurrent_writes_on_a_stuck_writer_fail_typed_and_the_writer_is_reopened(tmp_path: Path) -> None:
    async with SqliteEventStore(tmp_path / "stuck.db") as store:
        await store.append("gone", [_message("kept")])
        stuck = store._writer
        await _on_writer(store, _refuse("COMMIT", "ROLLBACK"))
        outcomes = await asyncio.gather(
            store.delete_session("gone"),
            *(store.append(f"s{n}", [_message("a")]) for n in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, StorageError) for outcome in outcomes if isinstance(outcome, BaseException))
        replacement = store._writer
        assert replacement is not None and replacement is not stuck
        await store.append("after", [_message("b")])
        await store.delete_session("gone")
        assert store._writer is replacement
        assert await store.current_version("after") == 1
        assert [record async for record in store.read("gone")] == []


async def test_a_failed_append_whose_rollback_fails_keeps_its_error_and_the_writer_is_reopened(
    tmp_path: Path,
) -> None:
    async with SqliteEventStore(tmp_path / "stuck.db") as store:
        await store.append("s", [_message("kept")])
        await _on_writer(store, _refuse("ROLLBACK"))
        with pytest.raises(ConcurrencyError):
            await store.append("s", [_message("stale")], expected_version=0)
        assert (await store.append("s", [_message("next")], expected_version=1)).to_version == 2
        assert [record.version async for record in store.read("s")] == [1, 2]


async def _collect(records: AsyncIterator[Record], into: list[Record]) -> None:
    async for record in records:
        into.append(record)


async def test_a_row_whose_session_id_is_not_utf8_is_reported_in_the_global_feed_and_skipped(
    tmp_path: Path,
) -> None:
    path = tmp_path / "damaged.db"
    async with SqliteEventStore(path) as store:
        written = [(await store.append(f"s{n}", [_message(str(n))])).positions[0] for n in range(5)]
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE kern_events SET session_id = CAST(x'73ff' AS TEXT) WHERE session_id = 's2'")
    async with SqliteEventStore(path) as store:
        seen: list[Record] = []
        with pytest.raises(CorruptRecordError) as caught:
            await _collect(store.read_all(), seen)
        assert [record.position for record in seen] == written[:2]
        assert (caught.value.position, caught.value.version) == (written[2], 1)
        assert caught.value.session_id == "s\ufffd"
        after = [record.position async for record in store.read_all(from_position=caught.value.position + 1)]
        assert after == written[3:]


async def test_a_backwards_read_gets_the_newer_good_records_before_the_damaged_one(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    async with SqliteEventStore(path) as store:
        await store.append("s", [_message(str(n)) for n in range(1, 11)])
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE kern_events SET data = CAST(x'ff' AS TEXT) WHERE version = 4")
    async with SqliteEventStore(path) as store:
        seen: list[Record] = []
        with pytest.raises(CorruptRecordError) as caught:
            await _collect(store.read("s", backwards=True), seen)
        assert [record.version for record in seen] == [10, 9, 8, 7, 6, 5]
        assert caught.value.version == 4
        assert [record.version async for record in store.read("s", to_version=3, backwards=True)] == [3, 2, 1]
