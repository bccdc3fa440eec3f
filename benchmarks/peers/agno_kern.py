"""Agno on the peer workload through ``AsyncKernEventsDb``: the same calls as ``benchmarks.peers.agno``
(``get_session`` to load; ``upsert_session``, ``upsert_run``, ``update_approval_run_status`` to
persist), on kern-events' ``SqliteDb`` / ``PostgresDb``, wrapping the same async Agno db as the
``agno`` rows (``AsyncSqliteDb`` / ``AsyncPostgresDb``, same file or database) for the other tables:
the one-line switch, awaited as ``Agent.arun`` awaits an async db.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from benchmarks.peers import agno as _agno
from benchmarks.peers._workload import Backend, PeerStore, Target, missing

__all__ = ["BACKENDS", "SYSTEM", "open_store", "unavailable"]

SYSTEM = "agno on kern-events"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")


def unavailable() -> str | None:
    """``None`` when Agno's async SQLite/PostgreSQL dbs and the adapter import."""
    return _agno.unavailable() or missing("agno", ("kern_events.adapters.agno",))


@asynccontextmanager
async def open_store(target: Target, session_id: str) -> AsyncIterator[PeerStore]:
    """``AsyncKernEventsDb`` over kern-events and Agno's async db on the target; closed on exit."""
    from agno.db.postgres import AsyncPostgresDb
    from agno.db.sqlite import AsyncSqliteDb

    from kern_events import PostgresDb, SqliteDb
    from kern_events.adapters.agno import AsyncKernEventsDb

    if target.backend == "sqlite":
        if target.sqlite_path is None:
            raise ValueError("a SQLite target needs sqlite_path")
        db = AsyncKernEventsDb(SqliteDb(db_file=target.sqlite_path), AsyncSqliteDb(db_file=str(target.sqlite_path)))
    else:
        if target.postgres_url is None:
            raise ValueError("a PostgreSQL target needs postgres_url")
        db = AsyncKernEventsDb(
            PostgresDb(db_url=target.postgres_url), AsyncPostgresDb(db_url=_agno._postgres_url(target))
        )
    try:
        yield _agno._AgnoStore(db, session_id)  # type: ignore[arg-type]
    finally:
        await db.close()
