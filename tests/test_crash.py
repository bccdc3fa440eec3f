"""Processes killed (SIGKILL) right after pausing, and half way through a continued run: a fresh
process sees a consistent session and finishes the run; nothing acknowledged is lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kern_events import Agent, MemoryModel
from kern_events.db import BaseDb
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
