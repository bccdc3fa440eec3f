"""``KernEventsSessionService``: Google ADK's ``BaseSessionService`` on a kern-events store.

Switching is one line: ``session_service = KernEventsSessionService(db)`` where an application had
``DatabaseSessionService(url)``. Each ADK session is one kern-events session (``session_type="adk"``)
whose stream holds ``adk.session_created`` and one ``adk.event`` per appended ADK event; ``app:`` and
``user:`` state live in one stream per app and one per (app, user) as ``adk.state_delta`` events, and
an event's deltas are appended with it in one ``append_many``: all or nothing.

Reads never fold a whole session. ``get_session`` reads the events' tail backwards (as far as
``GetSessionConfig`` asks) and the state from its newest checkpoint (a snapshot written every
``state_checkpoint_every`` versions) plus the state deltas after it, so its cost does not grow with the
session's length. The stale-session check is the store's expected version: a ``Session`` carries the
version it was read at (its storage marker), and an append from an older copy is a
``StaleSessionError``, whatever the clocks say. Tested against google-adk 2.13.0 (the ``adk`` extra
pins it).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import anyio
import msgspec
from google.adk.errors import StaleSessionError
from google.adk.errors.already_exists_error import AlreadyExistsError
from google.adk.errors.session_not_found_error import SessionNotFoundError
from google.adk.events.event import Event as AdkEvent
from google.adk.sessions import _session_util
from google.adk.sessions.base_session_service import BaseSessionService, GetSessionConfig, ListSessionsResponse
from google.adk.sessions.session import Session
from google.adk.sessions.state import State

from kern_events._ids import event_id_for
from kern_events._registry import register_event_type
from kern_events._validate import MAX_ID_LENGTH, check_non_negative
from kern_events.db import BaseDb
from kern_events.errors import ConcurrencyError, InvalidArgumentError
from kern_events.events import Event, SessionStarted
from kern_events.records import NO_STREAM, ExpectedVersion, Record, SessionAppend, Snapshot
from kern_events.store import EventStore

if TYPE_CHECKING:
    from kern_events._index import SessionInfo

__all__ = [
    "SESSION_TYPE",
    "AdkEventAppended",
    "AdkSessionCreated",
    "AdkSessionDeleted",
    "AdkStateDelta",
    "KernEventsSessionService",
]

SESSION_TYPE = "adk"
"""The ``session_type`` of the sessions this service starts (``db.get_sessions(session_type=...)``)."""
STATE_SNAPSHOT = "adk.state"
"""The snapshot name of a stream's state checkpoints (session, app and user streams alike)."""
_STATE_SCHEMA = 1


@register_event_type
class AdkSessionCreated(Event, tag="adk.session_created", frozen=True):
    """An ADK session was created: its names, its own (session-scoped) initial state and its time."""

    app_name: str
    user_id: str
    session_id: str
    state: dict[str, Any]
    timestamp: float


@register_event_type
class AdkEventAppended(Event, tag="adk.event", frozen=True):
    """One ADK event (its ``model_dump_json``), with its session-scoped state delta and timestamp kept
    beside it so that state and windows are read without parsing events."""

    event: str
    state_delta: dict[str, Any]
    timestamp: float


@register_event_type
class AdkStateDelta(Event, tag="adk.state_delta", frozen=True):
    """A change to ``app:`` or ``user:`` state (keys without their prefix), in an app or user stream."""

    delta: dict[str, Any]


@register_event_type
class AdkSessionDeleted(Event, tag="adk.session_deleted", frozen=True):
    """The session is being deleted (appended just before its erasure, so stale copies conflict)."""


_SESSION_TYPES = ("adk.session_created", "adk.event")
_STATE_TYPES = ("adk.session_created", "adk.event", "adk.state_delta")
_STATE_CODEC = msgspec.json.Encoder()
_STATE_DECODER = msgspec.json.Decoder(dict[str, Any])
_CONCURRENT_READS = 8
"""How many of a listing's reads are in flight at once."""


def _stream(kind: str, *parts: str) -> str:
    """The kern-events session id of an ADK stream: the parts percent-quoted (so any names, control
    characters included, map to distinct ids), or their SHA-256 when that is longer than ids may be."""
    joined = f"adk.{kind}:" + ":".join(quote(part, safe="") for part in parts)
    if len(joined) <= MAX_ID_LENGTH:
        return joined
    return f"adk.{kind}#" + hashlib.sha256(joined.encode()).hexdigest()


def _normalized_id(session_id: str) -> str:
    """ADK's in-memory and sqlite services strip surrounding whitespace from session ids."""
    return session_id.strip()


def _names(info: SessionInfo, app_name: str) -> tuple[str, str] | None:
    """The ADK session id and user of an index row, when the row holds them unhashed (the session
    id as its name, the user in its user stream's id) and they name this very stream."""
    prefix = _stream("user", app_name, "")
    if info.name is None or info.user_id is None or not info.user_id.startswith(prefix):
        return None
    user = unquote(info.user_id[len(prefix) :])
    if (
        _stream("user", app_name, user) != info.user_id
        or _stream("session", app_name, user, info.name) != info.session_id
    ):
        return None
    return info.name, user


def _fold(state: dict[str, Any], record: Record) -> None:
    """Apply one record's state change (a creation's initial state, an event's or a shared delta)."""
    event = record.event
    if isinstance(event, AdkSessionCreated):
        state.update(event.state)
    elif isinstance(event, AdkEventAppended):
        state.update(event.state_delta)
    elif isinstance(event, AdkStateDelta):
        state.update(event.delta)


class KernEventsSessionService(BaseSessionService):
    """ADK sessions, events and state in a kern-events store (``BaseSessionService``).

    ``db`` is a kern-events db (``SqliteDb``, ``PostgresDb``, ``InMemoryDb``) or a bare event store; the
    service does not own it (close the db yourself). A stream's state is checkpointed every
    ``state_checkpoint_every`` versions, which bounds what a read folds.
    """

    def __init__(self, db: BaseDb | EventStore, *, state_checkpoint_every: int = 100) -> None:
        check_non_negative("state_checkpoint_every", state_checkpoint_every)
        if state_checkpoint_every < 1:
            raise InvalidArgumentError("state_checkpoint_every", "it must be at least 1")
        self._store: EventStore = db.store if isinstance(db, BaseDb) else db
        self.state_checkpoint_every = state_checkpoint_every

    # -- BaseSessionService ----------------------------------------------------------------------

    async def create_session(
        self,
        *,
        app_name: str,
        user_id: str,
        state: dict[str, Any] | None = None,
        session_id: str | None = None,
    ) -> Session:
        """A new session; ``AlreadyExistsError`` if one of that id is live (a deleted one may be re-created)."""
        session_id = _normalized_id(session_id or "") or str(uuid.uuid4())
        stream = _stream("session", app_name, user_id, session_id)
        if await self._store.get_session_info(stream) is not None:
            raise AlreadyExistsError(f"Session with id {session_id} already exists.")
        # A deleted session's versions are kept as a tombstone: re-create it at that version, not NO_STREAM.
        head = await self._store.current_version(stream)
        deltas = _session_util.extract_json_safe_state_delta(state or {})
        timestamp = time.time()
        started = SessionStarted(
            session_type=SESSION_TYPE,
            agent_id=_stream("app", app_name),
            user_id=_stream("user", app_name, user_id),
            name=session_id if len(session_id) <= MAX_ID_LENGTH else None,
        )
        created = AdkSessionCreated(
            app_name=app_name, user_id=user_id, session_id=session_id, state=deltas["session"], timestamp=timestamp
        )
        parts = [SessionAppend(stream, [started, created], expected_version=head or NO_STREAM)]
        parts += self._shared_parts(app_name, user_id, deltas, origin=f"{stream}@{head}")
        try:
            results = await self._store.append_many(parts)
        except ConcurrencyError as exc:
            if exc.session_id == stream:
                raise AlreadyExistsError(f"Session with id {session_id} already exists.") from exc
            raise
        await self._checkpoint_shared(parts[1:], results[1:])
        session = Session(
            id=session_id,
            app_name=app_name,
            user_id=user_id,
            state=await self._merged_state(app_name, user_id, dict(deltas["session"])),
            last_update_time=timestamp,
        )
        session._storage_update_marker = str(results[0].to_version)
        return session

    async def get_session(
        self,
        *,
        app_name: str,
        user_id: str,
        session_id: str,
        config: GetSessionConfig | None = None,
    ) -> Session | None:
        """The session with its state and the events ``config`` asks for, or ``None``.

        The events are one backward read of the tail: it stops after ``num_recent_events`` or at the
        first event older than ``after_timestamp`` (events are kept in the order they were appended,
        whose timestamps ADK's runner makes non-decreasing). The state never comes from that window.
        """
        session_id = _normalized_id(session_id)
        if not session_id:
            return None
        stream = _stream("session", app_name, user_id, session_id)
        info = await self._store.get_session_info(stream)
        if info is None or info.session_type != SESSION_TYPE:
            return None
        version = info.version
        limit = config.num_recent_events if config is not None else None
        after = config.after_timestamp if config is not None else None
        events: list[AdkEvent] = []
        last_update_time = 0.0
        newest = True
        async for record in self._store.read(stream, to_version=version, backwards=True, types=_SESSION_TYPES):
            event = record.event
            if not isinstance(event, AdkSessionCreated | AdkEventAppended):
                continue
            if newest:
                last_update_time, newest = event.timestamp, False
            if isinstance(event, AdkSessionCreated) or (limit is not None and len(events) >= limit):
                break
            if after is not None and event.timestamp < after:
                break
            events.append(AdkEvent.model_validate_json(event.event))
        events.reverse()
        state = await self._state(stream, version)
        session = Session(
            id=session_id,
            app_name=app_name,
            user_id=user_id,
            state=await self._merged_state(app_name, user_id, state),
            events=events,
            last_update_time=last_update_time,
        )
        session._storage_update_marker = str(version)
        return session

    async def list_sessions(self, *, app_name: str, user_id: str | None = None) -> ListSessionsResponse:
        """The app's sessions (of one user, or of all), least recently updated first, without events.

        One index listing names them (ids and users come from the index rows); then each session's
        state and last timestamp are one checkpoint load and one read of the deltas after it, and each
        user's state the same, all issued at once rather than one session after another."""
        if user_id is None:
            infos = await self._store.list_sessions(
                session_type=SESSION_TYPE, agent_id=_stream("app", app_name), sort_by="updated_at", descending=False
            )
        else:
            infos = await self._store.list_sessions(
                session_type=SESSION_TYPE,
                user_id=_stream("user", app_name, user_id),
                sort_by="updated_at",
                descending=False,
            )
        found: list[tuple[str, str, dict[str, Any], float] | None] = [None] * len(infos)
        shared: dict[str, dict[str, Any]] = {}
        limiter = anyio.Semaphore(_CONCURRENT_READS)

        async def load_session(index: int, info: SessionInfo) -> None:
            async with limiter:
                names = _names(info, app_name) or await self._names_stored(info.session_id, app_name)
                if names is not None:
                    state, timestamp = await self._state_and_time(info.session_id, info.version)
                    found[index] = (*names, state, timestamp)

        async def load_shared(stream: str) -> None:
            async with limiter:
                shared[stream] = await self._shared_state(stream)

        async with anyio.create_task_group() as group:
            for index, info in enumerate(infos):
                group.start_soon(load_session, index, info)
            group.start_soon(load_shared, _stream("app", app_name))
        users = {one[1] for one in found if one is not None}
        async with anyio.create_task_group() as group:
            for user in users:
                group.start_soon(load_shared, _stream("user", app_name, user))
        sessions: list[Session] = []
        for one in found:
            if one is None:
                continue
            session_id, user, state, timestamp = one
            state.update({State.APP_PREFIX + key: value for key, value in shared[_stream("app", app_name)].items()})
            state.update(
                {State.USER_PREFIX + key: value for key, value in shared[_stream("user", app_name, user)].items()}
            )
            sessions.append(
                Session(id=session_id, app_name=app_name, user_id=user, state=state, last_update_time=timestamp)
            )
        return ListSessionsResponse(sessions=sessions)

    async def delete_session(self, *, app_name: str, user_id: str, session_id: str) -> None:
        """Erase the session (its id can be created again); deleting what is not there does nothing."""
        stream = _stream("session", app_name, user_id, _normalized_id(session_id))
        if await self._store.get_session_info(stream) is None:
            return
        # One event first, so the head moves past every copy's marker: an append from a copy read
        # before the delete then conflicts (and reports the session gone) instead of reviving it.
        await self._store.append(stream, [AdkSessionDeleted()])
        await self._store.delete_session(stream)

    async def get_user_state(self, *, app_name: str, user_id: str) -> dict[str, Any]:
        """The user's ``user:`` state (keys without the prefix), from its checkpoint and the deltas after it."""
        return await self._shared_state(_stream("user", app_name, user_id))

    async def append_event(self, session: Session, event: AdkEvent) -> AdkEvent:
        """Store ``event`` with its ``app:``/``user:`` deltas in one atomic append at the version
        ``session`` was read at: ``StaleSessionError`` if the session changed since,
        ``SessionNotFoundError`` if it was deleted. Partial events are not stored; ``temp:`` keys
        reach the in-memory session only."""
        if event.partial:
            return event
        self._apply_temp_state(session, event)
        event = self._trim_temp_delta_state(event)
        stream = _stream("session", session.app_name, session.user_id, session.id)
        marker = session._storage_update_marker
        expected: int | ExpectedVersion = int(marker) if marker is not None else ExpectedVersion.ANY
        deltas = _session_util.extract_json_safe_state_delta(event.actions.state_delta if event.actions else {})
        stored = AdkEventAppended(
            event=event.model_dump_json(exclude_none=True), state_delta=deltas["session"], timestamp=event.timestamp
        )
        parts = [
            SessionAppend(
                stream, [stored], expected_version=expected, event_ids=[event_id_for("adk.event", stream, event.id)]
            )
        ]
        parts += self._shared_parts(session.app_name, session.user_id, deltas, origin=f"{stream}/{event.id}")
        if expected == ExpectedVersion.ANY and await self._store.get_session_info(stream) is None:
            raise SessionNotFoundError(f"Session {session.id} not found.")
        try:
            results = await self._store.append_many(parts)
        except ConcurrencyError as exc:
            if exc.session_id != stream:
                raise
            if await self._store.get_session_info(stream) is None:
                raise SessionNotFoundError(f"Session {session.id} not found.") from exc
            raise StaleSessionError(
                f"Session {session.id} was modified in storage after it was read (version {exc.actual_version},"
                f" this copy is at {exc.expected_version}); get the session again and retry."
            ) from exc
        self._commit_event_to_session(session, event)
        session.last_update_time = event.timestamp
        session._storage_update_marker = str(results[0].to_version)
        await self._checkpoint_if_due(stream, results[0].from_version, results[0].to_version)
        await self._checkpoint_shared(parts[1:], results[1:])
        return event

    # -- state ---------------------------------------------------------------------------------------

    def _shared_parts(
        self, app_name: str, user_id: str, deltas: dict[str, dict[str, Any]], *, origin: str
    ) -> list[SessionAppend]:
        """The app and user streams' parts of an append (none for empty deltas); their event ids
        derive from ``origin`` so a retried append stores them once."""
        parts = []
        for kind, stream in (("app", _stream("app", app_name)), ("user", _stream("user", app_name, user_id))):
            if deltas[kind]:
                parts.append(
                    SessionAppend(
                        stream,
                        [AdkStateDelta(delta=deltas[kind])],
                        event_ids=[event_id_for("adk.state_delta", stream, origin)],
                    )
                )
        return parts

    async def _merged_state(self, app_name: str, user_id: str, state: dict[str, Any]) -> dict[str, Any]:
        """Session-scoped ``state`` with the app's and the user's state added under their prefixes."""
        for key, value in (await self._shared_state(_stream("app", app_name))).items():
            state[State.APP_PREFIX + key] = value
        for key, value in (await self._shared_state(_stream("user", app_name, user_id))).items():
            state[State.USER_PREFIX + key] = value
        return state

    async def _shared_state(self, stream: str) -> dict[str, Any]:
        return await self._state(stream, None)

    async def _state(self, stream: str, version: int | None, timestamps: list[float] | None = None) -> dict[str, Any]:
        """A stream's state at ``version`` (its head if ``None``): the newest checkpoint at or below it,
        plus the deltas after it (at most ``state_checkpoint_every`` of them); the session events'
        timestamps among those are added to ``timestamps``."""
        snapshot = await self._store.load_snapshot(
            stream, STATE_SNAPSHOT, schema_version=_STATE_SCHEMA, max_version=version
        )
        state: dict[str, Any] = _STATE_DECODER.decode(snapshot.data) if snapshot is not None else {}
        start = snapshot.version + 1 if snapshot is not None else 1
        async for record in self._store.read(stream, from_version=start, to_version=version, types=_STATE_TYPES):
            _fold(state, record)
            if timestamps is not None and isinstance(record.event, AdkSessionCreated | AdkEventAppended):
                timestamps.append(record.event.timestamp)
        return state

    async def _state_and_time(self, stream: str, version: int) -> tuple[dict[str, Any], float]:
        """A session's state at ``version`` and its newest event's timestamp: the deltas read after its
        checkpoint end with that event, unless the checkpoint is at ``version`` (then one more read)."""
        timestamps: list[float] = []
        state = await self._state(stream, version, timestamps)
        return state, timestamps[-1] if timestamps else await self._last_update_time(stream, version)

    async def _names_stored(self, stream: str, app_name: str) -> tuple[str, str] | None:
        """The session's ADK id and user as its creation stored them (for ids the index row hashed)."""
        created = await self._created(stream)
        if created is None or created.app_name != app_name:
            return None
        return created.session_id, created.user_id

    async def _checkpoint_if_due(self, stream: str, from_version: int, to_version: int) -> None:
        """Save the stream's state when an append crossed a multiple of ``state_checkpoint_every``
        (a checkpoint is a cache of the log: one lost to a crash is written at the next crossing)."""
        every = self.state_checkpoint_every
        if to_version // every == (from_version - 1) // every:
            return
        state = await self._state(stream, to_version)
        await self._store.save_snapshot(
            Snapshot(
                session_id=stream,
                name=STATE_SNAPSHOT,
                schema_version=_STATE_SCHEMA,
                version=to_version,
                data=_STATE_CODEC.encode(state),
            )
        )

    async def _checkpoint_shared(self, parts: Sequence[SessionAppend], results: Sequence[Any]) -> None:
        for part, result in zip(parts, results, strict=True):
            await self._checkpoint_if_due(part.session_id, result.from_version, result.to_version)

    async def _created(self, stream: str) -> AdkSessionCreated | None:
        async for record in self._store.read(stream, types=("adk.session_created",), limit=1):
            if isinstance(record.event, AdkSessionCreated):
                return record.event
        return None

    async def _last_update_time(self, stream: str, version: int) -> float:
        """The timestamp of the session's newest event (its creation's if it has none)."""
        async for record in self._store.read(stream, to_version=version, backwards=True, types=_SESSION_TYPES, limit=1):
            if isinstance(record.event, AdkSessionCreated | AdkEventAppended):
                return record.event.timestamp
        return 0.0
