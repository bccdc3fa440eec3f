"""Google ADK on the peer workload through kern-events' ``KernEventsSessionService`` (the ``adk`` extra).

The same calls as ``benchmarks.peers.adk`` makes on ADK's own ``DatabaseSessionService``: ``persist``
is ``append_event`` once per event of a run (the same four events) on the ``Session`` the last
``load`` returned; ``load`` is ``get_session`` with no ``GetSessionConfig`` (every event, as the
``Runner`` asks by default); the state comes from its checkpoint, never from folding the session.
So the two rows differ only in the store behind the one-line switch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from benchmarks.peers._workload import AgentRun, Backend, PeerStore, Target, missing
from benchmarks.peers.adk import APP_NAME, USER_ID, _events
from kern_events.db import BaseDb, PostgresDb, SqliteDb

if TYPE_CHECKING:
    from google.adk.sessions import Session

    from kern_events.adapters.adk import KernEventsSessionService

__all__ = ["BACKENDS", "SYSTEM", "open_store", "unavailable"]

SYSTEM = "google-adk on kern-events"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")


def unavailable() -> str | None:
    """``None`` when ADK and kern-events' ADK adapter import, else why not."""
    return missing("google-adk", ("google.adk.sessions", "kern_events.adapters.adk"))


class _KernAdkStore:
    def __init__(self, service: KernEventsSessionService, session: Session, recent_events: int | None = None) -> None:
        self._service = service
        self._session = session
        self._recent_events = recent_events

    async def prefill(self, runs: Sequence[AgentRun]) -> None:
        """``append_event`` per event, as for ADK's own service."""
        for run in runs:
            await self.persist(run)

    async def persist(self, run: AgentRun) -> None:
        """The run's four ``append_event`` calls on the session the last ``load`` returned."""
        for event in _events(run):
            await self._service.append_event(self._session, event)

    async def load(self) -> int:
        """``get_session``: the session, its merged state and every event (or the last ``recent_events``)."""
        from google.adk.sessions.base_session_service import GetSessionConfig

        config = None if self._recent_events is None else GetSessionConfig(num_recent_events=self._recent_events)
        session = await self._service.get_session(
            app_name=APP_NAME, user_id=USER_ID, session_id=self._session.id, config=config
        )
        if session is None:
            raise RuntimeError(f"kern-events lost ADK session {self._session.id!r}")
        self._session = session
        return len(session.events)


@asynccontextmanager
async def open_store(target: Target, session_id: str, *, recent_events: int | None = None) -> AsyncIterator[PeerStore]:
    """``SqliteDb`` (its default ``synchronous=FULL``) or ``PostgresDb`` on the target, and a new session."""
    from kern_events.adapters.adk import KernEventsSessionService

    db: BaseDb
    if target.backend == "sqlite":
        db = SqliteDb(db_file=target.sqlite_path)
    else:
        db = PostgresDb(db_url=target.postgres_url, pool_size=2)
    async with db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP_NAME, user_id=USER_ID, session_id=session_id)
        yield _KernAdkStore(service, session, recent_events)
