"""One store used from several event loops and threads: the way agent frameworks use it.

The OpenAI Agents SDK runs ``asyncio.run`` in each of several threads on one session object;
``Runner.run_sync`` calls ``asyncio.run`` again and again with the same db; LangGraph calls sync
methods from executor threads inside async graphs. These are plain sync tests that start their own
threads and loops (pytest-asyncio would give them a loop of its own already).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from kern_events import BaseDb, retry_on_conflict
from kern_events._loops import AnyLoopLock
from kern_events.events import MessageAdded
from kern_events.stores._base import BaseEventStore
from kern_events.stores.postgres import PostgresEventStore
from kern_events.subscription import ChangeSignal
from tests import _pg
from tests._backends import Backend

T = TypeVar("T")

_THREADS = 5
_APPENDS = 10


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(request.param, tmp_path)
    try:
        yield backend
    finally:
        backend.cleanup()


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


def _in_threads(count: int, work: Callable[[int], T]) -> list[T]:
    """``work(n)`` in ``count`` threads started together; their results, or the first error raised."""
    results: list[Any] = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = work(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished"
    if errors:
        raise errors[0]
    return results


async def _versions(store: BaseEventStore, session_id: str) -> list[int]:
    return [record.version async for record in store.read(session_id)]


async def _contents(store: BaseEventStore, session_id: str) -> list[str]:
    return sorted([str(getattr(record.event, "content", "")) async for record in store.read(session_id)])


def test_threads_each_running_their_own_loop_share_one_store(backend: Backend) -> None:
    """The OpenAI Agents SDK pattern: one store made in the main thread, five threads each running
    ``asyncio.run`` with appends and reads on it at once; every append lands exactly once."""
    store = backend.store()

    def work(n: int) -> list[int]:
        async def main() -> list[int]:
            seen = []
            for k in range(_APPENDS):
                await store.append("shared", [_message(f"{n}:{k}")])
                await store.append(f"own-{n}", [_message(f"{n}:{k}")])
                seen.append(await store.current_version(f"own-{n}"))
            assert await _versions(store, f"own-{n}") == list(range(1, _APPENDS + 1))
            return seen

        return asyncio.run(main())

    try:
        assert _in_threads(_THREADS, work) == [list(range(1, _APPENDS + 1))] * _THREADS
        total = _THREADS * _APPENDS
        assert asyncio.run(_versions(store, "shared")) == list(range(1, total + 1))
        expected = sorted(f"{n}:{k}" for n in range(_THREADS) for k in range(_APPENDS))
        assert asyncio.run(_contents(store, "shared")) == expected
    finally:
        asyncio.run(store.aclose())


def test_successive_asyncio_runs_reuse_one_db(backend: Backend) -> None:
    """``Runner.run_sync`` calls ``asyncio.run`` once per turn with the same db; each earlier loop is
    closed by the time the next one uses it."""
    db = backend.db()

    async def turn(n: int) -> int:
        await db.store.append("s", [_message(f"turn {n}")])
        return await db.store.current_version("s")

    try:
        assert [asyncio.run(turn(n)) for n in range(4)] == [1, 2, 3, 4]
        assert asyncio.run(_contents(db.store, "s")) == [f"turn {n}" for n in range(4)]
    finally:
        asyncio.run(db.aclose())


def test_a_store_closed_from_another_loop_releases_everything(backend: Backend) -> None:
    """Opened and used on two threads' loops (both still alive), closed from a third: nothing leaks
    (an unclosed connection or thread would fail the test through its ResourceWarning)."""
    store = backend.store()
    before = set(threading.enumerate())
    used = threading.Barrier(3)
    closed = threading.Event()

    def work(n: int) -> None:
        async def main() -> None:
            await store.append(f"s{n}", [_message("hello")])
            await asyncio.to_thread(used.wait)
            await asyncio.to_thread(closed.wait, 30)

        asyncio.run(main())

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        used.wait(30)
        asyncio.run(store.aclose())
    finally:
        closed.set()
        for thread in threads:
            thread.join(30)
    assert [thread.name for thread in set(threading.enumerate()) - before if thread.is_alive()] == []


def test_run_blocking_runs_a_coroutine_function_from_sync_code(backend: Backend) -> None:
    from kern_events import run_blocking

    store = backend.store()
    try:
        result = run_blocking(store.append, "s", [_message("from sync code")])
        assert result.to_version == 1
        assert run_blocking(store.current_version, "s") == 1
        assert _in_threads(3, lambda n: run_blocking(store.current_version, "s")) == [1, 1, 1]
    finally:
        run_blocking(store.aclose)


def test_run_blocking_from_a_worker_thread_of_an_async_app(backend: Backend) -> None:
    """LangGraph calls a saver's sync ``get_tuple`` from executor threads inside an async graph whose
    loop owns the store."""
    from kern_events import run_blocking

    store = backend.store()

    async def app() -> int:
        await store.append("s", [_message("written by the app's loop")])
        version = await asyncio.to_thread(run_blocking, store.current_version, "s")
        await asyncio.to_thread(run_blocking, store.append, "s", [_message("written by a worker thread")])
        assert await store.current_version("s") == 2
        await store.aclose()
        return version

    assert asyncio.run(app()) == 1


def test_run_blocking_on_a_running_loop_is_an_error_not_a_deadlock() -> None:
    from kern_events import BlockingCallError, run_blocking

    async def inside() -> None:
        with pytest.raises(BlockingCallError) as caught:
            run_blocking(asyncio.sleep, 0)
        assert caught.value.function == "sleep"

    asyncio.run(inside())


def test_an_append_on_one_loop_wakes_a_subscriber_on_another(backend: Backend) -> None:
    """A subscriber waiting on one thread's loop is woken by an append from another thread's loop.

    (On PostgreSQL the change signal is waited on directly: the global feed's fence is cluster-wide,
    and another client's open transaction on a shared server would hold the record back.)
    """
    store = backend.store()
    waiting = threading.Event()

    async def follow() -> int:
        if backend.name == "postgres":
            async with store:
                change = store.change_signal.current()
                waiting.set()
                await change.wait()
                return await store.current_version("s")
        async with store.subscribe(poll_interval=30) as subscription:
            waiting.set()
            async for record in subscription:
                return record.version
        raise AssertionError("the subscription ended")

    def append() -> None:
        waiting.wait(30)
        asyncio.run(store.append("s", [_message("wake up")]))

    appender = threading.Thread(target=append)
    appender.start()
    try:
        assert asyncio.run(asyncio.wait_for(follow(), 10)) == 1
    finally:
        appender.join(30)
        asyncio.run(store.aclose())


_NEVER_CLOSED = """
import asyncio, sys
from kern_events import {db_class}
from kern_events import BaseDb, retry_on_conflict
from kern_events._loops import AnyLoopLock
from kern_events.events import MessageAdded

db = {db_class}({argument!r}{options})

async def main():
    await db.store.append("s", [MessageAdded(run_id="r", role="user", content="kept")])
    print("acknowledged", flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("name", ["sqlite", "postgres"])
def test_a_script_that_never_closes_its_db_still_exits(name: str, tmp_path: Path) -> None:
    """A script that appends and never calls ``aclose()`` exits promptly, and what was acknowledged
    is stored."""
    backend = Backend(name, tmp_path)
    try:
        if name == "sqlite":
            source = _NEVER_CLOSED.format(db_class="SqliteDb", argument=backend.db_file, options="")
        else:
            source = _NEVER_CLOSED.format(
                db_class="PostgresDb", argument=_pg.PG_URL, options=f", schema={backend.schema!r}"
            )
        environment = {**os.environ, "PYTHONWARNINGS": "error::ResourceWarning"}
        finished = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(source)],
            capture_output=True,
            text=True,
            timeout=20,
            env=environment,
        )
        assert finished.returncode == 0, finished.stderr
        assert finished.stdout == "acknowledged\n"
        store = backend.store()

        async def check() -> list[str]:
            async with store:
                return await _contents(store, "s")

        assert asyncio.run(check()) == ["kept"]
    finally:
        backend.cleanup()


def test_a_waiter_that_gives_up_on_a_change_is_forgotten() -> None:
    """A subscription waits on the current change with its poll interval as a timeout, once per
    interval: waiters that timed out must not pile up on a change that never comes."""
    signal = ChangeSignal()

    async def poll() -> None:
        change = signal.current()
        for _ in range(3):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(change.wait(), 0.001)
        assert not change._waiters

    asyncio.run(poll())


def test_a_lock_shared_by_loops_passes_over_a_cancelled_waiter() -> None:
    """The store's open/close lock is taken by tasks of different threads' loops; a waiter cancelled
    while it waits never ends up holding it."""
    lock = AnyLoopLock()
    held = threading.Event()
    release = threading.Event()

    async def hold() -> None:
        async with lock:
            held.set()
            await asyncio.to_thread(release.wait, 30)

    async def give_up_then_take() -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lock.acquire(), 0.05)  # cancelled while waiting
        release.set()
        await asyncio.wait_for(lock.acquire(), 10)
        lock.release()
        return True

    holder = threading.Thread(target=lambda: asyncio.run(hold()))
    holder.start()
    try:
        held.wait(30)
        assert asyncio.run(give_up_then_take())
    finally:
        release.set()
        holder.join(30)
    assert not lock._locked


def test_closing_from_another_loop_disconnects_every_loops_postgres_connections(schema: str) -> None:
    """Two threads' loops (the store's home and a guest) still running; ``aclose()`` from a third
    loop leaves no connection of the store's on the server."""
    name = f"kern_{schema}"
    store = PostgresEventStore(f"{_pg.PG_URL}?application_name={name}", schema=schema, pool_size=2)
    used = threading.Barrier(3)
    closed = threading.Event()

    def work(n: int) -> None:
        async def main() -> None:
            await store.append(f"s{n}", [_message("hello")])
            await asyncio.to_thread(used.wait)
            await asyncio.to_thread(closed.wait, 30)

        asyncio.run(main())

    async def connected() -> int:
        connection = await asyncpg.connect(_pg.PG_URL)
        try:
            count: int = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
            )
            return count
        finally:
            await connection.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        used.wait(30)
        assert asyncio.run(connected()) >= 2  # each loop's pool
        asyncio.run(store.aclose())
        assert asyncio.run(connected()) == 0
    finally:
        closed.set()
        for thread in threads:
            thread.join(30)


def test_closing_while_a_guest_loop_ends_closes_cleanly(schema: str) -> None:
    """The store is closed from its home loop while a guest thread's loop is ending: the close it
    sent to that loop is cancelled by the loop's shutdown, which is no cancellation of the closer
    (seen as a flaky CancelledError out of ``async with store`` in the subscriber test above); the
    guest's pool is closed once, on its loop, before that loop closes (no socket left open), and the
    guest's shutdown never waits on a socket another thread dropped from its selector (a hang)."""
    store = PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=1)
    appended, closing = threading.Event(), threading.Event()

    def guest() -> None:
        async def main() -> None:
            await store.append("guest", [_message("hello")])
            appended.set()
            closing.wait(30)  # blocking the loop: the close sent to it queues up meanwhile
            time.sleep(0.2)  # noqa: ASYNC251  (on purpose: the loop must be busy when the close arrives)

        asyncio.run(main())  # ends by cancelling what is queued on the loop, the close among them

    async def home() -> None:
        async with store:
            await store.append("home", [_message("hello")])
            thread = threading.Thread(target=guest)
            thread.start()
            await asyncio.to_thread(appended.wait, 30)
            closing.set()
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive(), "the guest loop's shutdown hung"

    asyncio.run(home())


def test_threads_writing_one_session_through_one_db_take_turns(backend: Backend) -> None:
    """The OpenAI Agents SDK's concurrent-access test, through the session API: threads, each running
    its own loop, add runs to one session of one db; writers of one db take turns (a lock shared by
    every loop), so every run lands."""
    db = backend.db()
    asyncio.run(_open_hot_session(db))

    def work(n: int) -> None:
        async def main() -> None:
            session = await db.open_session("hot")
            run = await session.start_run(f"writer-{n}")
            for step in range(3):
                run.message("assistant", f"{n}:{step}")
                await retry_on_conflict(session, run.flush)
            await retry_on_conflict(session, run.complete)

        asyncio.run(main())

    async def runs() -> list[str]:
        return sorted(run.run_id for run in (await db.get_session("hot")).runs if run.status == "completed")

    try:
        _in_threads(_THREADS, work)
        assert asyncio.run(runs()) == [f"writer-{n}" for n in range(_THREADS)]
    finally:
        asyncio.run(db.aclose())


async def _open_hot_session(db: BaseDb) -> None:
    await db.open_session("hot", name="hot")
