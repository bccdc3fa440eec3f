"""Append on PostgreSQL: our store against raw asyncpg writing the same bytes into the same tables.

Every writer appends ~730-byte ``MessageAdded`` events to its own session, tracking the exact expected
version. Ours goes through ``PostgresEventStore.append``; the raw references encode the same events with
the same :class:`~kern_events.codec.MsgpackCodec` and insert them into the events table our store
created, in a fresh schema per case (dropped after). The last rows ask questions of asyncpg itself: what
the pool's default reset costs, and whether batching concurrent appends into one transaction beats one
transaction per append. The server comes from ``KERN_BENCH_PG_URL``; ``python -m benchmarks`` skips
this subject when it does not answer. Run one case with ``python -m benchmarks.postgres --case NAME …``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import asyncpg

from benchmarks._harness import AppendFunction, Case, Comparison, Sample, case_main, drive, session_ids
from kern_events import PostgresEventStore, TableNames
from kern_events.codec import MsgpackCodec
from kern_events.events import MessageAdded
from kern_events.stores._sql import quote

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["NOTES", "URL", "comparisons", "unavailable"]

URL = os.environ.get("KERN_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The server every case writes to (a fresh ``kb_…`` schema per case)."""

Position = Literal["counter", "xid8"]

_MODULE = "benchmarks.postgres"
_COLUMNS = "position, session_id, version, event_id, type, schema_version, data, recorded_at"
_XID = "(pg_current_xact_id()::text::bigint << 16)"

NOTES = """\
ours: store.append(session, events, expected_version=v) through the group committer: a lone append is
  one autocommit statement (session row bumped where it equals the expected version + unnest INSERT …
  RETURNING, positions (xid8 << 16) + ordinal) on the committer's held connection; appends that queue while
  a statement is in flight go together in one multi-session statement. At most every ~10 ms it also sends
  one coalesced pg_notify for live subscribers, on a connection of its own.
raw: asyncpg on held connections (one per task), inserting the events rows only into the same table (same
  indexes, same encoded bytes): 1 event = autocommit INSERT … VALUES, 10 events = one INSERT … SELECT FROM
  unnest(…); positions from a client-side counter (the cheapest a raw user can do; `--position xid8` uses
  our expression instead). No head check, no session index, no RETURNING.
1 connection rows compare latency per append (target: ours within 1.2x, i.e. ratio >= 0.83).
16 tasks: each task its own session; ours pool_size=16, gap-safe feed kept (target: ratio >= 0.90).
pool reset rows: raw asyncpg pool, acquire / INSERT / release per append, reset=<no-op coroutine> (what our
  store passes) vs asyncpg's default reset (one more round trip per release).
group commit: raw, 16 tasks; one leader connection takes every queued append, writes them all in one
  multi-row unnest INSERT (one transaction), and answers each caller after the commit; reference: one
  autocommit transaction per append on 16 held connections (PostgreSQL shares WAL flushes between them).
pool vs held rows: what acquire / release alone costs (no reset query); ours appends on a held connection.
64 agents: 64 tasks on distinct sessions, 1 event per append; ours group-commits on its one appending
  connection; the reference is a raw pool of 16 connections (no-op reset), one autocommit INSERT per append.
Why one connection trails the raw insert (issue target 0.95): the round trip is the same, the server's work
  is not. Ours bumps the session-index row in the same statement (the optimistic guard and get_sessions'
  order): a heap update plus its updated_at index entry, 30-40 us of server time measured by EXPLAIN
  ANALYZE, and returns each event's position; the raw insert does neither. Closing the gap means not writing
  that row, which would give up the guard and the index, both of which the issue keeps."""


def unavailable() -> str | None:
    """Why this subject cannot run (the server does not answer), or ``None`` when it can."""

    async def probe() -> None:
        connection = await asyncpg.connect(URL, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", URL)
        return f"PostgreSQL at {shown} does not answer ({exc}); set KERN_BENCH_PG_URL to run it"
    return None


def _schema_name() -> str:
    """A new ``kb_…`` schema name, unlikely to meet another case's on the shared server."""
    return f"kb_{secrets.token_hex(6)}"


async def _create_tables(schema: str) -> None:
    """Our store's tables in ``schema``, created by the store itself (so the shape is its own)."""
    async with PostgresEventStore(URL, schema=schema, pool_size=1):
        pass


async def _drop_schema(schema: str) -> None:
    """Drop ``schema`` with everything in it: the shared server keeps nothing of a case."""
    connection = await asyncpg.connect(URL)
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")
    finally:
        await connection.close()


@asynccontextmanager
async def _fresh_schema(*, create_tables: bool) -> AsyncIterator[str]:
    """A new ``kb_…`` schema name (with our store's tables in it if asked), dropped with everything in it."""
    schema = _schema_name()
    try:
        if create_tables:
            await _create_tables(schema)
        yield schema
    finally:
        await _drop_schema(schema)


# -- ours ------------------------------------------------------------------------------------------


def _ours(args: argparse.Namespace) -> Sample:
    """Our store, ``pool_size`` = ``--tasks``, one writer task per session."""

    async def run() -> Sample:
        async with (
            _fresh_schema(create_tables=False) as schema,
            PostgresEventStore(URL, schema=schema, pool_size=args.tasks) as store,
        ):

            async def append(session_id: str, version: int, events: Sequence[MessageAdded]) -> None:
                await store.append(session_id, events, expected_version=version)

            return await drive(append, dict.fromkeys(session_ids(args.tasks), 0), args)

    return asyncio.run(run())


# -- raw asyncpg -----------------------------------------------------------------------------------


class _RawRows:
    """Encodes events as the store would and inserts them into the store's events table.

    Every statement takes a position term per row: a client-side counter value (``counter``) or the
    row's ordinal, added to the transaction id as our store does (``xid8``).
    """

    def __init__(self, schema: str, position: Position) -> None:
        self._codec = MsgpackCodec()
        self._xid8 = position == "xid8"
        self._counter = itertools.count(1)
        table = f"{quote(schema)}.{quote(TableNames().events)}"
        term = f"{_XID} + " if self._xid8 else ""
        self.one = f"INSERT INTO {table} ({_COLUMNS}) VALUES ({term}$1, $2, $3, $4, $5, $6, $7, $8)"
        self.many = (
            f"INSERT INTO {table} ({_COLUMNS}) SELECT {term}e.position, $2, $3::bigint + e.ordinal, "
            "e.event_id, e.type, e.schema_version, e.data, $8 "
            "FROM unnest($1::bigint[], $4::uuid[], $5::text[], $6::integer[], $7::bytea[]) "
            "WITH ORDINALITY AS e(position, event_id, type, schema_version, data, ordinal)"
        )
        self.rows = (
            f"INSERT INTO {table} ({_COLUMNS}) SELECT {term}e.position, e.session_id, e.version, e.event_id, "
            "e.type, e.schema_version, e.data, e.recorded_at FROM unnest($1::bigint[], $2::text[], "
            "$3::bigint[], $4::uuid[], $5::text[], $6::integer[], $7::bytea[], $8::float8[]) "
            "AS e(position, session_id, version, event_id, type, schema_version, data, recorded_at)"
        )

    def positions(self, count: int) -> list[int]:
        """The position terms of an append's ``count`` rows."""
        return list(range(1, count + 1)) if self._xid8 else [next(self._counter) for _ in range(count)]

    def encode(self, session_id: str, version: int, events: Sequence[MessageAdded]) -> list[tuple[Any, ...]]:
        """One row per event, numbered after ``version``, without its position term."""
        recorded_at = time.time()
        rows = []
        for number, event in enumerate(events, start=version + 1):
            pending = self._codec.encode(event, uuid.uuid4())
            row = (session_id, number, pending.event_id, pending.type, pending.schema_version, pending.data)
            rows.append((*row, recorded_at))
        return rows

    async def insert(
        self,
        connection: asyncpg.Connection | PoolConnectionProxy[asyncpg.Record],
        session_id: str,
        version: int,
        events: Sequence[MessageAdded],
    ) -> None:
        """One autocommit statement: ``INSERT … VALUES`` for one event, ``INSERT … SELECT FROM unnest`` else."""
        rows = self.encode(session_id, version, events)
        positions = self.positions(len(rows))
        if len(rows) == 1:
            await connection.execute(self.one, positions[0], *rows[0])
            return
        _, _, event_ids, types, schema_versions, data, _ = zip(*rows, strict=True)
        arguments = (list(event_ids), list(types), list(schema_versions), list(data))
        await connection.execute(self.many, positions, session_id, version, *arguments, rows[0][6])


async def _raw_append(args: argparse.Namespace, body: Callable[[_RawRows], AsyncIterator[AppendFunction]]) -> Sample:
    """Create the tables with our store, then drive the append function ``body`` yields over them."""
    async with (
        _fresh_schema(create_tables=True) as schema,
        asynccontextmanager(body)(_RawRows(schema, args.position)) as append,
    ):
        return await drive(append, dict.fromkeys(session_ids(args.tasks), 0), args)


def _held(args: argparse.Namespace) -> Sample:
    """Raw asyncpg, one held connection per writer task, one autocommit statement per append."""

    async def body(rows: _RawRows) -> AsyncIterator[AppendFunction]:
        connections = {name: await asyncpg.connect(URL) for name in session_ids(args.tasks)}
        try:

            async def append(session_id: str, version: int, events: Sequence[MessageAdded]) -> None:
                await rows.insert(connections[session_id], session_id, version, events)

            yield append
        finally:
            await asyncio.gather(*(connection.close() for connection in connections.values()))

    return asyncio.run(_raw_append(args, body))


async def _no_reset(connection: asyncpg.Connection) -> None:
    """A pool ``reset`` that sends nothing (asyncpg still rolls back a transaction left open)."""


def _pool(args: argparse.Namespace) -> Sample:
    """Raw asyncpg pool of ``--tasks`` connections, acquire / insert / release per append."""
    reset = _no_reset if args.reset == "none" else None  # None: asyncpg's default reset query

    async def body(rows: _RawRows) -> AsyncIterator[AppendFunction]:
        size = args.connections or args.tasks
        async with asyncpg.create_pool(URL, min_size=size, max_size=size, reset=reset) as pool:

            async def append(session_id: str, version: int, events: Sequence[MessageAdded]) -> None:
                async with pool.acquire() as connection:
                    await rows.insert(connection, session_id, version, events)

            yield append

    return asyncio.run(_raw_append(args, body))


class _GroupCommit:
    """A leader that writes every queued append in one multi-row INSERT, answering each after the commit."""

    def __init__(self, connection: asyncpg.Connection, rows: _RawRows) -> None:
        self._connection = connection
        self._rows = rows
        self._queue: asyncio.Queue[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = asyncio.Queue()

    async def append(self, session_id: str, version: int, events: Sequence[MessageAdded]) -> None:
        """Queue the encoded rows and wait until the batch holding them has committed."""
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((self._rows.encode(session_id, version, events), done))
        await done

    async def lead(self) -> None:
        """Forever: wait for one append, take all that are queued, insert them in one statement."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            rows = [row for encoded, _ in batch for row in encoded]
            columns = [list(column) for column in zip(*rows, strict=True)]
            try:
                await self._connection.execute(self._rows.rows, self._rows.positions(len(rows)), *columns)
            except Exception as exc:
                for _, done in batch:
                    done.set_exception(exc)
            else:
                for _, done in batch:
                    done.set_result(None)


def _group(args: argparse.Namespace) -> Sample:
    """Raw asyncpg, group commit: the writer tasks queue their appends to one leader connection."""

    async def body(rows: _RawRows) -> AsyncIterator[AppendFunction]:
        connection = await asyncpg.connect(URL)
        group = _GroupCommit(connection, rows)
        leader = asyncio.create_task(group.lead())
        try:
            yield group.append
        finally:
            leader.cancel()
            await asyncio.gather(leader, return_exceptions=True)
            await connection.close()

    return asyncio.run(_raw_append(args, body))


# -- what python -m benchmarks compares ------------------------------------------------------------


def _case(name: str, **options: object) -> Case:
    return Case.of(_MODULE, name, **options)


def comparisons(quick: bool) -> list[Comparison]:
    """The PostgreSQL workloads, smaller with ``quick``; see :data:`NOTES` for what each row means."""
    single, batched, per_task = (200, 100, 60) if quick else (2000, 1000, 400)
    one, ten = {"batch": 1, "appends": single}, {"batch": 10, "appends": batched}
    concurrent = {"tasks": 16, "appends": per_task, "warmup": 5}
    held_one, held_ten, held_16 = (_case("held", **sizes) for sizes in (one, ten, concurrent))
    pool_one, pool_16 = _case("pool", reset="none", **one), _case("pool", reset="none", **concurrent)
    agents = {"tasks": 64, "appends": per_task // 2, "warmup": 2}
    ours_64, raw_64 = _case("ours", **agents), _case("pool", reset="none", connections=16, **agents)
    return [
        Comparison(
            "PostgreSQL 1 connection, 1 ev/append vs raw", _case("ours", **one), held_one, "latency", quick=True
        ),
        Comparison("PostgreSQL 1 connection, 10 ev/append vs raw", _case("ours", **ten), held_ten, "latency"),
        Comparison("PostgreSQL 16 tasks, 1 ev/append vs raw", _case("ours", **concurrent), held_16),
        Comparison("raw pool, 16 tasks: no-op reset vs default reset", pool_16, _case("pool", **concurrent)),
        Comparison("raw pool, 1 task: no-op reset vs default reset", pool_one, _case("pool", **one), "latency"),
        Comparison("raw 16 tasks: group commit vs txn per append", _case("group", **concurrent), held_16),
        Comparison("raw 16 tasks: pool (no-op reset) vs held connections", pool_16, held_16),
        Comparison("raw 1 task: pool (no-op reset) vs held connection", pool_one, held_one, "latency"),
        Comparison("PostgreSQL 64 agents vs raw pool of 16, txn per append", ours_64, raw_64),
        Comparison("PostgreSQL 64 agents vs raw pool of 16, txn per append: p99", ours_64, raw_64, "p99"),
    ]


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1, help="events per append")
    parser.add_argument("--appends", type=int, required=True, help="timed appends per writer task")
    parser.add_argument("--warmup", type=int, default=10, help="untimed appends per writer task first")
    parser.add_argument("--tasks", type=int, default=1, help="concurrent writers, each on its own session")
    parser.add_argument("--position", choices=("counter", "xid8"), default="counter", help="raw position values")
    parser.add_argument("--reset", choices=("default", "none"), default="default", help="raw pool release reset")
    parser.add_argument("--connections", type=int, help="raw pool size (default: one per task)")
    cases: dict[str, Callable[[argparse.Namespace], Sample]] = {
        "ours": _ours,
        "held": _held,
        "pool": _pool,
        "group": _group,
    }
    case_main(cases, parser)


if __name__ == "__main__":
    main()
