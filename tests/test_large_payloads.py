"""Large payloads on our backends, where the conformance suite cannot look: the chunk rows in the
database (how many, that deleting a session removes them, that a changed one is caught), an append
whose chunks fail to land (a fault, a killed process) leaving nothing behind, and databases created
by the previous release (schema version 1, no chunk table) opening and gaining the table."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import asyncpg
import pytest

from kern_events import (
    CorruptRecordError,
    InMemoryEventStore,
    MessageAdded,
    PayloadTooLargeError,
    PostgresEventStore,
    SchemaVersionError,
    SqliteEventStore,
    StorageError,
    SummaryUpdated,
)
from kern_events.backend import BaseEventStore, PendingEvent
from kern_events.codec import MsgpackCodec
from kern_events.events import Event
from kern_events.stores import _base
from kern_events.stores._sql import SCHEMA_VERSION
from kern_events.testing.conformance.large import counted_chunk_reads
from tests import _pg

ROOT = Path(__file__).parent.parent
_MIB = 1024 * 1024


def _big(tag: str, size: int = 5 * 1000 * 1000) -> MessageAdded:
    return MessageAdded(run_id="r", role="tool", content=tag + "x" * size)


def _count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(sql).fetchone()[0])


async def _pg_count(schema: str, sql: str) -> int:
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        return int(await connection.fetchval(sql.replace("{schema}", schema)))
    finally:
        await connection.close()


async def _pg_execute(schema: str, *statements: str) -> None:
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        for statement in statements:
            await connection.execute(statement.replace("{schema}", schema))
    finally:
        await connection.close()


async def _chunk_trigger(schema: str, name: str, body: str) -> None:
    """A trigger ``name`` that runs ``body`` (PL/pgSQL) before each chunk row is inserted."""
    await _pg_execute(
        schema,
        f'CREATE FUNCTION "{{schema}}".{name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body} END $$',
        f'CREATE TRIGGER {name} BEFORE INSERT ON "{{schema}}".kern_events_chunks '
        f'FOR EACH ROW EXECUTE FUNCTION "{{schema}}".{name}()',
    )


# -- chunk rows --------------------------------------------------------------------------------------


async def test_sqlite_stores_a_5_mb_event_in_1_mib_chunks_and_deleting_the_session_removes_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chunks.db"
    async with SqliteEventStore(path) as store:
        await store.append("s", [_big("a"), MessageAdded(run_id="r", role="user", content="small")])
        await store.append("kept", [_big("b", 2 * _MIB)])
        assert _count(path, "SELECT count(*) FROM kern_events_chunks") == 5 + 3
        assert _count(path, "SELECT max(length(data)) FROM kern_events_chunks") == _MIB
        assert _count(path, "SELECT max(length(data)) FROM kern_events") < 100  # manifests, not payloads
        assert await store.delete_session("s")
        assert _count(path, "SELECT count(*) FROM kern_events_chunks") == 3
    async with SqliteEventStore(path) as store:
        assert [record.event async for record in store.read("kept")] == [_big("b", 2 * _MIB)]


async def test_postgres_stores_a_5_mb_event_in_1_mib_chunks_and_deleting_the_session_removes_them(
    schema: str,
) -> None:
    async with PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=2) as store:
        await store.append("s", [_big("a"), MessageAdded(run_id="r", role="user", content="small")])
        await store.append("kept", [_big("b", 2 * _MIB)])
        assert await _pg_count(schema, 'SELECT count(*) FROM "{schema}".kern_events_chunks') == 5 + 3
        assert await _pg_count(schema, 'SELECT max(length(data)) FROM "{schema}".kern_events_chunks') == _MIB
        assert await store.delete_session("s")
        assert await _pg_count(schema, 'SELECT count(*) FROM "{schema}".kern_events_chunks') == 3
        assert [record.event async for record in store.read("kept")] == [_big("b", 2 * _MIB)]


async def test_the_memory_store_forgets_the_chunks_of_a_deleted_session() -> None:
    async with InMemoryEventStore() as store:
        store.inline_limit = 4096
        await store.append("s", [_big("a")])
        await store.append("kept", [_big("b", 10_000)])
        assert len(store._chunks) == 2
        assert await store.delete_session("s")
        assert len(store._chunks) == 1


async def test_the_memory_store_forgets_the_chunks_of_a_truncated_prefix() -> None:
    async with InMemoryEventStore() as store:
        store.inline_limit = 4096
        await store.append("s", [_big("a", 10_000), _big("b", 10_000)])
        assert len(store._chunks) == 2
        assert await store.truncate_before("s", 2) == 1
        assert len(store._chunks) == 1


async def test_a_chunk_changed_in_the_sqlite_file_is_a_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "tampered.db"
    async with SqliteEventStore(path) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="before"), _big("a")])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE kern_events_chunks SET data = zeroblob(length(data)) WHERE part = 2")
    async with SqliteEventStore(path) as store:
        with pytest.raises(CorruptRecordError, match="SHA-256") as caught:
            _ = [record async for record in store.read("s")]
    assert (caught.value.session_id, caught.value.version) == ("s", 2)


async def test_a_chunk_missing_from_postgres_is_a_corrupt_record(schema: str) -> None:
    async with PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=2) as store:
        await store.append("s", [_big("a")])
        await _pg_execute(schema, 'DELETE FROM "{schema}".kern_events_chunks WHERE part = 4')
        with pytest.raises(CorruptRecordError, match="4 of its 5 chunks") as caught:
            _ = [record async for record in store.read("s")]
    assert (caught.value.session_id, caught.value.version) == ("s", 1)


class _RowLimited(InMemoryEventStore):
    """A backend with a row limit that stores no chunks (it does not implement ``_read_chunks``)."""

    inline_limit = 4096
    _read_chunks = BaseEventStore._read_chunks


async def test_a_row_limit_without_chunk_storage_is_a_hard_limit() -> None:
    async with _RowLimited() as store:
        fits = MessageAdded(run_id="r", role="user", content="x" * 4000)
        await store.append("s", [fits])
        with pytest.raises(PayloadTooLargeError, match=r"events\[1\]") as caught:
            await store.append("s", [fits, _big("a", 5000)])
        assert caught.value.limit == 4096
        assert [record.event async for record in store.read("s")] == [fits]


async def test_a_page_whose_chunks_exceed_the_budget_fetches_them_in_budget_sized_round_trips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_base, "_ASSEMBLY_BUDGET", 25_000)
    async with InMemoryEventStore() as store:
        store.inline_limit = 4096
        events = [_big(str(n), 10_000) for n in range(5)]
        await store.append("s", events)
        calls = counted_chunk_reads(store)
        assert [record.event async for record in store.read("s")] == events
        assert calls == [2, 2, 1]


class _EmptyingCodec(MsgpackCodec):
    """Stores ``SummaryUpdated`` events as no bytes at all (a codec of someone else's may)."""

    def encode(self, event: Event, event_id: uuid.UUID) -> PendingEvent:
        pending = super().encode(event, event_id)
        if pending.type == "summary_updated":
            return PendingEvent(event_id=event_id, type=pending.type, schema_version=1, data=b"")
        return pending


async def test_a_page_with_an_empty_payload_is_read_like_any_other(tmp_path: Path) -> None:
    async with SqliteEventStore(tmp_path / "empty.db", codec=_EmptyingCodec()) as store:
        await store.append("s", [_big("a"), SummaryUpdated(summary="gone")])
        records = store.read("s")
        assert (await anext(records)).event == _big("a")
        with pytest.raises(CorruptRecordError):
            await anext(records)


# -- all or nothing ----------------------------------------------------------------------------------


def _refuse_chunks(action: int, table: str | None, *_: object) -> int:
    refused = action == sqlite3.SQLITE_INSERT and table == "kern_events_chunks"
    return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK


async def test_a_sqlite_append_whose_chunks_cannot_be_written_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fault.db"
    async with SqliteEventStore(path) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="kept")])
        await store._call(store._writer, lambda db: db.set_authorizer(_refuse_chunks))
        outcomes = await asyncio.gather(
            store.append("s", [_big("a")], expected_version=1),
            *(store.append(f"other-{n}", [MessageAdded(run_id="r", role="user", content="x")]) for n in range(5)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], StorageError)
        assert [type(outcome).__name__ for outcome in outcomes[1:]] == ["AppendResult"] * 5
        assert await store.current_version("s") == 1
        await store._call(store._writer, lambda db: db.set_authorizer(None))
        assert (await store.append("s", [_big("b")], expected_version=1)).to_version == 2
    assert _count(path, "SELECT count(*) FROM kern_events WHERE session_id = 's'") == 2
    assert _count(path, "SELECT count(*) FROM kern_events_chunks") == 5


async def test_a_postgres_append_whose_chunks_cannot_be_written_stores_nothing(schema: str) -> None:
    async with PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=2) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="kept")])
        await _chunk_trigger(schema, "refuse", "RAISE EXCEPTION 'no chunks today';")
        with pytest.raises(StorageError, match="no chunks today"):
            await store.append("s", [_big("a")], expected_version=1)
        assert await store.current_version("s") == 1
        assert [record.version async for record in store.read("s")] == [1]
        await _pg_execute(schema, 'DROP TRIGGER refuse ON "{schema}".kern_events_chunks')
        assert (await store.append("s", [_big("b")], expected_version=1)).to_version == 2
        assert [record.event async for record in store.read("s", from_version=2)] == [_big("b")]


_CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sqlite3, sys
    from kern_events import MessageAdded, PostgresEventStore, SqliteEventStore

    async def main(kind, where, schema):
        store = SqliteEventStore(where) if kind == "sqlite" else PostgresEventStore(where, schema=schema)
        async with store:
            if kind == "sqlite":  # killed on the writer's thread, inside the transaction, at the chunks
                def die(action, table, *_):
                    if action == sqlite3.SQLITE_INSERT and table == "kern_events_chunks":
                        os.kill(os.getpid(), signal.SIGKILL)
                    return sqlite3.SQLITE_OK
                await store._call(store._writer, lambda db: db.set_authorizer(die))
            else:
                print("appending", flush=True)  # the parent kills it while a trigger holds the chunks
            await store.append("s", [MessageAdded(run_id="r", role="tool", content="x" * 5_000_000)])
            print("survived", flush=True)

    asyncio.run(main(*sys.argv[1:]))
    """
)


def _child(kind: str, where: str, schema: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    arguments = [sys.executable, "-c", _CHILD, kind, where, schema]
    return subprocess.Popen(arguments, stdout=subprocess.PIPE, text=True, env=env)


async def test_a_process_killed_while_writing_chunks_to_sqlite_leaves_no_half_event(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    async with SqliteEventStore(path) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="kept")])
    child = _child("sqlite", str(path), "")
    out, _ = await asyncio.to_thread(child.communicate, timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert "survived" not in out
    async with SqliteEventStore(path) as store:
        assert await store.current_version("s") == 1
        assert [record.version async for record in store.read("s")] == [1]
        assert (await store.append("s", [_big("b")], expected_version=1)).to_version == 2
    assert _count(path, "SELECT count(*) FROM kern_events_chunks") == 5


async def test_a_process_killed_while_writing_chunks_to_postgres_leaves_no_half_event(schema: str) -> None:
    async with PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=2) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="kept")])
        await _chunk_trigger(schema, "stall", "PERFORM pg_sleep(30); RETURN NEW;")
        child = _child("postgres", _pg.PG_URL, schema)
        try:
            assert child.stdout is not None
            assert await asyncio.to_thread(child.stdout.readline) == "appending\n"
            stalled = (
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%\"{schema}\".%_chunks%' AND state = 'active'"
            )
            for _ in range(200):  # until the child's transaction sits in the trigger, its event row written
                if await _pg_count(schema, stalled.replace("{schema}", schema)) > 1:
                    break
                await asyncio.sleep(0.05)
            child.kill()
        finally:
            await asyncio.to_thread(child.communicate, timeout=60)
        await _pg_execute(
            schema,
            # The server has not noticed yet that its client is gone (the trigger is sleeping).
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE "
            '\'%"{schema}"."kern_events_chunks"%\' AND pid <> pg_backend_pid()',
            'DROP TRIGGER stall ON "{schema}".kern_events_chunks',
        )
        assert await store.current_version("s") == 1
        assert [record.version async for record in store.read("s")] == [1]
        assert await _pg_count(schema, 'SELECT count(*) FROM "{schema}".kern_events_chunks') == 0
        assert (await store.append("s", [_big("b")], expected_version=1)).to_version == 2


# -- databases of the previous release ---------------------------------------------------------------


def _as_previous_release(path: Path) -> None:
    """Turn a file into what the previous release left: schema version 1 and no chunk table."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE kern_events_chunks")
        db.execute("DROP TABLE kern_schema_migrations")  # that release recorded no steps
        db.execute("ALTER TABLE kern_events DROP COLUMN chain")  # nor chained events
        db.execute("ALTER TABLE kern_sessions DROP COLUMN chain_head")
        db.execute("UPDATE kern_schema SET version = 1")


async def test_a_sqlite_file_of_the_previous_release_opens_and_gains_the_chunk_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with SqliteEventStore(path) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="old")])
    _as_previous_release(path)
    async with SqliteEventStore(path, read_only=True) as reader:  # read as it is, nothing created
        assert [record.version async for record in reader.read("s")] == [1]
    assert _count(path, "SELECT count(*) FROM sqlite_master WHERE name = 'kern_events_chunks'") == 0
    async with SqliteEventStore(path) as store:
        await store.append("s", [_big("new")], expected_version=1)
        assert [record.event async for record in store.read("s", from_version=2)] == [_big("new")]
    assert _count(path, "SELECT version FROM kern_schema") == SCHEMA_VERSION
    async with SqliteEventStore(path, read_only=True) as reader:
        assert [record.event async for record in reader.read("s", from_version=2)] == [_big("new")]


async def test_a_postgres_schema_of_the_previous_release_is_migrated_on_open(schema: str) -> None:
    async with PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=2) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="old")])
    await _pg_execute(
        schema,
        'DROP TABLE "{schema}".kern_events_chunks',
        'DROP TABLE "{schema}".kern_schema_migrations',  # that release recorded no steps
        'ALTER TABLE "{schema}".kern_events DROP COLUMN chain',
        'ALTER TABLE "{schema}".kern_sessions DROP COLUMN chain_head',
        'UPDATE "{schema}".kern_schema SET version = 1',
    )
    without_ddl = PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=1, create_schema=False)
    with pytest.raises(SchemaVersionError, match="kern-events migrate"):
        await without_ddl.current_version("s")
    await without_ddl.aclose()
    async with PostgresEventStore(_pg.PG_URL, schema=schema, pool_size=2) as store:
        await store.append("s", [_big("new")], expected_version=1)
        assert [record.event async for record in store.read("s", from_version=2)] == [_big("new")]
    assert await _pg_count(schema, 'SELECT version FROM "{schema}".kern_schema') == SCHEMA_VERSION
