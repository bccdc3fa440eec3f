"""Our saver as a backend of LangGraph's own ``async_checkpointer`` fixture (copied into the unpacked sdist's
``tests/`` by ``.ci/langgraph/run``; ``conftest.patch`` makes the fixture use it).

``KERN_LANGGRAPH_BACKENDS`` picks the kern-events backends (comma-separated: memory, sqlite, postgres);
``KERN_TEST_PG_URL`` names the PostgreSQL server, as for our own tests.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from kern_events.adapters.langgraph import KernEventsSaver
from kern_events.db import BaseDb, InMemoryDb, PostgresDb, SqliteDb

PG_URL = os.environ.get("KERN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
KERN_CHECKPOINTERS = [
    f"kern_{name.strip()}"
    for name in os.environ.get("KERN_LANGGRAPH_BACKENDS", "memory,sqlite,postgres").split(",")
    if name.strip()
]


@asynccontextmanager
async def kern_checkpointer(name: str) -> AsyncIterator[KernEventsSaver]:
    """A fresh saver on a fresh database of the named backend, dropped afterwards."""
    schema = None
    with tempfile.TemporaryDirectory() as directory:
        db: BaseDb
        if name == "kern_memory":
            db = InMemoryDb()
        elif name == "kern_sqlite":
            db = SqliteDb(os.path.join(directory, "kern.db"))
        elif name == "kern_postgres":
            schema = f"lg_{uuid.uuid4().hex[:16]}"
            db = PostgresDb(PG_URL, schema=schema, pool_size=4)
        else:
            raise NotImplementedError(name)
        try:
            async with db:
                yield KernEventsSaver(db)
        finally:
            if schema is not None:
                connection = await asyncpg.connect(PG_URL)
                try:
                    await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                finally:
                    await connection.close()
