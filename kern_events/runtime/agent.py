"""The reference Agent: one model, its tools, and a session whose history it can bring into context.

Each turn is one run in the session log: the user's message, each tool round (the assistant's tool
calls, their results), the answer, any session-state change, and the outcome with its metrics — one
atomic append per step. With ``add_history_to_context`` the model also sees the messages of the
last ``num_history_runs`` runs, read from the store: a later process continues the conversation.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kern_events.events import RunMetrics, SessionStateChanged
from kern_events.runtime._base import RunOutput, Runtime, state_change
from kern_events.runtime.model import Model, ModelMessage, ModelResponse
from kern_events.runtime.tools import Tool, ToolOutcome
from kern_events.sessions import Run, Session, StoragePolicy, Summarizer

if TYPE_CHECKING:
    from kern_events.db import BaseDb
    from projections.runs import MessageView

__all__ = ["Agent"]


class Agent(Runtime):
    """An agent: a model, instructions and tools, persisted turn by turn in ``db``."""

    def __init__(
        self,
        *,
        model: Model,
        db: BaseDb | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        name: str | None = None,
        instructions: str | None = None,
        tools: Sequence[Callable[..., Any]] = (),
        add_history_to_context: bool = False,
        num_history_runs: int = 3,
        num_history_messages: int | None = None,
        session_state: Mapping[str, Any] | None = None,
        storage_policy: StoragePolicy | None = None,
        summarizer: Summarizer | None = None,
        max_tool_rounds: int = 8,
    ) -> None:
        super().__init__(
            db=db, session_id=session_id, user_id=user_id, session_state=session_state, storage_policy=storage_policy
        )
        self.model = model
        self.name = name
        self.agent_id = agent_id or (name.lower().replace(" ", "-") if name else "agent")
        self.instructions = instructions
        self.tools = [Tool(function) for function in tools]
        self.add_history_to_context = add_history_to_context
        self.num_history_runs = num_history_runs
        self.num_history_messages = num_history_messages
        self.max_tool_rounds = max_tool_rounds
        self.summarizer = summarizer
        """Called after each top-level run to rewrite the session summary (``None``: on demand only)."""

    def agent_data(self) -> dict[str, Any]:
        """What the session records about this agent."""
        return {
            "name": self.name,
            "model": {"id": self.model.id, "provider": self.model.provider},
            "instructions": self.instructions,
            "tools": [tool.name for tool in self.tools],
        }

    async def arun(self, input: str, *, session_id: str | None = None, user_id: str | None = None) -> RunOutput:
        """Run one turn in the session (continued if it exists) and return the answer."""
        db = self._database()
        session = await db.open_session(
            self._session_id(session_id),
            session_type="agent",
            agent_id=self.agent_id,
            user_id=user_id or self.user_id,
            agent_data=self.agent_data(),
            session_state=self.session_state,
            policy=self.storage_policy,
        )
        history = await self.history(session)
        state = await db.get_session_state(session.session_id)
        output = await self.respond(session, input, history=history, state=state)
        if self.summarizer is not None:
            await session.summarize(self.summarizer)
        return output

    async def history(self, session: Session) -> list[MessageView]:
        """The earlier messages this agent brings into the model's context."""
        if not self.add_history_to_context:
            return []
        return await session.db.get_history(
            session.session_id,
            num_history_runs=self.num_history_runs,
            num_history_messages=self.num_history_messages,
        )

    async def respond(
        self,
        session: Session,
        input: str,
        *,
        history: Sequence[MessageView],
        state: dict[str, Any],
        parent_run_id: str | None = None,
    ) -> RunOutput:
        """Record one run of this agent in ``session`` (a child run if ``parent_run_id`` is given)."""
        started = time.perf_counter()
        run = await session.start_run(
            input=input,
            parent_run_id=parent_run_id,
            agent_id=self.agent_id,
            model_id=self.model.id,
            model_provider=self.model.provider,
        )
        run.message("user", input)
        await run.flush()
        messages = [ModelMessage(role="system", content=self.instructions)] if self.instructions else []
        messages += [
            ModelMessage(
                role=m.role, content=m.content, name=m.name, tool_call_id=m.tool_call_id, tool_calls=m.tool_calls
            )
            for m in history
        ]
        messages.append(ModelMessage(role="user", content=input))
        before = copy.deepcopy(state)
        used = [0, 0]
        try:
            response = await self._answer(run, messages, state, used)
            content = response.content or ""
            run.message("assistant", content)
            changed, removed = state_change(before, state)
            if changed or removed:
                run.stage(SessionStateChanged(set=changed, removed=removed))
            metrics = self._metrics(used, started)
            await run.complete(content, metrics=metrics)
        except Exception as exc:
            await run.fail(f"{type(exc).__name__}: {exc}", metrics=self._metrics(used, started))
            raise
        return RunOutput(
            run_id=run.run_id, session_id=session.session_id, content=content, metrics=metrics, session_state=state
        )

    async def _answer(
        self, run: Run, messages: list[ModelMessage], state: dict[str, Any], used: list[int]
    ) -> ModelResponse:
        """Ask the model, run the tools it calls (one step per round), until it answers."""
        tools = {tool.name: tool for tool in self.tools}
        specs = [tool.spec for tool in self.tools]
        for _ in range(self.max_tool_rounds + 1):
            response = await self.model.respond(messages, specs)
            used[0] += response.input_tokens
            used[1] += response.output_tokens
            if not response.tool_calls:
                return response
            async with run.step():
                run.message("assistant", response.content, tool_calls=response.tool_calls)
                messages.append(
                    ModelMessage(role="assistant", content=response.content, tool_calls=response.tool_calls)
                )
                for call in response.tool_calls:
                    tool = tools.get(call.tool_name)
                    if tool is None:
                        outcome = ToolOutcome(None, f"there is no tool named {call.tool_name!r}", 0.0)
                    else:
                        outcome = await tool.call(call.arguments, state)
                    run.tool_call(
                        call.tool_call_id,
                        call.tool_name,
                        call.arguments,
                        result=outcome.result,
                        error=outcome.error,
                        duration=outcome.duration,
                    )
                    shown = outcome.error if outcome.error is not None else outcome.result
                    run.message("tool", shown, name=call.tool_name, tool_call_id=call.tool_call_id)
                    messages.append(
                        ModelMessage(role="tool", content=shown, name=call.tool_name, tool_call_id=call.tool_call_id)
                    )
        raise RuntimeError(f"the model kept calling tools after {self.max_tool_rounds} rounds")

    def _metrics(self, used: list[int], started: float) -> RunMetrics:
        return RunMetrics(
            input_tokens=used[0],
            output_tokens=used[1],
            total_tokens=used[0] + used[1],
            duration=time.perf_counter() - started,
            model_id=self.model.id,
            model_provider=self.model.provider,
        )
