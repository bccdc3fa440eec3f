"""Agno on the peer workload, through the async storage ``Agent.arun`` uses: ``AsyncSqliteDb`` / ``AsyncPostgresDb``.

``persist`` is the store step of ``acleanup_and_store`` / ``apersist_run_in_session``: ``AgentSession.upsert_run`` of
the finished ``RunOutput``, its metrics added to ``session_metrics``, ``db.upsert_session`` (session row),
``db.upsert_run`` (run row, with its ``run_index``), ``db.update_approval_run_status``. ``load`` is what ``_arun``
reads first, via ``aread_or_create_session``: ``db.get_session(session_id, SessionType.AGENT, user_id)``, no
``runs_limit``, so the session row plus every run row; the model's history comes from ``AgentSession.get_messages``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from time import time
from typing import TYPE_CHECKING, Any

from benchmarks.peers._workload import AgentRun, Backend, PeerStore, Target, missing

if TYPE_CHECKING:
    from agno.db.postgres import AsyncPostgresDb
    from agno.db.sqlite import AsyncSqliteDb
    from agno.run.agent import RunOutput
    from agno.session import AgentSession

__all__ = ["BACKENDS", "SYSTEM", "open_store", "unavailable"]

SYSTEM = "agno"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")
USER_ID = "bench-user"
AGENT_ID = "bench-agent"
AGENT_NAME = "bench_agent"
MODEL_ID = "bench-model"
MODEL_PROVIDER = "bench"


def unavailable() -> str | None:
    """``None`` when Agno's async SQLite/PostgreSQL storage and the drivers behind its URLs import."""
    return missing("agno", ("agno.db.postgres", "agno.db.sqlite", "greenlet", "aiosqlite", "psycopg"))


def _run_output(run: AgentRun, session_id: str) -> RunOutput:
    """The completed ``RunOutput`` an Agent with one tool stores for the run (shape checked against a real ``arun``)."""
    import json

    from agno.metrics import MessageMetrics, ModelMetrics, RunMetrics
    from agno.models.message import Message
    from agno.models.response import ToolExecution
    from agno.run.agent import RunInput, RunOutput
    from agno.run.base import RunStatus

    call = {
        "id": run.tool_call_id,
        "type": "function",
        "function": {"name": run.tool_name, "arguments": json.dumps(run.tool_arguments)},
    }
    usage = {"input_tokens": run.input_tokens, "output_tokens": run.output_tokens, "total_tokens": run.total_tokens}
    messages = [
        Message(role="user", content=run.user),
        Message(role="assistant", tool_calls=[call]),
        Message(
            role="tool",
            content=run.tool_result,
            tool_call_id=run.tool_call_id,
            tool_name=run.tool_name,
            tool_args=run.tool_arguments,
            tool_call_error=False,
        ),
        Message(role="assistant", content=run.answer, metrics=MessageMetrics(**usage)),
    ]
    tool = ToolExecution(
        tool_call_id=run.tool_call_id,
        tool_name=run.tool_name,
        tool_args=run.tool_arguments,
        tool_call_error=False,
        result=run.tool_result,
    )
    metrics = RunMetrics(**usage, details={"model": [ModelMetrics(id=MODEL_ID, provider=MODEL_PROVIDER, **usage)]})
    return RunOutput(
        run_id=run.run_id,
        agent_id=AGENT_ID,
        agent_name=AGENT_NAME,
        session_id=session_id,
        user_id=USER_ID,
        input=RunInput(input_content=run.user),
        content=run.answer,
        model=MODEL_ID,
        model_provider=MODEL_PROVIDER,
        messages=messages,
        metrics=metrics,
        tools=[tool],
        session_state={},
        status=RunStatus.completed,
    )


def _new_session(session_id: str) -> AgentSession:
    """The ``AgentSession`` ``aread_or_create_session`` creates when the store has none."""
    from agno.session import AgentSession

    agent_data: dict[str, Any] = {
        "name": AGENT_NAME,
        "agent_id": AGENT_ID,
        "model": {"provider": MODEL_PROVIDER, "id": MODEL_ID, "name": MODEL_ID},
    }
    return AgentSession(
        session_id=session_id,
        agent_id=AGENT_ID,
        user_id=USER_ID,
        agent_data=agent_data,
        session_data={"session_state": {}},
        created_at=int(time()),
    )


def _add_run(session: AgentSession, run_output: RunOutput) -> int:
    """``apersist_run_in_session``'s in-memory part: append the run, accumulate session metrics; the run's index."""
    from agno.metrics import RunMetrics, SessionMetrics

    session.upsert_run(run_output)
    runs = session.runs or []
    # resolve_run_index: the position of the run in session.runs, found by run_id.
    run_index = next(index for index, stored in enumerate(runs) if stored.run_id == run_output.run_id)
    # update_session_metrics
    data = session.session_data if session.session_data is not None else {}
    stored_metrics = data.get("session_metrics")
    metrics = SessionMetrics.from_dict(stored_metrics) if isinstance(stored_metrics, dict) else SessionMetrics()
    metrics.accumulate_from_run(run_output.metrics or RunMetrics())
    data["session_metrics"] = metrics.to_dict()
    session.session_data = data
    return run_index


class _AgnoStore:
    def __init__(self, db: AsyncSqliteDb | AsyncPostgresDb, session_id: str) -> None:
        self._db = db
        self._session_id = session_id
        self._session: AgentSession | None = None

    async def prefill(self, runs: Sequence[AgentRun]) -> None:
        """One ``upsert_session`` of the session holding every run, then ``upsert_run`` per run (no bulk run API).

        Ends with one ``load`` so the adapter's run-object cache holds the N runs, as in a process that ran them.
        """
        from agno.metrics import RunMetrics, SessionMetrics

        session = _new_session(self._session_id)
        outputs = [self._run_output(run) for run in runs]
        session.runs = list(outputs)
        metrics = SessionMetrics()
        for run_output in outputs:
            metrics.accumulate_from_run(run_output.metrics or RunMetrics())
        session.session_data = {"session_state": {}, "session_metrics": metrics.to_dict()}
        await self._db.upsert_session(session)
        for run_index, run_output in enumerate(outputs):
            await self._db.upsert_run(run_output, session_id=self._session_id, user_id=USER_ID, run_index=run_index)
        await self.load()

    async def persist(self, run: AgentRun) -> None:
        """The run added to the session the last ``load`` returned, then the session row, run row, approval check."""
        session = self._session if self._session is not None else _new_session(self._session_id)
        self._session = session
        run_output = self._run_output(run)
        run_index = _add_run(session, run_output)
        await self._db.upsert_session(session)
        await self._db.upsert_run(run_output, session_id=self._session_id, user_id=USER_ID, run_index=run_index)
        # acleanup_and_store ends with aupdate_approval_run_status: with no approvals table (an Agent without
        # approval tools) that is one table-existence query, re-run every time since only found tables are cached.
        await self._db.update_approval_run_status(run_output.run_id or run.run_id, run_output.status)

    async def load(self) -> int:
        """``get_session`` (session row and all run rows), then every history message of the session."""
        from agno.db.base import SessionType
        from agno.session import AgentSession

        session = await self._db.get_session(
            session_id=self._session_id, session_type=SessionType.AGENT, user_id=USER_ID
        )
        if session is None:
            # aread_or_create_session starts a new session when none is stored.
            self._session = _new_session(self._session_id)
            return 0
        if not isinstance(session, AgentSession):
            raise TypeError(f"agno returned {type(session).__name__} for agent session {self._session_id!r}")
        self._session = session
        return len(session.get_messages())

    def _run_output(self, run: AgentRun) -> RunOutput:
        return _run_output(run, self._session_id)


def _postgres_url(target: Target) -> str:
    """The target as the psycopg 3 async URL ``AsyncPostgresDb`` takes (``postgresql+psycopg_async://``)."""
    if target.postgres_url is None:
        raise ValueError("a PostgreSQL target needs postgres_url")
    scheme, _, rest = target.postgres_url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {target.postgres_url!r}")
    return f"postgresql+psycopg_async://{rest}"


@asynccontextmanager
async def open_store(target: Target, session_id: str) -> AsyncIterator[PeerStore]:
    """``AsyncSqliteDb`` / ``AsyncPostgresDb`` on the target (default tables and engine options); disposed on exit."""
    from agno.db.postgres import AsyncPostgresDb
    from agno.db.sqlite import AsyncSqliteDb

    db: AsyncSqliteDb | AsyncPostgresDb
    if target.backend == "sqlite":
        if target.sqlite_path is None:
            raise ValueError("a SQLite target needs sqlite_path")
        db = AsyncSqliteDb(db_file=str(target.sqlite_path))
    else:
        db = AsyncPostgresDb(db_url=_postgres_url(target))
    try:
        yield _AgnoStore(db, session_id)
    finally:
        await db.close()
