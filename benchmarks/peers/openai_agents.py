"""OpenAI Agents SDK on the peer workload, driving its session the way ``Runner.run`` drives it.

``load`` is ``session.get_items()`` with no limit: before a run the runner reads the whole history
(``SessionSettings.limit`` is ``None`` by default). ``persist`` is the runner's three ``add_items``
calls of one run: the user input before the first model call, then the function call with its output
after the tool turn, then the assistant message. SQLite is ``SQLiteSession``; PostgreSQL is
``SQLAlchemySession`` (``agents.extensions.memory``, asyncpg). Sessions hold no usage metrics.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from benchmarks.peers._workload import AgentRun, Backend, PeerStore, Target, missing

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory import Session

__all__ = ["BACKENDS", "SYSTEM", "open_store", "unavailable"]

SYSTEM = "openai-agents"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")


def unavailable() -> str | None:
    """``None`` when the SDK and its SQLAlchemy session (for PostgreSQL) import, else why not."""
    return missing("openai-agents", ("agents", "agents.extensions.memory", "asyncpg"))


def _writes(run: AgentRun) -> list[list[TResponseInputItem]]:
    """The run's items in the Responses input shapes the runner stores, batched as it writes them."""
    user: TResponseInputItem = {"content": run.user, "role": "user"}
    call: TResponseInputItem = {
        "arguments": json.dumps(run.tool_arguments),
        "call_id": run.tool_call_id,
        "name": run.tool_name,
        "type": "function_call",
        "id": f"fc_{run.run_id}",
        "status": "completed",
    }
    output: TResponseInputItem = {
        "call_id": run.tool_call_id,
        "output": run.tool_result,
        "type": "function_call_output",
    }
    answer: TResponseInputItem = {
        "id": f"msg_{run.run_id}",
        "content": [{"annotations": [], "text": run.answer, "type": "output_text"}],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    }
    return [[user], [call, output], [answer]]


class _AgentsStore:
    def __init__(self, session: Session) -> None:
        self._session = session

    async def prefill(self, runs: Sequence[AgentRun]) -> None:
        """Every run's items in one ``add_items`` (one transaction)."""
        await self._session.add_items([item for run in runs for batch in _writes(run) for item in batch])

    async def persist(self, run: AgentRun) -> None:
        """The runner's three ``add_items`` of one run (each its own transaction)."""
        for batch in _writes(run):
            await self._session.add_items(batch)

    async def load(self) -> int:
        """The whole history, as the runner reads it before the next run."""
        return len(await self._session.get_items())


@asynccontextmanager
async def open_store(target: Target, session_id: str) -> AsyncIterator[PeerStore]:
    """``SQLiteSession`` on the SQLite file, or ``SQLAlchemySession`` (asyncpg) on the PostgreSQL database."""
    if target.backend == "sqlite":
        from agents import SQLiteSession

        assert target.sqlite_path is not None
        sqlite_session = SQLiteSession(session_id, db_path=target.sqlite_path)
        try:
            yield _AgentsStore(sqlite_session)
        finally:
            sqlite_session.close()
        return

    from agents.extensions.memory import SQLAlchemySession
    from sqlalchemy.engine import make_url

    assert target.postgres_url is not None
    url = make_url(target.postgres_url).set(drivername="postgresql+asyncpg")
    pg_session = SQLAlchemySession.from_url(
        session_id, url=url.render_as_string(hide_password=False), create_tables=True
    )
    try:
        yield _AgentsStore(pg_session)
    finally:
        await pg_session.engine.dispose()
