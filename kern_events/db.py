"""The storage objects users pass to agent runtimes: a store plus the session views on top of it.

``InMemoryDb()``, ``SqliteDb(db_file=...)`` and ``PostgresDb(db_url=...)`` offer the same surface:
the raw log through :attr:`BaseDb.store`, writers (:meth:`BaseDb.open_session`), and session-level
reads that return views. The work behind them lives where its name says: checkpoints in
``checkpoints``, history windows in ``projections.history``, time travel and forks in ``timetravel``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from kern_events._index import SessionInfo
from kern_events._validate import (
    check_flag,
    check_identifier,
    check_name,
    check_non_negative,
    check_optional_identifier,
    check_seconds,
)
from kern_events.checkpoints import STATE_CHECKPOINT, STATE_SCHEMA_VERSION, Checkpoints
from kern_events.codec import Codec
from kern_events.encryption import Encryption
from kern_events.errors import (
    ConcurrencyError,
    ErasedError,
    InvalidArgumentError,
    RunNotFoundError,
    SessionNotFoundError,
    UnsupportedError,
)
from kern_events.events import SessionRenamed, SessionType
from kern_events.records import ErasureReport, Record, Snapshot
from kern_events.retention import Progress, RetentionPolicy, RetentionReport
from kern_events.retention import apply as apply_retention
from kern_events.sessions import Session, StoragePolicy, _visible_to
from kern_events.store import EventStore, SessionSort
from kern_events.stores._base import DEFAULT_MAX_EVENT_SIZE, BaseEventStore
from kern_events.stores._chain import VerifyReport
from kern_events.stores._sql import TableNames
from kern_events.stores.memory import InMemoryEventStore
from kern_events.stores.sqlite import SqliteEventStore, Synchronous
from kern_events.timetravel import first_version, fork, version_at
from projections.history import HistoryWindow, history_messages
from projections.runs import MessageView, RunView
from projections.session import STATE_EVENT_TYPES, SessionFold, SessionSummary, SessionView

__all__ = ["BaseDb", "InMemoryDb", "PostgresDb", "SqliteDb"]

if TYPE_CHECKING:
    import asyncpg

_RENAME_ATTEMPTS = 5


CONTEXT_TAIL = 64
"""At most this many of the newest events :meth:`BaseDb.get_context` reads with the state in one round
trip: three runs of a chat take about 12, a run with a few tool calls a dozen more; a window reaching
further reads on."""
_CONTEXT_TAILS_KEPT = 10_000
"""Windows (session and window arguments) whose reach a db remembers for the next :meth:`BaseDb.get_context`."""


class _ContextTails:
    """How many newest events the next context load of a window reads: as many as the same window
    took last time, with room for a longer run since, at most :data:`CONTEXT_TAIL`.

    A window of three short runs takes about 20 events, and reading (and decoding) the other 44 of
    :data:`CONTEXT_TAIL` was a fifth of a load's cost on PostgreSQL. A run much longer than the last
    ones only makes that load read on after the tail, in one more round trip, and the next one read
    further. Nothing here changes what a load returns.
    """

    def __init__(self) -> None:
        self._taken: OrderedDict[tuple[str, int | None, int | None, bool], int] = OrderedDict()

    def tail(self, key: tuple[str, int | None, int | None, bool]) -> int:
        """The events to read for the window ``key`` (session id and window arguments)."""
        taken = self._taken.get(key)
        return CONTEXT_TAIL if taken is None else min(CONTEXT_TAIL, taken + taken // 2 + 4)

    def remember(self, key: tuple[str, int | None, int | None, bool], taken: int | None) -> None:
        """How many records covered the window ``key`` (``None``: none did, so the next load reads all
        of :data:`CONTEXT_TAIL`)."""
        self._taken.pop(key, None)
        if taken is None:
            return
        self._taken[key] = taken
        if len(self._taken) > _CONTEXT_TAILS_KEPT:
            self._taken.popitem(last=False)


def _window(
    num_history_runs: int | None, num_history_messages: int | None, include_tool_messages: bool
) -> HistoryWindow:
    """The history window asked for, its arguments checked."""
    check_non_negative("num_history_runs", num_history_runs, allow_none=True)
    check_non_negative("num_history_messages", num_history_messages, allow_none=True)
    check_flag("include_tool_messages", include_tool_messages)
    return HistoryWindow(
        num_history_runs=num_history_runs,
        num_history_messages=num_history_messages,
        include_tool_messages=include_tool_messages,
    )


def _check_reader(session_id: str, user_id: str | None) -> None:
    """A session read's ``session_id`` and ``user_id``, checked (before anything is read)."""
    check_identifier("session_id", session_id)
    check_optional_identifier("user_id", user_id)


def _version_asked(info: SessionInfo, version: int | None) -> int:
    """The version a read asks for: the head by default; one past the head is an error naming it."""
    if version is None:
        return info.version
    if version > info.version:
        raise InvalidArgumentError(
            "version", f"session {info.session_id!r} is at version {info.version}; it has no version {version}"
        )
    return version


class BaseDb:
    """A store and the default projections; use as ``async with db:`` or call :meth:`aclose`.

    The store opens on first use, so a db can be built at import time and handed to runtimes.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        cache_size: int = 0,
        storage_policy: StoragePolicy | None = None,
        checkpoint_every: int | None = 1000,
        retention_policy: RetentionPolicy | None = None,
        encryption: Encryption | None = None,
    ) -> None:
        check_non_negative("cache_size", cache_size)
        if encryption is not None:
            if not isinstance(store, BaseEventStore):
                raise InvalidArgumentError("encryption", f"{type(store).__qualname__} is not a BaseEventStore")
            store.encryption = encryption
        if retention_policy is not None and not isinstance(retention_policy, RetentionPolicy):
            raise InvalidArgumentError(
                "retention_policy", f"expected a RetentionPolicy, got {type(retention_policy).__qualname__}"
            )
        self.retention_policy = retention_policy
        """What :meth:`apply_retention` deletes and compacts when it is given no policy of its own."""
        check_non_negative("checkpoint_every", checkpoint_every, allow_none=True)
        self._store = store
        self._checkpoints = Checkpoints(store)
        self.checkpoint_every = checkpoint_every or None
        """Sessions written through this db are checkpointed every this many events (and at each
        pause), so loading one folds at most this many events; ``None`` turns the periodic ones off."""
        self.storage_policy = storage_policy if storage_policy is not None else StoragePolicy()
        """What sessions opened through this db store, unless a runtime says otherwise."""
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[int, float, SessionView]] = OrderedDict()
        self._context_tails = _ContextTails()

    @property
    def store(self) -> EventStore:
        """The event store underneath: append, read, read_all, snapshots."""
        return self._store

    async def __aenter__(self) -> Self:
        await self._store.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the store; safe to call twice."""
        await self._store.aclose()

    async def verify(
        self, session_id: str | None = None, *, progress: Callable[[int], None] | None = None
    ) -> VerifyReport:
        """Recompute the tamper-evidence hash chains of one session or of all, and report what was
        edited, deleted, moved or cut off, by session and version (``chain_key`` must be the one the
        events were written with); ``progress`` is called with each page's count of events checked."""
        if not isinstance(self._store, BaseEventStore):
            raise UnsupportedError("verify", f"{type(self._store).__name__} is not built on the backend kit")
        return await self._store.verify(session_id, progress=progress)

    async def _visible_info(self, session_id: str, user_id: str | None) -> SessionInfo:
        _check_reader(session_id, user_id)
        info = await self._store.get_session_info(session_id)
        if info is None or not _visible_to(info, user_id):
            raise SessionNotFoundError(session_id)
        return info

    async def get_session(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        version: int | None = None,
        as_of: float | None = None,
    ) -> SessionView:
        """The session view, at its current version, as of ``version``, or as it was at the unix time
        ``as_of`` (the last version recorded at or before it).

        With ``user_id``, a session of another user is reported as not found, never shown.
        """
        check_non_negative("version", version, allow_none=True)
        if as_of is not None:
            check_seconds("as_of", as_of)
            version = await self.version_at(session_id, as_of, user_id=user_id)
            if version == 0:
                raise SessionNotFoundError(session_id)  # it did not exist yet
        info = await self._visible_info(session_id, user_id)
        target = _version_asked(info, version)
        cached = self._cache.get(session_id) if version is None else None
        start = None
        if cached is not None and cached[1] == info.created_at and cached[0] <= target:
            if cached[0] == target:
                self._cache.move_to_end(session_id)
                return cached[2]
            start = SessionFold(cached[2], version=cached[0])  # the cache is a checkpoint too
        accumulator = await self._checkpoints.fold_to(session_id, target, start)
        view = accumulator.view()
        if view is None:
            raise SessionNotFoundError(session_id)
        if version is None and self._cache_size:
            self._cache[session_id] = (accumulator.version, info.created_at, view)
            self._cache.move_to_end(session_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return view

    async def get_session_state(self, session_id: str, *, user_id: str | None = None) -> dict[str, Any]:
        """The session's key/value state, as the next run sees it.

        Read from the state's own checkpoint plus the state events after it (the database skips the
        rest), not from the whole session view: its cost does not grow with the session.
        """
        info = await self._visible_info(session_id, user_id)
        return await self._checkpoints.state(session_id, info.version)

    async def get_session_summary(self, session_id: str, *, user_id: str | None = None) -> SessionSummary | None:
        """The session's latest summary, if it has one."""
        return (await self.get_session(session_id, user_id=user_id)).summary

    async def get_history(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        num_history_runs: int | None = None,
        num_history_messages: int | None = None,
        include_tool_messages: bool = True,
    ) -> list[MessageView]:
        """The messages of the last completed runs (or the last messages) for the next run's context.

        Reads the session's tail backwards, whole runs at a time, only as far as the window needs:
        the cost follows the window, not the session's length. A tool call is never separated
        from its results.
        """
        window = _window(num_history_runs, num_history_messages, include_tool_messages)
        info = await self._visible_info(session_id, user_id)
        return await self._history(session_id, user_id, info, window, [], more=True)

    async def get_context(
        self,
        session_id: str,
        *,
        user_id: str | None = None,
        num_history_runs: int | None = None,
        num_history_messages: int | None = None,
        include_tool_messages: bool = True,
    ) -> tuple[list[MessageView], dict[str, Any]]:
        """What a runtime loads before each run: :meth:`get_history`'s window (same arguments) and
        :meth:`get_session_state`'s state, read together.

        On a store built on the backend kit they come from one
        :meth:`~kern_events.backend.BaseEventStore.load_context` call (one round trip on PostgreSQL
        and SQLite) whenever the window lies within the session's last :data:`CONTEXT_TAIL` events;
        a longer window reads on from there (:class:`_ContextTails` says how far the tail goes).
        """
        window = _window(num_history_runs, num_history_messages, include_tool_messages)
        _check_reader(session_id, user_id)
        store = self._store
        if not isinstance(store, BaseEventStore):
            info = await self._visible_info(session_id, user_id)
            history = await self._history(session_id, user_id, info, window, [], more=True)
            return history, await self._checkpoints.state(session_id, info.version)
        key = (session_id, num_history_runs, num_history_messages, include_tool_messages)
        context = await store.load_context(
            session_id,
            snapshot=STATE_CHECKPOINT,
            schema_version=STATE_SCHEMA_VERSION,
            types=STATE_EVENT_TYPES,
            tail=min(self._context_tails.tail(key), store.read_page_size),
        )
        if context.info is None or not _visible_to(context.info, user_id):
            raise SessionNotFoundError(session_id)
        history = await self._history(session_id, user_id, context.info, window, context.tail, more=context.tail_more)
        self._context_tails.remember(key, window.covered_by)
        return history, await self._checkpoints.state(session_id, context.info.version, context)

    async def _history(
        self,
        session_id: str,
        user_id: str | None,
        info: SessionInfo,
        window: HistoryWindow,
        newest: Sequence[Record],
        *,
        more: bool,
    ) -> list[MessageView]:
        """The window's messages from the session's ``newest`` records (newest first) and, if
        ``more`` and the window needs them, the older ones read backwards after them."""
        oldest = info.version + 1
        for record in newest:
            oldest = record.version
            if window.take(record):
                return window.messages()
        if more:
            async for record in self._store.read(session_id, to_version=oldest - 1, backwards=True):
                oldest = record.version
                if window.take(record):
                    return window.messages()
        if oldest > 1 and await first_version(self._store, session_id) > 1:
            # The whole log was read and its start is truncated: the runs before it live in the
            # session view's checkpoint, so the window is built from the view.
            view = await self.get_session(session_id, user_id=user_id)
            return history_messages(
                view.runs,
                num_history_runs=window.num_history_runs,
                num_history_messages=window.num_history_messages,
                include_tool_messages=window.include_tool_messages,
            )
        return window.messages()

    async def get_paused_runs(
        self, *, session_id: str | None = None, user_id: str | None = None, limit: int = 100
    ) -> list[tuple[str, RunView]]:
        """Paused runs (with their requirements) of one session, or of a user's sessions, as
        ``(session_id, run)`` pairs; newest sessions first."""
        check_optional_identifier("session_id", session_id)
        check_optional_identifier("user_id", user_id)
        check_non_negative("limit", limit)
        if session_id is not None:
            sessions = [session_id]
        else:
            sessions = [info.session_id for info in await self.get_sessions(user_id=user_id, limit=limit)]
        paused: list[tuple[str, RunView]] = []
        for candidate in sessions:
            try:
                view = await self.get_session(candidate, user_id=user_id)
            except ErasedError:
                if session_id is not None:
                    raise
                continue  # crypto-shredded: its runs are unreadable, the others' are listed
            paused += [(candidate, run) for run in view.runs if run.status == "paused"]
        return paused

    async def open_session(self, session_id: str, **options: Any) -> Session:
        """A writer for the session, continued or started (see :meth:`Session.open`); the db's
        storage policy applies unless ``policy=`` is given."""
        if options.get("policy") is None:
            options["policy"] = self.storage_policy
        return await Session.open(self, session_id, **options)

    async def version_at(self, session_id: str, timestamp: float, *, user_id: str | None = None) -> int:
        """The session's version at unix time ``timestamp`` (0 if it had no event yet); reads back
        from the newest event, so recent times are cheap."""
        check_seconds("timestamp", timestamp)
        info = await self._visible_info(session_id, user_id)
        return await version_at(self._store, session_id, timestamp, head=info.version)

    async def fork_session(
        self, session_id: str, new_session_id: str, *, version: int | None = None, user_id: str | None = None
    ) -> SessionInfo:
        """Start ``new_session_id`` from ``session_id`` as of ``version`` (default: now): its events up
        to there are copied (with new ids), and the original is left untouched. For "edit an earlier
        turn and try again", or replaying a run against another model."""
        check_identifier("new_session_id", new_session_id)
        check_non_negative("version", version, allow_none=True)
        if version == 0:
            raise InvalidArgumentError("version", "a fork starts from version 1 or later")
        info = await self._visible_info(session_id, user_id)
        until = _version_asked(info, version)
        await fork(self._store, session_id, new_session_id, until=until)
        forked = await self._store.get_session_info(new_session_id)
        if forked is None:  # pragma: no cover - it was just written
            raise SessionNotFoundError(new_session_id)
        return forked

    async def save_checkpoint(self, session_id: str, *, paused_run_id: str | None = None) -> Snapshot:
        """Snapshot the session view at its current version, so later reads fold only what follows.

        With ``paused_run_id``, that run's view is checkpointed too, on its own: resuming it then
        reads the run's checkpoint and the events after it, whatever the session's length.
        """
        check_optional_identifier("paused_run_id", paused_run_id)
        info = await self._visible_info(session_id, None)
        snapshot = await self._checkpoints.save(
            session_id, await self._checkpoints.fold_to(session_id, info.version), paused_run_id=paused_run_id
        )
        if snapshot is None:
            raise SessionNotFoundError(session_id)
        return snapshot

    async def get_run(
        self, session_id: str, run_id: str, *, version: int | None = None, user_id: str | None = None
    ) -> RunView:
        """One run's view, from its own checkpoint (written when it paused) plus the events after it,
        or from the session view when it has none."""
        check_identifier("run_id", run_id)
        check_non_negative("version", version, allow_none=True)
        info = await self._visible_info(session_id, user_id)
        target = _version_asked(info, version)
        run = await self._checkpoints.run(session_id, run_id, target)
        if run is None:
            run = (await self.get_session(session_id, user_id=user_id, version=target)).get_run(run_id)
            if run is None:
                raise RunNotFoundError(session_id, run_id)
        return run

    async def get_sessions(
        self,
        *,
        user_id: str | None = None,
        session_type: SessionType | None = None,
        agent_id: str | None = None,
        team_id: str | None = None,
        workflow_id: str | None = None,
        sort_by: SessionSort = "updated_at",
        descending: bool = True,
        limit: int | None = 100,
        offset: int = 0,
        updated_since: float | None = None,
        after: tuple[float, str] | None = None,
    ) -> list[SessionInfo]:
        """Sessions from the index (no log is folded), filtered, sorted and paged (``after``: the
        keyset cursor of :meth:`EventStore.list_sessions`, for deep pages)."""
        return await self._store.list_sessions(
            user_id=user_id,
            session_type=session_type,
            agent_id=agent_id,
            team_id=team_id,
            workflow_id=workflow_id,
            sort_by=sort_by,
            descending=descending,
            limit=limit,
            offset=offset,
            updated_since=updated_since,
            after=after,
        )

    async def rename_session(self, session_id: str, name: str, *, user_id: str | None = None) -> SessionInfo:
        """Give the session a new display name; returns its updated index row."""
        check_name("name", name)
        for _ in range(_RENAME_ATTEMPTS):
            info = await self._visible_info(session_id, user_id)
            try:
                await self._store.append(session_id, [SessionRenamed(name=name)], expected_version=info.version)
            except ConcurrencyError:
                continue
            renamed = await self._store.get_session_info(session_id)
            if renamed is None:
                raise SessionNotFoundError(session_id)
            return renamed
        raise ConcurrencyError(session_id, info.version, await self._store.current_version(session_id))

    async def delete_session(self, session_id: str, *, user_id: str | None = None) -> bool:
        """Erase the session (events, checkpoints, index row); ``False`` if it did not exist."""
        if user_id is not None:
            try:
                await self._visible_info(session_id, user_id)
            except SessionNotFoundError:
                return False
        self._cache.pop(session_id, None)
        return await self._store.delete_session(session_id)

    async def erase_user(self, user_id: str, *, dry_run: bool = False) -> ErasureReport:
        """Erase everything of ``user_id``: every session with its events, snapshots, checkpoints and
        index row (see :meth:`kern_events.store.EventStore.erase_user`); the report says what went
        (``dry_run``: what would go, and nothing goes)."""
        report = await self._store.erase_user(user_id, dry_run=dry_run)
        for session_id in report.session_ids:
            self._cache.pop(session_id, None)
        return report

    async def apply_retention(
        self,
        policy: RetentionPolicy | None = None,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> RetentionReport:
        """Delete the sessions ``policy`` (default: the db's :attr:`retention_policy`) says are too
        old, and compact those with more runs than it keeps; with ``dry_run``, only report what
        would go. ``progress(done, total)`` is called after each session."""
        policy = policy if policy is not None else self.retention_policy
        if not isinstance(policy, RetentionPolicy):
            raise InvalidArgumentError("policy", "no RetentionPolicy given, and the db has none")
        check_flag("dry_run", dry_run)
        report = await apply_retention(self, policy, dry_run=dry_run, progress=progress)
        for compaction in report.compacted:
            self._cache.pop(compaction.session_id, None)
        return report


class InMemoryDb(BaseDb):
    """Sessions in this process's memory: for tests and demos; gone when the process exits."""

    def __init__(
        self,
        *,
        cache_size: int = 0,
        storage_policy: StoragePolicy | None = None,
        checkpoint_every: int | None = 1000,
        retention_policy: RetentionPolicy | None = None,
        encryption: Encryption | None = None,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
    ) -> None:
        super().__init__(
            InMemoryEventStore(codec=codec, max_event_size=max_event_size, chain_key=chain_key),
            cache_size=cache_size,
            storage_policy=storage_policy,
            checkpoint_every=checkpoint_every,
            retention_policy=retention_policy,
            encryption=encryption,
        )


class SqliteDb(BaseDb):
    """Sessions in one SQLite file (WAL): the embedded default for local work.

    Table names can be changed to keep several workloads apart in one file.
    """

    def __init__(
        self,
        db_file: str | os.PathLike[str] = "kern_events.db",
        *,
        events_table: str = "kern_events",
        session_table: str = "kern_sessions",
        snapshot_table: str = "kern_snapshots",
        schema_table: str = "kern_schema",
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        cache_size: int = 0,
        storage_policy: StoragePolicy | None = None,
        checkpoint_every: int | None = 1000,
        retention_policy: RetentionPolicy | None = None,
        encryption: Encryption | None = None,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
    ) -> None:
        tables = TableNames(events=events_table, sessions=session_table, snapshots=snapshot_table, schema=schema_table)
        super().__init__(
            SqliteEventStore(
                db_file,
                tables=tables,
                synchronous=synchronous,
                busy_timeout=busy_timeout,
                codec=codec,
                max_event_size=max_event_size,
                chain_key=chain_key,
            ),
            cache_size=cache_size,
            storage_policy=storage_policy,
            checkpoint_every=checkpoint_every,
            retention_policy=retention_policy,
            encryption=encryption,
        )


class PostgresDb(BaseDb):
    """Sessions in PostgreSQL: the production store.

    ``db_url`` may be ``postgresql://``, ``postgres://`` or SQLAlchemy-style ``postgresql+driver://``;
    or pass an existing asyncpg ``pool``. ``schema`` and the table names isolate workloads that share
    a database. With ``create_schema=False`` no DDL runs at start-up (use ``kern-events migrate``).
    """

    def __init__(
        self,
        db_url: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        pool_size: int = 10,
        schema: str = "public",
        events_table: str = "kern_events",
        session_table: str = "kern_sessions",
        snapshot_table: str = "kern_snapshots",
        schema_table: str = "kern_schema",
        create_schema: bool = True,
        cache_size: int = 0,
        storage_policy: StoragePolicy | None = None,
        checkpoint_every: int | None = 1000,
        retention_policy: RetentionPolicy | None = None,
        encryption: Encryption | None = None,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
    ) -> None:
        # Imported here so that SqliteDb users never load asyncpg.
        from kern_events.stores.postgres import PostgresEventStore

        tables = TableNames(events=events_table, sessions=session_table, snapshots=snapshot_table, schema=schema_table)
        super().__init__(
            PostgresEventStore(
                db_url,
                pool=pool,
                pool_size=pool_size,
                schema=schema,
                tables=tables,
                create_schema=create_schema,
                codec=codec,
                max_event_size=max_event_size,
                chain_key=chain_key,
            ),
            cache_size=cache_size,
            storage_policy=storage_policy,
            checkpoint_every=checkpoint_every,
            retention_policy=retention_policy,
            encryption=encryption,
        )


class NatsDb(BaseDb):
    """Sessions in NATS JetStream (``pip install 'kern-events[nats]'``, nats-server 2.12 or newer): a
    replicated stream, for when one PostgreSQL server must not be a single point of failure.

    ``replicas=3`` acknowledges a write once two of three servers hold it; ``shards=N`` spreads sessions
    over N streams, each with its own leader, for more write throughput; with ``create_streams=False``
    a missing stream is an error instead of being created; see
    :class:`~kern_events.stores.nats.NatsEventStore` for the layout and its limits.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        prefix: str = "KERN",
        replicas: int = 3,
        timeout: float = 5.0,
        shards: int = 1,
        create_streams: bool = True,
        cache_size: int = 0,
        storage_policy: StoragePolicy | None = None,
        checkpoint_every: int | None = 1000,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
    ) -> None:
        # Imported here so that other dbs' users never load the NATS backend.
        from kern_events.stores.nats import NatsEventStore

        super().__init__(
            NatsEventStore(
                servers,
                prefix=prefix,
                replicas=replicas,
                timeout=timeout,
                shards=shards,
                create_streams=create_streams,
                codec=codec,
                max_event_size=max_event_size,
                chain_key=chain_key,
            ),
            cache_size=cache_size,
            storage_policy=storage_policy,
            checkpoint_every=checkpoint_every,
        )


class DynamoDb(BaseDb):
    """Sessions in one DynamoDB table (``pip install 'kern-events[dynamodb]'``): for teams on AWS that
    outgrow one machine without running a database cluster.

    Per-session order is exact; there is no global feed (``read_all`` and ``subscribe`` raise
    :class:`~kern_events.errors.UnsupportedError`), and an append holds at most 49 events and 4 MB; see
    :class:`~kern_events.stores.dynamodb.DynamoEventStore` for the table layout and its limits.
    ``listing_shards`` spreads the index that lists sessions without a user over that many partitions
    (default 4: more appends a second before the index throttles, one more query per listing).
    """

    def __init__(
        self,
        table: str = "kern_events",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        create_table: bool = True,
        cache_size: int = 0,
        storage_policy: StoragePolicy | None = None,
        checkpoint_every: int | None = 1000,
        retention_policy: RetentionPolicy | None = None,
        encryption: Encryption | None = None,
        codec: Codec | None = None,
        chain_key: bytes | None = None,
        listing_shards: int | None = None,
    ) -> None:
        # Imported here so that other dbs' users never load the DynamoDB backend.
        from kern_events.stores.dynamodb import DEFAULT_LISTING_SHARDS, DynamoEventStore

        super().__init__(
            DynamoEventStore(
                table,
                endpoint_url=endpoint_url,
                region_name=region_name,
                aws_access_key_id=aws_access_key_id,
                aws_secret_access_key=aws_secret_access_key,
                create_table=create_table,
                codec=codec,
                chain_key=chain_key,
                listing_shards=DEFAULT_LISTING_SHARDS if listing_shards is None else listing_shards,
            ),
            cache_size=cache_size,
            storage_policy=storage_policy,
            checkpoint_every=checkpoint_every,
            retention_policy=retention_policy,
            encryption=encryption,
        )
