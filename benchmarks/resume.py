"""Resuming a paused run at session lengths of 100, 10,000 and 100,000 events, with and without a
checkpoint at the pause.

Resume = ``session.continue_run(run_id)``: it reads the session as of its current version (the
newest checkpoint plus the events after it, or, without one, every event) to check the run, then
appends ``RunResumed``. With the checkpoint written at the pause the cost must stay flat in the
session's length; without it, it grows with the length.
"""

from __future__ import annotations

import argparse
import asyncio

from benchmarks._harness import Case, Comparison, Sample, Timer, case_main, temp_db
from kern_events import (
    MessageAdded,
    RunCompleted,
    RunPaused,
    RunStarted,
    SessionStarted,
    SqliteDb,
    ToolConfirmation,
)
from kern_events.events import Event

__all__ = ["NOTES", "comparisons"]

_MODULE = "benchmarks.resume"
_SESSION = "paused-session"
_BATCH = 4000

NOTES = """\
resume rows: one session of N events (runs of RunStarted, two messages, RunCompleted), then a run
  paused on a tool confirmation, confirmed; timed: session.continue_run (read as of the head, check,
  append RunResumed), on SQLite NORMAL. "checkpoint" = the checkpoint the pause writes; "none" = the
  same pause appended without one. The first three rows compare the two at each length; the last
  compares the checkpointed resume at 100,000 events with 100 (flat = near 1.00)."""


async def _prepare(db: SqliteDb, events: int, checkpoint: bool) -> None:
    batch: list[Event] = [SessionStarted(session_type="agent", user_id="u")]
    version = 0
    number = 0
    while version + len(batch) < events - 2:
        number += 1
        run_id = f"run-{number}"
        batch += [
            RunStarted(run_id=run_id),
            MessageAdded(run_id=run_id, role="user", content=f"question {number} about the plan"),
            MessageAdded(run_id=run_id, role="assistant", content=f"answer {number}: keep the plan"),
            RunCompleted(run_id=run_id),
        ]
        if len(batch) >= _BATCH:
            version = (await db.store.append(_SESSION, batch, expected_version=version)).to_version
            batch = []
    if batch:
        await db.store.append(_SESSION, batch, expected_version=version)
    session = await db.open_session(_SESSION)
    confirm = ToolConfirmation(requirement_id="q1", tool_call_id="c1", tool_name="book", arguments={"to": "Oslo"})
    run = await session.start_run("paused-run")
    if checkpoint:
        await run.pause([confirm])
    else:
        run.stage(RunPaused(run_id="paused-run", requirements=(confirm,)))
        await run.flush()
    await session.resolve("paused-run", "q1", confirmed=True)


def _resume(args: argparse.Namespace) -> Sample:
    async def main() -> Sample:
        with temp_db() as path:
            async with SqliteDb(path, synchronous="NORMAL", checkpoint_every=None) as db:
                await _prepare(db, args.events, args.checkpoint == "yes")
            async with SqliteDb(path, synchronous="NORMAL", checkpoint_every=None) as db:  # another process
                session = await db.open_session(_SESSION)
                with Timer() as timer:
                    await session.continue_run("paused-run")
        return Sample(appends=1, events=1, seconds=timer.seconds)

    return asyncio.run(main())


def _case(**options: object) -> Case:
    return Case.of(_MODULE, "resume", **options)


def comparisons(quick: bool) -> list[Comparison]:
    """Resume with and without a checkpoint at each length, and the checkpointed one across lengths."""
    lengths = (100, 10_000, 100_000) if not quick else (100, 10_000, 30_000)
    rows = [
        Comparison(
            f"resume at {n:,} events: checkpoint vs none",
            _case(events=n, checkpoint="yes"),
            _case(events=n, checkpoint="no"),
            metric="latency",
            quick=n == 10_000,
        )
        for n in lengths
    ]
    rows.append(
        Comparison(
            f"resume with checkpoint at {lengths[-1]:,} events vs 100",
            _case(events=lengths[-1], checkpoint="yes"),
            _case(events=100, checkpoint="yes"),
            metric="latency",
        )
    )
    return rows


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--checkpoint", choices=("yes", "no"), default="yes")
    case_main({"resume": _resume}, parser)


if __name__ == "__main__":
    main()
