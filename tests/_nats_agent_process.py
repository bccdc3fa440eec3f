"""The reference Agent in a process of its own on a ``NatsDb``; the two-process test runs it twice and
reads what it prints (one JSON object).

Usage: ``python _nats_agent_process.py COMMAND URL PREFIX`` with COMMAND ``pause`` (Alice introduces
herself, then asks for a flight, whose booking needs confirmation: the run pauses and is stored) or
``continue`` (a new process confirms and finishes it, then asks her name from the stored history).
"""

from __future__ import annotations

import asyncio
import json
import sys

from kern_events import Agent, MemoryModel, NatsDb

BOOKED: list[str] = []


def book_flight(city: str) -> str:
    """Book a flight (needs a person's confirmation)."""
    BOOKED.append(city)
    return f"booked {city}"


async def main(command: str, url: str, prefix: str) -> None:
    async with NatsDb(url, prefix=prefix, replicas=1) as db:

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
