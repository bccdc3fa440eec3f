"""The SQLite backend on aiosqlite: the embedded default for local work.

One writer connection and one reader connection, both in WAL mode. Each append is a whole
``BEGIN IMMEDIATE … COMMIT`` run as a single call on the writer's thread: an aiosqlite call is a
thread hop that costs about as much as an fsync on our machines, so the head check, the multi-row
``INSERT … RETURNING``, the session-index upsert and the commit share one hop. ``BEGIN IMMEDIATE``
takes SQLite's write lock up front, so the head read inside the transaction is the head the insert
extends, also against other processes. Because writers are serialized by that lock, positions are
assigned in commit order, and ``AUTOINCREMENT`` keeps a deleted last position from being reused:
a reader that follows positions never skips an event.

Concurrent appends share one transaction (group commit); in a batch of several, each append runs
in its own ``SAVEPOINT``, so one that fails is rolled back alone and the others commit.

An append to a session whose head this store wrote last takes a lean path: instead of reading the
head and upserting the whole index row, one ``UPDATE`` of the row, conditional on that head (version
and hash) and on the session being live, checks and advances it; the full path follows in the same
transaction when the row says otherwise (see ``_append_lean``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import aiosqlite
import anyio
import anyio.to_thread
import msgspec

from kern_events._loops import AnyLoopLock, call_soon_on
from kern_events.backend import (
    DEFAULT_MAX_EVENT_SIZE,
    SNAPSHOTS_KEPT,
    BaseEventStore,
    GroupCommit,
    Page,
    PendingAppend,
    SessionFilter,
    SessionInfo,
    apply_delta,
    check_expected,
    check_truncation,
    conflict,
    match_retry,
)
from kern_events.codec import Codec
from kern_events.errors import (
    CorruptRecordError,
    DatabaseOpenError,
    InvalidArgumentError,
    KernEventsError,
    SchemaMissingError,
    SchemaVersionError,
    StorageError,
)
from kern_events.events import Event
from kern_events.records import AppendResult, ExpectedVersion, PendingEvent, Snapshot, StoredEvent
from kern_events.stores._sql import (
    ERASED_HEAD,
    INFO_COLUMNS,
    SCHEMA_VERSION,
    STATE_TYPES,
    AppendRequest,
    MigrationStep,
    Row,
    SessionStatements,
    TableNames,
    event_columns,
    info_from_row,
    migrations_ddl,
    newest_first_step,
    quote,
    refuse_erased,
    snapshot_from_row,
    state_events_step,
    state_typed,
    steps_after,
    stored_from_row,
)

__all__ = ["SqliteEventStore"]

T = TypeVar("T")
Synchronous = Literal["FULL", "NORMAL"]

_MAX_VERSION = 2**62
_ROWS_PER_INSERT = 4000  # 8 parameters a row stays under SQLite's 32766-variable limit


_HEADS_KEPT = 10_000
"""Sessions whose head the writer remembers for the lean path (~350 bytes each: a few MB at most)."""
_IDS_PER_SELECT = 30000
"""Event ids looked up per statement (below SQLite's limit of 32,766 bound parameters)."""


def _stored(row: Row) -> StoredEvent:
    return stored_from_row(row, UUID(bytes=row[3]))


_COLUMNS = event_columns(as_blob=("data",))
"""The columns a read selects. The payload is read as bytes even where a damaged row stored TEXT
there, which SQLite would otherwise have to decode as UTF-8 (failing the whole page if it is not);
measured: no difference in read time, the cast leaves a BLOB as it is."""
_TEXT_AS_BYTES = event_columns(as_blob=("session_id", "type", "data"))
"""The columns a page is read again with when SQLite cannot return it: text checked row by row."""
_UNCHAINED = (
    event_columns(as_blob=("data",), chained=False),
    event_columns(as_blob=("session_id", "type", "data"), chained=False),
)
""":data:`_COLUMNS` and :data:`_TEXT_AS_BYTES` without the hash chain, for a read of records, which do
not carry it (a 1,000-row page is read ~45 us faster without its hashes)."""


class _Rows(msgspec.Struct, array_like=True, gc=False):
    """A page of rows as one value, so that converting it uses the type information msgspec keeps
    on this class instead of building it for ``list[StoredEvent]`` on every call (~0.8 us a page)."""

    rows: list[StoredEvent]


def _stored_page(rows: Sequence[Any]) -> Page:
    """Rows of :data:`_COLUMNS` (tuples, ids as 16 bytes) as stored events, converted in one call; a
    damaged row (an id that is not 16 bytes, a value of the wrong type) ends the page as a
    :class:`CorruptRecordError`, after the good rows before it."""
    try:
        return msgspec.convert((rows,), _Rows).rows
    except msgspec.ValidationError:
        pass
    page: list[StoredEvent | CorruptRecordError] = []
    for row in rows:
        try:
            page.append(msgspec.convert(row, StoredEvent))
        except msgspec.ValidationError as exc:
            page.append(_damaged(row, str(exc)))
            break
    return page


def _decoded_page(rows: list[Any]) -> Page:
    """Rows of :data:`_TEXT_AS_BYTES` as :func:`_stored_page` returns them; a row whose text is not
    UTF-8 is damaged too."""
    decoded: list[tuple[Any, ...]] = []
    for row in rows:
        try:
            decoded.append((row[0].decode(), row[1], row[2], row[3], row[4].decode(), *row[5:]))
        except UnicodeDecodeError as exc:
            page = list(_stored_page(decoded))
            if not page or not isinstance(page[-1], CorruptRecordError):
                page.append(_damaged(row, f"stored text is not UTF-8: {exc}"))
            return page
    return _stored_page(decoded)


def _damaged(row: Row, detail: str) -> CorruptRecordError:
    def text(value: object) -> Any:
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    return CorruptRecordError(text(row[0]), row[1], text(row[4]), f"malformed row: {detail}", position=row[2])


class SqliteEventStore(BaseEventStore):
    """An :class:`~kern_events.store.EventStore` in one SQLite file.

    ``synchronous="FULL"`` (the default) makes every acknowledged append survive a power cut;
    ``"NORMAL"`` survives a process crash but may lose the last commits on a power cut, and is faster.
    ``read_only=True`` opens an existing file for reading only: it never creates the file or a table
    (a file without kern-events tables is :class:`~kern_events.errors.SchemaMissingError`) and
    refuses every write.

    A payload above :attr:`inline_limit` (1 MiB) is stored out of line, in a chunk table written in
    the append's transaction; rows stay small, so a page read holds little however large the events.
    """

    inline_limit = 1024 * 1024

    def __init__(
        self,
        db_file: str | os.PathLike[str],
        *,
        tables: TableNames | None = None,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 5.0,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        read_only: bool = False,
        chain_key: bytes | None = None,
    ) -> None:
        super().__init__(codec=codec, max_event_size=max_event_size, chain_key=chain_key)
        self.read_only = read_only
        if synchronous not in ("FULL", "NORMAL"):
            raise InvalidArgumentError("synchronous", f"expected 'FULL' or 'NORMAL', got {synchronous!r}")
        self.db_file = os.fspath(db_file)
        self.tables = tables if tables is not None else TableNames()
        self._synchronous = synchronous
        self._busy_ms = int(busy_timeout * 1000)
        self._writer: aiosqlite.Connection | None = None
        self._writer_stuck = False  # set on the writer's thread when a ROLLBACK failed; see _write
        self._reopen_lock = AnyLoopLock()
        self._group = GroupCommit(self._commit_batch, backend="sqlite")
        self._reader: aiosqlite.Connection | None = None
        events, sessions = quote(self.tables.events), quote(self.tables.sessions)
        snapshots = quote(self.tables.snapshots)
        self._sql_head = f"SELECT {INFO_COLUMNS}, deleted, chain_head FROM {sessions} WHERE session_id = ?"
        self._sql_upsert = (
            f"INSERT INTO {sessions} ({INFO_COLUMNS}, deleted, chain_head) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "
            "ON CONFLICT (session_id) DO UPDATE SET session_type = excluded.session_type, "
            "agent_id = excluded.agent_id, team_id = excluded.team_id, workflow_id = excluded.workflow_id, "
            "user_id = excluded.user_id, name = excluded.name, created_at = excluded.created_at, "
            "updated_at = excluded.updated_at, run_count = excluded.run_count, version = excluded.version, "
            "deleted = 0, chain_head = excluded.chain_head"
        )
        # The lean path's index write (see _append_lean): the row the upsert would write, computed
        # from the row in place, and only if its head is the one the append's hashes chain from.
        self._sql_advance = (
            f"UPDATE {sessions} SET updated_at = ?, version = ?, run_count = run_count + ?, "
            "name = coalesce(?, name), chain_head = ? "
            "WHERE session_id = ? AND version = ? AND chain_head IS ? AND NOT deleted"
        )
        self._heads: dict[str, tuple[int, bytes | None]] = {}
        """Each recently appended session's head version and head hash as this store last wrote them:
        a guess for the lean path, which its UPDATE checks against the row (never trusted alone)."""
        self._sql_insert_row = "(?, ?, ?, ?, ?, ?, ?, ?)"
        self._sql_insert = (
            f"INSERT INTO {events} (session_id, version, event_id, type, schema_version, data, recorded_at, chain) "
            "VALUES "
        )
        self._sql_insert_one = self._sql_insert + self._sql_insert_row
        self._sql_inserts: dict[int, str] = {}
        """The INSERT … RETURNING for a number of rows, built once per number."""
        self._columns, self._text_columns = _COLUMNS, _TEXT_AS_BYTES
        self._sql_by_ids = f"SELECT {{columns}} FROM {events} WHERE event_id IN "
        self._sql_page = (
            f"SELECT {{columns}} FROM {events} WHERE session_id = ? AND version BETWEEN ? AND ? "
            "{typed}ORDER BY version {order} LIMIT ?"
        )
        self._page_statements: dict[tuple[bool, int | None, bool, bool], tuple[str, str]] = {}
        """A session page's statements by shape (direction, number of types, whether they are all state
        types, chained): built once (and again if the columns change, opening an older file)."""
        self._sql_all_page = f"SELECT {{columns}} FROM {events} WHERE position >= ? ORDER BY position LIMIT ?"
        self._sql = SessionStatements(sessions, snapshots, lambda number: f"?{number}")
        chunks = quote(self.tables.chunks)
        self._sql_chunk_put = f"INSERT INTO {chunks} (event_id, part, data) VALUES (?, ?, ?)"
        self._sql_chunks = f"SELECT event_id, data FROM {chunks} WHERE event_id IN ({{ids}}) ORDER BY event_id, part"
        # The chunks go with their event through the foreign key (ON DELETE CASCADE): deleting a
        # session, or any prefix of it, removes them in the same statement.
        self._sql_delete_events = f"DELETE FROM {events} WHERE session_id = ?"
        self._sql_delete_snapshots = f"DELETE FROM {snapshots} WHERE session_id = ?"
        self._sql_truncate = f"DELETE FROM {events} WHERE session_id = ? AND version < ?"
        # Not for a session marked erased (ERASED_HEAD): checked in the write's own transaction.
        self._sql_snapshot_put = (
            f"INSERT OR REPLACE INTO {snapshots} (session_id, name, version, schema_version, data, created_at) "
            f"SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS "
            f"(SELECT 1 FROM {sessions} WHERE session_id = ?1 AND chain_head = ?7)"
        )
        self._sql_snapshot_prune = (
            f"DELETE FROM {snapshots} WHERE session_id = ? AND name = ? AND version NOT IN "
            f"(SELECT version FROM {snapshots} WHERE session_id = ? AND name = ? "
            f"ORDER BY version DESC LIMIT {SNAPSHOTS_KEPT})"
        )

    # -- connections -------------------------------------------------------------------------------

    async def _open(self) -> None:
        try:
            if self.read_only:
                self._reader = await self._connect(read_only=True)
                await self._opening_call(self._reader, self._check_tables)
                return
            self._writer = await self._connect()
            await self._opening_call(self._writer, self._set_up)
            if self.db_file == ":memory:" or self.db_file.startswith("file::memory:"):
                self._reader = self._writer
            else:
                self._reader = await self._connect()
                await self._reader.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                await self._reader.execute("PRAGMA query_only = 1")
        except BaseException:
            await self._close()
            raise

    @property
    def _name(self) -> str:
        return f"SQLite database {self.db_file!r}"

    async def _connect(self, *, read_only: bool = False) -> aiosqlite.Connection:
        """``aiosqlite.connect``; a failure names the file and why, and leaves no thread behind.

        aiosqlite stops its thread after a failed connect but nobody waits for it, so it would
        report back to an event loop that may be closed by then ("Event loop is closed").
        """
        # Made before connecting: anyio imports its backend on first use, and a connect that failed
        # for want of file descriptors leaves none to import it with.
        shield = anyio.CancelScope(shield=True)
        if read_only:  # a URI, so that SQLite itself refuses to create or write anything
            connection = aiosqlite.connect(_read_only_uri(self.db_file), isolation_level=None, uri=True)
        else:
            connection = aiosqlite.connect(self.db_file, isolation_level=None)
        # A daemon thread: a store nobody closed must not keep the process from exiting. Nothing
        # acknowledged is lost when the thread stops with the process: an append is answered only
        # after its COMMIT returned, and SQLite rolls back whatever was not committed.
        connection._thread.daemon = True
        connection._thread.name = f"kern-events-sqlite {self.db_file}"
        try:
            return await connection
        except BaseException as exc:
            with shield:
                await anyio.to_thread.run_sync(connection._thread.join)
            if isinstance(exc, sqlite3.Error):
                raise DatabaseOpenError(self._name, _open_failure(self.db_file, exc, read_only)) from exc
            raise

    async def _opening_call(self, connection: aiosqlite.Connection, function: Callable[[sqlite3.Connection], T]) -> T:
        """The first call on a new connection: a file that is not an intact SQLite database is
        :class:`DatabaseOpenError`, not a failure of some later statement."""
        try:
            return await self._call(connection, function)
        except StorageError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.DatabaseError) and not isinstance(
                cause, sqlite3.OperationalError | sqlite3.IntegrityError
            ):
                raise DatabaseOpenError(self._name, f"it is not an intact SQLite database ({cause})") from cause
            raise

    def _check_tables(self, db: sqlite3.Connection) -> None:
        """A read-only open: the kern-events tables must be there already, at a version we read."""
        db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        t = self.tables
        found = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {t.events, t.sessions, t.snapshots, t.schema} <= found:
            raise SchemaMissingError(self._name, SCHEMA_VERSION)
        row = db.execute(f"SELECT version FROM {quote(t.schema)} WHERE component = ?", (t.events,)).fetchone()
        if row is None:
            raise SchemaMissingError(self._name, SCHEMA_VERSION)
        if row[0] > SCHEMA_VERSION:  # an older layout reads as it is (version 1 has no chunks yet)
            raise SchemaVersionError(row[0], SCHEMA_VERSION)
        if row[0] < 3:  # no hash chain yet: its hashes read as missing
            self._columns = event_columns(as_blob=("data",), chained=False)
            self._text_columns = event_columns(as_blob=("session_id", "type", "data"), chained=False)
            self._page_statements.clear()

    async def _close(self) -> None:
        reader, writer = self._reader, self._writer
        self._reader = self._writer = None
        if reader is not None and reader is not writer:
            await reader.close()
        if writer is not None:
            await writer.close()

    def _submit(
        self, connection: aiosqlite.Connection | None, function: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Queue ``function(sqlite3_connection, *args)`` on the connection's thread; its future."""
        return self._queue(connection, function, args).future

    def _queue(self, connection: aiosqlite.Connection | None, function: Callable[..., T], args: Any) -> _Answer[T]:
        """Queue ``function(sqlite3_connection, *args)`` on the connection's thread; its answer.

        aiosqlite has no public way to run a function on its thread, so this puts it on the worker's
        queue as aiosqlite's own ``_execute`` does, without the task that wrapping ``_execute`` would
        cost (pinned by the dependency range; the conformance suite exercises it on every call).
        The answer goes to the caller's loop, whichever thread runs it; if that loop has closed
        meanwhile (an ``asyncio.run`` that finished during a cancelled read), it is dropped, where
        aiosqlite's own delivery would kill the connection's thread.
        """
        if connection is None and self.read_only and self._state == "open":
            raise StorageError(f"{self._name} is open read-only")
        if connection is None or not connection._running or connection._connection is None:
            raise StorageError("the SQLite connection is not open")
        answer: _Answer[T] = _Answer(asyncio.get_running_loop())
        connection._tx.put_nowait((None, functools.partial(_answer, answer, function, connection._connection, args)))
        return answer

    async def _call(self, connection: aiosqlite.Connection | None, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(sqlite3_connection, *args)`` on the connection's thread: one hop, one await.

        A cancelled caller still waits for its call to finish before the cancellation propagates,
        so once a cancelled call returns, nothing of it is left running behind the caller's back.
        Until then the caller awaits the answer's future itself, not a shield around it: the answer
        wakes the caller on the loop's next turn, where a shield would take one turn more (~5 us).
        """
        answer = self._queue(connection, function, args)
        try:
            return await answer.future
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite failed on {self.db_file!r}: {exc}") from exc
        except asyncio.CancelledError as cancelled:
            # The future was cancelled with the caller (or answered just as the caller was): wait
            # for the call itself, on a fresh future each time, shielded from anyio's repeated
            # cancellation of this scope; its failure, if any, is reported as it would be uncancelled.
            if answer.future.done() and not answer.future.cancelled():
                answer.future.exception()  # retrieved here, whatever it was
            with anyio.CancelScope(shield=True):
                while not answer.finished:
                    answer.future = answer.loop.create_future()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await answer.future
            if isinstance(answer.error, sqlite3.Error):
                raise StorageError(f"SQLite failed on {self.db_file!r}: {answer.error}") from answer.error
            if answer.error is not None:
                raise answer.error from None
            raise cancelled

    async def _write(self, function: Callable[..., T], *args: Any) -> T:
        """Run a write transaction on the writer's thread; reopen the writer if it was left stuck.

        A connection whose ``ROLLBACK`` failed is still inside its transaction, holding SQLite's write
        lock, and every later ``BEGIN`` on it would fail. Closing it rolls that transaction back
        (SQLite does so on close, and a later opener recovers the file if even that fails); a new
        connection takes its place.
        """
        try:
            return await self._call(self._writer, function, *args)
        finally:
            if self._writer_stuck:
                with anyio.CancelScope(shield=True):
                    await self._reopen_writer()

    async def _reopen_writer(self) -> None:
        """Replace the stuck writer with a new connection (once, however many writes saw it stuck);
        if opening fails, the next write tries again."""
        async with self._reopen_lock:
            if not self._writer_stuck or self._reader is None:  # repaired meanwhile, or the store is closed
                return
            if self._reader is self._writer:  # an in-memory database lives and dies with its one connection
                self._writer_stuck = False
                return
            stuck, self._writer = self._writer, None
            if stuck is not None:
                await stuck.close()
            writer = await self._connect()
            try:
                await self._call(writer, self._set_up)
            except BaseException:
                await writer.close()
                raise
            if self._reader is None:  # the store was closed meanwhile
                await writer.close()
                return
            self._writer, self._writer_stuck = writer, False

    def _set_up(self, db: sqlite3.Connection) -> None:
        """Pragmas, then the schema's missing migration steps in order; safe when several processes
        start at once (each step re-reads the version under SQLite's write lock and runs once)."""
        db.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        self._switch_to_wal(db)
        db.execute(f"PRAGMA synchronous = {self._synchronous}")
        db.execute("PRAGMA foreign_keys = ON")
        found = self._in_transaction(db, self._prepare_migrations)
        for step in steps_after(self._steps(), found):
            self._in_transaction(db, self._run_step, step)

    def _switch_to_wal(self, db: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode = WAL``, waiting up to the busy timeout for another writer.

        On a rollback-journal file whose write lock another connection holds, SQLite fails the switch
        at once without calling its busy handler, so the wait is done here.
        """
        deadline = time.monotonic() + self._busy_ms / 1000
        pause = 0.001
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _in_transaction(self, db: sqlite3.Connection, function: Callable[..., T], *args: Any) -> T:
        """``function(db, *args)`` in a ``BEGIN IMMEDIATE`` transaction, committed, or rolled back."""
        db.execute("BEGIN IMMEDIATE")
        try:
            result = function(db, *args)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    def _schema_version(self, db: sqlite3.Connection) -> int:
        t = self.tables
        row = db.execute(f"SELECT version FROM {quote(t.schema)} WHERE component = ?", (t.events,)).fetchone()
        found = 0 if row is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(found, SCHEMA_VERSION)
        return found

    def _prepare_migrations(self, db: sqlite3.Connection) -> int:
        """The version table and the step record exist; the version found (0: a new file)."""
        t = self.tables
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {quote(t.schema)} (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        db.execute(migrations_ddl(quote(t.migrations), "TEXT", "REAL"))
        return self._schema_version(db)

    def _run_step(self, db: sqlite3.Connection, step: MigrationStep) -> None:
        """One step, unless another process ran it since we looked; recorded with the new version."""
        t = self.tables
        if self._schema_version(db) >= step.version:
            return
        for statement in step.statements:
            db.execute(statement)
        db.execute(
            f"INSERT INTO {quote(t.migrations)} (component, version, description, applied_at) VALUES (?, ?, ?, ?)",
            (t.events, step.version, step.description, time.time()),
        )
        db.execute(
            f"INSERT INTO {quote(t.schema)} (component, version) VALUES (?, ?) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
            (t.events, step.version),
        )

    def _steps(self) -> list[MigrationStep]:
        """Every schema version's change, in order. Steps use ``IF NOT EXISTS`` where they create, so
        a file an older release made (its tables there, its version stamped) upgrades cleanly."""
        t = self.tables
        events, sessions, snapshots = quote(t.events), quote(t.sessions), quote(t.snapshots)
        return [
            MigrationStep(
                1,
                "events, session index and snapshots",
                (
                    f"CREATE TABLE IF NOT EXISTS {events} ("
                    "position INTEGER PRIMARY KEY AUTOINCREMENT, "
                    "session_id TEXT NOT NULL, "
                    "version INTEGER NOT NULL, "
                    "event_id BLOB NOT NULL, "
                    "type TEXT NOT NULL, "
                    "schema_version INTEGER NOT NULL, "
                    "data BLOB NOT NULL, "
                    "recorded_at REAL NOT NULL, "
                    "UNIQUE (session_id, version))",
                    f"CREATE UNIQUE INDEX IF NOT EXISTS {quote(t.events + '_event_id')} ON {events} (event_id)",
                    f"CREATE TABLE IF NOT EXISTS {sessions} ("
                    "session_id TEXT PRIMARY KEY, session_type TEXT, agent_id TEXT, team_id TEXT, "
                    "workflow_id TEXT, user_id TEXT, name TEXT, created_at REAL NOT NULL, "
                    "updated_at REAL NOT NULL, run_count INTEGER NOT NULL, version INTEGER NOT NULL, "
                    "deleted INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
                    # A user's sessions are found by this index and sorted by updated_at after (a user
                    # has few); the listing of all sessions by updated_at has its own (schema 4).
                    f"CREATE INDEX IF NOT EXISTS {quote(t.sessions + '_user_created')} "
                    f"ON {sessions} (user_id, created_at)",
                    f"CREATE TABLE IF NOT EXISTS {snapshots} ("
                    "session_id TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, "
                    "schema_version INTEGER NOT NULL, data BLOB NOT NULL, created_at REAL NOT NULL, "
                    "PRIMARY KEY (session_id, name, version))",
                ),
            ),
            MigrationStep(
                2,
                "out-of-line payloads: the chunk table",
                (
                    f"CREATE TABLE IF NOT EXISTS {quote(t.chunks)} ("
                    f"event_id BLOB NOT NULL REFERENCES {events} (event_id) ON DELETE CASCADE, "
                    "part INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (event_id, part))",
                ),
            ),
            MigrationStep(
                3,
                "tamper evidence: each event's chain hash and the index's head hash",
                (
                    f"ALTER TABLE {events} ADD COLUMN chain BLOB",
                    f"ALTER TABLE {sessions} ADD COLUMN chain_head BLOB",
                ),
            ),
            newest_first_step(t, sessions),
            state_events_step(t, events),
        ]

    # -- writing -----------------------------------------------------------------------------------

    async def _append(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> AppendResult:
        """Commit through the group committer: appends that arrive while a transaction is on the
        writer's thread share the next one (one fsync for all), each checked on its own."""
        return await self._group.submit(AppendRequest(session_id, events, pending, expected, recorded_at))

    async def _append_many(self, parts: Sequence[PendingAppend], recorded_at: float) -> list[AppendResult]:
        """One ticket of the group committer, so it shares the writer's transaction discipline: all
        its parts go in one savepoint of the batch's transaction (or the whole transaction, alone),
        and a part that fails rolls every part back."""
        request = _ManyRequest(
            [AppendRequest(p.session_id, p.events, p.pending, p.expected, recorded_at) for p in parts]
        )
        await self._group.submit(request)
        return request.results

    async def _commit_batch(self, batch: Sequence[AppendRequest | _ManyRequest]) -> list[AppendResult | Exception]:
        return await self._write(self._append_batch_in_thread, batch)

    def _append_batch_in_thread(
        self, db: sqlite3.Connection, batch: Sequence[AppendRequest | _ManyRequest]
    ) -> list[AppendResult | Exception]:
        """Commit the batch in one transaction; an append that fails leaves nothing behind.

        In a batch of several, each append runs inside its own savepoint, so one that fails part way
        (a reused id in its 4,001st row, a value the driver cannot bind) is rolled back alone and the
        others commit. A lone append needs no savepoint: if it fails, the whole transaction is rolled
        back. Its caller gets a typed error either way; an error that ends SQLite's transaction
        itself (a full disk, an I/O error) fails the whole batch.
        """
        outcomes: list[AppendResult | Exception] = []
        alone = len(batch) == 1
        db.execute("BEGIN IMMEDIATE")
        try:
            for request in batch:
                if not alone:
                    db.execute("SAVEPOINT kern_append")
                try:
                    try:
                        outcome = self._append_request(db, request, lean=True)
                    except _Undo:  # the lean path wrote and must not have: undo it, take the full path
                        db.execute("ROLLBACK" if alone else "ROLLBACK TO kern_append")
                        if alone:
                            db.execute("BEGIN IMMEDIATE")
                        outcome = self._append_request(db, request, lean=False)
                    outcomes.append(outcome)
                except Exception as exc:
                    if not db.in_transaction:
                        raise
                    if alone:
                        self._rollback(db)
                        return [_append_error(request, exc)]
                    db.execute("ROLLBACK TO kern_append")
                    outcomes.append(_append_error(request, exc))
                if not alone:
                    db.execute("RELEASE kern_append")
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        return outcomes

    def _rollback(self, db: sqlite3.Connection) -> None:
        """End the writer's failed transaction; if even ``ROLLBACK`` fails, the connection is still in
        it and every later ``BEGIN`` would fail, so it is marked for :meth:`_write` to reopen."""
        if not db.in_transaction:
            return
        with contextlib.suppress(sqlite3.Error):  # the caller's own error is the one to report
            db.execute("ROLLBACK")
        if db.in_transaction:
            self._writer_stuck = True

    def _append_request(
        self, db: sqlite3.Connection, request: AppendRequest | _ManyRequest, *, lean: bool
    ) -> AppendResult:
        """One ticket: an append, or every part of an ``append_many`` (its results kept on it, its
        first one answering the ticket); the caller undoes all of it if any part fails. ``lean``:
        parts may take the lean path (see :meth:`_append_lean`)."""
        if isinstance(request, AppendRequest):
            return self._append_one(db, request, lean)
        results = []
        for part in request.parts:
            try:
                results.append(self._append_one(db, part, lean))
            except _Undo:
                raise
            except Exception as exc:
                if not db.in_transaction:
                    raise
                error = _append_error(part, exc)
                if error is exc:
                    raise
                raise error from exc
        request.results = results
        return results[0]

    def _append_one(self, db: sqlite3.Connection, request: AppendRequest, lean: bool) -> AppendResult:
        """One append inside the batch's transaction; the caller undoes its writes if it fails.

        The conflict and retry checks come before any write; the INSERT may be several statements
        (at most 4,000 rows each), so a reused id in a later one fails after earlier rows were written.
        """
        session_id, pending, expected = request.session_id, request.pending, request.expected
        known = self._heads.get(session_id) if lean and request.delta.started is None else None
        if known is not None and (expected is ExpectedVersion.ANY or expected == known[0]):
            result = self._append_lean(db, request, *known)
            if result is not None:
                return result
        row = db.execute(self._sql_head, (session_id,)).fetchone()
        if row is not None and row[11] and (erased := refuse_erased(session_id, row[12])) is not None:
            raise erased
        head = 0 if row is None else row[10]
        if not check_expected(expected, head):
            retry = match_retry(session_id, pending, self._find_ids(db, pending))
            if retry is None:
                raise conflict(session_id, expected, head)
            return retry
        hashes = self.chain.hashes(session_id, None if row is None else row[12], head, pending, request.recorded_at)
        try:
            numbered = self._insert(db, session_id, pending, head, request.recorded_at, self.chain.kept(hashes))
        except sqlite3.IntegrityError:
            retry = match_retry(session_id, pending, self._find_ids(db, pending))
            if retry is None:  # pragma: no cover - the write lock makes this unreachable
                raise conflict(session_id, expected, head) from None
            return retry
        info = None if row is None or row[11] else info_from_row(row)
        new = apply_delta(info, session_id, request.delta, head + len(pending), request.recorded_at)
        db.execute(
            self._sql_upsert,
            (
                new.session_id,
                new.session_type,
                new.agent_id,
                new.team_id,
                new.workflow_id,
                new.user_id,
                new.name,
                new.created_at,
                new.updated_at,
                new.run_count,
                new.version,
                hashes[-1],
            ),
        )
        return self._written(db, request, head, numbered, hashes[-1])

    def _append_lean(
        self, db: sqlite3.Connection, request: AppendRequest, head: int, previous: bytes | None
    ) -> AppendResult | None:
        """The append to a live session whose head this store wrote last (``head``, hashed ``previous``);
        ``None``, having written nothing, when the row says otherwise.

        The full path reads the index row, checks it, inserts and upserts the row it computed. Here
        one UPDATE does the check and the write: it matches only a live row (not deleted, so not
        erased) at version ``head`` with head hash ``previous``, exactly the facts the full path
        would read and act on, and sets what the upsert would (the delta applied to the row in
        place; an append that starts the session, which replaces its ids, takes the full path).
        A miss (another connection or process appended, the session was deleted, recreated or
        erased, a retry of an append already stored) writes nothing and the full path follows in
        the same transaction. An INSERT that then fails on a unique index (a reused event id: the
        full path may answer it as a retry) raises :class:`_Undo`: the caller undoes the UPDATE and
        runs the full path instead.
        """
        session_id, pending, delta = request.session_id, request.pending, request.delta
        hashes = self.chain.hashes(session_id, previous, head, pending, request.recorded_at)
        version = head + len(pending)
        advanced = db.execute(
            self._sql_advance,
            (request.recorded_at, version, delta.runs_started, delta.name, hashes[-1], session_id, head, previous),
        ).rowcount
        if not advanced:
            return None
        try:
            numbered = self._insert(db, session_id, pending, head, request.recorded_at, self.chain.kept(hashes))
        except sqlite3.IntegrityError:
            raise _Undo from None
        return self._written(db, request, head, numbered, hashes[-1])

    def _written(
        self,
        db: sqlite3.Connection,
        request: AppendRequest,
        head: int,
        numbered: list[tuple[int, int]],
        head_hash: bytes | None,
    ) -> AppendResult:
        """Either path's end, once its rows are in and its index row written: the payloads' chunks
        stored (after the retry check: an IntegrityError here is a failure), the new head kept for
        the lean path, and the append's result."""
        pending = request.pending
        if any(new.chunks for new in pending):
            db.executemany(
                self._sql_chunk_put,
                [(new.event_id.bytes, part, chunk) for new in pending for part, chunk in enumerate(new.chunks)],
            )
        self._remember(request.session_id, head + len(pending), head_hash)
        return AppendResult(
            session_id=request.session_id,
            from_version=head + 1,
            to_version=head + len(pending),
            positions=tuple(position for _, position in numbered),
            event_ids=tuple(new_event.event_id for new_event in pending),
            recorded_at=request.recorded_at,
        )

    def _remember(self, session_id: str, version: int, head_hash: bytes | None) -> None:
        """Keep a session's head for the lean path; the oldest entry goes past :data:`_HEADS_KEPT`."""
        heads = self._heads
        if session_id not in heads and len(heads) >= _HEADS_KEPT:
            del heads[next(iter(heads))]
        heads[session_id] = (version, head_hash)

    def _insert(
        self,
        db: sqlite3.Connection,
        session_id: str,
        pending: Sequence[PendingEvent],
        head: int,
        recorded_at: float,
        hashes: Sequence[bytes | None],
    ) -> list[tuple[int, int]]:
        """Insert ``pending`` after version ``head`` with the ``hashes`` they keep; their (version, position)
        pairs, in order."""
        if len(pending) == 1:  # the row's position is its rowid: no RETURNING to run (~4 us a row)
            new = pending[0]
            row = (session_id, head + 1, new.event_id.bytes, new.type, new.schema_version, new.data, recorded_at)
            position = db.execute(self._sql_insert_one, (*row, hashes[0])).lastrowid
            assert position is not None  # set by every INSERT into a rowid table
            return [(head + 1, position)]
        numbered: list[tuple[int, int]] = []
        for start in range(0, len(pending), _ROWS_PER_INSERT):
            chunk = pending[start : start + _ROWS_PER_INSERT]
            params: list[Any] = []
            for offset, new in enumerate(chunk, start=head + start + 1):
                params += (
                    session_id,
                    offset,
                    new.event_id.bytes,
                    new.type,
                    new.schema_version,
                    new.data,
                    recorded_at,
                    hashes[offset - head - 1],
                )
            sql = self._sql_inserts.get(len(chunk))
            if sql is None:
                sql = self._sql_insert + ", ".join([self._sql_insert_row] * len(chunk)) + " RETURNING version, position"
                if len(self._sql_inserts) < 64:
                    self._sql_inserts[len(chunk)] = sql
            numbered += db.execute(sql, params).fetchall()
        numbered.sort()
        return numbered

    def _find_ids(self, db: sqlite3.Connection, pending: Sequence[PendingEvent]) -> list[StoredEvent | None]:
        found: dict[UUID, StoredEvent] = {}
        for start in range(0, len(pending), _IDS_PER_SELECT):
            chunk = pending[start : start + _IDS_PER_SELECT]
            for row in db.execute(self._by_ids(len(chunk)), [new.event_id.bytes for new in chunk]):
                stored = _stored(row)
                found[stored.event_id] = stored
        return [found.get(new.event_id) for new in pending]

    def _by_ids(self, count: int) -> str:
        return self._sql_by_ids.format(columns=self._columns) + "(" + ", ".join("?" * count) + ")"

    async def _find_events(self, event_ids: Sequence[UUID]) -> Sequence[StoredEvent | None]:
        found: dict[UUID, StoredEvent] = {}
        for start in range(0, len(event_ids), _IDS_PER_SELECT):
            chunk = event_ids[start : start + _IDS_PER_SELECT]
            for row in await self._fetch(self._by_ids(len(chunk)), [event_id.bytes for event_id in chunk]):
                stored = _stored(row)
                found[stored.event_id] = stored
        return [found.get(event_id) for event_id in event_ids]

    async def _delete_session(self, session_id: str) -> bool:
        return await self._write(self._delete_in_thread, session_id)

    def _delete_in_thread(self, db: sqlite3.Connection, session_id: str) -> bool:
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted = self._delete_rows(db, session_id)
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        return deleted

    def _delete_rows(self, db: sqlite3.Connection, session_id: str) -> bool:
        erased = db.execute(self._sql_delete_events, (session_id,)).rowcount
        db.execute(self._sql_delete_snapshots, (session_id,))
        tombstoned = db.execute(self._sql.tombstone, (session_id,)).rowcount
        return bool(erased or tombstoned)

    async def _erase_sessions(self, user_id: str, session_ids: Sequence[str]) -> None:
        """Delete the sessions in one transaction, each tombstone marked erased (:data:`ERASED_HEAD`)."""
        await self._write(self._erase_in_thread, session_ids)

    def _erase_in_thread(self, db: sqlite3.Connection, session_ids: Sequence[str]) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            for session_id in session_ids:
                self._delete_rows(db, session_id)
                db.execute(self._sql.mark_erased, (session_id, ERASED_HEAD))
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise

    async def _save_snapshot(self, snapshot: Snapshot) -> None:
        await self._write(self._save_snapshot_in_thread, snapshot)

    def _save_snapshot_in_thread(self, db: sqlite3.Connection, snapshot: Snapshot) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            self._put_snapshot(db, snapshot)
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise

    def _put_snapshot(self, db: sqlite3.Connection, snapshot: Snapshot) -> None:
        saved = db.execute(
            self._sql_snapshot_put,
            (
                snapshot.session_id,
                snapshot.name,
                snapshot.version,
                snapshot.schema_version,
                snapshot.data,
                snapshot.created_at,
                ERASED_HEAD,
            ),
        ).rowcount
        if not saved and (erased := refuse_erased(snapshot.session_id)) is not None:
            raise erased
        key = (snapshot.session_id, snapshot.name)
        db.execute(self._sql_snapshot_prune, key + key)

    async def _truncate_before(
        self, session_id: str, version: int, expected: int | ExpectedVersion, snapshots: Sequence[Snapshot]
    ) -> int:
        return await self._write(self._truncate_in_thread, session_id, version, expected, snapshots)

    def _truncate_in_thread(
        self,
        db: sqlite3.Connection,
        session_id: str,
        version: int,
        expected: int | ExpectedVersion,
        snapshots: Sequence[Snapshot],
    ) -> int:
        """Under the write lock (``BEGIN IMMEDIATE``): no append can move the head between the check
        and the delete, and an append waiting for the lock lands after the truncation, untouched."""
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(self._sql.version, (session_id,)).fetchone()
            check_truncation(session_id, version, expected, 0 if row is None else row[0])
            removed: int = db.execute(self._sql_truncate, (session_id, version)).rowcount
            if removed:
                for snapshot in snapshots:
                    self._put_snapshot(db, snapshot)
            db.execute("COMMIT")
        except BaseException:
            self._rollback(db)
            raise
        return removed

    # -- reading -----------------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """The rows of a query on the reader thread."""
        return await self._on_reader(_fetchall, sql, params)

    async def _on_reader(self, function: Callable[..., T], *args: Any) -> T:
        """``function(sqlite3_connection, *args)`` on the reader thread. Not shielded like writes: a
        cancelled read returns at once, and its query, which changes nothing, finishes on the thread
        with its result dropped."""
        try:
            return await self._submit(self._reader, function, *args)
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite failed on {self.db_file!r}: {exc}") from exc

    async def _read_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Page:
        return await self._page(session_id, low, high, limit, backwards, types, True)

    async def _read_session_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Page:
        """A read's page: :meth:`_read_page`'s without the hash chain, which records do not carry."""
        return await self._page(session_id, low, high, limit, backwards, types, False)

    async def _page(
        self,
        session_id: str,
        low: int,
        high: int | None,
        limit: int,
        backwards: bool,
        types: tuple[str, ...] | None,
        chained: bool,
    ) -> Page:
        """One hop: the page read and converted on the reader's thread (see :func:`_page_rows`), by
        statements built once per shape. A tail read is short enough for every call around it to
        show, so this awaits the thread's answer itself."""
        shape = (backwards, None if types is None else len(types), types is not None and state_typed(types), chained)
        statements = self._page_statements.get(shape)
        if statements is None:
            statements = self._page_statements[shape] = self._page_sql(backwards, types, chained)
        params = (session_id, low, _MAX_VERSION if high is None else high, *(types or ()), limit)
        try:
            return await self._submit(self._reader, _page_rows, statements, params)
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite failed on {self.db_file!r}: {exc}") from exc

    def _page_sql(self, backwards: bool, types: tuple[str, ...] | None, chained: bool) -> tuple[str, str]:
        """A session page's statements: selecting :data:`_COLUMNS` (without the chain, :data:`_UNCHAINED`),
        and text as bytes (see :func:`_page_rows`)."""
        typed = "" if types is None else _typed(types)
        order = "DESC" if backwards else "ASC"
        columns, text_columns = (self._columns, self._text_columns) if chained else _UNCHAINED
        return (
            self._sql_page.format(columns=columns, typed=typed, order=order),
            self._sql_page.format(columns=text_columns, typed=typed, order=order),
        )

    async def _read_all_page(self, from_position: int, limit: int) -> Page:
        statements = (
            self._sql_all_page.format(columns=self._columns),
            self._sql_all_page.format(columns=self._text_columns),
        )
        return await self._on_reader(_page_rows, statements, (from_position, limit))

    async def _load_context(
        self, session_id: str, snapshot: str, schema_version: int, types: tuple[str, ...], tail: int, after: int
    ) -> tuple[SessionInfo | None, Snapshot | None, Page, Page]:
        """The reads of the default, in one hop to the reader's thread. A page SQLite cannot return
        (a damaged row's text) sends it to the default, whose page reads deal with it."""
        typed = _typed(types)
        statements = (
            self._sql.info,
            self._sql.snapshot_get,
            self._sql_page.format(columns=self._columns, typed="", order="DESC"),
            self._sql_page.format(columns=self._columns, typed=typed, order="ASC"),
        )
        try:
            return await self._submit(
                self._reader, _context_rows, statements, session_id, snapshot, schema_version, types, tail, after
            )
        except sqlite3.Error:
            return await super()._load_context(session_id, snapshot, schema_version, types, tail, after)

    async def _read_chunks(self, event_ids: Sequence[UUID]) -> Mapping[UUID, Sequence[bytes]]:
        found: dict[UUID, list[bytes]] = {}
        sql = self._sql_chunks.format(ids=", ".join("?" * len(event_ids)))
        for event_id, chunk in await self._fetch(sql, [event_id.bytes for event_id in event_ids]):
            found.setdefault(UUID(bytes=event_id), []).append(chunk)
        return found

    async def _current_version(self, session_id: str) -> int:
        rows = await self._fetch(self._sql.version, (session_id,))
        return int(rows[0][0]) if rows else 0

    async def _get_session_info(self, session_id: str) -> SessionInfo | None:
        rows = await self._fetch(self._sql.info, (session_id,))
        return info_from_row(rows[0]) if rows else None

    async def _list_sessions(self, query: SessionFilter) -> list[SessionInfo]:
        sql, params = self._sql.list_sessions(query, no_limit=-1)
        return [info_from_row(row) for row in await self._fetch(sql, params)]

    async def _load_snapshot(
        self, session_id: str, name: str, schema_version: int | None, max_version: int | None
    ) -> Snapshot | None:
        rows = await self._fetch(
            self._sql.snapshot_get,
            (session_id, name, schema_version, _MAX_VERSION if max_version is None else max_version),
        )
        if not rows:
            return None
        return snapshot_from_row(rows[0])


class _Undo(Exception):
    """The lean path wrote its index row but cannot finish: undo the append's writes, take the full path."""


class _ManyRequest:
    """An ``append_many`` on its way through the group committer, as one ticket."""

    __slots__ = ("parts", "results", "session_id")

    def __init__(self, parts: list[AppendRequest]) -> None:
        self.parts = parts
        self.session_id = parts[0].session_id
        self.results: list[AppendResult] = []


def _append_error(request: AppendRequest | _ManyRequest, exc: Exception) -> KernEventsError:
    """The typed error for one append that failed inside a batch (its writes already undone).

    Input that passed validation but that SQLite cannot take (a lone surrogate in a string, a value
    of a type it cannot bind) is the caller's to fix; any other driver error is a storage failure.
    """
    if isinstance(exc, KernEventsError):
        return exc
    error: KernEventsError
    if isinstance(exc, ValueError | OverflowError | TypeError | sqlite3.InterfaceError | sqlite3.ProgrammingError):
        unencodable = isinstance(exc, UnicodeEncodeError) and exc.object == request.session_id
        error = InvalidArgumentError(
            "session_id" if unencodable else "events",
            f"SQLite cannot store this append to session {request.session_id!r}: {type(exc).__name__}: {exc}",
        )
    else:
        error = StorageError(f"SQLite failed appending to session {request.session_id!r}: {exc}")
    error.__cause__ = exc
    return error


def _read_only_uri(path: str) -> str:
    """A ``file:`` URI that opens ``path`` read-only (``mode=ro``): SQLite creates and writes nothing."""
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"


def _open_failure(path: str, error: sqlite3.Error, read_only: bool) -> str:
    """Why SQLite could not open ``path``, in the user's words where we can tell."""
    file = os.path.abspath(path)
    if os.path.isdir(file):
        return "it is a directory"
    if not os.path.isdir(os.path.dirname(file)):
        return f"its directory {os.path.dirname(file)!r} does not exist"
    if not os.path.exists(file):
        if read_only:
            return "the file does not exist"
        if not os.access(os.path.dirname(file), os.W_OK | os.X_OK):
            return "no permission to create it in its directory"
    elif not os.access(file, os.R_OK if read_only else os.R_OK | os.W_OK):
        return "permission denied"
    try:
        os.close(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return "too many open files"
    return str(error)


class _Answer(Generic[T]):
    """A call on a connection's thread as its caller's loop sees it: the future the caller awaits
    (replaced by a new one while a cancelled caller waits on), and the outcome once it is known."""

    __slots__ = ("error", "finished", "future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[T] = loop.create_future()
        self.finished = False
        self.error: BaseException | None = None


def _answer(answer: _Answer[T], function: Callable[..., T], db: sqlite3.Connection, args: tuple[Any, ...]) -> None:
    """Run on the connection's thread: call ``function`` and hand its outcome to the caller's loop."""
    try:
        result = function(db, *args)
    except BaseException as exc:
        call_soon_on(answer.loop, _failed, answer, exc)
    else:
        call_soon_on(answer.loop, _answered, answer, result)


def _answered(answer: _Answer[T], result: T) -> None:
    answer.finished = True
    if not answer.future.done():
        answer.future.set_result(result)


def _failed(answer: _Answer[Any], exc: BaseException) -> None:
    answer.finished = True
    answer.error = exc
    if not answer.future.done():
        answer.future.set_exception(exc)


def _typed(types: tuple[str, ...]) -> str:
    """A page's type filter: its types as parameters, after the state events' predicate when they
    are among those, so that SQLite reads them through their partial index (schema 5)."""
    bound = f"AND type IN ({', '.join('?' for _ in types)}) "
    return f"AND {STATE_TYPES} {bound}" if state_typed(types) else bound


def _context_rows(
    db: sqlite3.Connection,
    statements: tuple[str, str, str, str],
    session_id: str,
    snapshot: str,
    schema_version: int,
    types: tuple[str, ...],
    tail: int,
    after: int,
) -> tuple[SessionInfo | None, Snapshot | None, Page, Page]:
    """:meth:`SqliteEventStore._load_context`'s reads, run on the reader's thread: the index row, the
    snapshot, the tail and the typed rows after the snapshot, each bounded by the index row's version."""
    info_sql, snapshot_sql, tail_sql, after_sql = statements
    row = db.execute(info_sql, (session_id,)).fetchone()
    if row is None:
        return None, None, (), ()
    info = info_from_row(row)
    row = db.execute(snapshot_sql, (session_id, snapshot, schema_version, info.version)).fetchone()
    found = None if row is None else snapshot_from_row(row)
    newest = _stored_page(db.execute(tail_sql, (session_id, 1, info.version, tail)).fetchall())
    low = 1 if found is None else found.version + 1
    later = _stored_page(db.execute(after_sql, (session_id, low, info.version, *types, after)).fetchall())
    return info, found, newest, later


def _fetchall(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _page_rows(db: sqlite3.Connection, statements: tuple[str, str], params: Sequence[Any]) -> Page:
    """A page of events, read by the first of ``statements`` (selecting :data:`_COLUMNS`) and
    converted to stored events, on the reader's thread: one hop, nothing more on the loop.

    When SQLite cannot return the page at all (a damaged row's TEXT is not UTF-8: the driver fails
    the whole fetch), it is read again by the second (text as bytes) in the same hop and checked row
    by row, so the good rows still arrive and the damaged one is reported as such; on that error
    path only.
    """
    try:
        rows = db.execute(statements[0], params).fetchall()
    except sqlite3.Error:
        return _decoded_page(db.execute(statements[1], params).fetchall())
    return _stored_page(rows)
