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
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio

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


class GroupCommit(Generic[R]):
    """Commits appends in batches through ``commit``; ``take`` picks each batch from the queue."""

    def __init__(self, commit: CommitBatch[R], *, take: TakeBatch[R] | None = None, max_inflight: int = 1) -> None:
        self._commit = commit
        self._take = take
        self._max_inflight = max_inflight
        self._inflight = 0
        self._queue: list[_Ticket[R]] = []

    async def submit(self, request: R) -> AppendResult:
        """Queue one append and return its result once the commit that holds it is done."""
        if self._inflight < self._max_inflight and not self._queue:
            return await self._alone(request)
        ticket = _Ticket(request)
        self._queue.append(ticket)
        if self._inflight < self._max_inflight:
            await self._lead(ticket)
            if ticket.outcome.done() and not ticket.outcome.cancelled():
                return ticket.outcome.result()  # the common case: committed by this very call
        try:
            return await asyncio.shield(ticket.outcome)
        except asyncio.CancelledError:
            if not ticket.taken:
                self._queue.remove(ticket)
                raise
            await settle(ticket.outcome)  # it is being committed: wait, then honour the cancellation
            raise

    async def _alone(self, request: R) -> AppendResult:
        """Nothing queued and a slot free: commit this append directly, with no ticket to wait on.

        Appends that queue meanwhile are led afterwards by this same call (before it returns or
        re-raises), exactly as a leader serves the queue: none is ever left without a leader.
        """
        self._inflight += 1
        try:
            (outcome,) = await self._commit([request])
        finally:
            self._inflight -= 1
            if self._queue and self._inflight < self._max_inflight:
                await self._lead(None)
        if isinstance(outcome, AppendResult):
            return outcome
        raise outcome

    def _next_batch(self) -> list[_Ticket[R]]:
        if self._take is None or len(self._queue) == 1:
            batch, self._queue = self._queue, []
            return batch
        requests = [ticket.request for ticket in self._queue]
        chosen, _ = self._take(requests)
        chosen_ids = {id(request) for request in chosen}
        batch = [ticket for ticket in self._queue if id(ticket.request) in chosen_ids]
        self._queue = [ticket for ticket in self._queue if id(ticket.request) not in chosen_ids]
        return batch

    async def _lead(self, own: _Ticket[R] | None) -> None:
        """Commit queued batches until none is left, even if the leader is cancelled meanwhile.

        A batch holding only the leader's own append is committed inline (no task, fewer loop
        turns): a cancellation then concerns that append alone and reaches it directly.
        """
        self._inflight += 1
        cancelled: asyncio.CancelledError | None = None
        try:
            while self._queue:
                batch = self._next_batch()
                for ticket in batch:
                    ticket.taken = True
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
            self._inflight -= 1
        if cancelled is not None:
            raise cancelled
