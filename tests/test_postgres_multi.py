"""PostgreSQL under concurrency: multi-session appends and prefix truncation racing other writers.

Each scenario runs many short trials against the real server, because each race shows only in a
fraction of them; the sizes are small by default and grow with ``KERN_HEAVY_SCALE``.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from kern_events import MessageAdded, SessionAppend
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
