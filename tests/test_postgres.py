"""PostgreSQL-specific behaviour on the real server: URLs, pools, schemas, concurrency, the global feed, faults."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from kern_events import (
    NO_STREAM,
    ConcurrencyError,
    InvalidArgumentError,
    InvalidIdentifierError,
    MessageAdded,
    PostgresDb,
    PostgresEventStore,
    SchemaVersionError,
    SessionStarted,
    StorageUnavailableError,
    TableNames,
)
from kern_events.cli import main
from kern_events.stores.postgres import normalize_url
from tests import _pg


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u@h:5432/d", "postgresql://u@h:5432/d"),
        ("postgres://u@h/d", "postgres://u@h/d"),
        ("postgresql+psycopg://u:p@h/d", "postgresql://u:p@h/d"),
        ("postgresql+asyncpg://u@h/d?sslmode=disable", "postgresql://u@h/d?sslmode=disable"),
    ],
)
def test_urls_from_other_frameworks_are_accepted(given: str, used: str) -> None:
    assert normalize_url(given) == used


@pytest.mark.parametrize("bad", ["mysql://u@h/d", "sqlite:///x.db", "", "postgresql:/missing-slash"])
def test_a_url_that_is_not_postgresql_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgumentError, match="db_url"):
        PostgresDb(bad)


def test_bad_schema_or_table_names_are_refused_before_connecting() -> None:
    with pytest.raises(InvalidIdentifierError, match="schema"):
        PostgresDb("postgresql://nowhere/x", schema="public; DROP TABLE x")
    with pytest.raises(InvalidIdentifierError, match="session_table"):
        PostgresDb("postgresql://nowhere/x", session_table='x"y')


async def test_an_unreachable_server_is_a_storage_unavailable_error() -> None:
    store = PostgresEventStore("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(StorageUnavailableError, match="cannot connect"):
        await store.append("s", [_message("x")])
    await store.aclose()


async def test_an_existing_pool_is_used_and_left_open(schema: str) -> None:
    pool = await asyncpg.create_pool(_pg.PG_URL, min_size=1, max_size=2)
    try:
        async with PostgresDb(pool=pool, schema=schema) as db:
            await db.store.append("s", [_message("via the caller's pool")])
        assert await pool.fetchval(f'SELECT count(*) FROM "{schema}".kern_events') == 1
    finally:
        await pool.close()


async def test_custom_table_names_isolate_two_workloads_in_one_schema(schema: str) -> None:
    other = TableNames(events="b_events", sessions="b_sessions", snapshots="b_snapshots", schema="b_schema")
    async with _pg.store(schema) as first, _pg.store(schema, tables=other) as second:
        await first.append("s", [_message("first")])
        await second.append("s", [_message("second")], expected_version=NO_STREAM)
        assert [r.event async for r in first.read("s")] == [_message("first")]
        assert [r.event async for r in second.read("s")] == [_message("second")]


async def test_many_processes_starting_at_once_create_the_schema_without_errors(schema: str) -> None:
    stores = [_pg.store(schema, pool_size=1) for _ in range(8)]
    try:
        await asyncio.gather(*(store.append(f"s{n}", [_message("hi")]) for n, store in enumerate(stores)))
    finally:
        await asyncio.gather(*(store.aclose() for store in stores))


async def test_without_runtime_ddl_a_missing_schema_is_refused_until_migrated(schema: str) -> None:
    with pytest.raises(SchemaVersionError, match="kern-events migrate"):
        async with _pg.store(schema, create_schema=False):
            pass
    async with _pg.store(schema) as creator:
        await creator.migrate()
    async with _pg.store(schema, create_schema=False) as store:
        await store.append("s", [_message("works")])


async def test_a_schema_from_a_newer_release_is_refused(schema: str) -> None:
    async with _pg.store(schema) as store:
        await store.append("s", [_message("kept")])
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        await connection.execute(f'UPDATE "{schema}".kern_schema SET version = 99')
    finally:
        await connection.close()
    with pytest.raises(SchemaVersionError, match="99"):
        async with _pg.store(schema):
            pass


async def test_sixteen_concurrent_writers_on_one_session_lose_nothing(schema: str) -> None:
    per_writer = 12
    async with _pg.store(schema, pool_size=16) as store:

        async def writer(n: int) -> int:
            conflicts = 0
            for k in range(per_writer):
                while True:
                    head = await store.current_version("shared")
                    try:
                        await store.append("shared", [_message(f"{n}:{k}")], expected_version=head)
                        break
                    except ConcurrencyError:
                        conflicts += 1
            return conflicts

        conflicts = await asyncio.wait_for(asyncio.gather(*(writer(n) for n in range(16))), timeout=60)
        records = [record async for record in store.read("shared")]
    assert [record.version for record in records] == list(range(1, 16 * per_writer + 1))
    contents = sorted(str(record.event.content) for record in records)  # type: ignore[union-attr]
    assert contents == sorted(f"{n}:{k}" for n in range(16) for k in range(per_writer))
    assert sum(conflicts) > 0, "the writers did contend"


@pytest.fixture
async def slow_inserts(schema: str) -> str:
    """The store's tables, with a trigger that holds any append to session 'slow' open for a while."""
    async with _pg.store(schema) as store:
        await store.append("warm-up", [_message("creates the tables")])
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        await connection.execute(
            f"""
            CREATE FUNCTION "{schema}".slow_down() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.session_id = 'slow' THEN PERFORM pg_sleep(0.6); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER slow_down BEFORE INSERT ON "{schema}".kern_events
            FOR EACH ROW EXECUTE FUNCTION "{schema}".slow_down();
            """
        )
    finally:
        await connection.close()
    return schema


async def test_a_connection_killed_mid_append_leaves_nothing_and_the_retry_lands_once(slow_inserts: str) -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    batch = [_message("a"), _message("b"), _message("c")]
    async with _pg.store(slow_inserts) as store:
        append = asyncio.create_task(store.append("slow", batch, event_ids=ids))
        await asyncio.sleep(0.2)
        killer = await asyncpg.connect(_pg.PG_URL)
        try:
            killed = await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE state = 'active' AND query LIKE $1 AND pid <> pg_backend_pid()",
                f'%"{slow_inserts}".%',
            )
        finally:
            await killer.close()
        assert killed == 1
        with pytest.raises(StorageUnavailableError):
            await append
        assert [record async for record in store.read("slow")] == []
        first = await store.append("slow", batch, event_ids=ids)
        again = await store.append("slow", batch, event_ids=ids)
        assert first == again
        assert [record.event async for record in store.read("slow")] == batch


def test_kern_events_migrate_prepares_a_database_that_forbids_runtime_ddl(schema: str) -> None:
    assert (
        main(["migrate", "--db", _pg.PG_URL.replace("postgresql://", "postgresql+asyncpg://"), "--schema", schema]) == 0
    )

    async def use() -> int:
        async with PostgresDb(_pg.PG_URL, schema=schema, create_schema=False) as db:
            return (await db.store.append("s", [_message("no DDL needed")])).to_version

    assert _pg.run_sync(use) == 1
    assert main(["verify", "--db", _pg.PG_URL, "--schema", schema]) == 0


async def test_a_subscription_survives_its_listen_connection_being_killed(schema: str) -> None:
    async with _pg.store(schema) as reader, _pg.store(schema) as writer:
        await writer.append("s", [_message("before")])
        async with reader.subscribe(poll_interval=60) as subscription:
            records = subscription.__aiter__()
            assert (await asyncio.wait_for(anext(records), 5)).event == _message("before")
            killer = await asyncpg.connect(_pg.PG_URL)
            listening = (
                "SELECT array_agg(pid) FROM pg_stat_activity "
                "WHERE query LIKE 'LISTEN%' AND query LIKE $1 AND pid <> pg_backend_pid()"
            )
            channel = f"%{reader._sql.channel}%"
            try:
                (listener,) = await killer.fetchval(listening, channel)
                assert await killer.fetchval("SELECT pg_terminate_backend($1)", listener)
                following = asyncio.create_task(anext(records))
                deadline = asyncio.get_running_loop().time() + 10
                while (await killer.fetchval(listening, channel) or [listener]) == [listener]:
                    assert asyncio.get_running_loop().time() < deadline, "the subscription never listened again"
                    await asyncio.sleep(0.01)  # it reconnects, re-reads (nothing new) and waits again
            finally:
                await killer.close()
            assert not following.done()
            await writer.append("s", [_message("after")])  # only a NOTIFY can wake it within 5 s
            assert (await asyncio.wait_for(following, 5)).event == _message("after")


async def test_the_context_statement_is_never_planned_per_call_on_the_reader(schema: str) -> None:
    """The held reader runs the context statement on a plan cached from its first execution: the
    server's default plans each of the first five afresh (~0.3 ms each), which a process's first
    loads paid."""
    async with PostgresDb(_pg.PG_URL, schema=schema) as db:
        await db.store.append("s", [SessionStarted(session_type="agent"), _message("one")])
        for _ in range(6):
            await db.get_context("s", num_history_runs=3)
        reader = db.store._reader
        assert reader is not None
        plans = await reader.fetchrow(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
            db.store._sql.state_context,
        )
        assert plans is not None
        assert (plans["generic_plans"], plans["custom_plans"]) == (6, 0)


async def test_reads_go_on_after_the_held_reader_connection_is_killed(schema: str) -> None:
    """Session reads use a connection the store holds; once it is killed, the next read opens a new
    one, and a read that finds it in use by another read takes a pooled connection."""
    async with _pg.store(schema) as store:
        await store.append("s", [_message("one"), _message("two")])
        assert [record.version async for record in store.read("s")] == [1, 2]
        reader = store._reader
        assert reader is not None
        killer = await asyncpg.connect(_pg.PG_URL)
        try:
            pid = reader.get_server_pid()
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", pid)
            for _ in range(500):  # terminating is asynchronous: wait until the backend is gone
                if not await killer.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
                    break
                await asyncio.sleep(0.01)
        finally:
            await killer.close()

        async def versions() -> list[int]:
            return [record.version async for record in store.read("s")]

        assert await versions() == [1, 2]  # the dead connection is seen closed and replaced
        assert store._reader is not None and store._reader is not reader
        assert await asyncio.gather(*(versions() for _ in range(4))) == [[1, 2]] * 4
