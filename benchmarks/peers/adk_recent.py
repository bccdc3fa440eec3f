"""ADK's own ``DatabaseSessionService`` on the peer workload, loading with ``GetSessionConfig(num_recent_events=12)``.

The last three runs (four events each), as an application that bounds its context asks for them;
everything else as in ``benchmarks.peers.adk``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from benchmarks.peers import adk
from benchmarks.peers._workload import Backend, PeerStore, Target

__all__ = ["BACKENDS", "RECENT_EVENTS", "SYSTEM", "open_store", "unavailable"]

SYSTEM = "google-adk, last 12 events"
BACKENDS: tuple[Backend, ...] = adk.BACKENDS
RECENT_EVENTS = 12
unavailable = adk.unavailable


@asynccontextmanager
async def open_store(target: Target, session_id: str) -> AsyncIterator[PeerStore]:
    """The same store as ``adk``'s, loading the last ``RECENT_EVENTS`` events."""
    async with adk.open_store(target, session_id, recent_events=RECENT_EVENTS) as store:
        yield store
