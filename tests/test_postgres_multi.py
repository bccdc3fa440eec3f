"""PostgreSQL under concurrency: multi-session appends and prefix truncation racing other writers.

Each scenario runs many short trials against the real server, because each race shows only in a
fraction of them; the sizes are small by default and grow with ``KERN_HEAVY_SCALE``.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from kern_events import ConcurrencyError, MessageAdded, SessionAppend
from kern_events.testing import feed_settled
from tests import _pg


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


@pytest.mark.heavy
async def test_append_many_calls_naming_sessions_in_any_order_never_deadlock(schema: str, heavy_scale: int) -> None:
    """Every call locks its sessions in one canonical order, so calls that name the same sessions in
    different orders wait for each other; none is aborted as a deadlock."""
    sessions = [f"s{n}" for n in range(6)]
    tasks, calls = 8, 15 * heavy_scale
    async with _pg.store(schema, pool_size=4) as first, _pg.store(schema, pool_size=4) as second:
        for session in sessions:
            await first.append(session, [_message("exists")])

        async def writer(n: int) -> list[BaseException]:
            store, shuffle, failed = (first, second)[n % 2], random.Random(n), []
            for call in range(calls):
                order = shuffle.sample(sessions, k=4)
                try:
                    await store.append_many([SessionAppend(s, [_message(f"{n}:{call}")]) for s in order])
                except Exception as error:
                    failed.append(error)
            return failed

        failed = [error for errors in await asyncio.gather(*(writer(n) for n in range(tasks))) for error in errors]
        total = sum([await first.current_version(session) for session in sessions])
    assert failed == [], f"{len(failed)} calls failed, e.g. {failed[0]!r}"
    assert total == len(sessions) + tasks * calls * 4


@pytest.mark.heavy
async def test_the_global_feed_never_shows_part_of_an_append_many(schema: str, heavy_scale: int) -> None:
    """Concurrent multi-session appends (and plain appends beside them) while a reader follows the
    feed: at every read, each call's events are all there or none is."""
    tasks, calls = 6, 20 * heavy_scale
    async with _pg.store(schema, pool_size=6) as writer, _pg.store(schema, pool_size=2) as reader:
        await writer.append("warm-up", [_message("tables")])
        done = False
        torn: list[tuple[str, int]] = []
        reads = 0

        async def watch() -> None:
            nonlocal reads
            while not done:
                seen: dict[str, int] = {}
                async for record in reader.read_all():
                    content = str(record.event.content)  # type: ignore[union-attr]
                    if content.startswith("call "):
                        seen[content] = seen.get(content, 0) + 1
                torn.extend((call, count) for call, count in seen.items() if count != 6)
                reads += 1

        async def write(n: int) -> None:
            for call in range(calls):
                parts = [SessionAppend(f"w{n}-{k}", [_message(f"call {n}:{call}")] * 2) for k in range(3)]
                await writer.append_many(parts)
                await writer.append(f"plain{n}", [_message(f"plain {call}")])

        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.gather(*(write(n) for n in range(tasks)))
        finally:
            done = True
            await watcher
    assert reads > 1
    assert torn == [], f"{len(torn)} reads showed part of a call, e.g. {torn[:3]}"


@pytest.mark.heavy
async def test_appends_racing_a_truncation_are_never_lost(schema: str, heavy_scale: int) -> None:
    """A truncation racing appends on other connections: every append lands, above the truncation
    point, and the log reads gapless from it to the head, in the session and on the feed."""
    trials = 40 * heavy_scale
    wrong: list[tuple[int, list[int]]] = []
    async with _pg.store(schema, pool_size=4) as store, _pg.store(schema, pool_size=6) as writer:
        for trial in range(trials):
            session = f"s{trial}"
            await store.append(session, [_message(str(n)) for n in range(10)])
            appends = [asyncio.ensure_future(writer.append(session, [_message(f"racing {n}")])) for n in range(5)]
            await asyncio.sleep(0)  # the appends are on their way to the server
            removed = await store.truncate_before(session, 6)
            await asyncio.gather(*appends)
            versions = [record.version async for record in store.read(session)]
            await feed_settled(store)
            fed = [r.version async for r in store.read_all() if r.session_id == session]
            if removed != 5 or versions != list(range(6, 16)) or fed != versions:
                wrong.append((removed, versions))
    assert wrong == [], f"{len(wrong)} of {trials} trials lost or kept the wrong events: {wrong[:3]}"


@pytest.mark.heavy
async def test_a_truncation_expecting_a_version_never_passes_a_concurrent_append(schema: str, heavy_scale: int) -> None:
    """A truncation that states the head it saw either runs before the racing append or fails with
    a conflict naming the new head: it never removes events it did not expect."""
    trials = 40 * heavy_scale
    outcomes: dict[str, int] = {}
    async with _pg.store(schema, pool_size=4) as store, _pg.store(schema, pool_size=4) as writer:
        for trial in range(trials):
            session = f"s{trial}"
            await store.append(session, [_message(str(n)) for n in range(4)])
            append = asyncio.ensure_future(writer.append(session, [_message("racing")], expected_version=4))
            await asyncio.sleep(0)
            try:
                await store.truncate_before(session, 5, expected_version=4)
                outcome, expected = "truncated first", [5]
            except ConcurrencyError as error:
                assert error.actual_version == 5
                outcome, expected = "conflict", [1, 2, 3, 4, 5]
            await append
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            assert [r.version async for r in store.read(session)] == expected
    assert sum(outcomes.values()) == trials, outcomes


@pytest.mark.heavy
async def test_the_same_append_many_sent_twice_at_once_is_stored_once(schema: str, heavy_scale: int) -> None:
    """A retry racing the original call (a lost reply, resent at once): one stores, the other finds
    the ids stored and answers with the same results."""
    trials = 30 * heavy_scale
    async with _pg.store(schema, pool_size=4) as first, _pg.store(schema, pool_size=4) as second:
        await first.append("warm-up", [_message("tables")])
        for trial in range(trials):
            ids = [[uuid.uuid4(), uuid.uuid4()], [uuid.uuid4()]]
            call = [
                SessionAppend(f"a{trial}", [_message("a1"), _message("a2")], event_ids=ids[0]),
                SessionAppend(f"b{trial}", [_message("b1")], event_ids=ids[1]),
            ]
            one, other = await asyncio.gather(first.append_many(call), second.append_many(call))
            assert one == other
            assert [await first.current_version(f"{s}{trial}") for s in "ab"] == [2, 1]


@pytest.mark.heavy
async def test_calls_creating_the_same_new_sessions_at_once_all_land(schema: str, heavy_scale: int) -> None:
    """Two calls that both create a session (any version): the one that finds it being created by
    the other waits, then tries again on the row it finds; neither fails."""
    trials = 30 * heavy_scale
    async with _pg.store(schema, pool_size=4) as first, _pg.store(schema, pool_size=4) as second:
        await first.append("warm-up", [_message("tables")])
        for trial in range(trials):
            sessions = [f"n{trial}-{k}" for k in range(3)]
            await asyncio.gather(
                first.append_many([SessionAppend(s, [_message("first")]) for s in sessions]),
                second.append_many([SessionAppend(s, [_message("second")]) for s in reversed(sessions)]),
            )
            assert [await first.current_version(s) for s in sessions] == [2, 2, 2]
