"""An Agno ``Agent`` with a scripted model in a process of its own, on a ``KernEventsDb`` over SQLite
files; the two-process test runs it and reads what it prints (one JSON object).

Usage: ``python _agent_process.py COMMAND DIR`` with COMMAND ``pause`` (a run whose tool needs
confirmation: it pauses and is stored) or ``continue`` (a new process confirms and finishes it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from agno.agent import Agent
from agno.db.sqlite import SqliteDb as AgnoSqliteDb
from agno.models.base import Model
from agno.models.response import ModelResponse
from agno.tools import tool

from kern_events import SqliteDb
from kern_events.adapters.agno import KernEventsDb

SESSION = "trip"
USER = "alice"


class ScriptedModel(Model):
    """Answers with the next scripted ``ModelResponse``: a tool call, or text."""

    def __init__(self, script: list[ModelResponse]) -> None:
        super().__init__(id="scripted", name="scripted", provider="scripted")
        self.script = script
        self.seen: list[list[str]] = []

    def invoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.seen.append([str(message.role) for message in kwargs.get("messages", [])])
        return self.script.pop(0)

    async def ainvoke(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.invoke(*args, **kwargs)

    def invoke_stream(self, *args: Any, **kwargs: Any) -> Iterator[ModelResponse]:
        yield self.invoke(*args, **kwargs)

    async def ainvoke_stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[ModelResponse]:
        yield self.invoke(*args, **kwargs)

    def _parse_provider_response(self, response: Any, **kwargs: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]

    def _parse_provider_response_delta(self, response: Any) -> ModelResponse:
        return response  # type: ignore[no-any-return]


BOOKED: list[str] = []


@tool(requires_confirmation=True)
def book_flight(destination: str) -> str:
    """Book a flight (needs a person's confirmation)."""
    BOOKED.append(destination)
    return f"booked a flight to {destination}"


def _call() -> ModelResponse:
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "book_flight", "arguments": '{"destination": "Paris"}'},
    }
    return ModelResponse(role="assistant", tool_calls=[call])


def main(command: str, directory: str) -> None:
    here = Path(directory)
    db = KernEventsDb(SqliteDb(db_file=here / "kern.db"), AgnoSqliteDb(db_file=str(here / "agno.db")))
    try:
        if command == "pause":
            model = ScriptedModel([_call()])
            agent = Agent(model=model, db=db, tools=[book_flight], telemetry=False)
            run = agent.run("Book me a flight to Paris", session_id=SESSION, user_id=USER)
            out = {"run_id": run.run_id, "paused": run.is_paused, "status": str(run.status.value)}
        else:
            model = ScriptedModel([ModelResponse(role="assistant", content="Your flight to Paris is booked.")])
            agent = Agent(model=model, db=db, tools=[book_flight], telemetry=False)
            session = db.get_session(SESSION, user_id=USER)
            assert session is not None, "the paused run's session is not stored"
            paused = [run for run in session.runs or [] if run.is_paused]  # type: ignore[union-attr]
            assert len(paused) == 1, "no paused run stored"
            requirements = paused[0].active_requirements
            for requirement in requirements:
                requirement.confirm()
            run = agent.continue_run(
                run_id=paused[0].run_id, requirements=requirements, session_id=SESSION, user_id=USER
            )
            stored = db.get_session(SESSION, user_id=USER)
            out = {
                "run_id": run.run_id,
                "content": run.content,
                "status": str(run.status.value),
                "booked": BOOKED,
                "stored_status": [str(r.status.value) for r in stored.runs or []],  # type: ignore[union-attr]
            }
    finally:
        db.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
