"""Agno on the peer workload through ``KernEventsDb``: the same calls as ``benchmarks.peers.agno``
(``get_session`` to load; ``upsert_session``, ``upsert_run``, ``update_approval_run_status`` to
persist), on kern-events' ``SqliteDb`` / ``PostgresDb``, wrapping Agno's own ``SqliteDb`` /
``PostgresDb`` (same file or database) for the other tables. ``KernEventsDb`` is Agno's sync
``BaseDb``, which ``Agent.arun`` calls directly; so are these calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from benchmarks.peers import agno as _agno
from benchmarks.peers._workload import Backend, PeerStore, Target, missing

__all__ = ["BACKENDS", "SYSTEM", "open_store", "unavailable"]

SYSTEM = "agno on kern-events"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")


def unavailable() -> str | None:
    """``None`` when Agno's sync SQLite/PostgreSQL dbs and the adapter import."""
    return missing("agno", ("agno.db.postgres", "agno.db.sqlite", "psycopg", "kern_events.adapters.agno"))


class _Awaitable:
    """The sync ``KernEventsDb`` behind the async method names ``benchmarks.peers.agno`` calls."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def get_session(self, **kwargs: Any) -> Any:
        return self.db.get_session(**kwargs)

    async def upsert_session(self, session: Any) -> Any:
        return self.db.upsert_session(session)

    async def upsert_run(self, run: Any, **kwargs: Any) -> None:
        self.db.upsert_run(run, **kwargs)

    async def update_approval_run_status(self, *args: Any) -> Any:
        return self.db.update_approval_run_status(*args)


@asynccontextmanager
async def open_store(target: Target, session_id: str) -> AsyncIterator[PeerStore]:
    """``KernEventsDb`` over kern-events and Agno's sync db on the target; closed on exit."""
    from agno.db.postgres import PostgresDb as AgnoPostgresDb
    from agno.db.sqlite import SqliteDb as AgnoSqliteDb

    from kern_events import PostgresDb, SqliteDb
    from kern_events.adapters.agno import KernEventsDb

    if target.backend == "sqlite":
        if target.sqlite_path is None:
            raise ValueError("a SQLite target needs sqlite_path")
        db = KernEventsDb(SqliteDb(db_file=target.sqlite_path), AgnoSqliteDb(db_file=str(target.sqlite_path)))
    else:
        if target.postgres_url is None:
            raise ValueError("a PostgreSQL target needs postgres_url")
        url = _agno._postgres_url(target).replace("+psycopg_async", "+psycopg")
        db = KernEventsDb(PostgresDb(db_url=target.postgres_url), AgnoPostgresDb(db_url=url))
    try:
        yield _agno._AgnoStore(_Awaitable(db), session_id)  # type: ignore[arg-type]
    finally:
        db.close()
