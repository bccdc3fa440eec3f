"""The reference Agent in a process of its own on a ``NatsDb`` or a ``DynamoDb``; the two-process tests
run it twice (through :func:`run`) and read what it prints (one JSON object).

Usage: ``python _agent_process.py COMMAND BACKEND WHERE NAME`` with COMMAND ``pause`` (Alice introduces
herself, then asks for a flight, whose booking needs confirmation: the run pauses and is stored) or
``continue`` (a new process confirms and finishes it, then asks her name from the stored history);
BACKEND ``nats`` (WHERE a server url, NAME the stream prefix) or ``dynamodb`` (WHERE the emulator's
endpoint url, NAME the table).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kern_events import Agent, MemoryModel, NatsDb
from kern_events.db import BaseDb, DynamoDb

ROOT = Path(__file__).resolve().parent.parent

BOOKED: list[str] = []


def book_flight(city: str) -> str:
    """Book a flight (needs a person's confirmation)."""
    BOOKED.append(city)
    return f"booked {city}"


def run(command: str, backend: str, where: str, name: str) -> dict[str, Any]:
    """Run ``command`` in a new process on the database ``backend`` at ``where``; what it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, __file__, command, backend, where, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _db(backend: str, where: str, name: str) -> BaseDb:
    if backend == "nats":
        return NatsDb(where, prefix=name, replicas=1)
    from tests._dynamo import CREDENTIALS

    return DynamoDb(name, endpoint_url=where, **CREDENTIALS)


async def main(command: str, backend: str, where: str, name: str) -> None:
    async with _db(backend, where, name) as db:

        def agent() -> Agent:
            return Agent(
                model=MemoryModel(),
                db=db,
                session_id="trip",
                tools=[book_flight],
                requires_confirmation=["book_flight"],
                add_history_to_context=True,
            )

        if command == "pause":
            await agent().arun("My name is Alice")
            output = await agent().arun("Book me a flight to Oslo")
            out: dict[str, object] = {"status": output.status, "run_id": output.run_id, "booked": BOOKED}
        else:
            ((session_id, paused),) = await db.get_paused_runs(session_id="trip")
            session = await db.open_session(session_id)
            for item in paused.open_requirements:
                await session.resolve(paused.run_id, item.requirement_id, confirmed=True)
            done = await agent().acontinue_run(paused.run_id)
            name = await agent().arun("What's my name?")
            view = await db.get_session("trip")
            out = {
                "run_id": done.run_id,
                "content": done.content,
                "name": name.content,
                "booked": BOOKED,
                "statuses": [run.status for run in view.runs],
            }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
