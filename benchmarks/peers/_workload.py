"""The agent workload every system persists the same way: one run = five items, identical content.

A run is a user message, an assistant message carrying one tool call, the tool's result, the final
assistant answer, and the run's usage metrics. Each system under test (ours and the peers' storage)
has an adapter module in this package exposing ``SYSTEM``, ``BACKENDS``, ``unavailable()`` and
``open_store(target, session_id)``, an async context manager yielding a :class:`PeerStore`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["AgentRun", "Backend", "OpenStore", "PeerStore", "Target", "agent_run", "agent_runs", "missing"]

Backend = Literal["sqlite", "postgres"]

_QUESTION = (
    "Compare the quarterly revenue of the three regions and tell me which one grew fastest; keep it short "
    "and mention the main driver."
)
_RESULT = (
    '{"north": {"q1": 1.20, "q2": 1.34}, "south": {"q1": 0.91, "q2": 0.97}, "west": {"q1": 2.05, "q2": 2.48}, '
    '"currency": "EUR bn", "source": "finance-dashboard"}'
)
_ANSWER = (
    "West grew fastest: revenue rose from 2.05 to 2.48 bn EUR (+21 %), driven by the new enterprise "
    "contracts. North followed with +12 %, South with +7 %."
)


@dataclass(frozen=True)
class AgentRun:
    """One run's content; every adapter stores exactly these values in its own types."""

    number: int
    run_id: str
    user: str
    tool_call_id: str
    tool_name: str
    tool_arguments: dict[str, Any] = field(hash=False)
    tool_result: str
    answer: str
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


def agent_run(number: int) -> AgentRun:
    """Run ``number`` (1-based) of the session: ~900 bytes of content, distinct per run."""
    return AgentRun(
        number=number,
        run_id=f"run-{number:06d}",
        user=f"[{number}] {_QUESTION}",
        tool_call_id=f"call-{number:06d}",
        tool_name="get_revenue",
        tool_arguments={"regions": ["north", "south", "west"], "quarters": ["q1", "q2"], "turn": number},
        tool_result=_RESULT,
        answer=f"[{number}] {_ANSWER}",
        input_tokens=410 + number % 7,
        output_tokens=62 + number % 5,
    )


def agent_runs(first: int, count: int) -> list[AgentRun]:
    """Runs ``first`` .. ``first + count - 1``."""
    return [agent_run(number) for number in range(first, first + count)]


@dataclass(frozen=True)
class Target:
    """Where a system stores its data for one case: a fresh SQLite file or a fresh PostgreSQL database.

    ``postgres_url`` is a plain ``postgresql://user@host:port/database`` URL of a database created
    for this case alone (dropped after); adapters rewrite it into their driver's form.
    """

    backend: Backend
    sqlite_path: Path | None = None
    postgres_url: str | None = None


class PeerStore(Protocol):
    """One session of one system, driven through that system's public storage API."""

    async def prefill(self, runs: Sequence[AgentRun]) -> None:
        """Make the session hold ``runs`` (the fastest way the public API allows; not timed)."""
        ...

    async def persist(self, run: AgentRun) -> None:
        """Persist one more run the way the framework does after a run finishes (timed)."""
        ...

    async def load(self) -> int:
        """Read what the framework reads before the next run (timed); return the messages it got."""
        ...


OpenStore = AbstractAsyncContextManager[PeerStore]


def missing(system: str, modules: Sequence[str]) -> str | None:
    """Why ``system`` cannot run (the first of ``modules`` that does not import), or ``None``."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            return f"{system} needs {module} ({exc}); pip install -e '.[bench]'"
    return None
