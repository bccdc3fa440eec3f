"""The session listing, newest first and without a user, is served by an index on both SQL backends:
the planner reads ``(updated_at, session_id)`` in order and stops after the page, instead of sorting
every index row (which grew with the store: 154 ms at 1,000,000 sessions on PostgreSQL). Each test
EXPLAINs the exact statement the store builds, on a table of enough rows for the planner to care."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kern_events.stores._base import SessionFilter
from kern_events.stores.postgres import PostgresEventStore
from kern_events.stores.sqlite import SqliteEventStore
from tests import _pg

ROWS = 5_000
"""Index rows the table holds: enough that sorting them all costs the planner far more than the index."""

QUERIES: dict[str, dict[str, Any]] = {
    "newest": {},
    "oldest": {"descending": False},
    "of a type": {"session_type": "agent"},
    "of an agent": {"agent_id": "agent-1"},
    "of a type and agent": {"session_type": "agent", "agent_id": "agent-2"},
    "updated since": {"updated_since": ROWS / 2},
    "after a cursor": {"after": (ROWS / 2, "s-002500")},
}
"""The listings the index must serve: the default one, and with the common filters."""


def _query(**given: Any) -> SessionFilter:
    fields: dict[str, Any] = {
        "user_id": None,
        "session_type": None,
        "agent_id": None,
        "team_id": None,
        "workflow_id": None,
        "sort_by": "updated_at",
        "descending": True,
        "limit": 20,
        "offset": 0,
    }
    return SessionFilter(**(fields | given))


_FILL = (
    "INSERT INTO {sessions} (session_id, session_type, agent_id, user_id, created_at, updated_at, run_count, "
    "version, deleted) "
    "SELECT {id}, CASE WHEN s % 10 = 0 THEN 'team' ELSE 'agent' END, 'agent-' || (s % 3), 'user-' || (s / 10), "
    "s, s, 1, 10, {false} FROM {numbers}"
)
"""Index rows ``0 … ROWS - 1``: updated in that order, ten sessions per user, mostly agents."""


@pytest.mark.parametrize("name", list(QUERIES))
async def test_the_sqlite_listing_reads_the_updated_index_without_sorting(tmp_path: Path, name: str) -> None:
    path = tmp_path / "listing.db"
    async with SqliteEventStore(path) as store:
        sql, parameters = store._sql.list_sessions(_query(**QUERIES[name]), no_limit=-1)
    with sqlite3.connect(path) as db:
        db.execute(
            _FILL.format(
                sessions="kern_sessions",
                id="printf('s-%06d', s)",
                false="0",
                numbers=f"(WITH RECURSIVE n(s) AS (SELECT 0 UNION ALL SELECT s + 1 FROM n WHERE s < {ROWS - 1}) "
                "SELECT s FROM n)",
            )
        )
        db.execute("ANALYZE")
        plan = " / ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, parameters))
    assert "USING INDEX kern_sessions_updated" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # no sort after the scan


@pytest.mark.parametrize("name", list(QUERIES))
async def test_the_postgres_listing_reads_the_updated_index_without_sorting(schema: str, name: str) -> None:
    async with PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=1) as store:
        await store.migrate()
        sql, arguments = store._sql.shared.list_sessions(_query(**QUERIES[name]), no_limit=None)
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        sessions = f'"{schema}".kern_sessions'
        await connection.execute(
            _FILL.format(
                sessions=sessions,
                id="'s-' || lpad(s::text, 6, '0')",
                false="false",
                numbers=f"generate_series(0, {ROWS - 1}) AS s",
            )
        )
        await connection.execute(f"ANALYZE {sessions}")
        for mode in ("force_custom_plan", "force_generic_plan"):  # asyncpg's prepared statements use both
            await connection.execute(f"SET plan_cache_mode = {mode}")
            plan = " / ".join(row[0] for row in await connection.fetch("EXPLAIN " + sql, *arguments))
            assert "Index Scan" in plan and "kern_sessions_updated" in plan, plan
            assert "Sort" not in plan, plan
    finally:
        await connection.close()
