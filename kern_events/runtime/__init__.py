"""The small reference runtime: Agent, Team and Workflow over the session API, and the Model protocol.

It exists to show (and test) how an agent runtime uses kern-events: one run per turn, one append per
step, history from the store, state that persists. ``MemoryModel`` is deterministic, for tests and
demos.
"""

from kern_events.runtime._base import RunOutput, run_sync
from kern_events.runtime.agent import Agent
from kern_events.runtime.model import MemoryModel, Model, ModelMessage, ModelResponse, ToolSpec
from kern_events.runtime.team import Team
from kern_events.runtime.workflow import Step, Workflow

__all__ = [
    "Agent",
    "MemoryModel",
    "Model",
    "ModelMessage",
    "ModelResponse",
    "RunOutput",
    "Step",
    "Team",
    "ToolSpec",
    "Workflow",
    "run_sync",
]
