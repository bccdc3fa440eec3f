"""One process, one turn: ADK's ``Runner`` with a scripted model on ``KernEventsSessionService``.

``python -m tests.adapters.adk._runner_process DB_FILE TEXT [sync]`` runs one turn of the session ``trip``
(created if it is not there) and prints the answer, the session's event count and its state. The
scripted model calls the ``remember`` tool with the user's text, then answers with every name it
finds in the conversation it was handed, so a second process shows what the first one stored.
With ``sync`` the turn is ``Runner.run``, ADK's synchronous entry point, which drives the service
from an event loop of its own in another thread.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncGenerator
from typing import Any

from google.adk.agents import LlmAgent
from google.adk.models.base_llm import BaseLlm
from google.adk.models.llm_request import LlmRequest
from google.adk.models.llm_response import LlmResponse
from google.adk.runners import Runner
from google.adk.tools.tool_context import ToolContext
from google.genai import types

from kern_events import SqliteDb, run_blocking
from kern_events.adapters.adk import KernEventsSessionService


class ScriptedModel(BaseLlm):
    """Calls ``remember`` for a new user message; after the tool's answer, lists what it remembers."""

    model: str = "scripted"

    async def generate_content_async(
        self, llm_request: LlmRequest, stream: bool = False
    ) -> AsyncGenerator[LlmResponse, None]:
        last = llm_request.contents[-1]
        if last.role == "user" and last.parts and last.parts[0].text:
            call = types.FunctionCall(name="remember", args={"name": last.parts[0].text})
            yield LlmResponse(content=types.Content(role="model", parts=[types.Part(function_call=call)]))
            return
        names = [
            part.function_response.response["remembered"]
            for content in llm_request.contents
            for part in content.parts or []
            if part.function_response is not None and part.function_response.response
        ]
        yield LlmResponse(content=types.Content(role="model", parts=[types.Part(text="I know " + ", ".join(names))]))


def remember(name: str, tool_context: ToolContext) -> dict[str, Any]:
    """Remember a name (also as user state, shared by the user's sessions)."""
    tool_context.state["user:names"] = [*tool_context.state.get("user:names", []), name]
    return {"remembered": name}


async def main(db_file: str, text: str) -> None:
    agent = LlmAgent(name="helper", model=ScriptedModel(), tools=[remember], output_key="last_answer")
    async with SqliteDb(db_file=db_file) as db:
        session_service = KernEventsSessionService(db)
        if await session_service.get_session(app_name="trips", user_id="alice", session_id="trip") is None:
            await session_service.create_session(app_name="trips", user_id="alice", session_id="trip")
        runner = Runner(agent=agent, app_name="trips", session_service=session_service)
        answer = ""
        message = types.Content(role="user", parts=[types.Part(text=text)])
        async for event in runner.run_async(user_id="alice", session_id="trip", new_message=message):
            if event.content and event.content.parts and event.content.parts[0].text:
                answer = event.content.parts[0].text
        await runner.close()
        session = await session_service.get_session(app_name="trips", user_id="alice", session_id="trip")
        assert session is not None
        print(json.dumps({"answer": answer, "events": len(session.events), "state": session.state}))


def main_sync(db_file: str, text: str) -> None:
    """The same turn through ``Runner.run``; the db is opened on this thread and used from ADK's."""
    agent = LlmAgent(name="helper", model=ScriptedModel(), tools=[remember], output_key="last_answer")
    db = SqliteDb(db_file=db_file)
    session_service = KernEventsSessionService(db)
    get = session_service.get_session
    if run_blocking(lambda: get(app_name="trips", user_id="alice", session_id="trip")) is None:
        run_blocking(lambda: session_service.create_session(app_name="trips", user_id="alice", session_id="trip"))
    runner = Runner(agent=agent, app_name="trips", session_service=session_service)
    answer = ""
    message = types.Content(role="user", parts=[types.Part(text=text)])
    for event in runner.run(user_id="alice", session_id="trip", new_message=message):
        if event.content and event.content.parts and event.content.parts[0].text:
            answer = event.content.parts[0].text
    session = run_blocking(lambda: get(app_name="trips", user_id="alice", session_id="trip"))
    assert session is not None
    run_blocking(db.aclose)
    print(json.dumps({"answer": answer, "events": len(session.events), "state": session.state}))


if __name__ == "__main__":
    if sys.argv[3:] == ["sync"]:
        main_sync(sys.argv[1], sys.argv[2])
    else:
        asyncio.run(main(sys.argv[1], sys.argv[2]))
