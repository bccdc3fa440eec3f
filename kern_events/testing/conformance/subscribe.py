"""Subscriptions: catch up from the log, then follow live appends, in order, without gaps or duplicates."""

from __future__ import annotations

import asyncio

import pytest

from kern_events import InvalidArgumentError, MessageAdded, Record
from kern_events.subscription import Subscription
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled


def _message(n: int) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=f"m{n}")


async def _take(subscription: Subscription, count: int, within: float = 10.0) -> list[Record]:
    taken: list[Record] = []

    async def take() -> None:
        async for record in subscription:
            taken.append(record)
            if len(taken) == count:
                return

    await asyncio.wait_for(take(), within)
    return taken


async def test_catch_up_then_live_delivery_without_gaps_or_duplicates(backend: Backend) -> None:
    backend.require("global_feed")
    async with backend.store() as store:
        for n in range(5):
            await store.append(f"s{n % 2}", [_message(n)])
        async with store.subscribe(poll_interval=30) as subscription:
            first = await _take(subscription, 5)

            async def writer() -> None:
                for n in range(5, 25):
                    await store.append(f"s{n % 3}", [_message(n)])

            writing = asyncio.create_task(writer())
            rest = await _take(subscription, 20)
            await writing
        await feed_settled(store)
        everything = [record async for record in store.read_all()]
        # the position resumes right after the last delivered record (an int, or a sharded feed's cursor)
        assert [record async for record in store.read_all(from_position=subscription.position)] == []
        await store.append("s1", [_message(25)])
        await feed_settled(store)
        after = [record.event async for record in store.read_all(from_position=subscription.position)]
    delivered = first + rest
    assert [record.position for record in delivered] == [record.position for record in everything]
    assert [record.event for record in delivered] == [_message(n) for n in range(25)]
    if isinstance(subscription.position, int):
        assert subscription.position == everything[-1].position + 1
    assert after == [_message(25)]


async def test_a_subscription_resumes_from_a_position(backend: Backend) -> None:
    backend.require("global_feed")
    async with backend.store() as store:
        results = [await store.append("s", [_message(n)]) for n in range(6)]
        resume_at = results[3].positions[0]
        async with store.subscribe(from_position=resume_at, poll_interval=30) as subscription:
            records = await _take(subscription, 3)
    assert [record.event for record in records] == [_message(3), _message(4), _message(5)]


async def test_appends_from_another_store_on_the_same_database_are_delivered(backend: Backend) -> None:
    backend.require("global_feed")
    if not backend.persistent:
        pytest.skip("in-memory stores do not share a database")
    # A backend with notifications must deliver through them (the poll would take a minute).
    poll_interval = 60.0 if backend.notifies else 0.05
    async with backend.store() as reader, backend.store() as writer:
        await writer.append("s", [_message(0)])
        async with reader.subscribe(poll_interval=poll_interval) as subscription:
            assert [record.event for record in await _take(subscription, 1)] == [_message(0)]
            await asyncio.sleep(0.05)
            await writer.append("s", [_message(1)])
            assert [record.event for record in await _take(subscription, 1, within=5)] == [_message(1)]


async def test_leaving_a_subscription_early_releases_it(backend: Backend) -> None:
    backend.require("global_feed")
    async with backend.store() as store:
        await store.append("s", [_message(0), _message(1)])
        async with store.subscribe() as subscription:
            async for _record in subscription:
                break
        async with store.subscribe(from_position=subscription.position) as again:
            assert [record.event for record in await _take(again, 1)] == [_message(1)]
        with pytest.raises(InvalidArgumentError, match="poll_interval"):
            store.subscribe(poll_interval=0)
        with pytest.raises(RuntimeError, match="async with"):
            aiter(store.subscribe())
