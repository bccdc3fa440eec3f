"""Cancellation by anyio cancel scopes around a slow commit: the caller waits for the commit without
spinning the event loop, and the cancellation is honoured once the commit is done."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from kern_events.events import MessageAdded
from kern_events.records import AppendResult
from kern_events.stores._group import GroupCommit
from kern_events.stores.sqlite import SqliteEventStore

# A waiter that yields to the loop once per turn while it waits would take thousands of turns in a
# quarter of a second; one that sleeps until woken takes a few dozen at most.
_MOST_TURNS = 500


@contextmanager
def _counting_loop_turns() -> Iterator[list[int]]:
    """Count event-loop iterations while the block runs: each iteration polls the selector once."""
    selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    select = selector.select
    turns = [0]

    def counting_select(timeout: float | None = None) -> object:
        turns[0] += 1
        return select(timeout)

    selector.select = counting_select
    try:
        yield turns
    finally:
        del selector.select


@contextmanager
def _writer_lock_held(db_file: Path, seconds: float) -> Iterator[sqlite3.Connection]:
    """Another connection holding the database's write lock for ``seconds`` (the store's writer's next
    ``BEGIN IMMEDIATE`` waits for it), then releasing it; the connection, for reads meanwhile."""
    blocker = sqlite3.connect(db_file, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    asyncio.get_running_loop().call_later(seconds, blocker.rollback)
    try:
        yield blocker
    finally:
        blocker.close()


def _result(name: str) -> AppendResult:
    return AppendResult(session_id=name, from_version=1, to_version=1, positions=(1,), event_ids=(), recorded_at=0.0)


async def test_a_cancelled_caller_waits_for_its_sqlite_commit_without_spinning(tmp_path: Path) -> None:
    db_file = tmp_path / "kern.db"
    async with SqliteEventStore(db_file, busy_timeout=10) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="first")])
        with _writer_lock_held(db_file, 0.3), _counting_loop_turns() as turns, anyio.move_on_after(0.05) as scope:
            await store.append("s", [MessageAdded(run_id="r", role="user", content="second")])
        assert scope.cancelled_caught  # the cancellation is honoured after the commit
        assert turns[0] < _MOST_TURNS, f"the loop turned {turns[0]} times while the caller waited"
        assert await store.current_version("s") == 2  # the commit it waited for went through


async def test_a_cancelled_caller_whose_append_is_being_committed_waits_without_spinning() -> None:
    release = anyio.Event()

    async def commit(batch: Sequence[str]) -> list[AppendResult | Exception]:
        if batch != ["first"]:
            await anyio.sleep(0.3)  # the queued batch commits slowly
        else:
            await release.wait()
        return [_result(name) for name in batch]

    group: GroupCommit[str] = GroupCommit(commit)
    outcomes: dict[str, bool] = {}
    queued_done = anyio.Event()

    async def submit(name: str, deadline: float) -> None:
        with anyio.move_on_after(deadline) as scope:
            await group.submit(name)
        outcomes[name] = scope.cancelled_caught
        if name == "queued":
            queued_done.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(submit, "first", 5)
        await anyio.sleep(0.01)
        tasks.start_soon(submit, "queued", 0.1)  # cancelled while its batch is being committed
        await anyio.sleep(0.01)
        with _counting_loop_turns() as turns:
            release.set()
            await queued_done.wait()
    assert turns[0] < _MOST_TURNS, f"the loop turned {turns[0]} times while the caller waited"
    assert outcomes == {"first": False, "queued": True}


async def test_a_sqlite_append_cancelled_twice_by_plain_task_cancel_returns_after_its_commit(tmp_path: Path) -> None:
    db_file = tmp_path / "kern.db"
    async with SqliteEventStore(db_file, busy_timeout=10) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="first")])
        with _writer_lock_held(db_file, 0.2) as blocker:
            append = asyncio.ensure_future(store.append("s", [MessageAdded(run_id="r", role="user", content="second")]))
            await asyncio.sleep(0.05)
            append.cancel()
            await asyncio.sleep(0.05)
            append.cancel()  # again, while it waits for the commit
            with pytest.raises(asyncio.CancelledError):
                await append
            committed = blocker.execute("SELECT count(*) FROM kern_events").fetchone()[0]  # no await since
        assert committed == 2, "the cancelled append returned before its commit was done"
