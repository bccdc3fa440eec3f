"""The seam OpenTelemetry plugs into: one module attribute the write and read paths look at.

:data:`probe` is ``None`` until :func:`kern_events.telemetry.instrument` sets it, so with telemetry
off each instrumented call costs one attribute look-up and nothing here imports OpenTelemetry. The
paths that look (``BaseEventStore.append``, ``append_many``, ``read``, ``read_all``, subscriptions,
group commit batches, ``Run.flush``) hand the probe their call to wrap; :class:`Probe` is what they
need from it, implemented over the OpenTelemetry API in :mod:`kern_events._otel`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from kern_events.records import AppendResult, FeedPosition, Record

if TYPE_CHECKING:
    from kern_events.sessions import Run

__all__ = ["Probe", "probe"]


class Probe(Protocol):
    """What the instrumented paths call while telemetry is on; each wraps one call of theirs."""

    async def append(
        self, store: object, session_id: object, events: object, call: Callable[[], Awaitable[AppendResult]]
    ) -> AppendResult:
        """Run ``call`` (an append of ``events`` to ``session_id``) in a span, timing it."""
        ...

    async def append_many(
        self, store: object, appends: object, call: Callable[[], Awaitable[list[AppendResult]]]
    ) -> list[AppendResult]:
        """Run ``call`` (an ``append_many``) in a span, timing it."""
        ...

    def read(self, store: object, session_id: object, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        """``records`` (one session's read), counted in a span that ends with the iteration."""
        ...

    def read_all(self, store: object, records: AsyncIterator[Record]) -> AsyncIterator[Record]:
        """``records`` (a global-feed read), counted in a span that ends with the iteration."""
        ...

    def subscription_pass(
        self, store: object, position: FeedPosition, records: AsyncIterator[Record]
    ) -> AsyncGenerator[Record]:
        """One catch-up pass of a subscription from ``position``: a span if it delivers anything,
        and the feed's lag (how old its first record is)."""
        ...

    def batch(self, backend: str, size: int) -> None:
        """A group commit of ``backend`` is about to commit ``size`` appends in one transaction."""
        ...

    async def flush(self, run: Run, call: Callable[[], Awaitable[AppendResult | None]]) -> AppendResult | None:
        """Run ``call`` (a run step's flush) in a span named by what the step does."""
        ...


probe: Probe | None = None
"""The active probe, or ``None`` while telemetry is off (the default)."""
