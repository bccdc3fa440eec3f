"""A pytest plugin that runs Agno's own session db tests against ``KernEventsDb``.

Their files take the ``sqlite_db_real`` fixture (in Agno's repository, from a conftest that builds
its ``SqliteDb``); this plugin provides it as a ``KernEventsDb`` over the kern-events backend named
by ``KERN_AGNO_BACKEND`` (memory, sqlite or postgres), wrapping an Agno ``SqliteDb`` with the
same table names for the other tables. Their clean-up fixture reaches the wrapped db's session
table, which stays empty; each test gets a fresh kern-events db instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from agno.db.sqlite import SqliteDb as AgnoSqliteDb

from kern_events import InMemoryDb, PostgresDb, SqliteDb
from kern_events.adapters.agno import KernEventsDb
from kern_events.db import BaseDb


@pytest.fixture
def sqlite_db_real(tmp_path: Path) -> Iterator[KernEventsDb]:
    backend = os.environ.get("KERN_AGNO_BACKEND", "sqlite")
    schema = None
    kern: BaseDb
    if backend == "memory":
        kern = InMemoryDb()
    elif backend == "sqlite":
        kern = SqliteDb(db_file=tmp_path / "kern.db")
    else:
        from tests._pg import PG_URL, new_schema

        schema = new_schema()
        kern = PostgresDb(db_url=PG_URL, schema=schema, pool_size=2)
    agno_db = AgnoSqliteDb(
        session_table="test_sessions",
        memory_table="test_memories",
        metrics_table="test_metrics",
        eval_table="test_evals",
        knowledge_table="test_knowledge",
        db_file=str(tmp_path / "agno.db"),
    )
    db = KernEventsDb(kern, agno_db)
    try:
        yield db
    finally:
        db.close()
        if schema is not None:
            from tests._pg import drop_schema

            drop_schema(schema)
