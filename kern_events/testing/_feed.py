"""Waiting for the global feed: a test that reads ``read_all`` right after appending waits until the
feed's fence has passed its appends, because on a shared PostgreSQL server anyone's open transaction
holds the fence back for a while (see :class:`kern_events.FeedLag`)."""

from __future__ import annotations

import anyio

from kern_events.store import EventStore


async def feed_reaches(store: EventStore, position: int, *, within: float = 30.0) -> None:
    """Return once every event at or below ``position`` is readable through the global feed."""
    deadline = anyio.current_time() + within
    delay = 0.005
    while True:
        lag = await store.feed_lag()
        if lag.fence is None or lag.fence > position:
            return
        if anyio.current_time() > deadline:
            raise AssertionError(f"the feed stayed behind position {position} for {within} s: {lag}")
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def feed_settled(store: EventStore, *, within: float = 30.0) -> None:
    """Return once the global feed holds back no committed event of ``store``."""
    deadline = anyio.current_time() + within
    delay = 0.005
    while (lag := await store.feed_lag()).held_back:
        if anyio.current_time() > deadline:
            raise AssertionError(f"the feed held back committed events for {within} s: {lag}")
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.1)
