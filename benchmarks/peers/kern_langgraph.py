"""Our LangGraph saver, ``KernEventsSaver``, on the LangGraph peer workload.

The saver calls are exactly those ``benchmarks.peers.langgraph`` makes on ``AsyncSqliteSaver`` /
``AsyncPostgresSaver`` (load = ``aget_tuple`` of the latest checkpoint; persist = one ReAct invoke's five
``aput`` and four ``aput_writes``), made on a kern-events ``SqliteDb`` / ``PostgresDb``, so the rows compare
the checkpointers alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from benchmarks.peers._workload import Backend, PeerStore, Target, missing
from benchmarks.peers.langgraph import _LangGraphStore

__all__ = ["BACKENDS", "SYSTEM", "open_store", "unavailable"]

SYSTEM = "kern-events langgraph"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")


def unavailable() -> str | None:
    """``None`` when LangGraph and our adapter import, else why not."""
    return missing("kern-events langgraph", ("langchain_core.messages", "kern_events.adapters.langgraph"))


@asynccontextmanager
async def open_store(target: Target, session_id: str) -> AsyncIterator[PeerStore]:
    """``KernEventsSaver`` on a fresh ``SqliteDb`` file or ``PostgresDb`` database, closed on exit."""
    from kern_events.adapters.langgraph import KernEventsSaver
    from kern_events.db import BaseDb, PostgresDb, SqliteDb

    db: BaseDb
    if target.backend == "sqlite":
        if target.sqlite_path is None:
            raise ValueError("a SQLite target needs sqlite_path")
        db = SqliteDb(target.sqlite_path)
    else:
        if target.postgres_url is None:
            raise ValueError("a PostgreSQL target needs postgres_url")
        db = PostgresDb(target.postgres_url)
    async with db:
        yield _LangGraphStore(KernEventsSaver(db), session_id)
