"""History and persistence cost against session length: the engine's promise of flat cost per run.

A session is prefilled with N runs (a user message, an assistant answer, the outcome). Then, at
N = 10 and N = 10,000, the cases time what an agent runtime does for every turn: load the context
for the next run (the last 3 runs' messages and the state, ``db.get_context``) and persist one more
run (one append). The full fold of the session (``db.get_session`` without a checkpoint) is timed
too: it is what a store without a tail read would pay, and it grows with N.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from benchmarks import postgres
from benchmarks._harness import Case, Comparison, Sample, Timer, analyze_postgres, case_main, temp_db
from benchmarks.postgres import URL, _fresh_schema
from kern_events import (
    InMemoryDb,
    MessageAdded,
    PostgresDb,
    RunCompleted,
    RunMetrics,
    RunStarted,
    SessionStarted,
    SqliteDb,
)
from kern_events.db import BaseDb
from kern_events.events import Event

__all__ = ["NOTES", "comparisons"]

_MODULE = "benchmarks.history"
_SESSION = "long-conversation"
_PREFILL_EVENTS = 4000

NOTES = """\
history rows: the context a runtime loads before each run: db.get_context(session, num_history_runs=3),
  the history window (the session's tail, read backwards only as far as the window needs) and the state
  (its own checkpoint and the state events after it), read together in one round trip: one statement on
  PostgreSQL (a fresh schema on the shared server, ANALYZEd after the prefill), one thread hop on SQLite.
persist rows: one more run (RunStarted, user and assistant messages, RunCompleted) in one append.
full view rows: db.get_session, the whole session view (from its checkpoint): what a runtime that loads
  the whole session per turn pays; shown to contrast with the flat rows above.
The rows above compare the same operation at 10,000 runs (--quick: 1,000) against 10 runs: a ratio near
  1.00 is flat. Their context loads come just after the checkpoint; a db checkpoints every 1,000 events,
  so a load in practice comes anywhere up to 999 events after it.
after checkpoint rows: the same context load with 996 events (249 runs, no state event among them)
  appended after the state checkpoint vs none: the state events after it are read through their partial
  index (schema 5), which holds only them; before it, every event after the checkpoint was visited to find
  them (SQLite 0.26 ms more at 996 events, measured on the statement alone). Near 1.00 is flat."""


def _run(number: int) -> list[Event]:
    run_id = f"run-{number}"
    return [
        RunStarted(run_id=run_id, input=f"question {number}", model_id="m"),
        MessageAdded(run_id=run_id, role="user", content=f"Question {number}: what did we decide about the plan?"),
        MessageAdded(run_id=run_id, role="assistant", content=f"Answer {number}: we keep the plan, as agreed."),
        RunCompleted(run_id=run_id, metrics=RunMetrics(input_tokens=40, output_tokens=12, total_tokens=52)),
    ]


async def _nothing() -> None:
    pass


@asynccontextmanager
async def _database(store: str) -> AsyncIterator[tuple[Callable[[], BaseDb], Callable[[], Awaitable[None]]]]:
    """A db factory, and a way to settle the database after the prefill (an empty WAL for SQLite,
    so the timed part does not pay for checkpointing the prefill; planner statistics for PostgreSQL)."""
    if store == "memory":
        shared = InMemoryDb()
        yield (lambda: shared), _nothing
        return
    if store == "postgres":
        async with _fresh_schema(create_tables=False) as schema:
            yield (lambda: PostgresDb(URL, schema=schema, pool_size=2)), (lambda: analyze_postgres(URL))
        return
    with temp_db() as path:

        async def settle() -> None:
            with sqlite3.connect(path) as raw:
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        yield (lambda: SqliteDb(path, synchronous="NORMAL")), settle


async def _prefill(db: BaseDb, runs: int, first: int = 1, version: int = 0) -> int:
    batch: list[Event] = [] if version else [SessionStarted(session_type="agent", agent_id="a", user_id="u")]
    for number in range(first, first + runs):
        batch += _run(number)
        if len(batch) >= _PREFILL_EVENTS or number == first + runs - 1:
            version = (await db.store.append(_SESSION, batch, expected_version=version)).to_version
            batch = []
    return version


def _measure(args: argparse.Namespace, operation: str) -> Sample:
    async def main() -> Sample:
        async with _database(args.store) as (open_db, settle), open_db() as db:
            version = await _prefill(db, args.runs)
            await db.save_checkpoint(_SESSION)  # as the session API does every checkpoint_every events
            version = await _prefill(db, args.after, args.runs + 1, version)  # none by default
            stored = args.runs + args.after
            await settle()
            with Timer() as timer:
                for n in range(args.repeats):
                    if operation == "history":
                        await db.get_context(_SESSION, num_history_runs=3)
                    elif operation == "persist":
                        version = (
                            await db.store.append(_SESSION, _run(stored + n + 1), expected_version=version)
                        ).to_version
                    else:
                        await db.get_session(_SESSION)
        return Sample(appends=args.repeats, events=args.repeats, seconds=timer.seconds)

    return asyncio.run(main())


def _case(name: str, **options: object) -> Case:
    return Case.of(_MODULE, name, **options)


def comparisons(quick: bool) -> list[Comparison]:
    """History, persistence and full-fold cost at 10,000 runs (``quick``: 1,000) against 10 runs."""
    repeats, folds, length = (100, 3, 1_000) if quick else (500, 10, 10_000)
    rows: list[Comparison] = []
    stores = [("sqlite", "SQLite NORMAL"), ("postgres", "PostgreSQL"), ("memory", "in-memory")]
    if postgres.unavailable() is not None:  # the other rows still run; the PostgreSQL subject names why
        stores.remove(("postgres", "PostgreSQL"))
    for store, label in stores:
        for name, what, count in (
            ("history", "context for the next run (history + state)", repeats),
            ("persist", "persist a run", repeats),
        ):
            long, short = (_case(name, store=store, runs=n, repeats=count) for n in (length, 10))
            headline = name == "history" and store == "postgres"  # issue 19's context row: --quick runs it
            rows.append(
                Comparison(f"{label}, {what} at {length:,} runs vs 10", long, short, metric="latency", quick=headline)
            )
        long, short = (_case("full", store=store, runs=n, repeats=folds) for n in (length, 10))
        rows.append(Comparison(f"{label}, full view at {length:,} runs vs 10 (grows)", long, short, metric="latency"))
    for store, label in [(store, label) for store, label in stores if store != "memory"]:
        late, early = (_case("history", store=store, runs=10, after=n, repeats=repeats) for n in (249, 0))
        rows.append(
            Comparison(f"{label}, context 996 events after the checkpoint vs just after", late, early, metric="latency")
        )
    return rows


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=("sqlite", "postgres", "memory"), default="sqlite")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--after", type=int, default=0, help="runs appended after the checkpoint, untimed")
    case_main(
        {
            "history": lambda args: _measure(args, "history"),
            "persist": lambda args: _measure(args, "persist"),
            "full": lambda args: _measure(args, "full"),
        },
        parser,
    )


if __name__ == "__main__":
    main()
