"""kern-events on the peer workload, recorded the way its reference ``Agent`` records a run.

``persist`` is the Agent's three appends: ``RunStarted`` with the user message, then one step with
the assistant's tool call, the tool call's events and the tool message, then the answer with
``RunCompleted`` and its metrics (``Session.start_run`` / ``Run.flush`` / ``Run.step`` /
``Run.complete``; a checkpoint every 1,000 events, as the Session API writes it). ``load`` is what the
Agent reads before the next run: ``db.get_context(num_history_runs=3)``, the history window (a tail
read) and the session state (its checkpoint and the events after it) in one round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from benchmarks.peers._workload import AgentRun, Backend, PeerStore, Target
from kern_events import PostgresDb, RunMetrics, SqliteDb, ToolCallRequest
from kern_events.db import BaseDb
from kern_events.sessions import Session

__all__ = ["BACKENDS", "SYSTEM", "kern_db", "open_store", "unavailable"]

SYSTEM = "kern-events"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")
HISTORY_RUNS = 3
"""Runs of history the next run's context holds (the peers load the whole session)."""


def unavailable() -> str | None:
    """Always available: it is this package."""
    return None


def _checkpoint_wal(path: object) -> None:
    """Move the prefill's log into the database file, so the first timed commits do not pay for it
    (the other db's writer keeps the WAL open, so closing the prefill's db does not)."""
    with contextlib.closing(sqlite3.connect(str(path))) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _open_session(db: BaseDb, session_id: str) -> Session:
    return await Session.open(db, session_id, agent_id="bench-agent", user_id="bench-user")


async def _persist(session: Session, run: AgentRun) -> None:
    """The Agent's three appends of one run."""
    recorded = await session.start_run(run.run_id, input=run.user, model_id="bench-model")
    recorded.message("user", run.user)
    await recorded.flush()
    async with recorded.step():
        call = ToolCallRequest(tool_call_id=run.tool_call_id, tool_name=run.tool_name, arguments=run.tool_arguments)
        recorded.message("assistant", None, tool_calls=[call])
        recorded.tool_call(run.tool_call_id, run.tool_name, run.tool_arguments, result=run.tool_result, duration=0.01)
        recorded.message("tool", run.tool_result, name=run.tool_name, tool_call_id=run.tool_call_id)
    recorded.message("assistant", run.answer)
    metrics = RunMetrics(input_tokens=run.input_tokens, output_tokens=run.output_tokens, total_tokens=run.total_tokens)
    await recorded.complete(run.answer, metrics=metrics)


class _KernStore:
    def __init__(self, db: BaseDb, session: Session, target: Target) -> None:
        self._db = db
        self._session = session
        self._target = target

    async def prefill(self, runs: Sequence[AgentRun]) -> None:
        """Each run as the Agent records it (the Session API writes its checkpoints on the way).

        On SQLite the runs go through a second ``SqliteDb`` on the same file at ``synchronous=NORMAL``:
        the same rows without an fsync per append (~3 ms each here, ~10 ms while others write: 10 s
        for 1,000 runs). The prefill is not timed; the timed turns run on the ``FULL`` db, which
        reopens the session after it.
        """
        if self._target.backend != "sqlite":
            for run in runs:
                await _persist(self._session, run)
            return
        session_id = self._session.session_id
        path = self._target.sqlite_path
        async with SqliteDb(db_file=path, synchronous="NORMAL") as fast:
            session = await _open_session(fast, session_id)
            for run in runs:
                await _persist(session, run)
        await asyncio.to_thread(_checkpoint_wal, path)
        self._session = await _open_session(self._db, session_id)

    async def persist(self, run: AgentRun) -> None:
        """The Agent's three appends of one run."""
        await _persist(self._session, run)

    async def load(self) -> int:
        """The next run's context: the last runs' messages and the session state."""
        history, _ = await self._db.get_context(self._session.session_id, num_history_runs=HISTORY_RUNS)
        return len(history)

    async def view(self) -> int:
        """The whole session view (``db.get_session``: every run, from its checkpoint and the events
        after it), what the peers' ``load`` returns; the runs it holds."""
        return len((await self._db.get_session(self._session.session_id)).runs)


def kern_db(target: Target) -> BaseDb:
    """``SqliteDb`` (its default ``synchronous=FULL``) or ``PostgresDb`` on the target, not opened yet."""
    if target.backend == "sqlite":
        return SqliteDb(db_file=target.sqlite_path)
    return PostgresDb(db_url=target.postgres_url, pool_size=2)


@asynccontextmanager
async def open_store(target: Target, session_id: str) -> AsyncIterator[PeerStore]:
    """:func:`kern_db` on the target, and the session."""
    async with kern_db(target) as db:
        yield _KernStore(db, await _open_session(db, session_id), target)
