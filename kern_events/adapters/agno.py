"""``KernEventsDb``: Agno's ``BaseDb`` with its sessions and runs on a kern-events store.

Switching is one line: ``db = KernEventsDb(kern_db, SqliteDb(db_file="agno.db"))`` where an
application had ``db = SqliteDb(db_file="agno.db")``. Each Agno session is one kern-events session
(``session_type`` ``"agent"``, ``"team"`` or ``"workflow"``, with its ids and owner in the index):
``SessionStarted`` creates it, an ``agno.session`` event carries the top-level fields that changed
(whole new values), ``SessionRenamed`` a new name, and each run is an ``agno.run`` event holding the
run's dict as Agno serialized it (the newest one of a run id wins; ``agno.run_deleted`` removes it).
Everything else Agno keeps in its db (memories, knowledge, evals, traces, metrics, approvals,
schedules, ...) is delegated unchanged to the wrapped Agno db, so every Agno feature keeps working.

``upsert_session`` receives whole sessions; it diffs them against the stored session and appends only
what changed (fields, name, runs it does not hold yet), at the exact version it read, re-reading and
diffing again on a conflict: two runs written concurrently into one session are both stored (a run
missing from a stale whole session is never taken as deleted). A stored run changes through
``upsert_run``, as Agno 3 writes it (its own dbs' ``upsert_session`` writes no runs at all). A write
refused because the session belongs to another user raises
:class:`SessionOwnerError` instead of returning ``None``, and storage errors propagate. Reads keep
Agno's contract: another user's session reads as ``None``. A run's locator stream
(``agno-run:<run_id>``, written with the run) names its session, so a lookup by run id reads that
session alone; listings sort and filter on sessions' fields without reading their runs.

The logic is written once, as coroutines (``_Sessions``): ``KernEventsDb`` (Agno's ``BaseDb``) runs
each call on an event loop it owns, in a thread of its own; ``AsyncKernEventsDb`` (``AsyncBaseDb``,
wrapping an async Agno db) awaits them on the caller's loop. Tested against agno 3.1.10 (the
``agno`` extra pins it).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from agno.db.base import AsyncBaseDb as AgnoAsyncBaseDb
from agno.db.base import BaseDb as AgnoBaseDb
from agno.db.base import SessionType
from agno.db.utils import deserialize_run, deserialize_session, filter_context_runs, get_run_type

from kern_events._registry import register_event_type
from kern_events.adapters._streams import stream_id
from kern_events.db import BaseDb
from kern_events.errors import ConcurrencyError, InvalidArgumentError, SessionNotFoundError
from kern_events.events import Event, SessionRenamed, SessionStarted
from kern_events.records import NO_STREAM, ExpectedVersion, Record, SessionAppend

if TYPE_CHECKING:
    from agno.session import Session

    from kern_events._index import SessionInfo
    from kern_events.store import EventStore

__all__ = [
    "AsyncKernEventsDb",
    "KernEventsDb",
    "RunDeleted",
    "RunLocated",
    "RunStored",
    "SessionFieldsChanged",
    "SessionOwnerError",
]

T = TypeVar("T")

_ATTEMPTS = 32
_CACHE_SIZE = 256
_TYPES = ("agent", "team", "workflow")
_ACTIVE = frozenset({"PENDING", "RUNNING", "PAUSED"})
"""Run statuses that keep a session with its owner (``reassign_session_owner``)."""
_RUN_PREFIX = "agno-run:"
_HEADER_TYPES = ("session_started", "agno.session", "session_renamed")
"""The events a session's fields fold from (everything but its runs')."""
_COMPONENT = {"agent": "agent_id", "team": "team_id", "workflow": "workflow_id"}
_DATA = {"agent": "agent_data", "team": "team_data", "workflow": "workflow_data"}


@register_event_type
class SessionFieldsChanged(Event, tag="agno.session", frozen=True):
    """Top-level fields of an Agno session (as ``Session.to_dict`` gives them) that changed: their new values."""

    fields: dict[str, Any]


@register_event_type
class RunStored(Event, tag="agno.run", frozen=True):
    """A run as Agno serialized it (``run.to_dict()``); a later one of the same ``run_id`` replaces it."""

    run_id: str
    run_type: str
    run: dict[str, Any]
    user_id: str | None = None


@register_event_type
class RunDeleted(Event, tag="agno.run_deleted", frozen=True):
    """The run was deleted (``delete_run``)."""

    run_id: str


@register_event_type
class RunLocated(Event, tag="agno.run_located", frozen=True):
    """In a run's locator stream (``agno-run:<run_id>``): a session that stored the run, so that
    ``get_run`` and ``delete_run`` read that session instead of every session."""

    session_id: str


class SessionOwnerError(InvalidArgumentError):
    """A write named a session that belongs to another user; nothing was written.

    Agno's own dbs drop such a write and return ``None`` (agno-agi/agno#7957, #7986); here the
    caller learns it. ``argument`` is ``"user_id"``; ``session_id`` and ``user_id`` are attributes.
    """

    def __init__(self, session_id: str, user_id: str | None) -> None:
        super().__init__("user_id", f"session {session_id!r} belongs to another user than {user_id!r}")
        self.session_id = session_id
        self.user_id = user_id


class _Stored(msgspec.Struct, kw_only=True):
    """One Agno session as its stream folds: the session dict without runs, and its runs in order."""

    fields: dict[str, Any]
    runs: dict[str, tuple[str, dict[str, Any], str | None]]
    """run_id -> (run_type, run dict, user_id), in the order the runs were first stored."""
    version: int


def _fold(records: Sequence[Record], start: _Stored | None = None) -> _Stored | None:
    """The Agno session a stream's records describe, folded onto ``start`` (a copy of it) if given;
    ``None`` if no session start was folded."""
    stored = None if start is None else _Stored(fields=dict(start.fields), runs=dict(start.runs), version=start.version)
    for record in records:
        event = record.event
        at = int(record.recorded_at)
        if isinstance(event, SessionStarted) and stored is not None:
            # a later start (reassign_session_owner): a new owner, the same session
            stored.version = record.version
            stored.fields["user_id"] = event.user_id
            continue
        if isinstance(event, SessionStarted):
            session_type = event.session_type
            fields: dict[str, Any] = {
                "session_id": record.session_id,
                "session_type": session_type,
                "user_id": event.user_id,
                "session_data": event.session_data,
                "metadata": event.metadata,
                "summary": None,
                "created_at": at,
                "updated_at": at,
            }
            for kind in _TYPES:
                if kind == session_type:
                    fields[_COMPONENT[kind]] = getattr(event, _COMPONENT[kind])
                    fields[_DATA[kind]] = getattr(event, _DATA[kind])
            stored = _Stored(fields=fields, runs={}, version=record.version)
            continue
        if stored is None:
            continue
        stored.version = record.version
        stored.fields["updated_at"] = at
        if isinstance(event, SessionFieldsChanged):
            stored.fields.update(event.fields)
        elif isinstance(event, SessionRenamed):
            stored.fields["session_data"] = {**(stored.fields.get("session_data") or {}), "session_name": event.name}
        elif isinstance(event, RunStored):
            stored.runs[event.run_id] = (event.run_type, event.run, event.user_id)
        elif isinstance(event, RunDeleted):
            stored.runs.pop(event.run_id, None)
    return stored


def _plain(value: Any) -> Any:
    """``value`` as JSON would hold it (what Agno's SQL dbs hand back after a round trip)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _normal(value: Any) -> Any:
    """``value`` without the keys whose value is empty (``None``, ``[]``, ``{}``), at every depth."""
    if isinstance(value, dict):
        return {key: _normal(item) for key, item in value.items() if item is not None and item != [] and item != {}}
    if isinstance(value, list):
        return [_normal(item) for item in value]
    return value


def _same(stored: dict[str, Any], incoming: dict[str, Any]) -> bool:
    """Whether a run is unchanged: Agno's ``to_dict`` of a run read back differs from the first one
    only in keys it leaves out when empty (``events: []`` or absent), which is no change."""
    return stored == incoming or _normal(stored) == _normal(incoming)


def _session_type(session: Session) -> str:
    from agno.session import AgentSession, TeamSession

    if isinstance(session, AgentSession):
        return "agent"
    if isinstance(session, TeamSession):
        return "team"
    return "workflow"


def _session_fields(session: Session) -> tuple[str, dict[str, Any], list[tuple[str, Any]]]:
    """The session's type, its dict without runs, and its runs as (run_id, run)."""
    kind = _session_type(session)
    fields = _plain(session.to_dict(include_runs=False))
    fields["session_type"] = kind
    runs = []
    for run in session.runs or []:
        run_id = run.get("run_id") if isinstance(run, dict) else run.run_id
        if run_id is None:
            raise InvalidArgumentError("session.runs", "a run must have a run_id")
        runs.append((str(run_id), run))
    return kind, fields, runs


def _run_event(run: Any, user_id: str | None) -> RunStored:
    data = _plain(run if isinstance(run, dict) else run.to_dict())
    return RunStored(run_id=str(data["run_id"]), run_type=get_run_type(run), run=data, user_id=user_id)


class _Loop:
    """An event loop in a daemon thread of its own, on which every call of the sync API runs."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run ``factory()`` on the loop and wait for its result (from any thread but the loop's)."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="kern-events-agno", daemon=True)
                self._thread.start()
            loop = self._loop

        async def call() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(call(), loop).result()

    def stop(self) -> None:
        """Stop the loop, wait for its thread and close it (a later :meth:`run` starts another)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()


class _Sessions:
    """The session and run methods of both dbs, written once as coroutines over the kern-events store:
    :class:`KernEventsDb` runs them on a loop of its own, :class:`AsyncKernEventsDb` awaits them."""

    def __init__(self, db: BaseDb | EventStore) -> None:
        self._store: EventStore = db.store if isinstance(db, BaseDb) else db
        self._cache: OrderedDict[str, tuple[float, _Stored]] = OrderedDict()
        """session_id -> (its index row's created_at, the session folded at some version): reads
        fold only the events after it."""
        self._headers: OrderedDict[str, tuple[float, _Stored]] = OrderedDict()
        """The same for sessions folded without their runs (what listings sort and filter on)."""
        self._objects: dict[str, dict[str, tuple[dict[str, Any], Any]]] = {}
        """session_id -> run_id -> (the stored run dict, Agno's run object decoded from it)."""

    # -- sessions --------------------------------------------------------------------------------

    async def get_session(
        self,
        session_id: str,
        session_type: SessionType | None = None,
        user_id: str | None = None,
        deserialize: bool | None = True,
        runs_limit: int | None = None,
    ) -> Session | dict[str, Any] | None:
        """The session (``None`` if there is none, or it belongs to another user than ``user_id``);
        with ``runs_limit``, only its last ``runs_limit`` top-level runs that history would use."""
        stored = await self._read(session_id)
        if stored is None or not _visible(stored.fields, user_id):
            return None
        if deserialize:
            return self._session_object(session_type, stored, runs_limit=runs_limit)
        return _raw(stored, runs_limit=runs_limit)

    async def get_sessions(
        self,
        session_type: SessionType | None = None,
        user_id: str | None = None,
        component_id: str | None = None,
        session_name: str | None = None,
        start_timestamp: int | None = None,
        end_timestamp: int | None = None,
        limit: int | None = None,
        page: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
        deserialize: bool | None = True,
        include_runs: bool = True,
    ) -> list[Session] | tuple[list[dict[str, Any]], int]:
        """Sessions matching every filter (``component_id`` is the agent, team or workflow id; a name
        matches by substring, case-insensitively; timestamps bound ``created_at``), sorted by
        ``created_at`` or ``updated_at`` (default newest update first) and paged (``page`` from 1).

        The index picks the candidates (type, user, component, and a name it may hold); they are
        sorted and filtered on their fields without their runs, and only the page's runs are read."""
        kind = None if session_type is None else SessionType(session_type).value
        wanted = session_name.lower() if session_name else None
        infos = [
            info
            for info in await self._index(kind, user_id, component_id)
            if wanted is None or info.name is None or wanted in info.name.lower()
        ]
        headers: list[tuple[SessionInfo, _Stored]] = []
        for info in infos:
            header = await self._header(info)
            if header is None:
                continue
            fields = header.fields
            name = (fields.get("session_data") or {}).get("session_name")
            if wanted is not None and (not isinstance(name, str) or wanted not in name.lower()):
                continue
            created = fields.get("created_at") or 0
            if start_timestamp is not None and created < start_timestamp:
                continue
            if end_timestamp is not None and created > end_timestamp:
                continue
            headers.append((info, header))
        key = sort_by if sort_by in {"created_at", "updated_at"} else "updated_at"
        descending = (sort_order or "desc").lower() != "asc"
        headers.sort(key=lambda one: (one[1].fields.get(key) or 0, one[0].session_id), reverse=descending)
        total = len(headers)
        if limit is not None:
            start = ((page or 1) - 1) * limit
            headers = headers[start : start + limit]
        chosen = [header for _, header in headers]
        if include_runs:
            full = [await self._read_at(info) for info, _ in headers]
            chosen = [one for one in full if one is not None]
        if not deserialize:
            return [_raw(one, include_runs=include_runs) for one in chosen], total
        if include_runs:
            return [self._session_object(session_type, one) for one in chosen]
        return [_deserialized(session_type, _raw(one, include_runs=False)) for one in chosen]

    async def upsert_session(
        self, session: Session, deserialize: bool | None = True
    ) -> Session | dict[str, Any] | None:
        """Store the session: a new one whole, a stored one by appending only what changed (fields,
        name, runs not stored yet; a stored run changes through ``upsert_run``). Another user's
        session raises :class:`SessionOwnerError`."""
        stored = (await self._upsert([session]))[0]
        return self._session_object(None, stored) if deserialize else _raw(stored)

    async def upsert_sessions(
        self, sessions: list[Session], deserialize: bool | None = True, preserve_updated_at: bool = False
    ) -> list[Session | dict[str, Any]]:
        """Store several sessions in one atomic append (see ``upsert_session``)."""
        stored = await self._upsert(sessions)
        return [self._session_object(None, one) if deserialize else _raw(one) for one in stored]

    async def rename_session(
        self,
        session_id: str,
        session_type: SessionType | None,
        session_name: str,
        user_id: str | None = None,
        deserialize: bool | None = True,
    ) -> Session | dict[str, Any] | None:
        """Rename the session; ``None`` if there is none or it belongs to another user than ``user_id``."""
        for _ in range(_ATTEMPTS):
            info = await self._store.get_session_info(session_id)
            if info is None or not _visible({"user_id": info.user_id}, user_id):
                return None
            try:
                await self._store.append(session_id, [SessionRenamed(name=session_name)], expected_version=info.version)
            except ConcurrencyError:
                continue
            stored = await self._read(session_id)
            if stored is None:
                return None
            raw = _raw(stored)
            return _deserialized(session_type, raw) if deserialize else raw
        raise ConcurrencyError(session_id, "a rename", await self._store.current_version(session_id))

    async def delete_session(self, session_id: str, user_id: str | None = None) -> bool:
        """Erase the session and its runs; ``False`` if there is none or it belongs to another user."""
        info = await self._store.get_session_info(session_id)
        if info is None or not _visible({"user_id": info.user_id}, user_id):
            return False
        return await self._store.delete_session(session_id)

    async def delete_sessions(self, session_ids: list[str], user_id: str | None = None) -> None:
        """Erase each of the sessions that exists and belongs to ``user_id`` (any owner if ``None``)."""
        for session_id in session_ids:
            await self.delete_session(session_id, user_id)

    async def reassign_session_owner(self, session_id: str, *, previous_user_id: str, user_id: str | None) -> bool:
        """Give the session to ``user_id`` if it still belongs to ``previous_user_id`` and none of its
        runs is pending, running or paused (as Agno's SQL dbs do); whether it changed hands.

        A second ``SessionStarted`` with the new owner carries it: the index takes its user, the
        session keeps its runs and fields."""
        for attempt in range(_ATTEMPTS):
            info = await self._store.get_session_info(session_id)
            if info is None or info.session_type not in _TYPES or info.user_id != previous_user_id:
                return False
            stored = await self._read_at(info)
            if stored is None or any(data.get("status") in _ACTIVE for _, data, _ in stored.runs.values()):
                return False
            started = SessionStarted(
                session_type=info.session_type,
                user_id=user_id,
                agent_id=info.agent_id,
                team_id=info.team_id,
                workflow_id=info.workflow_id,
            )
            if await self._committed([SessionAppend(session_id, [started], expected_version=info.version)], attempt):
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    def _session_object(
        self, session_type: SessionType | None, stored: _Stored, *, runs_limit: int | None = None
    ) -> Session:
        """Agno's session object for ``stored``; its runs are decoded once per stored version of each
        run and shared between reads, as Agno's own SQL dbs share them (their run-object cache)."""
        session = _deserialized(session_type, _raw(stored, include_runs=False))
        entries = [(run_id, entry) for run_id, entry in stored.runs.items()]
        if runs_limit is not None:
            entries = [item for item in entries if _in_context(item[1][1])]
            entries = entries[len(entries) - min(runs_limit, len(entries)) :]
        objects = self._objects.setdefault(str(stored.fields["session_id"]), {})
        runs = []
        for run_id, (run_type, data, _) in entries:
            known = objects.get(run_id)
            if known is None or known[0] is not data:
                known = (data, deserialize_run(run_type, _plain(data)))
                objects[run_id] = known
            runs.append(known[1])
        if len(self._objects) > _CACHE_SIZE:
            self._objects.pop(next(iter(self._objects)))
        session.runs = runs
        return session

    # -- runs ------------------------------------------------------------------------------------

    async def upsert_run(
        self,
        run: Any,
        session_id: str,
        user_id: str | None = None,
        run_index: int | None = None,
    ) -> None:
        """Store one run of a stored session (appended only if it changed); a session that does not
        exist raises :class:`~kern_events.errors.SessionNotFoundError`, another user's
        :class:`SessionOwnerError`."""
        data = _plain(run if isinstance(run, dict) else run.to_dict())
        if "run_id" not in data or data["run_id"] is None:
            raise InvalidArgumentError("run", "a run must have a run_id")
        event = RunStored(run_id=str(data["run_id"]), run_type=get_run_type(run), run=data, user_id=user_id)
        for attempt in range(_ATTEMPTS):
            info = await self._store.get_session_info(session_id)
            if info is None:
                raise SessionNotFoundError(session_id)
            if user_id is not None and info.user_id is not None and info.user_id != user_id:
                raise SessionOwnerError(session_id, user_id)
            stored = await self._read_at(info)
            known = None if stored is None else stored.runs.get(event.run_id)
            if known is not None and _same(known[1], event.run):
                return
            parts = [SessionAppend(session_id, [event], expected_version=info.version)]
            if known is None:
                parts += _locators([(session_id, event.run_id)])
            if await self._committed(parts, attempt):
                return

    async def get_run(self, run_id: str, deserialize: bool | None = True) -> Any:
        """The run with this id in any session (``None`` if there is none): its locator stream names
        the sessions that stored it, and only those are read."""
        for stored in await self._holding(run_id):
            row = next(row for row in _run_rows(stored) if row["run_id"] == run_id)
            return deserialize_run(row["run_type"], row["run_data"]) if deserialize else row
        return None

    async def cancel_pending_run(
        self,
        run_id: str,
        *,
        session_id: str,
        reason: str,
        user_id: str | None = None,
        expected_status: str = "PENDING",
    ) -> bool:
        """Cancel the run if it is still ``expected_status`` (pending or running) and is ``user_id``'s
        or nobody's, in one append at the version it was seen in (a concurrent status change wins);
        an empty content becomes ``reason``. Whether it changed."""
        if expected_status not in {"PENDING", "RUNNING"}:
            raise InvalidArgumentError("expected_status", "only a pending or running run can be cancelled")
        for attempt in range(_ATTEMPTS):
            info = await self._store.get_session_info(session_id)
            stored = None if info is None else await self._read_at(info)
            known = None if stored is None else stored.runs.get(run_id)
            if info is None or known is None:
                return False
            run_type, data, owner = known
            if data.get("status") != expected_status or (owner is not None and owner != user_id):
                return False
            cancelled = {**data, "status": "CANCELLED", "updated_at": int(time.time())}
            if data.get("content") in (None, ""):
                cancelled["content"] = reason
            event = RunStored(run_id=run_id, run_type=run_type, run=cancelled, user_id=owner)
            if await self._committed([SessionAppend(session_id, [event], expected_version=info.version)], attempt):
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    async def get_runs(
        self,
        session_id: str | None = None,
        user_id: str | None = None,
        agent_id: str | None = None,
        team_id: str | None = None,
        workflow_id: str | None = None,
        status: Any = None,
        limit: int | None = None,
        page: int | None = None,
        sort_by: str | None = None,
        sort_order: str | None = None,
        deserialize: bool | None = True,
    ) -> Any:
        """Runs matching every filter, in the order they were first stored, paged."""
        if session_id is not None:
            one = await self._read(session_id)
            sessions = [] if one is None else [one]
        else:
            sessions = [one for info in await self._index(None, None, None) if (one := await self._read_at(info))]
        rows = [row for stored in sessions for row in _run_rows(stored)]
        status_value = getattr(status, "value", status)
        wanted = {"user_id": user_id, "agent_id": agent_id, "team_id": team_id, "workflow_id": workflow_id}
        rows = [
            row
            for row in rows
            if all(value is None or row.get(key) == value for key, value in wanted.items())
            and (status_value is None or row.get("status") == status_value)
        ]
        if sort_by in {"created_at", "updated_at"}:
            rows.sort(key=lambda row: row.get(sort_by) or 0, reverse=(sort_order or "asc").lower() == "desc")
        total = len(rows)
        if limit is not None:
            start = ((page or 1) - 1) * limit
            rows = rows[start : start + limit]
        if not deserialize:
            return rows, total
        return [deserialize_run(row["run_type"], row["run_data"]) for row in rows]

    async def delete_run(self, run_id: str) -> bool:
        """Delete the run from its session; ``False`` if no session holds it."""
        return await self._delete_runs([run_id]) > 0

    async def delete_runs(self, run_ids: list[str]) -> None:
        """Delete the runs from their sessions."""
        await self._delete_runs(run_ids)

    # -- the kern-events side --------------------------------------------------------------------

    async def _read(self, session_id: str) -> _Stored | None:
        info = await self._store.get_session_info(session_id)
        if info is None:
            return None
        return await self._read_at(info)

    async def _read_at(self, info: SessionInfo) -> _Stored | None:
        """The session at ``info.version``: from the cache, plus the events after the cached version."""
        return await self._cached(self._cache, info, None)

    async def _header(self, info: SessionInfo) -> _Stored | None:
        """The session at ``info.version`` without its runs (their events are not read), or the whole
        session if it is cached at that version."""
        cached = self._cache.get(info.session_id)
        if cached is not None and cached[0] == info.created_at and cached[1].version == info.version:
            return cached[1]
        header = await self._cached(self._headers, info, _HEADER_TYPES)
        if header is not None and header.version < info.version:
            # the last events were not read (a run's): the last one set updated_at
            header.fields["updated_at"] = int(info.updated_at)
            header.version = info.version
        return header

    async def _cached(
        self, cache: OrderedDict[str, tuple[float, _Stored]], info: SessionInfo, types: tuple[str, ...] | None
    ) -> _Stored | None:
        cached = cache.get(info.session_id)
        start = None
        if cached is not None and cached[0] == info.created_at and cached[1].version <= info.version:
            if cached[1].version == info.version:
                return cached[1]
            start = cached[1]
        first = 1 if start is None else start.version + 1
        records = [
            record
            async for record in self._store.read(
                info.session_id, from_version=first, to_version=info.version, types=types
            )
        ]
        stored = _fold(records, start)
        if stored is not None:
            cache[info.session_id] = (info.created_at, stored)
            cache.move_to_end(info.session_id)
            while len(cache) > _CACHE_SIZE:
                cache.popitem(last=False)
        return stored

    async def _index(self, kind: str | None, user_id: str | None, component_id: str | None) -> list[SessionInfo]:
        """The index rows of the Agno sessions matching the filters (one listing per session type)."""
        infos: list[SessionInfo] = []
        for one in _TYPES if kind is None else (kind,):
            ids: dict[str, str | None] = dict.fromkeys(_COMPONENT.values())
            ids[_COMPONENT[one]] = component_id
            infos += await self._store.list_sessions(
                session_type=one,
                user_id=user_id,
                agent_id=ids["agent_id"],
                team_id=ids["team_id"],
                workflow_id=ids["workflow_id"],
                limit=None,
            )
        return infos

    async def _holding(self, run_id: str) -> list[_Stored]:
        """The sessions that hold the run, newest locator first (normally one). A run without a
        locator (stored by a release before locators) is looked for in every session, as before."""
        located = [
            record.event.session_id
            async for record in self._store.read(_run_stream(run_id))
            if isinstance(record.event, RunLocated)
        ]
        if not located:
            located = [info.session_id for info in await self._index(None, None, None)]
        holding = []
        for session_id in reversed(dict.fromkeys(located)):
            stored = await self._read(session_id)
            if stored is not None and run_id in stored.runs:
                holding.append(stored)
        return holding

    async def _upsert(self, sessions: Sequence[Session]) -> list[_Stored]:
        """Diff each session against its stored stream and append the changes (and the new runs'
        locators), all in one append; on a conflict read again and diff again."""
        incoming = [_session_fields(session) for session in sessions]
        for attempt in range(_ATTEMPTS):
            parts: list[SessionAppend] = []
            new_runs: list[tuple[str, str]] = []
            results: list[_Stored] = []
            for session, (kind, fields, runs) in zip(sessions, incoming, strict=True):
                session_id = session.session_id
                info = await self._store.get_session_info(session_id)
                stored = None if info is None else await self._read_at(info)
                events, expected = await self._changes(session_id, kind, fields, runs, info, stored)
                if events:
                    parts.append(SessionAppend(session_id, events, expected_version=expected))
                new_runs += [
                    (session_id, event.run_id)
                    for event in events
                    if isinstance(event, RunStored) and (stored is None or event.run_id not in stored.runs)
                ]
                records = [_record(session_id, event) for event in events]
                results.append(_fold_onto(stored, records))
            parts += _locators(new_runs)
            if await self._committed(parts, attempt):
                return results
        raise AssertionError("unreachable")  # pragma: no cover

    async def _committed(self, parts: Sequence[SessionAppend], attempt: int) -> bool:
        """Append ``parts`` (one ``append``, or one atomic ``append_many``); ``False`` after a conflict,
        having waited a little, so that the caller reads again (the last attempt's conflict raises)."""
        try:
            if len(parts) == 1:
                part = parts[0]
                await self._store.append(part.session_id, part.events, expected_version=part.expected_version)
            elif parts:
                await self._store.append_many(parts)
        except ConcurrencyError:
            if attempt == _ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.001 * (attempt + 1))
            return False
        return True

    async def _changes(
        self,
        session_id: str,
        kind: str,
        fields: dict[str, Any],
        runs: list[tuple[str, Any]],
        info: SessionInfo | None,
        stored: _Stored | None,
    ) -> tuple[list[Event], int | ExpectedVersion]:
        user_id = fields.get("user_id")
        if stored is None or info is None:
            head = await self._store.current_version(session_id)  # a deleted session's tombstone
            session_data = fields.get("session_data")
            name = (session_data or {}).get("session_name")
            started = SessionStarted(
                session_type=kind,
                user_id=user_id,
                name=name if isinstance(name, str) and name.strip() else None,
                metadata=fields.get("metadata"),
                session_data=session_data,
                **{_COMPONENT[kind]: fields.get(_COMPONENT[kind]), _DATA[kind]: fields.get(_DATA[kind])},
            )
            now = int(time.time())
            created = fields.get("created_at") or now
            rest = {
                key: value
                for key, value in fields.items()
                if key not in {"session_id", "session_type", "user_id", "session_data", "metadata"}
                and key not in _COMPONENT.values()
                and key not in _DATA.values()
                and value is not None
            }
            rest.update(created_at=created, updated_at=fields.get("updated_at") or created)
            events: list[Event] = [started]
            events += [_run_event(run, user_id) for _, run in runs]
            events.append(SessionFieldsChanged(fields=rest))
            return events, head if head else NO_STREAM
        owner = stored.fields.get("user_id")
        if owner is not None and owner != user_id:
            raise SessionOwnerError(session_id, user_id)
        changed = {
            key: value
            for key, value in fields.items()
            if key not in {"session_id", "created_at", "updated_at"} and stored.fields.get(key) != value
        }
        events = []
        old_name = (stored.fields.get("session_data") or {}).get("session_name")
        new_name = (fields.get("session_data") or {}).get("session_name")
        if isinstance(new_name, str) and new_name.strip() and new_name != old_name:
            events.append(SessionRenamed(name=new_name))
        if changed:
            events.append(SessionFieldsChanged(fields=changed))
        for run_id, run in runs:
            if run_id not in stored.runs:  # a stored run changes through upsert_run, as Agno 3 writes it
                events.append(_run_event(run, user_id))
        return events, info.version

    async def _delete_runs(self, run_ids: Sequence[str]) -> int:
        """Append a ``RunDeleted`` to each session holding one of the runs, then drop their locators."""
        deleted = 0
        for run_id in dict.fromkeys(run_ids):
            for stored in await self._holding(run_id):
                await self._store.append(str(stored.fields["session_id"]), [RunDeleted(run_id=run_id)])
                deleted += 1
            await self._store.delete_session(_run_stream(run_id))
        return deleted


class _Adapter:
    """What both dbs hold: the kern-events db, the wrapped Agno db, and the shared session logic."""

    _OWN = frozenset({"agno_db", "kern_db", "_sessions", "_loop"})

    def __init__(self, db: BaseDb | EventStore, agno_db: Any, *, id: str | None = None) -> None:
        super().__init__(id=id or agno_db.id)  # type: ignore[call-arg]
        self.kern_db = db
        self.agno_db = agno_db
        self._sessions = _Sessions(db)

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped db that Agno's base class does not declare (``Session``, table names, ...).
        if name in _Adapter._OWN:
            raise AttributeError(name)
        return getattr(self.agno_db, name)


class KernEventsDb(_Adapter, AgnoBaseDb):
    """An Agno db whose sessions and runs live in the kern-events ``db``; everything else is ``agno_db``'s.

    ``db`` is a kern-events db (``SqliteDb``, ``PostgresDb``, ``InMemoryDb``) or event store;
    ``agno_db`` is the Agno db (``agno.db.sqlite.SqliteDb``, ``PostgresDb``, ...) that keeps
    memories, knowledge, evals, traces, metrics and the rest. :meth:`close` closes both. Each call
    runs on an event loop this object owns, in a thread of its own.
    """

    def __init__(self, db: BaseDb | EventStore, agno_db: AgnoBaseDb, *, id: str | None = None) -> None:
        super().__init__(db, agno_db, id=id)
        self._loop = _Loop()

    def close(self) -> None:
        """Close the kern-events db, the wrapped Agno db and the loop thread."""
        try:
            self._loop.run(self.kern_db.aclose)
        finally:
            self._loop.stop()
            self.agno_db.close()


class AsyncKernEventsDb(_Adapter, AgnoAsyncBaseDb):
    """:class:`KernEventsDb` for Agno's async dbs: the same sessions and runs, awaited on the caller's
    loop; ``agno_db`` is an async Agno db (``AsyncSqliteDb``, ``AsyncPostgresDb``, ...)."""

    def __init__(self, db: BaseDb | EventStore, agno_db: AgnoAsyncBaseDb, *, id: str | None = None) -> None:
        super().__init__(db, agno_db, id=id)

    async def close(self) -> None:
        """Close the kern-events db and the wrapped Agno db."""
        try:
            await self.kern_db.aclose()
        finally:
            await self.agno_db.close()


def _visible(fields: dict[str, Any], user_id: str | None) -> bool:
    """Agno's read rule: no ``user_id`` sees every session, a ``user_id`` only that user's."""
    return user_id is None or fields.get("user_id") == user_id


def _record(session_id: str, event: Event) -> Record:
    """A stand-in record for folding an event about to be appended (its time is now)."""
    return Record(
        session_id=session_id,
        version=0,
        position=0,
        event_id=_NIL,
        recorded_at=time.time(),
        event=event,
    )


def _fold_onto(stored: _Stored | None, records: list[Record]) -> _Stored:
    if stored is None:
        folded = _fold(records)
        assert folded is not None
        folded.version = 0
        return folded
    copy = _Stored(fields=dict(stored.fields), runs=dict(stored.runs), version=stored.version)
    for record in records:
        event = record.event
        if isinstance(event, SessionFieldsChanged):
            copy.fields.update(event.fields)
        elif isinstance(event, SessionRenamed):
            copy.fields["session_data"] = {**(copy.fields.get("session_data") or {}), "session_name": event.name}
        elif isinstance(event, RunStored):
            copy.runs[event.run_id] = (event.run_type, event.run, event.user_id)
        copy.fields["updated_at"] = int(record.recorded_at)
    return copy


def _in_context(run: dict[str, Any]) -> bool:
    """Whether a run is one Agno's history uses (top level, not skipped by its status)."""
    return bool(filter_context_runs([run]))


def _raw(stored: _Stored, *, runs_limit: int | None = None, include_runs: bool = True) -> dict[str, Any]:
    """The session as Agno's SQL dbs return it with ``deserialize=False``."""
    raw: dict[str, Any] = _plain(stored.fields)
    runs = [data for _, data, _ in stored.runs.values()]
    if runs_limit is not None:
        runs = filter_context_runs(runs)[-runs_limit:] if runs_limit > 0 else []
    raw["runs"] = _plain(runs) if include_runs else None
    return raw


def _deserialized(session_type: SessionType | None, raw: dict[str, Any]) -> Session:
    """``raw`` (a fresh copy, see :func:`_raw`) as Agno's session object."""
    return deserialize_session(session_type, raw)


def _run_rows(stored: _Stored) -> list[dict[str, Any]]:
    """The session's runs as rows of Agno's runs table."""
    return [
        {
            "run_id": run_id,
            "session_id": stored.fields["session_id"],
            "run_type": run_type,
            "agent_id": data.get("agent_id"),
            "team_id": data.get("team_id"),
            "workflow_id": data.get("workflow_id"),
            "user_id": user_id,
            "parent_run_id": data.get("parent_run_id"),
            "status": data.get("status"),
            "run_index": index,
            "run_data": data,
            "created_at": data.get("created_at"),
            "updated_at": data.get("updated_at") or data.get("created_at"),
        }
        for index, (run_id, (run_type, data, user_id)) in enumerate(stored.runs.items())
    ]


def _run_stream(run_id: str) -> str:
    """The session id of the run's locator stream (its ``RunLocated`` events)."""
    return stream_id(_RUN_PREFIX, run_id)


def _locators(pairs: Sequence[tuple[str, str]]) -> list[SessionAppend]:
    """The appends that locate each (session_id, run_id): one part per run's locator stream."""
    streams: dict[str, list[Event]] = {}
    for session_id, run_id in pairs:
        streams.setdefault(_run_stream(run_id), []).append(RunLocated(session_id=session_id))
    return [SessionAppend(stream, events) for stream, events in streams.items()]


_NIL = uuid.UUID(int=0)
_NOT_DELEGATED = frozenset({"from_dict"})
"""Methods of Agno's base classes neither db offers (a wrapped db's ``from_dict`` would build the wrapped db)."""
_SESSION_METHODS = tuple(name for name in vars(_Sessions) if not name.startswith("_"))


def _on_loop(name: str) -> Callable[..., Any]:
    core = getattr(_Sessions, name)

    @functools.wraps(core)
    def method(self: KernEventsDb, *args: Any, **kwargs: Any) -> Any:
        return self._loop.run(lambda: core(self._sessions, *args, **kwargs))

    return method


def _awaited(name: str) -> Callable[..., Any]:
    core = getattr(_Sessions, name)

    @functools.wraps(core)
    async def method(self: AsyncKernEventsDb, *args: Any, **kwargs: Any) -> Any:
        return await core(self._sessions, *args, **kwargs)

    return method


def _delegate(name: str, awaited: bool) -> Callable[..., Any]:
    def method(self: _Adapter, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.agno_db, name)(*args, **kwargs)

    async def coroutine(self: _Adapter, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.agno_db, name)(*args, **kwargs)

    chosen = coroutine if awaited else method
    chosen.__name__ = chosen.__qualname__ = name
    chosen.__doc__ = f"Agno's ``{name}``, on the wrapped Agno db."
    return chosen


def _install(cls: type[_Adapter], base: type, wrap: Callable[[str], Callable[..., Any]]) -> None:
    """Give ``cls`` the session and run methods (``wrap`` of the shared ones) and every other public
    method of ``base``, delegated to the wrapped Agno db."""
    for name in _SESSION_METHODS:
        setattr(cls, name, wrap(name))
    for name, value in vars(base).items():
        if name.startswith("_") or name in _NOT_DELEGATED or name in vars(cls) or not callable(value):
            continue
        setattr(cls, name, _delegate(name, inspect.iscoroutinefunction(value)))
    cls.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]


_install(KernEventsDb, AgnoBaseDb, _on_loop)
_install(AsyncKernEventsDb, AgnoAsyncBaseDb, _awaited)
