"""Writers that share one hot session, through the session API, against as many writers on their own sessions.

* **writers**: ``--writers`` tasks, each with its own :class:`~kern_events.Session` writer, each
  flushing ``--steps`` one-message run steps through :func:`~kern_events.retry_on_conflict`, on
  ``--sessions`` sessions (1: every writer on the same hot session; ``--writers``: a session each,
  no conflicts at all), through ``--dbs`` dbs on the same database (writers of one db take turns;
  writers of different dbs, as of different processes, meet as conflicts and back off).

Run one case with ``python -m benchmarks.contention --case writers …``; ``python -m benchmarks``
runs them all.
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import AsyncExitStack

from benchmarks._harness import Case, Comparison, Sample, Timer, case_main, message_pool, percentile, temp_db
from benchmarks.postgres import URL, _fresh_schema
from kern_events import BaseDb, PostgresDb, SqliteDb, retry_on_conflict

__all__ = ["NOTES", "comparisons"]

_MODULE = "benchmarks.contention"

NOTES = """\
hot session rows: 64 tasks, each its own Session writer, each flushing one-message run steps
  (run.message, then retry_on_conflict(session, run.flush)) to ONE session; the reference is the same 64
  writers each on a session of its own (no conflicts). In one db the writers take turns (a FIFO lock per
  session: one append at a time, no conflict). "in 4 dbs": 16 writers in each of 4 dbs on the same
  database, as 4 processes would be; writers of different dbs collide: a conflict answers with the
  session's version, the writer retries at once with it, and when that loses too it sleeps (full jitter,
  5 ms doubling to 1 s) and re-reads the version. All 64 writers finish in every run."""


def _writers(args: argparse.Namespace) -> Sample:
    """``--writers`` session writers flushing ``--steps`` steps each, on ``--sessions`` sessions."""
    pool = message_pool()

    async def run() -> Sample:
        async with AsyncExitStack() as stack:
            dbs: list[BaseDb]
            if args.store == "postgres":
                schema = await stack.enter_async_context(_fresh_schema(create_tables=False))
                dbs = [PostgresDb(URL, schema=schema, pool_size=4) for _ in range(args.dbs)]
            else:
                path = stack.enter_context(temp_db())
                dbs = [SqliteDb(path) for _ in range(args.dbs)]
            for db in dbs:
                await stack.enter_async_context(db)
            db = dbs[0]
            names = [f"session-{number % args.sessions:03d}" for number in range(args.writers)]
            for name in sorted(set(names)):
                await db.open_session(name, name=name)
            latencies: list[float] = []

            async def writer(number: int) -> None:
                session = await dbs[number % len(dbs)].open_session(names[number])
                run = await session.start_run(f"writer-{number:03d}")
                await retry_on_conflict(session, run.flush)  # untimed: the RunStarted step
                for step in range(args.steps):
                    content = pool[(number + step) % len(pool)].content
                    run.message("assistant", content)
                    with Timer() as one:
                        await retry_on_conflict(session, run.flush)
                    latencies.append(one.seconds)

            with Timer() as timer:
                await asyncio.gather(*(writer(number) for number in range(args.writers)))
            total = args.writers * args.steps
            stored = sum([await db.store.current_version(name) for name in sorted(set(names))])
            expected = len(set(names)) + total + args.writers  # SessionStarted, the steps, each RunStarted
            if stored != expected:
                raise SystemExit(f"{stored} events stored, expected {expected}")
            return Sample(appends=total, events=total, seconds=timer.seconds, p99=percentile(latencies, 0.99))

    return asyncio.run(run())


def _case(name: str, **options: object) -> Case:
    return Case.of(_MODULE, name, **options)


def comparisons(quick: bool) -> list[Comparison]:
    """64 writers on one hot session against 64 writers on 64 sessions, on SQLite and PostgreSQL."""
    steps = 5 if quick else 20
    rows: list[Comparison] = []
    for store, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        hot = _case("writers", store=store, writers=64, sessions=1, steps=steps)
        spread = _case("writers", store=store, writers=64, sessions=64, steps=steps)
        colliding = _case("writers", store=store, writers=64, sessions=1, steps=steps, dbs=4)
        rows += [
            Comparison(
                f"{label}, 64 writers on one hot session vs on 64 sessions", hot, spread, quick=store == "sqlite"
            ),
            Comparison(f"{label}, 64 writers on one hot session vs on 64 sessions: p99", hot, spread, "p99"),
            Comparison(f"{label}, 64 writers in 4 dbs on one hot session vs on 64 sessions", colliding, spread),
        ]
    return rows


def unavailable() -> str | None:
    """The PostgreSQL rows need the server."""
    from benchmarks.postgres import unavailable as postgres_unavailable

    return postgres_unavailable()


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--writers", type=int, default=64, help="concurrent session writers")
    parser.add_argument("--sessions", type=int, default=1, help="sessions the writers share (round robin)")
    parser.add_argument("--steps", type=int, default=20, help="timed one-message steps per writer")
    parser.add_argument("--dbs", type=int, default=1, help="dbs on the same database the writers are spread over")
    case_main({"writers": _writers}, parser)


if __name__ == "__main__":
    main()
