"""The reference runtime on every backend: history that reaches the model, tools, state, teams, workflows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from kern_events import Agent, MemoryModel, StoragePolicy, Team, ToolCallRequest, Workflow
from kern_events.runtime import ModelMessage, ModelResponse, ToolSpec, run_sync
from kern_events.testing._backend import Backend
from projections import SessionView


async def get_weather(city: str) -> dict[str, Any]:
    """The weather in a city."""
    return {"city": city, "temperature_c": 18}


def remember_city(city: str, session_state: dict[str, Any]) -> str:
    """Remember the user's city in the session state."""
    session_state["city"] = city
    session_state.pop("old", None)
    return f"remembered {city}"


async def test_the_quick_start_conversation_remembers_through_stored_history(backend: Backend) -> None:
    async with backend.db() as db:
        model = MemoryModel()
        first = Agent(model=model, db=db, session_id="conversation_123")
        assert (await first.arun("My name is Alice")).content == "Nice to meet you, Alice!"
        later = Agent(model=model, db=db, session_id="conversation_123", add_history_to_context=True)
        assert (await later.arun("What's my name?")).content == "Your name is Alice."
        forgetful = Agent(model=model, db=db, session_id="conversation_123")
        assert (await forgetful.arun("What's my name?")).content == "I don't know your name yet."
        other = await later.arun("What's my name?", session_id="session_456", user_id="alice@example.com")
        assert other.content == "I don't know your name yet."
        view = await db.get_session("conversation_123")
        assert [run.status for run in view.runs] == ["completed"] * 3
        assert (await db.get_session("session_456", user_id="alice@example.com")).user_id == "alice@example.com"


async def test_a_tool_call_is_recorded_with_its_result_and_the_answer_uses_it(backend: Backend) -> None:
    async with backend.db() as db:
        agent = Agent(model=MemoryModel(), db=db, session_id="s", tools=[get_weather], name="Weather bot")
        output = await agent.arun("What's the weather in Paris?")
        run = (await db.get_session("s")).runs[0]
    assert output.content == "The weather in Paris: {'city': 'Paris', 'temperature_c': 18}."
    assert [m.role for m in run.messages] == ["user", "assistant", "tool", "assistant"]
    call = run.tool_calls[0]
    assert (call.tool_name, call.arguments, call.result, call.status) == (
        "get_weather",
        {"city": "Paris"},
        {"city": "Paris", "temperature_c": 18},
        "completed",
    )
    assert run.agent_id == "weather-bot"
    assert run.metrics is not None and run.metrics.total_tokens > 0 and run.metrics.model_id == "memory-model-1"


async def test_session_state_persists_across_runs_and_tools_can_change_it(backend: Backend) -> None:
    class CityModel(MemoryModel):
        async def respond(self, messages: Sequence[ModelMessage], tools: Sequence[ToolSpec]) -> ModelResponse:
            if messages[-1].role == "user" and "Lyon" in str(messages[-1].content):
                call = ToolCallRequest(tool_call_id="c1", tool_name="remember_city", arguments={"city": "Lyon"})
                return ModelResponse(tool_calls=(call,))
            return await super().respond(messages, tools)

    async with backend.db() as db:
        agent = Agent(model=CityModel(), db=db, session_id="s", tools=[remember_city], session_state={"old": 1})
        output = await agent.arun("I live in Lyon")
        assert output.session_state == {"city": "Lyon"}
        assert await db.get_session_state("s") == {"city": "Lyon"}
        again = Agent(model=CityModel(), db=db, session_id="s", session_state={"ignored": True})
        assert (await again.arun("hello")).session_state == {"city": "Lyon"}, "the stored state wins"


async def test_a_failing_model_leaves_a_failed_run(backend: Backend) -> None:
    class BrokenModel(MemoryModel):
        async def respond(self, messages: Sequence[ModelMessage], tools: Sequence[ToolSpec]) -> ModelResponse:
            raise TimeoutError("the model did not answer")

    async with backend.db() as db:
        with pytest.raises(TimeoutError):
            await Agent(model=BrokenModel(), db=db, session_id="s").arun("hi")
        run = (await db.get_session("s")).runs[0]
    assert run.status == "failed"
    assert run.error == "TimeoutError: the model did not answer"


async def test_a_team_records_member_runs_as_child_runs(backend: Backend) -> None:
    async with backend.db() as db:
        members = [Agent(model=MemoryModel(), name="Researcher"), Agent(model=MemoryModel(), name="Writer")]
        team = Team(members=members, model=MemoryModel(), db=db, session_id="t", name="Crew", user_id="u")
        output = await team.arun("My name is Bob")
        view = await db.get_session("t", user_id="u")
        listed = await db.get_sessions(session_type="team")
    assert output.content == "Nice to meet you, Bob!"
    assert (view.session_type, view.team_id) == ("team", "crew")
    assert view.team_data is not None and view.team_data["members"] == ["researcher", "writer"]
    parent, *children = view.runs
    assert [child.parent_run_id for child in children] == [parent.run_id, parent.run_id]
    assert [child.agent_id for child in children] == ["researcher", "writer"]
    assert all(run.status == "completed" for run in view.runs)
    assert listed[0].run_count == 1, "member runs are not turns"


async def test_a_workflow_chains_steps_as_child_runs(backend: Backend) -> None:
    def shout(text: str) -> str:
        return text.upper()

    async def exclaim(text: str) -> str:
        return text + "!"

    async with backend.db() as db:
        flow = Workflow(steps=[Agent(model=MemoryModel(), name="Echo"), shout, exclaim], db=db, session_id="w")
        output = await flow.arun("hello there", user_id="u")
        view = await db.get_session("w")
    assert output.content == "YOU SAID: HELLO THERE!"
    assert (view.session_type, view.workflow_id) == ("workflow", "workflow")
    assert view.workflow_data == {"name": None, "steps": ["echo", "shout", "exclaim"]}
    assert len(view.runs) == 4
    assert {run.parent_run_id for run in view.runs[1:]} == {view.runs[0].run_id}


def test_print_response_works_from_sync_code(capsys: pytest.CaptureFixture[str], backend: Backend) -> None:
    db = backend.db()
    agent = Agent(model=MemoryModel(), db=db, add_history_to_context=True)
    agent.print_response("My name is Carol", session_id="session_456", user_id="carol@example.com")
    agent.print_response("What's my name?", session_id="session_456", user_id="carol@example.com")
    agent.run("bye", session_id="session_456")
    run_sync(db.aclose())
    assert capsys.readouterr().out == "Nice to meet you, Carol!\nYour name is Carol.\n"


async def test_print_response_works_inside_async_code_too(capsys: pytest.CaptureFixture[str], backend: Backend) -> None:
    async with backend.db() as db:
        agent = Agent(model=MemoryModel(), db=db, session_id="conversation_123")
        await agent.arun("My name is Alice")
        agent = Agent(model=MemoryModel(), db=db, session_id="conversation_123", add_history_to_context=True)
        agent.print_response("What's my name?")
        agent.print_response("Hello!", session_id="session_456", user_id="alice@example.com")
        assert (await agent.arun("What's my name?")).content == "Your name is Alice."
        assert len((await db.get_session("conversation_123")).runs) == 3
    assert capsys.readouterr().out == "Your name is Alice.\nYou said: Hello!\n"


async def test_a_summarizer_rewrites_the_summary_after_each_run(backend: Backend) -> None:
    async def summarize(view: SessionView) -> tuple[str, Sequence[str]]:
        return f"{len(view.runs)} runs", ("chat",)

    async with backend.db() as db:
        agent = Agent(model=MemoryModel(), db=db, session_id="s", summarizer=summarize)
        await agent.arun("hello")
        await agent.arun("again")
        summary = await db.get_session_summary("s")
    assert summary is not None
    assert (summary.summary, summary.topics) == ("2 runs", ("chat",))


async def test_a_db_wide_storage_policy_applies_to_its_runtimes(backend: Backend) -> None:
    async with backend.db(storage_policy=StoragePolicy(store_tool_calls=False)) as db:
        await Agent(model=MemoryModel(), db=db, session_id="s", tools=[get_weather]).arun("Weather in Oslo?")
        run = (await db.get_session("s")).runs[0]
    assert run.tool_calls == ()
    assert [m.role for m in run.messages] == ["user", "assistant"]
    assert run.messages[-1].content == "The weather in Oslo: {'city': 'Oslo', 'temperature_c': 18}."
