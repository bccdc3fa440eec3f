"""Processes killed (SIGKILL) right after pausing, between a pause and its checkpoint, and half way
through a continued run: a fresh process sees a consistent session and finishes the run; nothing
acknowledged is lost. A pause and its checkpoint are two writes: the checkpoint only saves reading
work, so a pause whose checkpoint was never written reads from an older checkpoint and the log."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kern_events import Agent, MemoryModel
from kern_events.db import BaseDb
from projections import fold_records
from tests import _pg
from tests._backends import Backend

ROOT = Path(__file__).parent.parent

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from kern_events import Agent, MemoryModel, PostgresDb, SqliteDb

    def die(city: str) -> str:
        os.kill(os.getpid(), signal.SIGKILL)  # half way through the continued run
        return "never"

    die.__name__ = "book_flight"  # the confirmed tool, which this process dies running

    async def main(kind, where, schema, step, run_id):
        db = SqliteDb(where) if kind == "sqlite" else PostgresDb(where, schema=schema)
        await db.__aenter__()
        agent = Agent(model=MemoryModel(), db=db, session_id="trip", tools=[die if step == "continue" else book_flight],
                      requires_confirmation=["book_flight"])
        if step == "pause":
            output = await agent.arun("Book me a flight to Oslo")
            print(output.run_id, flush=True)
        else:
            await agent.acontinue_run(run_id)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no clean shutdown

    def book_flight(city: str) -> str:
        return f"booked {city}"

    asyncio.run(main(*sys.argv[1:]))
    """
)


def book_flight(city: str) -> str:
    """Book a flight."""
    return f"booked {city}"


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = Backend(request.param, tmp_path)
    try:
        yield backend
    finally:
        backend.cleanup()


def _child(backend: Backend, step: str, run_id: str = "-") -> subprocess.CompletedProcess[str]:
    where = backend.db_file if backend.name == "sqlite" else _pg.PG_URL
    return subprocess.run(
        [sys.executable, "-c", CHILD, backend.name, where, backend.schema or "-", step, run_id],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


async def _consistent(db: BaseDb) -> None:
    versions = [record.version async for record in db.store.read("trip")]
    assert versions == list(range(1, len(versions) + 1))
    assert await db.store.current_version("trip") == versions[-1]


async def test_killed_after_pausing_and_killed_while_continuing_a_fresh_process_finishes(durable: Backend) -> None:
    paused = _child(durable, "pause")
    assert paused.returncode == -9, paused.stderr
    run_id = paused.stdout.strip()
    async with durable.db() as db:
        await _consistent(db)
        ((_, run),) = await db.get_paused_runs(session_id="trip")
        assert run.run_id == run_id
        session = await db.open_session("trip")
        await session.resolve(run_id, run.open_requirements[0].requirement_id, confirmed=True)

    crashed = _child(durable, "continue", run_id)
    assert crashed.returncode == -9, crashed.stderr
    async with durable.db() as db:
        await _consistent(db)
        interrupted = await db.get_run("trip", run_id)
        assert interrupted.status == "running", "resumed, then the process died"
        assert interrupted.tool_calls == (), "the tool's result was never recorded"
        agent = Agent(model=MemoryModel(), db=db, session_id="trip", tools=[book_flight])
        done = await agent.acontinue_run(run_id, recover=True)
        finished = await db.get_run("trip", run_id)
        await _consistent(db)
    assert done.content == "Flight to Oslo: booked Oslo."
    assert finished.status == "completed"
    assert [requirement.status for requirement in finished.requirements] == ["resolved"]


KILLED_BETWEEN_PAUSE_AND_CHECKPOINT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from kern_events import PostgresDb, SqliteDb, ToolConfirmation

    def confirm(requirement_id, city):
        return ToolConfirmation(requirement_id=requirement_id, tool_call_id=requirement_id, tool_name="book",
                                arguments={"city": city})

    async def main(kind, where, schema):
        db = SqliteDb(where) if kind == "sqlite" else PostgresDb(where, schema=schema)
        await db.__aenter__()
        session = await db.open_session("trip")
        run = await session.start_run("r1")
        run.message("user", "Book Oslo, then Bergen")
        await run.pause([confirm("q1", "Oslo")])  # the pause and its checkpoint, both written
        await session.resolve("r1", "q1", confirmed=True)
        run = await session.continue_run("r1")
        run.message("assistant", "Oslo is booked")
        checkpoint = db.save_checkpoint

        async def killed_first(session_id, *, paused_run_id=None):
            if paused_run_id is not None:
                os.kill(os.getpid(), signal.SIGKILL)  # the pause is appended; its checkpoint never is
            return await checkpoint(session_id, paused_run_id=paused_run_id)

        db.save_checkpoint = killed_first
        await run.pause([confirm("q2", "Bergen")])

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_killed_between_a_pause_and_its_checkpoint_the_run_resumes_from_the_older_one(
    durable: Backend,
) -> None:
    where = durable.db_file if durable.name == "sqlite" else _pg.PG_URL
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BETWEEN_PAUSE_AND_CHECKPOINT, durable.name, where, durable.schema or "-"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert killed.returncode == -9, killed.stderr
    async with durable.db() as db:
        await _consistent(db)
        records = [record async for record in db.store.read("trip")]
        full = fold_records(records)
        newest = await db.store.load_snapshot("trip", "run:r1")
        assert newest is not None and newest.version < records[-1].version, "only the first pause's checkpoint"
        assert await db.get_session("trip") == full
        paused = full.get_run("r1")
        assert paused is not None and [r.requirement_id for r in paused.open_requirements] == ["q2"]
        assert await db.get_paused_runs(session_id="trip") == [("trip", paused)]
        assert await db.get_run("trip", "r1") == paused
        session = await db.open_session("trip")
        await session.resolve("r1", "q2", confirmed=True)
        run = await session.continue_run("r1")
        run.message("assistant", "Bergen is booked too")
        await run.complete("both booked")
        done = await db.get_run("trip", "r1")
        await _consistent(db)
    assert done.status == "completed"
    assert [(r.requirement_id, r.status, r.confirmed) for r in done.requirements] == [
        ("q1", "resolved", True),
        ("q2", "resolved", True),
    ]
    assert [m.content for m in done.messages] == ["Book Oslo, then Bergen", "Oslo is booked", "Bergen is booked too"]
