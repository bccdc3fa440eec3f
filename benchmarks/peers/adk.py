"""Google ADK on the peer workload, through its ``DatabaseSessionService`` (SQLAlchemy, async drivers),
or through kern-events' ``KernEventsSessionService`` (the ``adk`` extra's one-line switch).

``persist`` is ``append_event`` once per event of a run (the user message, the model's function call, the
function response, the final answer with its ``usage_metadata``), reusing the ``Session`` the last ``load``
returned, as the ``Runner`` appends each event it yields to the session it loaded. ``load`` is
``get_session(app_name, user_id, session_id)``, what the ``Runner`` reads before each run: with no
``GetSessionConfig`` (``num_recent_events`` / ``after_timestamp`` could cut it) it returns every event.

The module is the ``adk`` system; :data:`VARIANTS` are the others (``adk:kern``, ``adk:recent``,
``adk:kern_recent``): the same calls on kern-events' service, and/or loading the last 12 events with
``GetSessionConfig(num_recent_events=12)``, so rows differ only in the service and the window.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmarks.peers._workload import AgentRun, Backend, PeerStore, Target, missing

if TYPE_CHECKING:
    from google.adk.events import Event
    from google.adk.sessions import BaseSessionService, Session

__all__ = ["BACKENDS", "SYSTEM", "VARIANTS", "Variant", "open_store", "unavailable"]

SYSTEM = "google-adk"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")
APP_NAME = "bench_app"
USER_ID = "bench-user"
AGENT_NAME = "bench_agent"
MODEL_VERSION = "bench-model"


def unavailable() -> str | None:
    """``None`` when ADK's database session service and its async drivers import, else why not (ADK
    imports without greenlet, but its DatabaseSessionService then refuses to start)."""
    return missing("google-adk", ("google.adk.sessions", "greenlet", "aiosqlite", "asyncpg"))


def _events(run: AgentRun) -> list[Event]:
    """The four events the Runner appends for one run, as an LlmAgent with one tool produces them."""
    from google.adk.events import Event
    from google.genai import types

    call = types.FunctionCall(id=run.tool_call_id, name=run.tool_name, args=run.tool_arguments)
    # ADK wraps a tool's non-dict return value as {"result": value}.
    response = types.FunctionResponse(id=run.tool_call_id, name=run.tool_name, response={"result": run.tool_result})
    usage = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=run.input_tokens,
        candidates_token_count=run.output_tokens,
        total_token_count=run.total_tokens,
    )
    return [
        Event(
            invocation_id=run.run_id,
            author="user",
            content=types.Content(role="user", parts=[types.Part(text=run.user)]),
        ),
        Event(
            invocation_id=run.run_id,
            author=AGENT_NAME,
            model_version=MODEL_VERSION,
            content=types.Content(role="model", parts=[types.Part(function_call=call)]),
        ),
        Event(
            invocation_id=run.run_id,
            author=AGENT_NAME,
            content=types.Content(role="user", parts=[types.Part(function_response=response)]),
        ),
        Event(
            invocation_id=run.run_id,
            author=AGENT_NAME,
            model_version=MODEL_VERSION,
            content=types.Content(role="model", parts=[types.Part(text=run.answer)]),
            usage_metadata=usage,
        ),
    ]


class _AdkStore:
    def __init__(self, service: BaseSessionService, session: Session, recent_events: int | None = None) -> None:
        self._service = service
        self._session = session
        self._recent_events = recent_events

    async def prefill(self, runs: Sequence[AgentRun]) -> None:
        """``append_event`` per event: ADK has no bulk append (one transaction, or append, per event)."""
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
            raise RuntimeError(f"{type(self._service).__name__} lost session {self._session.id!r}")
        self._session = session
        return len(session.events)


def _db_url(target: Target) -> str:
    """The target as an async SQLAlchemy URL (ADK refuses synchronous drivers)."""
    if target.backend == "sqlite":
        if target.sqlite_path is None:
            raise ValueError("a SQLite target needs sqlite_path")
        return f"sqlite+aiosqlite:///{target.sqlite_path}"
    if target.postgres_url is None:
        raise ValueError("a PostgreSQL target needs postgres_url")
    scheme, _, rest = target.postgres_url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {target.postgres_url!r}")
    return f"postgresql+asyncpg://{rest}"


@asynccontextmanager
async def open_store(target: Target, session_id: str, *, recent_events: int | None = None) -> AsyncIterator[PeerStore]:
    """``DatabaseSessionService`` on the target (its default engine options) and a new session."""
    from google.adk.sessions import DatabaseSessionService

    async with DatabaseSessionService(db_url=_db_url(target)) as service:
        await service.prepare_tables()
        session = await service.create_session(app_name=APP_NAME, user_id=USER_ID, session_id=session_id)
        yield _AdkStore(service, session, recent_events)


@asynccontextmanager
async def _open_kern_store(target: Target, session_id: str, *, recent_events: int | None) -> AsyncIterator[PeerStore]:
    """``KernEventsSessionService`` on ``SqliteDb`` (its default ``synchronous=FULL``) or ``PostgresDb``
    on the target, and a new session; the state comes from its checkpoint, never from a fold."""
    from benchmarks.peers.kern import kern_db
    from kern_events.adapters.adk import KernEventsSessionService

    async with kern_db(target) as db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP_NAME, user_id=USER_ID, session_id=session_id)
        yield _AdkStore(service, session, recent_events)


@dataclass(frozen=True)
class Variant:
    """One more ADK system: kern-events' service instead of ADK's, and/or a window of recent events."""

    SYSTEM: str
    kern: bool
    recent_events: int | None = None
    BACKENDS: tuple[Backend, ...] = BACKENDS

    def unavailable(self) -> str | None:
        """As for the ``adk`` system, plus kern-events' adapter for the kern variants."""
        if not self.kern:
            return unavailable()
        return missing("google-adk", ("google.adk.sessions", "kern_events.adapters.adk"))

    def open_store(self, target: Target, session_id: str) -> AbstractAsyncContextManager[PeerStore]:
        if self.kern:
            return _open_kern_store(target, session_id, recent_events=self.recent_events)
        return open_store(target, session_id, recent_events=self.recent_events)


RECENT_EVENTS = 12
"""The window of the ``recent`` variants: the last three runs (four events each), as an application
that bounds its context asks for them."""
VARIANTS = {
    "kern": Variant("google-adk on kern-events", kern=True),
    "recent": Variant("google-adk, last 12 events", kern=False, recent_events=RECENT_EVENTS),
    "kern_recent": Variant("google-adk on kern-events, last 12 events", kern=True, recent_events=RECENT_EVENTS),
}
