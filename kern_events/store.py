"""The ``EventStore`` protocol: the one surface every backend implements and every caller uses.

A store holds one append-only stream of events per session. Appends are atomic, ordered,
idempotent on retry (by event id) and guarded by optimistic concurrency (``expected_version``);
reads stream records in version order, or across all sessions in global position order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Literal, Protocol, Self
from uuid import UUID

from kern_events._index import SessionInfo
from kern_events.events import Event, SessionType
from kern_events.records import (
    AppendResult,
    ErasureReport,
    ExpectedVersion,
    FeedLag,
    FeedPosition,
    Record,
    SessionAppend,
    Snapshot,
)
from kern_events.subscription import ChangeSignal, Subscription

__all__ = ["EventStore", "SessionSort"]

SessionSort = Literal["created_at", "updated_at"]


class EventStore(Protocol):
    """An async event store; use it as ``async with store: ...`` or call :meth:`aclose` when done.

    Backends implement it by subclassing :class:`kern_events.backend.BaseEventStore`, and prove it
    with the conformance suite in :mod:`kern_events.testing`.
    """

    change_signal: ChangeSignal
    """Fired after every append through this store, and, while :meth:`listen` is open, after appends
    by other processes that the backend can observe; subscriptions wait on it."""

    async def append(
        self,
        session_id: str,
        events: Sequence[Event],
        *,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
        event_ids: Sequence[UUID] | None = None,
        skip_existing: bool = False,
    ) -> AppendResult:
        """Append ``events`` to the session atomically, all or none.

        ``expected_version`` is ``ANY``, ``NO_STREAM`` (the session must not exist) or the exact
        current version; a mismatch raises :class:`~kern_events.errors.ConcurrencyError`. Calling
        again with the same ``event_ids`` (a retry after a lost reply) stores nothing and returns the
        first call's result; reusing an id for other content raises
        :class:`~kern_events.errors.IdempotencyError`.

        ``skip_existing=True`` (it needs ``event_ids``, e.g. from :func:`~kern_events.event_id_for`)
        makes the call first-write-wins per event: events whose ids are already stored in this session
        are left as stored, whatever the new content, and the others are appended atomically, in one
        append checked against ``expected_version``; the result describes what this call wrote. If
        every id is stored already, nothing is written and the result describes the stored events
        (lowest to highest version, positions and ids in the call's order), without checking
        ``expected_version``, as for an exact retry. An id stored in another session is still an
        :class:`~kern_events.errors.IdempotencyError`. Of two racing calls with the same ids, exactly
        one stores each event.
        """
        ...

    async def append_many(self, appends: Sequence[SessionAppend]) -> list[AppendResult]:
        """Append to several sessions at once, all or nothing; one result per part, in input order.

        Each part is checked, encoded and retried by its ids as :meth:`append` would; a session may
        appear in one part only. A conflict in any part raises
        :class:`~kern_events.errors.ConcurrencyError` naming that session and stores nothing in any;
        the global feed shows all of the call's events or none. SQL backends commit it as one
        transaction; a backend that cannot do it atomically raises
        :class:`~kern_events.errors.UnsupportedError` instead.
        """
        ...

    async def truncate_before(
        self,
        session_id: str,
        version: int,
        *,
        snapshot: Snapshot | None = None,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
    ) -> int:
        """Remove the session's events with a version below ``version`` and save ``snapshot`` (of this
        session, at ``version - 1``) in one atomic step; the number of events removed.

        The head, the index row and version numbering stay as they are: reads from version 1 start at
        ``version``, ``read_all`` no longer returns the removed events, and appends carry on. A
        ``version`` past ``head + 1`` is an :class:`~kern_events.errors.InvalidArgumentError` naming
        the head; ``expected_version`` guards against a concurrent writer; truncating an already
        truncated prefix removes and saves nothing and returns 0. Where the log now starts is kept as
        the snapshot :data:`~kern_events.records.TRUNCATION_SNAPSHOT`. The removed events' ids are
        forgotten with them: a retry of an append that old would be stored again.
        """
        ...

    def read(
        self,
        session_id: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
        types: Collection[str] | None = None,
    ) -> AsyncIterator[Record]:
        """Stream the session's records with ``from_version <= version <= to_version`` in version
        order (newest first if ``backwards``), at most ``limit`` of them, in constant memory.

        ``types`` (event type names, as in ``EVENT_TYPES``) keeps only those records, filtered by the
        database: a reader that needs a few kinds of event does not fetch and decode the rest."""
        ...

    def read_all(self, *, from_position: FeedPosition = 0, limit: int | None = None) -> AsyncIterator[Record]:
        """Stream every session's records with ``position >= from_position`` in global order.

        A sharded store (:attr:`~kern_events.backend.BaseEventStore.feed_layout`) merges its shards'
        feeds, each in its own order; it resumes exactly from a :class:`~kern_events.records.FeedCursor`
        (see :meth:`feed_cursor`), and reads an int as the record at that position and what follows it."""
        ...

    async def feed_cursor(self, from_position: FeedPosition = 0) -> FeedPosition:
        """``from_position`` in the form this store's feed resumes from: the int itself for a store with
        one log, a :class:`~kern_events.records.FeedCursor` for a sharded one (advance it past each
        record with :func:`~kern_events.records.next_position`, and checkpoint ``str(cursor)``)."""
        ...

    def subscribe(self, *, from_position: FeedPosition = 0, poll_interval: float = 1.0) -> Subscription:
        """Catch up from ``from_position``, then follow new records live, in global order, without gaps
        or duplicates; use as ``async with store.subscribe(...) as subscription: async for record in
        subscription``."""
        ...

    async def feed_lag(self) -> FeedLag:
        """How far the global feed (``read_all``, subscriptions) is held back behind committed
        appends; a backend without a visibility fence reports none."""
        ...

    def listen(self) -> AbstractAsyncContextManager[None]:
        """While open, the backend turns other processes' appends into :attr:`change_signal` fires
        (where it can; a backend without notifications yields at once and subscriptions poll)."""
        ...

    async def current_version(self, session_id: str) -> int:
        """The session's version (0 for a session that never had an event)."""
        ...

    async def get_session_info(self, session_id: str) -> SessionInfo | None:
        """The session's index row, or ``None`` if it does not exist (or was deleted)."""
        ...

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        session_type: SessionType | None = None,
        agent_id: str | None = None,
        team_id: str | None = None,
        workflow_id: str | None = None,
        sort_by: SessionSort = "updated_at",
        descending: bool = True,
        limit: int | None = None,
        offset: int = 0,
        updated_since: float | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[SessionInfo]:
        """Index rows matching every given filter, sorted (ties broken by session id), paged.

        ``updated_since`` keeps sessions updated at or after that unix time. ``after`` is a keyset
        cursor, ``(sort value, session_id)`` of the last row of the previous page (e.g.
        ``(row.updated_at, row.session_id)``): the page starts right after it, so a deep page costs
        what the first one does, where ``offset`` makes the database step over every earlier row.
        """
        ...

    async def delete_session(self, session_id: str) -> bool:
        """Erase the session's events, snapshots and index row; ``False`` if there was nothing.

        The session's version is kept as a tombstone so that its versions are never reused.
        """
        ...

    async def erase_user(self, user_id: str, *, dry_run: bool = False) -> ErasureReport:
        """Erase every session of ``user_id`` (events, snapshots, checkpoints, index rows) and report
        what was removed; an unknown user removes nothing and reports zero. ``dry_run``: report what
        would be removed, and remove nothing.

        Appends through this store to those sessions that are running when the erasure starts land
        first and are erased with the rest; later ones are refused with
        :class:`~kern_events.errors.ErasedError`, for the life of this store object. The SQL
        backends also refuse them from other store objects and processes, for good (the erased
        sessions' index rows keep a mark that the append checks in its own transaction).
        """
        ...

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a checkpoint (the newest few per session and name are kept)."""
        ...

    async def load_snapshot(
        self,
        session_id: str,
        name: str,
        *,
        schema_version: int | None = None,
        max_version: int | None = None,
    ) -> Snapshot | None:
        """The newest snapshot of ``name`` (of that ``schema_version``, at or below ``max_version``)."""
        ...

    async def aclose(self) -> None:
        """Release every connection and thread; safe to call twice and under cancellation."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
