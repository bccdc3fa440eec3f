"""Opening the db a test's ``db_kind`` names (see ``tests/adapters/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from kern_events import InMemoryDb, PostgresDb, SqliteDb
from kern_events.db import BaseDb
from tests import _pg


@asynccontextmanager
async def open_db(kind: tuple[str, str], tmp_path: Path) -> AsyncIterator[BaseDb]:
    """An open db of that kind: in memory, a SQLite file in ``tmp_path``, or the PostgreSQL schema."""
    name, schema = kind
    db: BaseDb
    if name == "memory":
        db = InMemoryDb()
    elif name == "sqlite":
        db = SqliteDb(db_file=tmp_path / "s.db")
    else:
        db = PostgresDb(db_url=_pg.PG_URL, schema=schema)
    async with db:
        yield db
