"""The reference Workflow: steps run in order, each given the previous step's output. An agent step is
a child run of the workflow's run; a function step is a child run with its input and output as
messages. The session is a workflow session (``workflow_id``, ``workflow_data``)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kern_events.events import RunMetrics
from kern_events.runtime._base import RunOutput, Runtime
from kern_events.runtime.agent import Agent
from kern_events.sessions import StoragePolicy

if TYPE_CHECKING:
    from kern_events.db import BaseDb

__all__ = ["Step", "Workflow"]

Step = Agent | Callable[[str], Awaitable[str] | str]
"""An agent, or a function from the previous output to the next (sync or async)."""


class Workflow(Runtime):
    """Steps in order; the last step's output is the workflow's answer."""

    def __init__(
        self,
        *,
        steps: Sequence[Step],
        db: BaseDb | None = None,
        session_id: str | None = None,
        user_id: str | None = None,
        workflow_id: str | None = None,
        name: str | None = None,
        session_state: Mapping[str, Any] | None = None,
        storage_policy: StoragePolicy | None = None,
    ) -> None:
        super().__init__(
            db=db, session_id=session_id, user_id=user_id, session_state=session_state, storage_policy=storage_policy
        )
        if not steps:
            raise ValueError("a workflow needs at least one step")
        self.steps = list(steps)
        self.name = name
        self.workflow_id = workflow_id or (name.lower().replace(" ", "-") if name else "workflow")

    def workflow_data(self) -> dict[str, Any]:
        """What the session records about this workflow."""
        return {"name": self.name, "steps": [_step_name(step) for step in self.steps]}

    async def arun(self, input: str, *, session_id: str | None = None, user_id: str | None = None) -> RunOutput:
        """Run the steps once, as child runs of one workflow run."""
        db = self._database()
        session = await db.open_session(
            self._session_id(session_id),
            session_type="workflow",
            workflow_id=self.workflow_id,
            user_id=user_id or self.user_id,
            workflow_data=self.workflow_data(),
            session_state=self.session_state,
            policy=self.storage_policy,
        )
        state = await db.get_session_state(session.session_id)
        started = time.perf_counter()
        run = await session.start_run(input=input, workflow_id=self.workflow_id)
        run.message("user", input)
        await run.flush()
        value = input
        tokens = [0, 0]
        try:
            for step in self.steps:
                if isinstance(step, Agent):
                    output = await step.respond(session, value, history=[], state=state, parent_run_id=run.run_id)
                    value = output.content
                    tokens[0] += output.metrics.input_tokens
                    tokens[1] += output.metrics.output_tokens
                    continue
                child = await session.start_run(input=value, parent_run_id=run.run_id, workflow_id=self.workflow_id)
                child.message("user", value)
                await child.flush()
                result = step(value)
                value = str(await result if inspect.isawaitable(result) else result)
                child.message("assistant", value, name=_step_name(step))
                await child.complete(value)
            run.message("assistant", value)
            metrics = RunMetrics(
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                total_tokens=sum(tokens),
                duration=time.perf_counter() - started,
            )
            await run.complete(value, metrics=metrics)
        except Exception as exc:
            await run.fail(f"{type(exc).__name__}: {exc}")
            raise
        return RunOutput(
            run_id=run.run_id, session_id=session.session_id, content=value, metrics=metrics, session_state=state
        )


def _step_name(step: Step) -> str:
    return step.agent_id if isinstance(step, Agent) else getattr(step, "__name__", type(step).__name__)
