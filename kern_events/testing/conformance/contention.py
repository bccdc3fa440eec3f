"""Many writers on one hot session: with ``retry_on_conflict`` every one of them gets in.

Writers of one db take turns; writers of different dbs (other processes, for the persistent
backends) meet as conflicts and back off. The memory backend's dbs share one store to get there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest

from kern_events import (
    AppendResult,
    BaseDb,
    ConcurrencyError,
    InvalidArgumentError,
    MessageAdded,
    Run,
    retry_on_conflict,
)
from kern_events.testing._backend import Backend


@asynccontextmanager
async def _dbs(backend: Backend, count: int) -> AsyncIterator[list[BaseDb]]:
    """``count`` open dbs on one database: separate stores, as separate processes would have."""
    shared = backend.store()  # a backend whose stores do not share a database shares one store
    async with AsyncExitStack() as stack:
        dbs = [backend.db() if backend.persistent else BaseDb(shared) for _ in range(count)]
        for db in dbs:
            await stack.enter_async_context(db)
        yield dbs


class _Counted:
    """``run.flush`` that counts its calls."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.calls = 0

    async def __call__(self) -> AppendResult | None:
        self.calls += 1
        return await self.run.flush()


async def test_64_writers_on_one_hot_session_in_four_dbs_all_get_in(backend: Backend, heavy_scale: int) -> None:
    writers, steps = 64, 2 * heavy_scale
    async with _dbs(backend, 4) as dbs:
        await dbs[0].open_session("hot", name="hot")

        async def writer(number: int) -> None:
            session = await dbs[number % len(dbs)].open_session("hot")
            run = await session.start_run(f"writer-{number:02d}")
            for step in range(steps):
                run.message("assistant", f"writer {number} step {step}")
                await retry_on_conflict(session, run.flush)
            await retry_on_conflict(session, run.complete)  # a run ends once, however often it is retried

        async with anyio.create_task_group() as group:
            for number in range(writers):
                group.start_soon(writer, number)
        view = await dbs[0].get_session("hot")
    assert sorted(run.run_id for run in view.runs) == [f"writer-{number:02d}" for number in range(writers)]
    for run in view.runs:
        assert run.status == "completed", run.run_id
        number = int(run.run_id.split("-")[1])
        assert [m.content for m in run.messages] == [f"writer {number} step {step}" for step in range(steps)]


async def test_writers_of_one_db_take_turns_and_never_collide(backend: Backend) -> None:
    async with backend.db() as db:
        await db.open_session("hot", name="hot")
        flushes: list[_Counted] = []

        async def writer(number: int) -> None:
            session = await db.open_session("hot")  # all at version 1: without turns, all but one collide
            run = await session.start_run(f"writer-{number:02d}")
            run.message("assistant", f"writer {number}")
            flushes.append(_Counted(run))
            await retry_on_conflict(session, flushes[-1])

        async with anyio.create_task_group() as group:
            for number in range(16):
                group.start_soon(writer, number)
        assert await db.store.current_version("hot") == 1 + 16 * 2
    assert [flush.calls for flush in flushes] == [1] * 16


async def test_a_conflict_is_retried_at_once_at_the_version_it_carries(backend: Backend) -> None:
    async with _dbs(backend, 2) as (mine, theirs):
        session = await mine.open_session("s")
        run = await session.start_run("r1")
        run.message("user", "hello")
        elsewhere = await theirs.open_session("s")
        await elsewhere.update_state({"written": "elsewhere"})  # this writer's version is now stale
        flush = _Counted(run)
        with anyio.fail_after(5):
            await retry_on_conflict(session, flush, base_delay=10, max_delay=10)  # a sleep would time out
        assert flush.calls == 2, "one conflict, then straight in with the version the conflict carried"
        stored = [record.event async for record in mine.store.read("s")]
    assert [type(event).__name__ for event in stored][-3:] == ["RunStarted", "MessageAdded", "SessionRenamed"]
    assert isinstance(stored[-2], MessageAdded)


async def test_retry_on_conflict_gives_up_after_its_attempts_with_the_conflict(backend: Backend) -> None:
    async with _dbs(backend, 2) as (mine, theirs):
        second = await mine.open_session("s")
        first = await theirs.open_session("s")
        await first.update_state({"k": 1})
        calls = 0

        async def stale_write() -> AppendResult | None:
            nonlocal calls
            calls += 1
            second.version = 1  # a writer that never catches up: every attempt conflicts
            return await second.update_state({"k": 2})

        with pytest.raises(ConcurrencyError) as caught:
            await retry_on_conflict(second, stale_write, attempts=3, base_delay=0, max_delay=0)
        assert (calls, caught.value.actual_version) == (3, first.version)
        await retry_on_conflict(second, lambda: second.update_state({"k": 3}))
        assert await mine.get_session_state("s") == {"k": 3}
        for options in ({"attempts": 0}, {"base_delay": -1.0}, {"max_delay": float("nan")}):
            with pytest.raises(InvalidArgumentError):
                await retry_on_conflict(second, stale_write, **options)
