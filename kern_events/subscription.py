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
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self

from kern_events import _telemetry
from kern_events._loops import call_soon_on
from kern_events.errors import StorageUnavailableError
from kern_events.records import FeedPosition, Record, next_position

__all__ = ["Change", "ChangeSignal", "Subscription"]


class Change:
    """One change to wait for: set by the :meth:`ChangeSignal.fire` after it was taken.

    Like an ``asyncio.Event`` that is set once, but waitable from any event loop on any thread:
    a store used from several threads' loops wakes the subscribers on every one of them.
    """

    __slots__ = ("_fired", "_mutex", "_taken", "_waiters")

    def __init__(self, mutex: threading.Lock) -> None:
        self._mutex = mutex
        self._fired = False
        self._taken = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]] | None = None

    def is_set(self) -> bool:
        """Whether the change has happened."""
        return self._fired

    def set(self) -> None:
        """Mark the change as happened and wake every waiter, on whatever loop it waits."""
        with self._mutex:
            self._fired = True
            waiters, self._waiters = self._waiters, None
        if waiters:
            for loop, waiter in waiters:
                call_soon_on(loop, _wake, waiter)

    async def wait(self) -> bool:
        """Return once the change has happened (at once if it has)."""
        if self._fired:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        with self._mutex:
            if self._fired:
                return True
            if self._waiters is None:
                self._waiters = []
            self._waiters.append((loop, waiter))
        try:
            return await waiter
        finally:
            if not waiter.done() or waiter.cancelled():  # given up (a poll timeout): forget the waiter
                with self._mutex:
                    if self._waiters is not None and (loop, waiter) in self._waiters:
                        self._waiters.remove((loop, waiter))


def _wake(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class ChangeSignal:
    """A broadcast "something was appended": take :meth:`current` before reading, then wait on it.

    Fired and waited on from any event loop and thread.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._change = Change(self._mutex)

    def current(self) -> Change:
        """The change the next :meth:`fire` sets; take it *before* reading, so no change is missed."""
        change = self._change
        change._taken = True
        return change

    def fire(self) -> None:
        """Wake everyone waiting on the current change."""
        if not self._change._taken:
            # Nobody took it, so nobody waits on it: whoever takes it later reads after this
            # append committed. The common case (no subscriber) costs one look.
            return
        with self._mutex:  # taken and replaced at once: a concurrent fire never drops a change
            change, self._change = self._change, Change(self._mutex)
            change._fired = True
            waiters, change._waiters = change._waiters, None
        if waiters:
            for loop, waiter in waiters:
                call_soon_on(loop, _wake, waiter)


class _Feed(Protocol):
    """What a subscription needs from a store."""

    change_signal: ChangeSignal

    def read_all(self, *, from_position: FeedPosition = 0, limit: int | None = None) -> AsyncIterator[Record]: ...

    async def feed_cursor(self, from_position: FeedPosition = 0) -> FeedPosition: ...

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
        from_position: FeedPosition,
        poll_interval: float,
    ) -> None:
        self._store = store
        self.position: FeedPosition = from_position
        """The position after the last delivered record (pass it as ``from_position`` to resume): an
        int, or in a sharded store a :class:`~kern_events.records.FeedCursor` once the subscription has
        started (save ``str(position)``)."""
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
            traced = None
            try:
                self.position = await self._store.feed_cursor(self.position)
                records = self._store.read_all(from_position=self.position)
                probe = _telemetry.probe
                traced = None if probe is None else probe.subscription_pass(self._store, self.position, records)
                async for record in records if traced is None else traced:
                    self.position = next_position(self.position, record.position)
                    yield record
            except StorageUnavailableError:
                await asyncio.sleep(backoff)  # the database is away: wait, then resume from self.position
                backoff = min(backoff * 2, 2.0)
                continue
            finally:
                if traced is not None:
                    await traced.aclose()  # ends the pass's span when the subscription closes, not at collection
            backoff = 0.05
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._poll_interval)
