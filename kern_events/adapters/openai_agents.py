"""``KernEventsSession``: the OpenAI Agents SDK's ``Session`` protocol on a kern-events store.

Switching is one line: ``session = KernEventsSession(session_id, db)`` where an application had
``SQLiteSession(session_id, "x.db")``. Each conversation item (a ``TResponseInputItem`` dict) is one
``openai_agents.item`` event in the session's stream. ``pop_item`` removes the newest item by
appending an ``openai_agents.item_removed`` event that names the removed item's version, at the
exact version it read (so two concurrent pops never return the same item), and ``get_items(limit)``
is one backward read that skips removed items (a removal is always read before the item it
removes). A paused run's ``RunState`` is an ``openai_agents.run_state`` event; inside
``async with session.atomic():`` it is appended together with the items the run wrote, all or none.

A session started with a ``user_id`` belongs to that user: a ``KernEventsSession`` of another user
gets :class:`~kern_events.errors.SessionNotFoundError` for it, as the rest of kern-events reports
another user's session. Tested against openai-agents 0.24.0 (the ``openai-agents`` extra pins it).
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import anyio
import msgspec
from agents.memory.session_settings import SessionSettings, coerce_session_settings, resolve_session_limit

from kern_events._registry import register_event_type
from kern_events._validate import check_identifier, check_non_negative, check_optional_identifier
from kern_events.db import BaseDb
from kern_events.errors import ConcurrencyError, SessionNotFoundError, StoreClosedError
from kern_events.events import Event, SessionStarted
from kern_events.records import NO_STREAM, AppendResult, ExpectedVersion, Record

if TYPE_CHECKING:
    from agents import Agent
    from agents.items import TResponseInputItem
    from agents.run_state import RunState

    from kern_events._index import SessionInfo
    from kern_events.store import EventStore

__all__ = ["SESSION_TYPE", "ItemAdded", "ItemRemoved", "KernEventsSession", "RunStateSaved", "SessionClosedError"]


@register_event_type
class ItemAdded(Event, tag="openai_agents.item", frozen=True):
    """One conversation item, as the SDK gave it (a JSON-like dict)."""

    item: dict[str, Any]


@register_event_type
class ItemRemoved(Event, tag="openai_agents.item_removed", frozen=True):
    """``pop_item`` removed the item stored at ``version``."""

    version: int


@register_event_type
class RunStateSaved(Event, tag="openai_agents.run_state", frozen=True):
    """A paused run's ``RunState.to_json()``; ``None`` records that no run is paused any more."""

    state: dict[str, Any] | None


SESSION_TYPE = "openai-agents"
"""The ``session_type`` of the sessions this adapter starts (``db.get_sessions(session_type=...)``)."""
_ITEM_TYPES = frozenset({"openai_agents.item", "openai_agents.item_removed"})
_ATTEMPTS = 64
_MAX_BACKOFF = 0.25


class SessionClosedError(StoreClosedError, RuntimeError):
    """The session object was used after :meth:`KernEventsSession.close`.

    Also a ``RuntimeError``, which is what the SDK's own sessions raise when closed, so code that
    catches that keeps working after the switch.
    """

    def __init__(self, session: object) -> None:
        super().__init__()
        self.args = (f"{type(session).__name__} is closed",)


class _Held:
    """What is written through a session inside :meth:`KernEventsSession.atomic`, not yet appended."""

    def __init__(self, session: KernEventsSession) -> None:
        self.session = session
        self.items: list[ItemAdded] = []
        self.removed: set[int] = set()
        """Versions of stored items popped inside the block."""
        self.pinned: int | None = None
        """The version the stored pops were decided at: the block appends only if it is still the head."""
        self.state: RunStateSaved | None = None


_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("kern_events_openai_agents_held", default=None)


def _plain(value: Any, argument: str) -> Any:
    """``value`` as JSON would store it (tuples become lists, keys strings); what the SDK's own
    sessions hand back after a round trip. Anything JSON cannot hold is a ``TypeError``, as there."""
    try:
        return msgspec.to_builtins(value, str_keys=True)
    except TypeError as exc:
        raise TypeError(f"{argument}: {exc}") from exc


class KernEventsSession:
    """A conversation of the OpenAI Agents SDK stored in a kern-events session (the ``Session`` protocol).

    ``db`` is a kern-events db (``SqliteDb``, ``PostgresDb``, ``InMemoryDb``) or a bare event store;
    the session does not own it (close the db yourself). With ``user_id`` the session is created
    for that user and another user's session of the same id is a ``SessionNotFoundError``.
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        db: BaseDb | EventStore,
        *,
        user_id: str | None = None,
        session_settings: SessionSettings | dict[str, Any] | None = None,
    ) -> None:
        self.session_id = check_identifier("session_id", session_id)
        self.user_id = check_optional_identifier("user_id", user_id)
        self.session_settings = (
            coerce_session_settings(session_settings) if session_settings is not None else SessionSettings()
        )
        self._store: EventStore = db.store if isinstance(db, BaseDb) else db
        self._closed = False

    # -- the Session protocol ------------------------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The newest ``limit`` items (all if ``None``; the session settings' limit by default), oldest
        first: one backward read."""
        self._check_open()
        limit = resolve_session_limit(limit, self.session_settings)
        check_non_negative("limit", limit, allow_none=True)
        held = self._held()
        to_version: int | None = None
        if self.user_id is not None or held is not None:
            info = await self._owned_info()
            if info is None:
                return [] if held is None else [cast("TResponseInputItem", e.item) for e in _tail(held.items, limit)]
            to_version = info.version
        held_items = [] if held is None else held.items
        wanted = None if limit is None else limit - len(held_items)
        stored: list[tuple[int, ItemAdded]] = []
        if wanted is None or wanted > 0:
            stored = await self._read_items(to_version, wanted, set() if held is None else set(held.removed))
        events = [event for _, event in stored] + _tail(held_items, limit)
        return [cast("TResponseInputItem", event.item) for event in events]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append the items in one append (after any held in an :meth:`atomic` block)."""
        self._check_open()
        events = [ItemAdded(item=_plain(item, f"items[{index}]")) for index, item in enumerate(items)]
        if not events:
            return
        held = self._held()
        if held is not None:
            held.items.extend(events)
            return
        await self._append_owned(events)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item (``None`` if there is none).

        Reads the newest item and appends its removal at the version it read; if another writer
        got there first the pop starts over, so concurrent pops never return the same item.
        """
        self._check_open()
        held = self._held()
        if held is not None and held.items:
            return cast("TResponseInputItem", held.items.pop().item)
        for attempt in range(_ATTEMPTS):
            info = await self._owned_info()
            if info is None:
                return None
            removed = set() if held is None else set(held.removed)
            newest = await self._read_items(info.version, 1, removed)
            if not newest:
                return None
            version, event = newest[0]
            if held is not None:
                if held.pinned is None:
                    held.pinned = info.version
                elif held.pinned != info.version:
                    raise ConcurrencyError(self.session_id, held.pinned, info.version)
                held.removed.add(version)
                return cast("TResponseInputItem", event.item)
            try:
                await self._store.append(self.session_id, [ItemRemoved(version=version)], expected_version=info.version)
            except ConcurrencyError:
                if attempt == _ATTEMPTS - 1:
                    raise
                await _backoff(attempt)
                continue
            return cast("TResponseInputItem", event.item)
        raise AssertionError("unreachable")  # pragma: no cover

    async def clear_session(self) -> None:
        """Erase the session (its items and any saved run state); adding items afterwards starts it anew.

        Erasing is never held: inside :meth:`atomic` it happens at once and drops what the block held.
        """
        self._check_open()
        held = self._held()
        if held is not None:
            held.items.clear()
            held.removed.clear()
            held.pinned = None
            held.state = None
        if self.user_id is not None and await self._owned_info() is None:
            return
        await self._store.delete_session(self.session_id)

    # -- beyond the protocol ---------------------------------------------------------------------

    async def save_run_state(self, state: RunState[Any] | None) -> None:
        """Store a paused run's state (``None``: no run is paused any more) with the session.

        Inside :meth:`atomic` it is appended with the items written in the block, in one append.
        """
        self._check_open()
        event = RunStateSaved(state=None if state is None else _plain(state.to_json(), "state"))
        held = self._held()
        if held is not None:
            held.state = event
            return
        await self._append_owned([event])

    async def load_run_state(self, agent: Agent[Any], *, claim: bool = False, **options: Any) -> RunState[Any] | None:
        """The paused run saved last, rebuilt for ``agent`` (``options`` go to ``RunState.from_json``);
        ``None`` if none is saved, or the last save said no run is paused.

        With ``claim=True`` the state is also marked taken, in an append at the version it was read
        at: of several processes claiming one paused run, one gets it, the others a
        :class:`~kern_events.errors.ConcurrencyError`, before any of them runs an approved tool.
        """
        from agents.run_state import RunState

        self._check_open()
        info = await self._owned_info()
        if info is None:
            return None
        saved: RunStateSaved | None = None
        async for record in self._store.read(
            self.session_id, to_version=info.version, backwards=True, limit=1, types=["openai_agents.run_state"]
        ):
            saved = record.event if isinstance(record.event, RunStateSaved) else None
        if saved is None or saved.state is None:
            return None
        state = await RunState.from_json(agent, saved.state, **options)
        if claim:
            await self._store.append(self.session_id, [RunStateSaved(state=None)], expected_version=info.version)
        return state

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[None]:
        """Hold what is written through this session in the block (items, pops, a run state) and
        append it all at once when the block ends, or nothing if it raises.

        Reads inside the block see the held writes. Hold it around a run that may pause, with
        ``save_run_state(result.to_state())``: the run's items and its state land together.
        """
        self._check_open()
        if self._held() is not None:
            raise RuntimeError("atomic() blocks of one session do not nest")
        held = _Held(self)
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
        events: list[Event] = [ItemRemoved(version=version) for version in sorted(held.removed, reverse=True)]
        events += held.items
        if held.state is not None:
            events.append(held.state)
        if events:
            await self._append_owned(events, pinned=held.pinned)

    def close(self) -> None:
        """Refuse further use of this object (the db stays open: it is the caller's)."""
        self._closed = True

    # -- helpers --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosedError(self)

    def _held(self) -> _Held | None:
        held = _HELD.get()
        return held if held is not None and held.session is self else None

    async def _owned_info(self) -> SessionInfo | None:
        """The session's index row (``None`` if it does not exist); another user's is not found."""
        info = await self._store.get_session_info(self.session_id)
        if info is not None and self.user_id is not None and info.user_id != self.user_id:
            raise SessionNotFoundError(self.session_id)
        return info

    async def _read_items(
        self, to_version: int | None, limit: int | None, removed: set[int]
    ) -> list[tuple[int, ItemAdded]]:
        """The newest ``limit`` items at or below ``to_version`` that no removal names, oldest first.

        One backward read: every removal is newer than the item it removes, so it is met first.
        """
        found: list[tuple[int, ItemAdded]] = []
        if limit == 0:
            return found
        records = self._store.read(self.session_id, to_version=to_version, backwards=True, types=_ITEM_TYPES)
        try:
            async for record in records:
                if _collect(record, removed, found) and limit is not None and len(found) >= limit:
                    break
        finally:
            aclose = getattr(records, "aclose", None)
            if aclose is not None:
                await aclose()
        found.reverse()
        return found

    async def _append_owned(self, events: Sequence[Event], *, pinned: int | None = None) -> AppendResult:
        """Append at the exact head of the session as its owner sees it, starting the session if needed.

        The exact expected version makes the ownership check part of the append: if the session was
        deleted and started again by someone else meanwhile, the append conflicts and looks again.
        """
        for attempt in range(_ATTEMPTS):
            info = await self._owned_info()
            batch = list(events)
            expected: int | ExpectedVersion
            if info is None:
                head = await self._store.current_version(self.session_id)  # a deleted session's tombstone
                batch.insert(0, SessionStarted(session_type=SESSION_TYPE, user_id=self.user_id))
                expected = head if head else NO_STREAM
            else:
                expected = info.version
            if pinned is not None and expected != pinned:
                raise ConcurrencyError(self.session_id, pinned, info.version if info is not None else 0)
            try:
                return await self._store.append(self.session_id, batch, expected_version=expected)
            except ConcurrencyError:
                if pinned is not None or attempt == _ATTEMPTS - 1:
                    raise
                await _backoff(attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def _collect(record: Record, removed: set[int], found: list[tuple[int, ItemAdded]]) -> bool:
    """Fold one record of a backward read into ``removed`` and ``found``; whether it found an item."""
    event = record.event
    if isinstance(event, ItemRemoved):
        removed.add(event.version)
    elif isinstance(event, ItemAdded):
        if record.version in removed:
            removed.discard(record.version)
        else:
            found.append((record.version, event))
            return True
    return False


def _tail(items: list[ItemAdded], limit: int | None) -> list[ItemAdded]:
    return list(items) if limit is None else items[len(items) - min(limit, len(items)) :]


async def _backoff(attempt: int) -> None:
    """Full jitter: concurrent writers on one hot session spread out instead of colliding again."""
    await anyio.sleep(random.uniform(0, min(_MAX_BACKOFF, 0.002 * 2**attempt)))
