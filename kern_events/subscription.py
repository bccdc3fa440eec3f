"""Live subscriptions to the global feed: catch up from the log, then follow new events as they land.

A :class:`Subscription` is one loop over ``read_all`` from the last delivered position, so the switch
from catch-up to live delivery cannot skip or repeat an event. Between reads it sleeps until the
store signals a change: appends in this process signal directly; other processes are seen through
the backend's notifications (PostgreSQL ``LISTEN``) or, failing those, by polling every
``poll_interval`` seconds. A lost database connection is waited out and the loop resumes from its
last position.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self

from kern_events.errors import StorageUnavailableError
from kern_events.records import Record

__all__ = ["ChangeSignal", "Subscription"]


class ChangeSignal:
    """A broadcast "something was appended": take :meth:`current` before reading, then wait on it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """The event the next :meth:`fire` sets; take it *before* reading, so no change is missed."""
        return self._event

    def fire(self) -> None:
        """Wake everyone waiting on the current event."""
        self._event.set()
        self._event = asyncio.Event()


class _Feed(Protocol):
    """What a subscription needs from a store."""

    change_signal: ChangeSignal

    def read_all(self, *, from_position: int = 0, limit: int | None = None) -> AsyncIterator[Record]: ...

    def listen(self) -> AbstractAsyncContextManager[None]: ...


class Subscription:
    """Every record from ``from_position`` on, in global order, then new ones as they are appended.

    Use as ``async with store.subscribe(from_position=p) as subscription: async for record in
    subscription: ...``; :attr:`position` is where a later subscription should resume.
    """

    def __init__(
        self,
        store: _Feed,
        *,
        from_position: int,
        poll_interval: float,
    ) -> None:
        self._store = store
        self.position = from_position
        """The position after the last delivered record (pass it as ``from_position`` to resume)."""
        self._poll_interval = poll_interval
        self._listening: AbstractAsyncContextManager[None] | None = None
        self._records: AsyncGenerator[Record] | None = None

    async def __aenter__(self) -> Self:
        self._listening = self._store.listen()
        await self._listening.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        records, self._records = self._records, None
        listening, self._listening = self._listening, None
        if records is not None:
            await records.aclose()
        if listening is not None:
            await listening.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> AsyncIterator[Record]:
        if self._listening is None:
            raise RuntimeError("use the subscription inside `async with store.subscribe(...)`")
        if self._records is None:
            self._records = self._follow()
        return self._records

    async def _follow(self) -> AsyncGenerator[Record]:
        backoff = 0.05
        while True:
            changed = self._store.change_signal.current()
            try:
                async for record in self._store.read_all(from_position=self.position):
                    self.position = record.position + 1
                    yield record
            except StorageUnavailableError:
                await asyncio.sleep(backoff)  # the database is away: wait, then resume from self.position
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._poll_interval)
