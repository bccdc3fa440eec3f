"""The context a runtime loads before each run (history window + session state) costs one round trip:
one statement on PostgreSQL, one hop to the reader's thread on SQLite, whatever the session's length."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from kern_events import MessageAdded, RunCompleted, RunStarted, SessionStarted, SessionStateChanged
from kern_events.db import CONTEXT_TAIL, BaseDb
from kern_events.events import Event
from kern_events.stores.postgres import PostgresEventStore
from kern_events.stores.sqlite import SqliteEventStore
from tests import _pg

T = TypeVar("T")


def _run(number: int) -> list[Event]:
    run_id = f"run-{number}"
    return [
        RunStarted(run_id=run_id, input=f"question {number}", model_id="m"),
        MessageAdded(run_id=run_id, role="user", content=f"question {number}"),
        MessageAdded(run_id=run_id, role="assistant", content=f"answer {number}"),
        SessionStateChanged(set={"turn": number}),
        RunCompleted(run_id=run_id),
    ]


async def _fill(db: BaseDb) -> None:
    """A session with a checkpoint and runs (and state changes) after it."""
    events: list[Event] = [
        SessionStarted(session_type="agent", agent_id="a", user_id="u"),
        SessionStateChanged(set={"k": 1}),
    ]
    for number in range(1, 21):
        events += _run(number)
    await db.store.append("s", events, expected_version=0)
    await db.save_checkpoint("s")
    await db.store.append("s", _run(21) + _run(22), expected_version=len(events))


async def _context(db: BaseDb) -> tuple[list[Any], dict[str, Any]]:
    return await db.get_context("s", num_history_runs=3)


async def _expected(db: BaseDb) -> tuple[list[Any], dict[str, Any]]:
    view = await db.get_session("s")
    runs = view.runs[-3:]
    return [message for run in runs for message in run.messages], view.session_state


class _CountingSqliteStore(SqliteEventStore):
    """A SQLite store that counts the calls it sends to its connections' threads."""

    hops = 0
    tails: list[int]

    def _submit(self, connection: Any, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        self.hops += 1
        return super()._submit(connection, function, *args)

    async def _load_context(
        self, session_id: str, snapshot: str, schema_version: int, types: tuple[str, ...], tail: int, after: int
    ) -> Any:
        self.tails = [*getattr(self, "tails", []), tail]
        return await super()._load_context(session_id, snapshot, schema_version, types, tail, after)


async def test_sqlite_loads_a_runs_context_in_one_hop(tmp_path: Path) -> None:
    store = _CountingSqliteStore(str(tmp_path / "s.db"))
    async with BaseDb(store) as db:
        await _fill(db)
        expected = await _expected(db)
        store.hops = 0
        history, state = await _context(db)
        assert store.hops == 1
    assert (history, state) == expected
    assert state == {"k": 1, "turn": 22}


async def test_postgres_loads_a_runs_context_in_one_statement(schema: str) -> None:
    statements: list[str] = []

    async def init(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda query: statements.append(query.query))

    async def no_reset(connection: asyncpg.Connection) -> None:
        return None

    pool = await asyncpg.create_pool(_pg.PG_URL, min_size=1, max_size=2, init=init, reset=no_reset)
    try:
        async with BaseDb(PostgresEventStore(pool=pool, schema=schema)) as db:
            await _fill(db)
            expected = await _expected(db)
            statements.clear()
            history, state = await _context(db)
            # the store's notifier may still announce the fill's appends meanwhile: not the load's
            loaded = [query for query in statements if "pg_notify" not in query]
            assert len(loaded) == 1, statements
        assert (history, state) == expected
        assert state == {"k": 1, "turn": 22}
    finally:
        await pool.close()


@pytest.mark.parametrize("runs", [0, 1, 20])
async def test_a_session_without_a_checkpoint_still_reads_in_one_hop(tmp_path: Path, runs: int) -> None:
    store = _CountingSqliteStore(str(tmp_path / "s.db"))
    async with BaseDb(store) as db:
        events: list[Event] = [SessionStarted(session_type="agent"), SessionStateChanged(set={"k": 1})]
        for number in range(1, runs + 1):
            events += _run(number)
        await db.store.append("s", events, expected_version=0)
        expected = await _expected(db)
        store.hops = 0
        assert await _context(db) == expected
        assert store.hops == 1


async def test_the_next_context_reads_only_as_far_back_as_its_window_reached(tmp_path: Path) -> None:
    """Three runs of five events: the first load reads the default tail, the next ones about what the
    window took (and room for a longer run), with the same result."""
    store = _CountingSqliteStore(str(tmp_path / "s.db"))
    async with BaseDb(store) as db:
        await _fill(db)
        expected = await _expected(db)
        assert [await _context(db) for _ in range(3)] == [expected] * 3
    assert store.tails[0] == CONTEXT_TAIL + 1  # one row of look-ahead
    assert store.tails[1] == store.tails[2] < 30


async def test_a_run_longer_than_the_window_reached_before_still_comes_out_whole(tmp_path: Path) -> None:
    """After short runs the tail read is short; a long run then reads on past it (one more hop), and
    the load after that reads a tail that holds it again."""
    store = _CountingSqliteStore(str(tmp_path / "s.db"))
    async with BaseDb(store) as db:
        await _fill(db)
        await _context(db)
        await _context(db)
        long_run = _run(23)
        long_run[2:2] = [MessageAdded(run_id="run-23", role="assistant", content=f"step {n}") for n in range(40)]
        await db.store.append("s", long_run, expected_version=await db.store.current_version("s"))
        expected = await _expected(db)
        assert len(expected[0]) > 40
        store.hops = 0
        assert await _context(db) == expected
        assert store.hops > 1
        store.hops = 0
        assert await _context(db) == expected
        assert store.hops == 1


async def _fill_after_checkpoint(db: BaseDb) -> None:
    """A session whose state checkpoint is followed by 1,500 events, two of them state events."""
    await db.store.append("s", [SessionStarted(session_type="agent"), SessionStateChanged(set={"k": 1})])
    await db.save_checkpoint("s")
    events: list[Event] = [MessageAdded(run_id="r", role="user", content=f"m{n}") for n in range(1500)]
    events[500], events[1000] = SessionStateChanged(set={"k": 2}), SessionStateChanged(set={"k": 3})
    await db.store.append("s", events, expected_version=2)


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, list):
        return f"ARRAY[{', '.join(_literal(item) for item in value)}]::text[]"
    return str(int(value))


class _StatementsSqliteStore(SqliteEventStore):
    """A SQLite store that keeps the statements it sends to its connections' threads."""

    statements: list[str]

    def _submit(self, connection: Any, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        sent = [sql for arg in args if isinstance(arg, tuple) for sql in arg if isinstance(sql, str)]
        self.statements = [*getattr(self, "statements", []), *(sql for sql in sent if sql.startswith("SELECT"))]
        return super()._submit(connection, function, *args)


async def test_sqlite_reads_the_state_events_after_the_checkpoint_through_their_own_index(tmp_path: Path) -> None:
    """Not every event after the state checkpoint is visited to find the few state events among
    them: the statements a context load (and a state read) runs go through the partial index."""
    store = _StatementsSqliteStore(str(tmp_path / "s.db"))
    async with BaseDb(store) as db:
        await _fill_after_checkpoint(db)
        store.statements = []
        _, state = await _context(db)
        typed = [sql for sql in store.statements if "type IN" in sql]
    assert state == {"k": 3} and typed
    with sqlite3.connect(tmp_path / "s.db") as raw:
        for sql in typed:
            plan = raw.execute(f"EXPLAIN QUERY PLAN {sql}", [0] * sql.count("?")).fetchall()
            assert "USING INDEX kern_events_state " in str(plan), (sql, plan)


async def test_postgres_reads_the_state_events_after_the_checkpoint_through_their_own_index(schema: str) -> None:
    queries: list[tuple[str, tuple[Any, ...]]] = []

    async def init(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(lambda query: queries.append((query.query, tuple(query.args))))

    pool = await asyncpg.create_pool(_pg.PG_URL, min_size=1, max_size=2, init=init)
    try:
        async with BaseDb(PostgresEventStore(pool=pool, schema=schema)) as db:
            await _fill_after_checkpoint(db)
            queries.clear()
            _, state = await _context(db)
        typed = [(sql, args) for sql, args in queries if "type = ANY" in sql]
        assert state == {"k": 3} and typed
        async with pool.acquire() as connection:
            await connection.execute(f'ANALYZE "{schema}".kern_events')
            await connection.execute("SET plan_cache_mode = force_generic_plan")  # as the store's reader plans
            for number, (sql, args) in enumerate(typed):
                await connection.execute(f"PREPARE typed_{number} AS {sql}")
                values = ", ".join(_literal(value) for value in args)  # EXECUTE takes no parameters
                plan = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN EXECUTE typed_{number}({values})"))
                assert "kern_events_state" in plan and "$1" in plan, plan  # the generic plan, no value known
    finally:
        await pool.close()
