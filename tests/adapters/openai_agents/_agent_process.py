"""One turn of an OpenAI Agents SDK agent in a process of its own, on a ``KernEventsSession`` in a
SQLite file; the two-process tests run it and read what it prints (one JSON object).

Usage: ``python _agent_process.py COMMAND DB_FILE SESSION_ID [TEXT ANSWER]`` with COMMAND one of
``turn`` (one turn answered with ANSWER through each of ``Runner.run``, ``run_streamed`` and
``run_sync``, on the sessions SESSION_ID-run, -run_streamed and -run_sync), ``pause`` (a turn whose
tool needs approval, saved with its run state in one append) or ``resume`` (approve and finish it).
The adapter is imported before the SDK and the rest of kern-events: it must import first.
"""

from __future__ import annotations

from kern_events.adapters.openai_agents import KernEventsSession  # isort: skip

import asyncio
import json
import sys
from typing import Any

from agents import Agent, Runner, function_tool
from agents.testing import ModelStep, ScriptedModel, assistant_message, function_call

from kern_events import SqliteDb, run_blocking

USER = "alice@example.com"


@function_tool(needs_approval=True)
def book_flight(destination: str) -> str:
    """Book a flight (needs a person's approval)."""
    return f"booked a flight to {destination}"


def _report(model: ScriptedModel, result: Any) -> dict[str, Any]:
    return {
        "final_output": result.final_output,
        "model_input": model.calls[-1].input if model.calls else None,
        "interruptions": len(getattr(result, "interruptions", []) or []),
    }


async def _one_turn(command: str, db_file: str, session_id: str, text: str, answer: str) -> dict[str, Any]:
    model = ScriptedModel([ModelStep(output=[assistant_message(answer)])])
    agent = Agent(name="helper", model=model)
    async with SqliteDb(db_file=db_file) as db:
        session = KernEventsSession(session_id, db, user_id=USER)
        if command == "run":
            result: Any = await Runner.run(agent, text, session=session)
        else:
            result = Runner.run_streamed(agent, text, session=session)
            async for _ in result.stream_events():
                pass
        return _report(model, result)


def _one_sync_turn(db_file: str, session_id: str, text: str, answer: str) -> dict[str, Any]:
    model = ScriptedModel([ModelStep(output=[assistant_message(answer)])])
    agent = Agent(name="helper", model=model)
    db = SqliteDb(db_file=db_file)
    result = Runner.run_sync(agent, text, session=KernEventsSession(session_id, db, user_id=USER))
    run_blocking(db.aclose)  # from synchronous code, as a run_sync application would
    return _report(model, result)


async def _pause(db_file: str, session_id: str) -> dict[str, Any]:
    model = ScriptedModel([ModelStep(output=[function_call("book_flight", {"destination": "Paris"}, call_id="c1")])])
    agent = Agent(name="helper", model=model, tools=[book_flight])
    async with SqliteDb(db_file=db_file) as db:
        session = KernEventsSession(session_id, db, user_id=USER)
        async with session.atomic():
            result = await Runner.run(agent, "Book me a flight to Paris", session=session)
            await session.save_run_state(result.to_state())
        return _report(model, result)


async def _resume(db_file: str, session_id: str) -> dict[str, Any]:
    model = ScriptedModel([ModelStep(output=[assistant_message("Your flight to Paris is booked.")])])
    agent = Agent(name="helper", model=model, tools=[book_flight])
    async with SqliteDb(db_file=db_file) as db:
        session = KernEventsSession(session_id, db, user_id=USER)
        state = await session.load_run_state(agent, claim=True)
        assert state is not None, "no paused run saved"
        for interruption in state.get_interruptions():
            state.approve(interruption)
        async with session.atomic():
            result = await Runner.run(agent, state, session=session)
            await session.save_run_state(None)
        return _report(model, result)


_ASYNC = ("run", "run_streamed")


def main(argv: list[str]) -> None:
    command, db_file, session_id, *rest = argv
    out: dict[str, Any]
    if command == "turn":
        out = {method: asyncio.run(_one_turn(method, db_file, f"{session_id}-{method}", *rest)) for method in _ASYNC}
        out["run_sync"] = _one_sync_turn(db_file, f"{session_id}-run_sync", *rest)
    elif command == "pause":
        out = asyncio.run(_pause(db_file, session_id))
    else:
        out = asyncio.run(_resume(db_file, session_id))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
