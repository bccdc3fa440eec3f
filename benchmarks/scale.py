"""What the PostgreSQL store's everyday operations cost as the store grows to 1,000,000 sessions.

One fresh schema on the shared server grows in steps (10,000, 100,000 and 1,000,000 sessions of 10
events each, so 10,000,000 events at the top; ``--quick``: 10,000 sessions only, no growth). Each step is
filled server-side by ``INSERT … SELECT FROM generate_series`` (the same ten encoded events for every
session: a run of user and assistant messages), then ANALYZEd. At each size every operation runs in
fresh processes against the filled schema: a lone writer's append, ``get_sessions`` for one user and
for the newest sessions of all, and a read of the global feed. The result is cost against store size,
as a table and (with ``--results``) a plot; the schema is dropped at the end. Run one case with
``python -m benchmarks.scale --case NAME --schema S --sessions N …`` on a schema already filled.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from benchmarks._harness import Case, Sample, Timer, case_main, drive, percentile, run_case_json
from benchmarks.postgres import URL, _create_tables, _drop_schema, _schema_name
from kern_events import PostgresDb, PostgresEventStore, TableNames
from kern_events.codec import MsgpackCodec
from kern_events.events import Event, MessageAdded, RunCompleted, RunMetrics, RunStarted
from kern_events.stores._sql import quote

__all__ = ["NOTES", "ScalePoint", "report", "sizes"]

_MODULE = "benchmarks.scale"
EVENTS_PER_SESSION = 10
SESSIONS_PER_USER = 10
_FILL_CHUNK = 100_000
"""Sessions per fill statement (1,000,000 events): one statement stays well under a minute."""
_FEED_PAGE = 10_000
"""Events one global-feed read asks for."""

NOTES = f"""\
Cost against store size, PostgreSQL, one schema grown in steps on the shared server. Each session holds
  {EVENTS_PER_SESSION} events (a run: RunStarted, 8 messages of ~90 characters, RunCompleted; ~100-byte payloads),
  {SESSIONS_PER_USER} sessions per user; the fill is server-side (INSERT … SELECT FROM generate_series, positions and
  event ids in fill order, index rows written with them), then ANALYZE. Each cell: the mean cost per
  operation in one fresh process, the median of that over the processes.
append: store.append of 1 event to a session of its own (after 10 untimed), a lone writer: the index row
  bump, the idempotency check on the event-id index, the insert into a table of the size shown.
get_sessions(user): db.get_sessions(user_id=u, limit=20) for random users: the (user_id, created_at) index.
get_sessions(newest): db.get_sessions(limit=20), the newest of all by updated_at: the (updated_at,
  session_id) index read backwards up to the page (schema 4; before it, every index row was sorted and
  this grew with the store). Its price: appends move updated_at, so their index-row update is not HOT.
feed read: store.read_all(from_position=p, limit={_FEED_PAGE:,}) from random positions, in events per second.
growth = cost at the largest size / cost at the smallest (near 1.0 is flat)."""


@dataclass(frozen=True)
class ScalePoint:
    """One operation's median cost at one store size."""

    operation: str
    sessions: int
    events: int
    seconds_per_operation: float
    events_per_second: float | None
    runs: int


def sizes(quick: bool) -> tuple[int, ...]:
    """Store sizes in sessions; ``--quick`` stays small (the full fill takes minutes)."""
    return (10_000,) if quick else (10_000, 100_000, 1_000_000)


# -- the fill --------------------------------------------------------------------------------------


def _session_events() -> list[Event]:
    """The ten events every filled session holds: one run of user and assistant messages."""
    events: list[Event] = [RunStarted(run_id="run-1", input="What changed in the quarterly numbers?", model_id="m")]
    for turn in range(8):
        role = "user" if turn % 2 == 0 else "assistant"
        content = f"Message {turn}: the quarterly report shows growth in all three regions; next steps follow."
        events.append(MessageAdded(run_id="run-1", role=role, content=content))
    events.append(RunCompleted(run_id="run-1", metrics=RunMetrics(input_tokens=40, output_tokens=12, total_tokens=52)))
    return events


def _fill_statements(schema: str) -> tuple[str, str]:
    """The events and index-row statements that fill sessions ``[$4, $5)`` with the encoded events.

    Session ``s`` holds positions ``s * 10 + 1 … s * 10 + 10`` and event ids made of the same number,
    so both unique indexes are written in order (a bulk load, not random inserts).
    """
    tables = TableNames()
    events, sessions = f"{quote(schema)}.{quote(tables.events)}", f"{quote(schema)}.{quote(tables.sessions)}"
    session_id = "'scale-' || lpad(s::text, 7, '0')"
    fill_events = (
        f"INSERT INTO {events} (position, session_id, version, event_id, type, schema_version, data, recorded_at) "
        f"SELECT s * {EVENTS_PER_SESSION} + v, {session_id}, v, "
        f"lpad(to_hex(s * {EVENTS_PER_SESSION} + v), 32, '0')::uuid, "
        "($1::text[])[v], ($2::integer[])[v], ($3::bytea[])[v], $6::float8 + s "
        f"FROM generate_series($4::bigint, $5::bigint - 1) AS s, generate_series(1, {EVENTS_PER_SESSION}) AS v"
    )
    fill_sessions = (
        f"INSERT INTO {sessions} (session_id, session_type, agent_id, team_id, workflow_id, user_id, name, "
        "created_at, updated_at, run_count, version, deleted) "
        f"SELECT {session_id}, 'agent', 'agent-1', NULL, NULL, "
        f"'user-' || lpad((s / {SESSIONS_PER_USER})::text, 6, '0'), NULL, $3::float8 + s, $3::float8 + s, "
        f"1, {EVENTS_PER_SESSION}, false FROM generate_series($1::bigint, $2::bigint - 1) AS s"
    )
    return fill_events, fill_sessions


async def _fill(schema: str, first: int, last: int) -> float:
    """Fill sessions ``[first, last)`` in chunks, then ANALYZE; the seconds it took."""
    codec = MsgpackCodec()
    encoded = [codec.encode(event, uuid.UUID(int=0)) for event in _session_events()]  # the fill writes its own ids
    types = [pending.type for pending in encoded]
    versions = [pending.schema_version for pending in encoded]
    data = [pending.data for pending in encoded]
    fill_events, fill_sessions = _fill_statements(schema)
    tables = TableNames()
    base = time.time() - 86_400.0
    connection = await asyncpg.connect(URL)
    try:
        with Timer() as timer:
            for start in range(first, last, _FILL_CHUNK):
                end = min(last, start + _FILL_CHUNK)
                async with connection.transaction():
                    await connection.execute(fill_events, types, versions, data, start, end, base)
                    await connection.execute(fill_sessions, start, end, base)
            for table in (tables.events, tables.sessions):
                await connection.execute(f"ANALYZE {quote(schema)}.{quote(table)}")
    finally:
        await connection.close()
    return timer.seconds


# -- the measured operations -----------------------------------------------------------------------


def _user(sessions: int, rng: random.Random) -> str:
    return f"user-{rng.randrange(max(1, sessions // SESSIONS_PER_USER)):06d}"


async def _repeat(repeats: int, operation: Callable[[], Any], events: int = 1) -> Sample:
    """One untimed call, then ``repeats`` timed ones: their total and p99."""
    await operation()
    latencies = []
    with Timer() as total:
        for _ in range(repeats):
            with Timer() as one:
                await operation()
            latencies.append(one.seconds)
    return Sample(appends=repeats, events=repeats * events, seconds=total.seconds, p99=percentile(latencies, 0.99))


def _measure(args: argparse.Namespace) -> Sample:
    """One operation (``--case``) ``--repeats`` times on the schema filled with ``--sessions`` sessions."""
    rng = random.Random()

    async def run() -> Sample:
        if args.case == "append":
            async with PostgresEventStore(URL, schema=args.schema, pool_size=1) as store:

                async def append(session_id: str, version: int, events: Sequence[MessageAdded]) -> None:
                    await store.append(session_id, events, expected_version=version)

                args.batch, args.appends, args.warmup = 1, args.repeats, 10
                return await drive(append, {f"scale-append-{secrets.token_hex(4)}": 0}, args)
        async with PostgresDb(URL, schema=args.schema, pool_size=1) as db:
            if args.case == "by_user":
                return await _repeat(args.repeats, lambda: db.get_sessions(user_id=_user(args.sessions, rng), limit=20))
            if args.case == "newest":
                return await _repeat(args.repeats, lambda: db.get_sessions(limit=20))
            total = args.sessions * EVENTS_PER_SESSION

            async def feed() -> int:
                start = rng.randrange(EVENTS_PER_SESSION, max(EVENTS_PER_SESSION + 1, total - args.page))
                read = [record async for record in db.store.read_all(from_position=start, limit=args.page)]
                if len(read) != args.page:
                    raise RuntimeError(f"the feed gave {len(read)} events from {start}, not {args.page}")
                return len(read)

            return await _repeat(args.repeats, feed, events=args.page)

    return asyncio.run(run())


def _fill_case(args: argparse.Namespace) -> Sample:
    """Grow the schema from ``--first`` to ``--sessions`` sessions; the sample's seconds are the fill's."""
    seconds = asyncio.run(_fill(args.schema, args.first, args.sessions))
    added = args.sessions - args.first
    return Sample(appends=added, events=added * EVENTS_PER_SESSION, seconds=seconds)


# -- the subject -----------------------------------------------------------------------------------

_OPERATIONS = (
    ("append", "append 1 event (lone writer)"),
    ("by_user", "get_sessions(user), 20 of 10"),
    ("newest", "get_sessions(newest), 20"),
    ("feed", f"feed read, {_FEED_PAGE:,} events"),
)


@contextmanager
def _schema() -> Iterator[str]:
    """A fresh schema with our tables, dropped (with its millions of rows) however the run ends."""
    schema = _schema_name()
    print(f"{_MODULE}: schema {schema} (dropped at the end)", file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, _exit_on_term)  # a terminated run still drops its millions of rows
    try:
        asyncio.run(_create_tables(schema))
        yield schema
    finally:
        asyncio.run(_drop_schema(schema))
        signal.signal(signal.SIGTERM, previous)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_points(quick: bool, repeats: int) -> tuple[list[ScalePoint], list[str]]:
    """Grow one schema through :func:`sizes`; at each, every operation in ``repeats`` fresh processes."""
    operation_repeats = {"append": 200, "by_user": 50, "newest": 5 if quick else 10, "feed": 3}
    if quick:
        operation_repeats["append"] = 100
    points: list[ScalePoint] = []
    fills: list[str] = []
    with _schema() as schema:
        filled = 0
        for size in sizes(quick):
            print(f"{_MODULE}: filling {size:,} sessions", file=sys.stderr, flush=True)
            fill = Case.of(_MODULE, "fill", schema=schema, first=filled, sessions=size)
            seconds = float(run_case_json(fill)["seconds"])
            fills.append(
                f"{size - filled:,} sessions ({(size - filled) * EVENTS_PER_SESSION:,} events) in {seconds:.0f} s"
            )
            filled = size
            for repeat in range(repeats):
                print(f"{_MODULE}: {size:,} sessions, repetition {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
                for name, _ in _OPERATIONS:
                    case = Case.of(_MODULE, name, schema=schema, sessions=size, repeats=operation_repeats[name])
                    sample = Sample(**run_case_json(case))
                    points.append(_point(name, size, sample))
    return _medians(points), fills


def _point(operation: str, sessions: int, sample: Sample) -> ScalePoint:
    feed = operation == "feed"
    return ScalePoint(
        operation=operation,
        sessions=sessions,
        events=sessions * EVENTS_PER_SESSION,
        seconds_per_operation=sample.seconds / sample.appends,
        events_per_second=sample.events_per_second if feed else None,
        runs=1,
    )


def _medians(points: Sequence[ScalePoint]) -> list[ScalePoint]:
    grouped: dict[tuple[str, int], list[ScalePoint]] = {}
    for point in points:
        grouped.setdefault((point.operation, point.sessions), []).append(point)
    medians = []
    for (operation, sessions), runs in grouped.items():
        rates = [run.events_per_second for run in runs if run.events_per_second is not None]
        medians.append(
            ScalePoint(
                operation=operation,
                sessions=sessions,
                events=runs[0].events,
                seconds_per_operation=statistics.median(run.seconds_per_operation for run in runs),
                events_per_second=statistics.median(rates) if rates else None,
                runs=len(runs),
            )
        )
    return medians


def _cost(point: ScalePoint) -> str:
    if point.events_per_second is not None:
        return f"{point.events_per_second:,.0f} ev/s"
    return f"{point.seconds_per_operation * 1e3:,.2f} ms"


def render(points: Sequence[ScalePoint]) -> str:
    """One row per operation: its cost at each store size, and the growth from smallest to largest."""
    store_sizes = sorted({point.sessions for point in points})
    by_key = {(point.operation, point.sessions): point for point in points}
    header = ["operation", *(f"{size:,} sessions" for size in store_sizes), "growth"]
    rows = [header]
    for name, label in _OPERATIONS:
        cells = [by_key[(name, size)] for size in store_sizes]
        first, last = cells[0].seconds_per_operation, cells[-1].seconds_per_operation
        growth = f"{last / first:.2f}x" if len(cells) > 1 else "—"
        rows.append([label, *(_cost(cell) for cell in cells), growth])
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        " | ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    runs = min(point.runs for point in points)
    lines.append(f"(medians of {runs} runs per cell, each in a fresh process; growth compares seconds per operation)")
    return "\n".join(lines)


def report(quick: bool, repeats: int) -> tuple[str, list[dict[str, Any]]]:
    """The subject's text (table, fill times, sizes used, notes) and its points as JSON data."""
    points, fills = run_points(quick, repeats)
    largest = max(sizes(quick))
    used = f"sizes used: {', '.join(f'{size:,}' for size in sizes(quick))} sessions"
    if quick:
        used += f" (--quick: the full run grows to 1,000,000 sessions / 10,000,000 events; this one to {largest:,})"
    text = "\n".join([render(points), "", used, "fill: " + "; ".join(fills), "", NOTES])
    return text, [asdict(point) for point in points]


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schema", required=True, help="a schema our store created (filled by the fill case)")
    parser.add_argument("--sessions", type=int, required=True, help="sessions in the store (fill: grow to this)")
    parser.add_argument("--first", type=int, default=0, help="fill: sessions already there")
    parser.add_argument("--repeats", type=int, default=20, help="timed operations")
    parser.add_argument("--page", type=int, default=_FEED_PAGE, help="feed: events per read")
    cases: dict[str, Callable[[argparse.Namespace], Sample]] = {name: _measure for name, _ in _OPERATIONS}
    cases["fill"] = _fill_case
    case_main(cases, parser)


if __name__ == "__main__":
    main()
