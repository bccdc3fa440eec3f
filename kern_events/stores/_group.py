"""Group commit without a background task, shared by the SQL backends.

Appends that arrive while ``max_inflight`` batches are already being committed wait in a queue; the
caller that finds a free slot becomes a leader and commits queued appends batch after batch until
the queue is empty. Each append gets its own outcome, and every caller is answered after the commit
that holds its append. A lone writer commits a batch of one: no extra round trip, no extra task
switch. A cancelled caller whose append is already being committed waits for that commit before the
cancellation propagates, so nothing of a cancelled append is left running behind the caller's back;
one still in the queue is simply removed.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio

from kern_events import _telemetry
from kern_events.records import AppendResult

__all__ = ["GroupCommit", "settle"]

T = TypeVar("T")
R = TypeVar("R")

Outcome = AppendResult | Exception
CommitBatch = Callable[[Sequence[R]], Awaitable[Sequence[Outcome]]]
TakeBatch = Callable[[list[R]], tuple[list[R], list[R]]]


async def settle(call: asyncio.Future[T]) -> tuple[T, asyncio.CancelledError | None]:
    """Wait for ``call`` to finish even if the waiter is cancelled; return its result and the
    cancellation (if any) for the caller to re-raise once its own bookkeeping is done.

    Once cancelled, the rest of the wait runs in a shielded anyio cancel scope: an anyio scope
    re-delivers its cancellation on every loop turn, so a bare ``asyncio.shield`` would be woken
    (and spin) thousands of times a second while a slow commit finishes.
    """
    try:
        return await asyncio.shield(call), None
    except asyncio.CancelledError as error:
        if call.cancelled():
            raise
        cancelled = error
    with anyio.CancelScope(shield=True):
        while not call.done():
            try:
                await asyncio.shield(call)
            except asyncio.CancelledError as error:  # a plain task.cancel() still reaches a shielded scope
                if call.cancelled():
                    raise
                cancelled = error
    return call.result(), cancelled


class _Ticket(Generic[R]):
    __slots__ = ("outcome", "request", "taken")

    def __init__(self, request: R) -> None:
        self.request = request
        self.taken = False
        self.outcome: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()


class _Lane(Generic[R]):
    """The queue and in-flight count of one event loop's appends."""

    __slots__ = ("inflight", "queue")

    def __init__(self) -> None:
        self.inflight = 0
        self.queue: list[_Ticket[R]] = []


class GroupCommit(Generic[R]):
    """Commits appends in batches through ``commit``; ``take`` picks each batch from the queue.

    Appends are grouped per event loop: a store used from several threads' loops commits each loop's
    appends in batches of their own (the futures a batch answers belong to one loop), and ``commit``
    may then run on several loops at once.
    """

    def __init__(
        self, commit: CommitBatch[R], *, take: TakeBatch[R] | None = None, max_inflight: int = 1, backend: str = ""
    ) -> None:
        self._commit = commit
        self._backend = backend
        """The backend's name, as telemetry reports batch sizes under it."""
        self._take = take
        self._max_inflight = max_inflight
        self._last: tuple[asyncio.AbstractEventLoop | None, _Lane[R]] = (None, _Lane())
        self._lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lane[R]] = weakref.WeakKeyDictionary()
        self._lanes_lock = threading.Lock()

    def _here(self) -> _Lane[R]:
        """The running loop's lane: the last one used, unless the loop changed."""
        loop = asyncio.get_running_loop()
        last = self._last  # one tuple, replaced whole: never a loop paired with another loop's lane
        if last[0] is loop:
            return last[1]
        with self._lanes_lock:
            lane = self._lanes.get(loop)
            if lane is None:
                lane = self._lanes[loop] = _Lane()
        self._last = (loop, lane)
        return lane

    async def submit(self, request: R) -> AppendResult:
        """Queue one append and return its result once the commit that holds it is done."""
        lane = self._here()
        if lane.inflight < self._max_inflight and not lane.queue:
            return await self._alone(lane, request)
        ticket = _Ticket(request)
        lane.queue.append(ticket)
        if lane.inflight < self._max_inflight:
            await self._lead(lane, ticket)
            if ticket.outcome.done() and not ticket.outcome.cancelled():
                return ticket.outcome.result()  # the common case: committed by this very call
        try:
            return await asyncio.shield(ticket.outcome)
        except asyncio.CancelledError:
            if not ticket.taken:
                lane.queue.remove(ticket)
                raise
            await settle(ticket.outcome)  # it is being committed: wait, then honour the cancellation
            raise

    async def _alone(self, lane: _Lane[R], request: R) -> AppendResult:
        """Nothing queued and a slot free: commit this append directly, with no ticket to wait on.

        Appends that queue meanwhile are led afterwards by this same call (before it returns or
        re-raises), exactly as a leader serves the queue: none is ever left without a leader.
        """
        lane.inflight += 1
        try:
            if _telemetry.probe is not None:
                _telemetry.probe.batch(self._backend, 1)
            (outcome,) = await self._commit([request])
        finally:
            lane.inflight -= 1
            if lane.queue and lane.inflight < self._max_inflight:
                await self._lead(lane, None)
        if isinstance(outcome, AppendResult):
            return outcome
        raise outcome

    def _next_batch(self, lane: _Lane[R]) -> list[_Ticket[R]]:
        if self._take is None or len(lane.queue) == 1:
            batch, lane.queue = lane.queue, []
            return batch
        requests = [ticket.request for ticket in lane.queue]
        chosen, _ = self._take(requests)
        chosen_ids = {id(request) for request in chosen}
        batch = [ticket for ticket in lane.queue if id(ticket.request) in chosen_ids]
        lane.queue = [ticket for ticket in lane.queue if id(ticket.request) not in chosen_ids]
        return batch

    async def _lead(self, lane: _Lane[R], own: _Ticket[R] | None) -> None:
        """Commit queued batches until none is left, even if the leader is cancelled meanwhile.

        A batch holding only the leader's own append is committed inline (no task, fewer loop
        turns): a cancellation then concerns that append alone and reaches it directly.
        """
        lane.inflight += 1
        cancelled: asyncio.CancelledError | None = None
        try:
            while lane.queue:
                batch = self._next_batch(lane)
                for ticket in batch:
                    ticket.taken = True
                if _telemetry.probe is not None:
                    _telemetry.probe.batch(self._backend, len(batch))
                cancelled_now: asyncio.CancelledError | None = None
                try:
                    if own is not None and batch == [own] and cancelled is None:
                        try:
                            outcomes = await self._commit([own.request])
                        except asyncio.CancelledError as error:
                            own.outcome.cancel()
                            cancelled = error
                            continue
                    else:
                        call = asyncio.ensure_future(self._commit([ticket.request for ticket in batch]))
                        outcomes, cancelled_now = await settle(call)
                except Exception as error:
                    outcomes = [error] * len(batch)
                cancelled = cancelled or cancelled_now
                for ticket, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, AppendResult):
                        ticket.outcome.set_result(outcome)
                    else:
                        ticket.outcome.set_exception(outcome)
        finally:
            lane.inflight -= 1
        if cancelled is not None:
            raise cancelled
