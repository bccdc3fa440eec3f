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

from kern_events.errors import RunNotFoundError, RunStateError
from kern_events.events import (
    ExternalExecution,
    InputField,
    Requirement,
    RunMetrics,
    ToolCallRequest,
    ToolConfirmation,
    UserInput,
)
from kern_events.runtime._base import RunOutput, Runtime, run_sync, stage_state_change
from kern_events.runtime.model import Model, ModelMessage, ModelResponse, context_messages
from kern_events.runtime.tools import Tool, ToolOutcome
from kern_events.sessions import Run, Session, StoragePolicy, Summarizer
from projections.history import history_messages

if TYPE_CHECKING:
    from kern_events.db import BaseDb
    from projections.runs import MessageView, RequirementView

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
        requires_confirmation: Sequence[str] = (),
        external_execution: Sequence[str] = (),
        user_input: Mapping[str, Sequence[str]] | None = None,
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
        self.requires_confirmation = frozenset(requires_confirmation)
        """Tools whose calls pause the run until a person confirms or rejects them."""
        self.external_execution = frozenset(external_execution)
        """Tools executed outside this process: the run pauses until their result is handed back."""
        self.user_input = {name: tuple(fields) for name, fields in (user_input or {}).items()}
        """Tools whose named arguments the user fills in: the run pauses until the values are given."""
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
        if self.add_history_to_context:  # the window and the state in one round trip
            history, state = await db.get_context(
                session.session_id,
                num_history_runs=self.num_history_runs,
                num_history_messages=self.num_history_messages,
            )
        else:
            history, state = [], await db.get_session_state(session.session_id)
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
        messages = [*context_messages(self.instructions, history), ModelMessage(role="user", content=input)]
        return await self._drive(session, run, messages, state, started)

    async def acontinue_run(
        self, run_id: str, *, session_id: str | None = None, user_id: str | None = None, recover: bool = False
    ) -> RunOutput:
        """Carry a paused run on once its requirements are resolved, in this process or any other.

        The session is loaded from its last checkpoint plus the events after it; confirmed tool
        calls run, rejected ones are reported to the model as rejected, external results are used
        as given, and the model goes on from there. With ``recover=True`` it also takes over a run
        that was resumed by a process that died before finishing it (the caller vouches that the
        process is gone: a tool call whose result was never recorded runs again).
        """
        db = self._database()
        session = await db.open_session(
            self._session_id(session_id), user_id=user_id or self.user_id, policy=self.storage_policy
        )
        try:
            run = await session.continue_run(run_id)
        except RunStateError as error:
            if not recover or error.status != "running":
                raise
            run = Run(session, run_id)  # resumed earlier; its process died part way
        started = time.perf_counter()
        view = await db.get_session(session.session_id)
        paused = view.get_run(run_id)
        if paused is None:  # pragma: no cover - continue_run checked it
            raise RunNotFoundError(session.session_id, run_id)
        history = (
            history_messages(
                view.runs,
                num_history_runs=self.num_history_runs,
                num_history_messages=self.num_history_messages,
                exclude_run_id=run_id,
            )
            if self.add_history_to_context
            else []
        )
        messages = context_messages(self.instructions, [*history, *paused.messages])
        answered = {m.tool_call_id for m in paused.messages if m.role == "tool"}
        calls = next((m.tool_calls for m in reversed(paused.messages) if m.tool_calls), ())
        pending = [call for call in calls if call.tool_call_id not in answered]
        resolutions = {item.requirement_id: item for item in paused.requirements}
        return await self._drive(
            session, run, messages, view.session_state, started, pending=pending, resolutions=resolutions
        )

    def continue_run(self, run_id: str, *, session_id: str | None = None, user_id: str | None = None) -> RunOutput:
        """:meth:`acontinue_run` for synchronous code."""
        return run_sync(self.acontinue_run(run_id, session_id=session_id, user_id=user_id))

    async def _drive(
        self,
        session: Session,
        run: Run,
        messages: list[ModelMessage],
        state: dict[str, Any],
        started: float,
        *,
        pending: Sequence[ToolCallRequest] = (),
        resolutions: Mapping[str, RequirementView] | None = None,
    ) -> RunOutput:
        """Run the model loop to an answer (or a pause), recording every step, and end the run."""
        before = copy.deepcopy(state)
        used = [0, 0]
        try:
            if pending:
                async with run.step():
                    await self._call_tools(run, messages, pending, state, resolutions or {})
            answer = await self._answer(run, messages, state, used)
            if not isinstance(answer, ModelResponse):
                await run.pause(answer)
                return RunOutput(
                    run_id=run.run_id,
                    session_id=session.session_id,
                    content="",
                    metrics=self._metrics(used, started),
                    session_state=state,
                    status="paused",
                    requirements=tuple(answer),
                )
            content = answer.content or ""
            run.message("assistant", content)
            stage_state_change(run, before, state)
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
    ) -> ModelResponse | list[Requirement]:
        """Ask the model, run the tools it calls (one step per round), until it answers; or stop with
        the requirements of a round that calls tools needing a person or an outside executor."""
        specs = [tool.spec for tool in self.tools]
        for _ in range(self.max_tool_rounds + 1):
            response = await self.model.respond(messages, specs)
            used[0] += response.input_tokens
            used[1] += response.output_tokens
            if not response.tool_calls:
                return response
            asked = ModelMessage(role="assistant", content=response.content, tool_calls=response.tool_calls)
            requirements = self._requirements(response.tool_calls)
            if requirements:
                run.message("assistant", response.content, tool_calls=response.tool_calls)  # appended with the pause
                messages.append(asked)
                return requirements
            async with run.step():
                run.message("assistant", response.content, tool_calls=response.tool_calls)
                messages.append(asked)
                await self._call_tools(run, messages, response.tool_calls, state, {})
        raise RuntimeError(f"the model kept calling tools after {self.max_tool_rounds} rounds")

    def _requirements(self, calls: Sequence[ToolCallRequest]) -> list[Requirement]:
        """What a round of tool calls must wait for: a confirmation, or an outside result, per call."""
        requirements: list[Requirement] = []
        for call in calls:
            kind: type[ToolConfirmation] | type[ExternalExecution] | None = None
            if call.tool_name in self.requires_confirmation:
                kind = ToolConfirmation
            elif call.tool_name in self.external_execution:
                kind = ExternalExecution
            if kind is not None:
                requirements.append(
                    kind(
                        requirement_id=call.tool_call_id,
                        tool_call_id=call.tool_call_id,
                        tool_name=call.tool_name,
                        arguments=call.arguments,
                    )
                )
            elif call.tool_name in self.user_input:
                fields = tuple(InputField(name=name) for name in self.user_input[call.tool_name])
                prompt = f"{call.tool_name} needs: {', '.join(field.name for field in fields)}"
                requirements.append(UserInput(requirement_id=call.tool_call_id, fields=fields, prompt=prompt))
        return requirements

    async def _call_tools(
        self,
        run: Run,
        messages: list[ModelMessage],
        calls: Sequence[ToolCallRequest],
        state: dict[str, Any],
        resolutions: Mapping[str, RequirementView],
    ) -> None:
        """Run (or take the outside result of) each call, staging its record and result message."""
        tools = {tool.name: tool for tool in self.tools}
        for call in calls:
            resolution = resolutions.get(call.tool_call_id)
            tool = tools.get(call.tool_name)
            if resolution is not None and isinstance(resolution.requirement, ExternalExecution):
                outcome = ToolOutcome(resolution.result, None, 0.0)
            elif resolution is not None and resolution.confirmed is False:
                reason = f": {resolution.note}" if resolution.note else ""
                outcome = ToolOutcome(None, f"the user rejected this call{reason}", 0.0)
            elif tool is None:
                outcome = ToolOutcome(None, f"there is no tool named {call.tool_name!r}", 0.0)
            elif resolution is not None and isinstance(resolution.requirement, UserInput):
                outcome = await tool.call({**call.arguments, **(resolution.values or {})}, state)
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

    def _metrics(self, used: list[int], started: float) -> RunMetrics:
        return RunMetrics(
            input_tokens=used[0],
            output_tokens=used[1],
            total_tokens=used[0] + used[1],
            duration=time.perf_counter() - started,
            model_id=self.model.id,
            model_provider=self.model.provider,
        )
