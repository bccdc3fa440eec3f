"""The PostgreSQL global feed: it never skips a late commit, and what its fence costs is visible.

The late writer, the fast writers and the reader are separate stores (separate connections): within
one store the group committer would queue the fast appends behind the late one, and the test could
not fail. The late append is held open by an advisory lock the test holds, not by a sleep.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from kern_events import MessageAdded, PostgresEventStore
from kern_events.testing._feed import feed_reaches
from tests import _pg


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


async def _until(condition: Callable[[], Awaitable[bool]], what: str, *, within: float = 10.0) -> None:
    """Wait until ``condition()`` holds, looking again every few milliseconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def gated(schema: str) -> tuple[str, int]:
    """The store's tables, with a trigger that makes any insert into session 'late' wait for an
    advisory lock (key returned): the test holds the lock to keep that append's transaction open."""
    key = random.randrange(1, 2**31)
    async with _pg.store(schema) as store:
        await store.append("late", [_message("the session exists")])
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        await connection.execute(
            f"""
            CREATE FUNCTION "{schema}".gate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.session_id = 'late' THEN PERFORM pg_advisory_xact_lock_shared({key}); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER gate BEFORE INSERT ON "{schema}".kern_events
            FOR EACH ROW EXECUTE FUNCTION "{schema}".gate();
            """
        )
    finally:
        await connection.close()
    return schema, key


async def _tail(store: PostgresEventStore, position: int, seen: list[tuple[int, str]]) -> int:
    """One pass of a tailing reader: append what the feed shows from ``position`` on; the next position."""
    async for record in store.read_all(from_position=position):
        seen.append((record.position, record.session_id))
        position = record.position + 1
    return position


async def test_a_tailing_reader_never_skips_an_event_whose_transaction_commits_late(gated: tuple[str, int]) -> None:
    schema, key = gated
    gate = await asyncpg.connect(_pg.PG_URL)
    try:
        await gate.execute("SELECT pg_advisory_lock($1::bigint)", key)
        async with _pg.store(schema) as late_writer, _pg.store(schema) as fast_writer, _pg.store(schema) as reader:
            (first,) = [record async for record in late_writer.read("late")]
            await feed_reaches(reader, first.position)
            seen: list[tuple[int, str]] = []
            position = await _tail(reader, 0, seen)
            assert seen == [(first.position, "late")]
            seen.clear()

            late = asyncio.create_task(late_writer.append("late", [_message("late committer")]))

            async def late_is_waiting() -> bool:
                waiting = await gate.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1",
                    key,
                )
                return bool(waiting)

            await _until(late_is_waiting, "the late append has its position and waits to commit")
            fast = [await fast_writer.append(f"fast-{n}", [_message(f"fast {n}")]) for n in range(10)]
            position = await _tail(reader, position, seen)
            assert seen == [], "nothing above the open transaction's position is final yet"
            lag = await reader.feed_lag()
            assert lag.held_back >= 10 and lag.fence is not None and lag.fence <= fast[0].positions[0]

            await gate.execute("SELECT pg_advisory_unlock($1::bigint)", key)
            result = await late
            await feed_reaches(reader, fast[-1].positions[-1])
            await _tail(reader, position, seen)
    finally:
        await gate.close()
    assert result.positions[0] < fast[0].positions[0], "the late append took its position first"
    assert [session for _, session in seen] == ["late", *(f"fast-{n}" for n in range(10))], "skipped or reordered"
    assert [position for position, _ in seen] == sorted(position for position, _ in seen)


async def test_an_open_transaction_in_another_database_holds_the_feed_back_and_feed_lag_shows_it(
    schema: str,
) -> None:
    """The price of the gap-free feed: the fence is cluster-wide. ``feed_lag`` makes it visible."""
    database = f"kt_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(_pg.PG_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        other = await asyncpg.connect(_pg.PG_URL.rsplit("/", 1)[0] + "/" + database)
        try:
            async with _pg.store(schema) as store:
                before = await store.append("s", [_message("before")])
                await feed_reaches(store, before.positions[-1])
                transaction = other.transaction()
                await transaction.start()
                await other.fetchval("SELECT pg_current_xact_id()")  # it has a transaction id now
                holder = await other.fetchval("SELECT pg_backend_pid()")
                appended = await store.append("s", [_message("committed, but behind the fence")])
                assert [record.version async for record in store.read_all(from_position=appended.positions[0])] == []
                lag = await store.feed_lag()
                assert lag.held_back == 1
                assert lag.fence is not None and lag.fence <= appended.positions[0]
                assert lag.since is not None and lag.holder_pid is not None, "the holder is visible to a superuser"
                if lag.holder_pid == holder:  # else someone else's even older transaction holds it
                    assert lag.holder_database == database
                await transaction.rollback()
                await feed_reaches(store, appended.positions[-1])
                assert [record.version async for record in store.read_all(from_position=appended.positions[0])] == [2]
                assert (await store.feed_lag()).held_back == 0
        finally:
            await other.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.close()


async def test_a_subscription_held_back_by_the_fence_resumes_when_it_moves_not_at_its_next_poll(
    schema: str,
) -> None:
    """Nothing announces that an unrelated transaction ended: the store watches the fence itself."""
    holder = await asyncpg.connect(_pg.PG_URL)
    try:
        async with _pg.store(schema) as reader, _pg.store(schema) as writer:
            await writer.append("s", [_message("before")])
            async with reader.subscribe(poll_interval=60) as subscription:
                records = subscription.__aiter__()
                assert (await asyncio.wait_for(anext(records), 10)).event == _message("before")
                transaction = holder.transaction()
                await transaction.start()
                await holder.fetchval("SELECT pg_current_xact_id()")  # an open transaction with an id
                following = asyncio.create_task(anext(records))
                await writer.append("s", [_message("held back")])

                async def held_back_and_watched() -> bool:
                    return (await reader.feed_lag()).held_back == 1 and reader._fence_task is not None

                await _until(held_back_and_watched, "the subscription read while the fence held the event back")
                assert not following.done()
                await transaction.rollback()
                assert (await asyncio.wait_for(following, 5)).event == _message("held back")
    finally:
        await holder.close()
