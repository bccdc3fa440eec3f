"""The reference Team: member agents answer in turn, as child runs of the team's run, and the team's
model composes the final answer from what they said. The session is a team session (``team_id``,
``team_data``); each member run records the member's ``agent_id`` and its parent run."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kern_events.events import RunMetrics
from kern_events.runtime._base import RunOutput, Runtime, stage_state_change
from kern_events.runtime.agent import Agent
from kern_events.runtime.model import Model, ModelMessage, context_messages
from kern_events.sessions import StoragePolicy

if TYPE_CHECKING:
    from kern_events.db import BaseDb

__all__ = ["Team"]


class Team(Runtime):
    """Member agents and a model that answers for the team."""

    def __init__(
        self,
        *,
        members: Sequence[Agent],
        model: Model,
        db: BaseDb | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
        name: str | None = None,
        instructions: str | None = None,
        add_history_to_context: bool = False,
        num_history_runs: int = 3,
        session_state: Mapping[str, Any] | None = None,
        storage_policy: StoragePolicy | None = None,
    ) -> None:
        super().__init__(
            db=db, session_id=session_id, user_id=user_id, session_state=session_state, storage_policy=storage_policy
        )
        if not members:
            raise ValueError("a team needs at least one member")
        self.members = list(members)
        self.model = model
        self.name = name
        self.team_id = team_id or (name.lower().replace(" ", "-") if name else "team")
        self.instructions = instructions
        self.add_history_to_context = add_history_to_context
        self.num_history_runs = num_history_runs

    def team_data(self) -> dict[str, Any]:
        """What the session records about this team."""
        return {
            "name": self.name,
            "model": {"id": self.model.id, "provider": self.model.provider},
            "members": [member.agent_id for member in self.members],
        }

    async def arun(self, input: str, *, session_id: str | None = None, user_id: str | None = None) -> RunOutput:
        """Run one team turn: each member as a child run, then the team's answer."""
        db = self._database()
        session = await db.open_session(
            self._session_id(session_id),
            session_type="team",
            team_id=self.team_id,
            user_id=user_id or self.user_id,
            team_data=self.team_data(),
            session_state=self.session_state,
            policy=self.storage_policy,
        )
        if self.add_history_to_context:  # the window and the state in one round trip
            history, state = await db.get_context(session.session_id, num_history_runs=self.num_history_runs)
        else:
            history, state = [], await db.get_session_state(session.session_id)
        before = copy.deepcopy(state)
        started = time.perf_counter()
        run = await session.start_run(
            input=input, team_id=self.team_id, model_id=self.model.id, model_provider=self.model.provider
        )
        run.message("user", input)
        await run.flush()
        try:
            answers = [
                (member, await member.respond(session, input, history=history, state=state, parent_run_id=run.run_id))
                for member in self.members
            ]
            messages = context_messages(self.instructions, history)
            messages.append(ModelMessage(role="user", content=input))
            messages += [
                ModelMessage(role="assistant", name=member.agent_id, content=output.content)
                for member, output in answers
            ]
            response = await self.model.respond(messages, [])
            content = response.content or ""
            run.message("assistant", content)
            stage_state_change(run, before, state)
            used = [response.input_tokens, response.output_tokens]
            for _, output in answers:
                used[0] += output.metrics.input_tokens
                used[1] += output.metrics.output_tokens
            metrics = RunMetrics(
                input_tokens=used[0],
                output_tokens=used[1],
                total_tokens=sum(used),
                duration=time.perf_counter() - started,
                model_id=self.model.id,
                model_provider=self.model.provider,
            )
            await run.complete(content, metrics=metrics)
        except Exception as exc:
            await run.fail(f"{type(exc).__name__}: {exc}")
            raise
        return RunOutput(
            run_id=run.run_id, session_id=session.session_id, content=content, metrics=metrics, session_state=state
        )
