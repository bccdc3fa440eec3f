"""Reads an audit tool and a runtime make, against the raw drivers, and what they cost as data grows.

* **read**: one 1,000-event session read whole, and its last 20 events, through ``store.read``
  against the raw driver's ``SELECT`` of the same rows decoded by the same codec (SQLite, PostgreSQL).
* **sessions**: ``db.get_sessions(user_id=…)`` for one user (10 sessions) among 100,000 sessions,
  against the same among 1,000 (flat is the goal), and against the raw ``SELECT`` of the index rows.
* **stream**: peak resident memory of a fresh process streaming a 100,000-event session with
  ``store.read``, against one streaming 1,000 events (flat is the goal: reads are paged).

Run one case with ``python -m benchmarks.engine --case NAME …``; ``python -m benchmarks`` runs them all.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
import asyncpg
import msgspec

from benchmarks._harness import (
    Case,
    Comparison,
    Sample,
    Timer,
    analyze_postgres,
    case_main,
    message_pool,
    percentile,
    temp_db,
)
from benchmarks.postgres import URL, _fresh_schema
from kern_events import PostgresEventStore, SessionStarted, SqliteDb, SqliteEventStore, TableNames
from kern_events.events import EVENT_TYPES
from kern_events.stores._base import BaseEventStore
from kern_events.stores._sql import EVENT_COLUMNS, INFO_COLUMNS, quote

__all__ = ["NOTES", "comparisons"]

_MODULE = "benchmarks.engine"
_SESSION = "audited-session"
_USER = "user-00042"
_SESSIONS_PER_USER = 10

NOTES = """\
read rows: ours = async for record in store.read(session) (records decoded into typed events; paged,
  constant memory); tail = store.read(session, backwards=True, limit=20). raw = the driver's SELECT of the
  same rows by (session_id, version), each payload decoded by msgspec into the same event types (the
  decoder of the row's type column: the tag is not repeated in the payload), all rows in one fetch.
sessions rows: db.get_sessions(user_id=u) (10 sessions of that user, sorted by updated_at) among 100,000
  sessions of 10,000 users vs among 1,000; raw = the same SELECT on the index table, rows left as tuples.
stream rows: peak RSS (ru_maxrss) of a fresh process that opens the store and streams the session with
  store.read, at 100,000 events vs 1,000; each event ~730 bytes, so 100,000 events are ~73 MB of payload.
PostgreSQL rows run after ANALYZE, as autovacuum keeps a live server (a freshly filled table's guessed
  statistics make the raw ORDER BY … LIMIT 20 sort the whole session). Our session reads run on a
  connection the store holds for reads while it is free (a pool checkout and release cost ~45 us here),
  as the raw case holds its own.
Why reads trail the raw select: each record is a typed envelope (session, version, position, event id,
  time) around the decoded event, streamed by an async generator page by page in constant memory, where
  the raw reference builds one bare list (a page is asked for with one row of look-ahead, so a full
  last page costs no empty query; SQLite's is converted to stored events in one msgspec call, without
  the hash chain, and decoded in one pass; PostgreSQL's rows are decoded straight into records; records
  are not tracked by the garbage collector). What is left per event is the envelope, the generator's
  step and, on SQLite, the event id built as a UUID (which the collector tracks: ~5 collections a
  1,000-event read against the raw select's 4) where the raw select leaves 16 bytes. The tail read's
  fixed share, ~10 us of Python (argument checks, the generator, 20 envelopes and event ids), is most
  of its gap. On SQLite every call is a hop to the connection's thread; its cost depends on which core
  that thread wakes on, so the same query on two connections can differ by 2x between processes (the
  get_sessions raw row runs on a connection of its own)."""


# -- helpers ---------------------------------------------------------------------------------------


async def _fill(store: BaseEventStore, session_id: str, length: int) -> None:
    """Append ``length`` ~730-byte events to ``session_id`` in batches of 1,000."""
    pool = message_pool()
    version = 0
    while version < length:
        count = min(1000, length - version)
        events = [pool[(version + offset) % len(pool)] for offset in range(count)]
        version = (await store.append(session_id, events, expected_version=version)).to_version


def _timed(repeats: int, operation: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[Sample]]:
    async def run() -> Sample:
        await operation()  # warm the caches and the prepared statements
        latencies = []
        with Timer() as total:
            for _ in range(repeats):
                with Timer() as one:
                    await operation()
                latencies.append(one.seconds)
        return Sample(appends=repeats, events=repeats, seconds=total.seconds, p99=percentile(latencies, 0.99))

    return run


# -- read ------------------------------------------------------------------------------------------


def _read(args: argparse.Namespace) -> Sample:
    """Ours (``--side ours``) or the raw driver reading the session whole or its tail, ``--repeats`` times."""
    decoders = {tag: msgspec.msgpack.Decoder(cls) for tag, cls in EVENT_TYPES.items()}
    columns = EVENT_COLUMNS.replace(" ", "").split(",")
    data, kind = columns.index("data"), columns.index("type")
    events_table = TableNames().events
    tail = args.what == "tail"

    async def ours(store: BaseEventStore) -> int:
        records = store.read(_SESSION, backwards=tail, limit=20 if tail else None)
        return len([record async for record in records])

    async def sqlite_case(path: Path) -> Sample:
        async with SqliteEventStore(path) as store:
            await _fill(store, _SESSION, args.length)
            if args.side == "ours":
                return await _timed(args.repeats, lambda: ours(store))()
        order, limit = ("DESC", 20) if tail else ("ASC", -1)
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM {quote(events_table)} WHERE session_id = ? "
            f"ORDER BY version {order} LIMIT {limit}"
        )
        async with aiosqlite.connect(path) as raw:

            async def select() -> int:
                rows = await raw.execute_fetchall(sql, (_SESSION,))
                return len([decoders[row[kind]].decode(row[data]) for row in rows])

            return await _timed(args.repeats, select)()

    async def postgres_case() -> Sample:
        async with _fresh_schema(create_tables=False) as schema:
            async with PostgresEventStore(URL, schema=schema, pool_size=2) as store:
                await _fill(store, _SESSION, args.length)
                await analyze_postgres(URL)
                if args.side == "ours":
                    return await _timed(args.repeats, lambda: ours(store))()
            order, limit = ("DESC", "20") if tail else ("ASC", "ALL")
            sql = (
                f"SELECT {EVENT_COLUMNS} FROM {quote(schema)}.{quote(events_table)} WHERE session_id = $1 "
                f"ORDER BY version {order} LIMIT {limit}"
            )
            raw = await asyncpg.connect(URL)
            try:

                async def select() -> int:
                    rows = await raw.fetch(sql, _SESSION)
                    return len([decoders[row[kind]].decode(row[data]) for row in rows])

                return await _timed(args.repeats, select)()
            finally:
                await raw.close()

    async def run() -> Sample:
        if args.store == "postgres":
            return await postgres_case()
        with temp_db() as path:
            return await sqlite_case(path)

    return asyncio.run(run())


# -- sessions --------------------------------------------------------------------------------------


def _sessions(args: argparse.Namespace) -> Sample:
    """``get_sessions`` for one user among ``--count`` sessions (10 per user), or the raw SELECT."""

    async def run() -> Sample:
        with temp_db() as path:
            async with SqliteDb(db_file=path, synchronous="NORMAL") as db:
                users = args.count // _SESSIONS_PER_USER
                names = [f"s-{n:07d}" for n in range(args.count)]
                for start in range(0, args.count, 2000):
                    await asyncio.gather(
                        *(
                            db.store.append(
                                name,
                                [SessionStarted(session_type="agent", agent_id="a", user_id=f"user-{n % users:05d}")],
                            )
                            for n, name in enumerate(names[start : start + 2000], start=start)
                        )
                    )
                if args.side == "ours":
                    return await _timed(args.repeats, lambda: db.get_sessions(user_id=_USER))()
            sql = (
                f"SELECT {INFO_COLUMNS} FROM {quote(TableNames().sessions)} WHERE deleted = 0 AND user_id = ? "
                "ORDER BY updated_at DESC, session_id DESC LIMIT 100"
            )
            async with aiosqlite.connect(path) as raw:
                return await _timed(args.repeats, lambda: raw.execute_fetchall(sql, (_USER,)))()

    return asyncio.run(run())


# -- stream ----------------------------------------------------------------------------------------


def _stream(args: argparse.Namespace) -> Sample:
    """Peak RSS of this process streaming a session of ``--length`` events written by another process."""
    with temp_db() as path:
        done = _subprocess_fill(path, args.length)
        if done != 0:
            raise SystemExit(f"filling the session failed with exit code {done}")

        async def run() -> Sample:
            async with SqliteEventStore(path) as store:
                count = 0
                with Timer() as timer:
                    async for _ in store.read(_SESSION):
                        count += 1
            if count != args.length:
                raise SystemExit(f"streamed {count} events, expected {args.length}")
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            return Sample(appends=1, events=count, seconds=timer.seconds, peak_rss=peak)

        return asyncio.run(run())


def _subprocess_fill(path: Path, length: int) -> int:
    """Fill the session from another process, so this one's peak RSS is the read's alone."""
    code = (
        "import asyncio, sys\n"
        "from benchmarks.engine import _fill\n"
        "from kern_events import SqliteEventStore\n"
        "async def main():\n"
        "    async with SqliteEventStore(sys.argv[1], synchronous='NORMAL') as store:\n"
        f"        await _fill(store, {_SESSION!r}, int(sys.argv[2]))\n"
        "asyncio.run(main())\n"
    )
    return subprocess.run([sys.executable, "-c", code, str(path), str(length)], check=False).returncode


# -- what python -m benchmarks compares ------------------------------------------------------------


def _case(name: str, **options: object) -> Case:
    return Case.of(_MODULE, name, **options)


def comparisons(quick: bool) -> list[Comparison]:
    """Read, listing and streaming workloads, smaller with ``quick``; see :data:`NOTES`."""
    repeats, many_sessions, long_stream = (50, 10_000, 20_000) if quick else (300, 100_000, 100_000)
    rows: list[Comparison] = []
    for store, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        for what, shown in (("whole", "read 1,000-event session whole"), ("tail", "read its last 20 events")):
            sizes = {"store": store, "what": what, "length": 1000, "repeats": repeats}
            ours, raw = _case("read", side="ours", **sizes), _case("read", side="raw", **sizes)
            rows.append(Comparison(f"{label}, {shown} vs raw select", ours, raw, "latency", quick=what == "whole"))
    sizes = {"repeats": repeats * 4}
    big, small = (_case("sessions", side="ours", count=n, **sizes) for n in (many_sessions, 1000))
    raw = _case("sessions", side="raw", count=many_sessions, **sizes)
    rows += [
        Comparison(f"SQLite, get_sessions(user) among {many_sessions:,} vs 1,000 sessions", big, small, "latency"),
        Comparison(f"SQLite, get_sessions(user) among {many_sessions:,} vs raw select", big, raw, "latency"),
    ]
    long, short = (_case("stream", length=n) for n in (long_stream, 1000))
    rows.append(Comparison(f"SQLite, stream {long_stream:,} events vs 1,000: peak RSS", long, short, "memory"))
    return rows


def unavailable() -> str | None:
    """PostgreSQL rows need the server; the subject runs without it only if asked for SQLite alone."""
    from benchmarks.postgres import unavailable as postgres_unavailable

    return postgres_unavailable()


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--side", choices=("ours", "raw"), default="ours")
    parser.add_argument("--what", choices=("whole", "tail"), default="whole")
    parser.add_argument("--length", type=int, default=1000, help="events in the session")
    parser.add_argument("--count", type=int, default=1000, help="sessions in the index")
    parser.add_argument("--repeats", type=int, default=100, help="timed operations")
    case_main({"read": _read, "sessions": _sessions, "stream": _stream}, parser)


if __name__ == "__main__":
    main()
