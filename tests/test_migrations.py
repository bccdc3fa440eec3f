"""Ordered schema migrations: a database an older release left (frozen fixtures under tests/fixtures:
its DDL and rows) is upgraded one recorded step per version and reads everything after; two
migrations racing on one database run each step once."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from kern_events import PostgresDb, SqliteDb
from kern_events.cli import main
from kern_events.errors import SchemaVersionError
from kern_events.events import MessageAdded
from kern_events.records import UnknownEvent
from kern_events.stores._sql import SCHEMA_VERSION, STATE_TYPES
from kern_events.stores.postgres import PostgresEventStore
from kern_events.stores.sqlite import SqliteEventStore
from tests import _pg

FIXTURES = Path(__file__).parent / "fixtures"

EXPECTED_SESSIONS = {"session-0": 14, "session-1": 13, "session-2": 13}
"""The fixtures' sessions and their versions (written by the release of schema version 2)."""


def _sqlite_fixture(tmp_path: Path, version: int) -> Path:
    path = tmp_path / f"v{version}.db"
    with sqlite3.connect(path) as db:
        db.executescript((FIXTURES / f"schema_v{version}_sqlite.sql").read_text())
    return path


async def _pg_fixture(schema: str, version: int) -> None:
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await connection.execute(f'SET search_path TO "{schema}"')
        await connection.execute((FIXTURES / f"schema_v{version}_postgres.sql").read_text())
    finally:
        await connection.close()


async def _pg_rows(schema: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        return list(await connection.fetch(sql.replace("{schema}", schema)))
    finally:
        await connection.close()


async def _reads_everything(db: SqliteDb | PostgresDb) -> None:
    """Every session of the fixture, its index row, every event decoded, the snapshot; and it takes appends."""
    sessions = {info.session_id: info.version for info in await db.store.list_sessions()}
    assert sessions == EXPECTED_SESSIONS
    info = await db.store.get_session_info("session-0")
    assert info is not None and info.name == "renamed" and info.user_id == "user-0" and info.run_count == 4
    for session_id, head in EXPECTED_SESSIONS.items():
        records = [record async for record in db.store.read(session_id)]
        assert [record.version for record in records] == list(range(1, head + 1))
        assert not any(isinstance(record.event, UnknownEvent) for record in records)
    contents = [
        record.event.content async for record in db.store.read("session-2") if isinstance(record.event, MessageAdded)
    ]
    assert contents == [f"hello 2.{turn}" for turn in range(4)]
    snapshot = await db.store.load_snapshot("session-1", "view")
    assert snapshot is not None and snapshot.version == 5 and snapshot.data == b"\x80"
    result = await db.store.append(
        "session-1", [MessageAdded(run_id="r", role="user", content="after")], expected_version=13
    )
    assert result.to_version == 14


def _sqlite_steps(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT version, component FROM kern_schema_migrations ORDER BY version").fetchall()


@pytest.mark.parametrize("version", [1, 2])
async def test_a_sqlite_file_of_an_older_schema_is_upgraded_step_by_step_and_reads_everything(
    tmp_path: Path, version: int
) -> None:
    path = _sqlite_fixture(tmp_path, version)
    async with SqliteDb(path) as db:
        await _reads_everything(db)
    assert _sqlite_steps(path) == [(step, "kern_events") for step in range(version + 1, SCHEMA_VERSION + 1)]
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT version FROM kern_schema").fetchone() == (SCHEMA_VERSION,)
        # schema 4: the newest-first listing's index, on the listing's whole ORDER BY
        columns = [row[2] for row in raw.execute("PRAGMA index_info(kern_sessions_updated)")]
        assert columns == ["updated_at", "session_id"]
        # schema 5: the state events' partial index, which a context load reads them through
        columns = [row[2] for row in raw.execute("PRAGMA index_info(kern_events_state)")]
        (sql,) = raw.execute("SELECT sql FROM sqlite_master WHERE name = 'kern_events_state'").fetchone()
        assert columns == ["session_id", "version"] and sql.endswith(STATE_TYPES)


@pytest.mark.parametrize("version", [1, 2])
async def test_a_postgres_schema_of_an_older_version_gains_the_newer_indexes_on_open(schema: str, version: int) -> None:
    await _pg_fixture(schema, version)
    async with PostgresDb(_pg.PG_URL, schema=schema, pool_size=1) as db:
        await _reads_everything(db)
    rows = await _pg_rows(
        schema,
        "SELECT indexdef FROM pg_indexes WHERE schemaname = '{schema}' "
        "AND indexname IN ('kern_sessions_updated', 'kern_events_state') ORDER BY indexname",
    )
    assert [row[0].split(" USING ")[1] for row in rows] == [
        "btree (session_id, version) "
        "WHERE (type = ANY (ARRAY['session_started'::text, 'session_state_changed'::text]))",
        "btree (updated_at, session_id)",
    ]


@pytest.mark.parametrize("version", [1, 2])
async def test_a_postgres_schema_of_an_older_version_is_upgraded_by_kern_events_migrate(
    schema: str, version: int
) -> None:
    await _pg_fixture(schema, version)
    if version < SCHEMA_VERSION:
        refused = PostgresDb(_pg.PG_URL, schema=schema, pool_size=1, create_schema=False)
        with pytest.raises(SchemaVersionError, match="kern-events migrate"):
            await refused.store.current_version("session-0")
        await refused.aclose()
    assert await asyncio.to_thread(main, ["migrate", "--db", _pg.PG_URL, "--schema", schema]) == 0
    rows = await _pg_rows(schema, 'SELECT version FROM "{schema}".kern_schema_migrations ORDER BY version')
    assert [row[0] for row in rows] == list(range(version + 1, SCHEMA_VERSION + 1))
    async with PostgresDb(_pg.PG_URL, schema=schema, pool_size=2, create_schema=False) as db:
        await _reads_everything(db)


async def test_a_new_database_records_every_step_once(tmp_path: Path, schema: str) -> None:
    path = tmp_path / "new.db"
    async with SqliteEventStore(path):
        pass
    async with SqliteEventStore(path):  # opening again runs nothing
        pass
    assert _sqlite_steps(path) == [(step, "kern_events") for step in range(1, SCHEMA_VERSION + 1)]
    async with PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=1) as store:
        await store.migrate()
    rows = await _pg_rows(schema, 'SELECT version FROM "{schema}".kern_schema_migrations ORDER BY version')
    assert [row[0] for row in rows] == list(range(1, SCHEMA_VERSION + 1))


def test_two_processes_migrating_one_sqlite_file_at_once_run_each_step_once(tmp_path: Path) -> None:
    path = _sqlite_fixture(tmp_path, 1)
    command = [sys.executable, "-m", "kern_events", "migrate", "--db", str(path)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        for process in processes:
            _, err = process.communicate(timeout=60)
            assert process.returncode == 0, err.decode()
    finally:  # a failed process must not leave the other running (and its pipes open) into later tests
        for process in processes:
            with process:
                process.kill()
    assert _sqlite_steps(path) == [(step, "kern_events") for step in range(2, SCHEMA_VERSION + 1)]


async def test_opening_a_rollback_journal_file_waits_for_another_writer_to_finish(tmp_path: Path) -> None:
    """Switching a file to WAL while another connection holds the write lock fails at once in SQLite,
    without its busy handler (seen in CI as two `kern-events migrate` processes failing with
    'database is locked'); the open waits for the writer like any other statement does."""
    path = _sqlite_fixture(tmp_path, 1)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.3, holder.execute, "COMMIT")
        async with SqliteDb(path) as db:
            assert (await db.get_session("session-0")) is not None
    finally:
        holder.close()


async def test_concurrent_migrations_of_one_postgres_schema_run_each_step_once(schema: str) -> None:
    await _pg_fixture(schema, 1)
    stores = [PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=1, create_schema=False) for _ in range(4)]
    try:
        # each store's own connection: the migrations really race, and the advisory lock orders them
        await asyncio.gather(*(store.migrate() for store in stores))
    finally:
        for store in stores:
            await store.aclose()
    rows = await _pg_rows(schema, 'SELECT version FROM "{schema}".kern_schema_migrations ORDER BY version')
    assert [row[0] for row in rows] == list(range(2, SCHEMA_VERSION + 1))


def test_two_sqlite_migrations_that_both_saw_the_old_version_run_each_step_once(tmp_path: Path) -> None:
    """The interleaving the processes above may or may not hit, forced: both read version 1, then
    both run the steps; the second finds each step done under the write lock and skips it."""
    path = _sqlite_fixture(tmp_path, 1)
    first, second = SqliteEventStore(path), SqliteEventStore(path)
    connections = [sqlite3.connect(path, isolation_level=None) for _ in range(2)]
    try:
        pairs = list(zip((first, second), connections, strict=True))
        assert [store._in_transaction(db, store._prepare_migrations) for store, db in pairs] == [1, 1]
        for store, db in pairs:
            for step in store._steps()[1:]:
                store._in_transaction(db, store._run_step, step)
    finally:
        for db in connections:
            db.close()
    assert _sqlite_steps(path) == [(step, "kern_events") for step in range(2, SCHEMA_VERSION + 1)]
