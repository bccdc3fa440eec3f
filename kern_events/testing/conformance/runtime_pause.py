"""The reference agent pauses on tools that need a person or an outside executor, and any process
continues the run from the checkpoint once the requirements are resolved."""

from __future__ import annotations

from typing import Any

import pytest

from kern_events import Agent, ExternalExecution, MemoryModel, RunStateError, ToolConfirmation, UserInput
from kern_events.testing._backend import Backend

booked: list[str] = []


def book_flight(city: str) -> str:
    """Book a flight (the side effect a person must confirm first)."""
    booked.append(city)
    return f"booked {city}"


def _agent(db: Any, **options: Any) -> Agent:
    return Agent(model=MemoryModel(), db=db, session_id="trip", tools=[book_flight], **options)


async def test_a_confirmed_tool_call_runs_only_after_the_pause_in_a_later_process(backend: Backend) -> None:
    booked.clear()
    pausing = await backend.db().__aenter__()
    output = await _agent(pausing, requires_confirmation=["book_flight"]).arun("Book me a flight to Oslo")
    assert output.status == "paused"
    (requirement,) = output.requirements
    assert isinstance(requirement, ToolConfirmation) and requirement.arguments == {"city": "Oslo"}
    assert booked == [], "nothing runs before the confirmation"
    continuing = pausing
    if backend.persistent:
        await pausing.aclose()
        continuing = backend.db()
    async with continuing as db:
        (session_id, paused), *_ = await db.get_paused_runs(session_id="trip")
        session = await db.open_session(session_id)
        with pytest.raises(RunStateError, match="still open"):
            await _agent(db).acontinue_run(paused.run_id)
        await session.resolve(paused.run_id, requirement.requirement_id, confirmed=True)
        done = await _agent(db, requires_confirmation=["book_flight"]).acontinue_run(paused.run_id)
        run = (await db.get_session("trip")).get_run(paused.run_id)
    assert done.content == "Flight to Oslo: booked Oslo."
    assert booked == ["Oslo"]
    assert run is not None and run.status == "completed"
    assert [m.role for m in run.messages] == ["user", "assistant", "tool", "assistant"]
    assert run.tool_calls[0].result == "booked Oslo"


async def test_a_rejected_call_is_reported_to_the_model_and_never_runs(backend: Backend) -> None:
    booked.clear()
    async with backend.db() as db:
        agent = _agent(db, requires_confirmation=["book_flight"])
        output = await agent.arun("Book a flight to Rome")
        session = await db.open_session("trip")
        await session.resolve(output.run_id, output.requirements[0].requirement_id, confirmed=False, note="too dear")
        done = await agent.acontinue_run(output.run_id)
    assert booked == []
    assert done.content == "Flight to Rome: the user rejected this call: too dear."


async def test_an_external_tool_result_is_handed_back_and_used(backend: Backend) -> None:
    booked.clear()
    async with backend.db() as db:
        agent = _agent(db, external_execution=["book_flight"])
        output = await agent.arun("Book a flight to Lima")
        (requirement,) = output.requirements
        assert isinstance(requirement, ExternalExecution)
        session = await db.open_session("trip")
        await session.resolve(output.run_id, requirement.requirement_id, result="ticket LIM-42")
        done = await agent.acontinue_run(output.run_id)
        run = (await db.get_session("trip")).get_run(output.run_id)
    assert booked == [], "it ran outside"
    assert done.content == "Flight to Lima: ticket LIM-42."
    assert run is not None and run.tool_calls[0].result == "ticket LIM-42"


async def test_user_input_fills_in_the_tool_call_the_model_left_open(backend: Backend) -> None:
    def book_flight(city: str, date: str) -> str:
        """Book a flight on a date the user gives."""
        return f"booked {city} on {date}"

    async with backend.db() as db:
        agent = Agent(
            model=MemoryModel(), db=db, session_id="trip", tools=[book_flight], user_input={"book_flight": ["date"]}
        )
        output = await agent.arun("Book a flight to Kyiv")
        (requirement,) = output.requirements
        assert isinstance(requirement, UserInput)
        assert [field.name for field in requirement.fields] == ["date"]
        session = await db.open_session("trip")
        await session.resolve(output.run_id, requirement.requirement_id, values={"date": "2027-01-05"})
        done = await agent.acontinue_run(output.run_id)
    assert done.content == "Flight to Kyiv: booked Kyiv on 2027-01-05."
