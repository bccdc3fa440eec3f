"""The PostgreSQL backend on asyncpg: the production store.

**One statement per append.** The head read, the multi-row insert (from ``unnest`` arrays) and the
session-index upsert are one ``WITH … INSERT … INSERT … ON CONFLICT`` statement in autocommit: one
round trip, no explicit transaction (measured here, BEGIN / INSERT / COMMIT costs two more round
trips and ~40 % of the throughput). The statement only inserts if the session's head equals the
expected version; the primary key ``(session_id, version)`` catches a concurrent writer that got
there first, and the unique ``event_id`` makes retries exact. Only when nothing was written does a
second query run: one round trip that returns the session's current version (which a conflict
carries, so the caller can retry at once) and whether any of the event ids is already stored;
only then does a third read what is stored, to tell an idempotent retry from a conflict. An append
carrying a payload above :attr:`~PostgresEventStore.inline_limit` is the exception: its statement and
the insert of its chunks share a transaction (large payloads are rare, and their transfer dwarfs it).

**A global feed that never skips.** An identity or sequence value is taken when a row is inserted
but becomes visible at commit, so a reader that follows "position > last seen" can miss an event
whose transaction commits late. Instead of serializing writers behind a lock (correct, but one
commit flush at a time), each row's position is built from its transaction id::

    position = (pg_current_xact_id() << 16) + ordinal within the append

Positions are unique and strictly increasing in the order transactions *started writing*, and a
reader stops below a visibility fence, ``pg_snapshot_xmin(pg_current_snapshot()) << 16``: every
transaction older than the fence has finished, and no transaction that has not yet written can get
an id below it. So everything below the fence is final, and readers never skip or reorder, while
concurrent appends keep committing concurrently. An append holds at most 65,535 events. Per-session
reads need no fence: version k+1 can only be inserted once version k is visible.

**The price: the fence is cluster-wide.** ``pg_snapshot_xmin`` is the oldest transaction id still
running anywhere on the server, in any database, by any client; while such a transaction stays
open, ``read_all`` and subscriptions return nothing committed after it began, even appends that
have long committed. :meth:`PostgresEventStore.feed_lag` shows it: the fence, how many committed
events it holds back, and the transaction holding it (its process id, database and start time),
for monitoring and alerting. A subscription that caught up while events were held back watches the
fence and re-reads as soon as it moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import asyncpg

from kern_events._loops import AnyLoopLock, call_soon_on, finish_on, on_loop_end
from kern_events._validate import check_sql_identifier
from kern_events.backend import (
    DEFAULT_MAX_EVENT_SIZE,
    MAX_EVENTS_PER_APPEND,
    SNAPSHOTS_KEPT,
    BaseEventStore,
    Chain,
    GroupCommit,
    IndexDelta,
    PendingAppend,
    SessionFilter,
    SessionInfo,
    check_expected,
    check_truncation,
    conflict,
    match_retry,
)
from kern_events.codec import Codec
from kern_events.errors import (
    IdempotencyError,
    InvalidArgumentError,
    KernEventsError,
    SchemaMissingError,
    SchemaVersionError,
    StorageError,
    StorageUnavailableError,
)
from kern_events.events import Event
from kern_events.records import AppendResult, ExpectedVersion, FeedLag, PendingEvent, Snapshot, StoredEvent
from kern_events.stores._sql import (
    ERASED_HEAD,
    EVENT_COLUMNS,
    INFO_COLUMNS,
    SCHEMA_VERSION,
    SNAPSHOT_COLUMNS,
    STATE_TYPES,
    AppendRequest,
    MigrationStep,
    Row,
    SessionStatements,
    TableNames,
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

__all__ = ["PostgresEventStore", "normalize_url"]

_ANY_RETRIES = 20
_CHAIN_HEADS_KEPT = 100_000
"""Sessions whose head (version, hash) a store remembers between appends (about 20 MB at most)."""
_NOTIFY_DELAY = 0.01
"""Seconds a NOTIFY waits so that appends landing close together share one wake-up."""
_LISTEN_READY_TIMEOUT = 5.0
_FENCE_POLL = 0.1
"""Longest wait (seconds) between two looks at a fence that holds committed events back."""
_MAX_VERSION = 2**62
_READER_SETUP = "SET plan_cache_mode = force_generic_plan"
"""Run once on the held read connection. Its statements (a session's pages, the context) look rows up
by session id on the same indexes whatever the arguments, and the server would otherwise plan each
of them afresh on its first five executions (``plan_cache_mode=auto``): ~0.3 ms each for the context
statement, which the first loads of a process paid. A ``SET``, not a startup parameter, which
poolers such as PgBouncer refuse."""
if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    _Connection = PoolConnectionProxy[asyncpg.Record]
    _AnyConnection = asyncpg.Connection | _Connection
_DRIVER_SUFFIX = re.compile(r"^(postgres(?:ql)?)\+[A-Za-z0-9_]+://")


def normalize_url(db_url: str) -> str:
    """Accept ``postgresql://``, ``postgres://`` and SQLAlchemy-style ``postgresql+driver://`` URLs."""
    if not isinstance(db_url, str) or not re.match(r"^postgres(?:ql)?(?:\+[A-Za-z0-9_]+)?://", db_url):
        raise InvalidArgumentError("db_url", "expected a postgresql:// (or postgres://, postgresql+driver://) URL")
    return _DRIVER_SUFFIX.sub(r"\1://", db_url)


def _stored(row: Row) -> StoredEvent:
    return stored_from_row(row, row[3])


_SNAPSHOT_AT = 1 + INFO_COLUMNS.count(",") + 1
"""Where a context row's snapshot columns start (after its part number and the index row's columns)."""
_EVENT_AT = _SNAPSHOT_AT + SNAPSHOT_COLUMNS.count(",") + 1
"""Where a context row's event columns start; see ``_Statements.context``."""


_CONNECTION_LOST = (
    OSError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # the protocol's state after a connection broke mid-call
)


def _connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection (or the server) is gone, rather than this one statement failed."""
    if isinstance(exc, _CONNECTION_LOST):
        return True
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    return sqlstate is not None and sqlstate[:2] in ("08", "57")  # connection, operator intervention


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    """The one seam where asyncpg's errors become kern-events errors (by class and SQLSTATE)."""
    try:
        yield
    except _CONNECTION_LOST as exc:
        raise StorageUnavailableError(f"PostgreSQL connection lost: {exc}") from exc
    except asyncpg.PostgresError as exc:
        if _connection_lost(exc):
            raise StorageUnavailableError(f"PostgreSQL unavailable: {exc}") from exc
        raise StorageError(f"PostgreSQL failed: {exc} (SQLSTATE {exc.sqlstate})") from exc


def _translated(exc: Exception) -> Exception:
    """``exc`` as the kern-events error :func:`_translated_errors` raises for it (itself if none)."""
    try:
        with _translated_errors():
            raise exc
    except Exception as translated:
        return translated


async def _connect_to_the_end(url: str) -> asyncpg.Connection:
    """``asyncpg.connect``, but a cancellation waits for the connection and closes it, leaking no socket."""
    connecting = asyncio.ensure_future(asyncpg.connect(url))
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            (await connecting).terminate()
        raise


async def _no_reset(connection: asyncpg.Connection) -> None:
    """The pool's release hook: our connections never LISTEN, lock or change settings.

    asyncpg's default reset runs a query (a full round trip) on every release, which halves the
    throughput of short operations; asyncpg still rolls back a transaction left open.
    """


class PostgresEventStore(BaseEventStore):
    """An :class:`~kern_events.store.EventStore` in PostgreSQL (13 or newer).

    Pass ``db_url`` (the store makes and owns a pool of ``pool_size`` connections) or an existing
    asyncpg ``pool`` (which it then never closes). ``schema`` and ``tables`` isolate workloads that
    share a database. With ``create_schema=False`` the store never runs DDL and refuses a database
    whose schema is missing or older: create it with :meth:`migrate` (``kern-events migrate``).

    A payload above :attr:`inline_limit` (1 MiB) is stored out of line, in a chunk table written in
    the append's transaction (such an append takes a transaction instead of one autocommit statement).
    """

    inline_limit = 1024 * 1024

    def __init__(
        self,
        db_url: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        pool_size: int = 10,
        schema: str = "public",
        tables: TableNames | None = None,
        create_schema: bool = True,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
    ) -> None:
        super().__init__(codec=codec, max_event_size=max_event_size, chain_key=chain_key)
        if (db_url is None) == (pool is None):
            raise InvalidArgumentError("db_url", "give exactly one of db_url and pool")
        self._url = None if db_url is None else normalize_url(db_url)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise InvalidArgumentError("pool_size", f"expected an integer >= 1, got {pool_size!r}")
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = pool
        self._owns_pool = pool is None
        self.schema = check_sql_identifier("schema", schema)
        self.tables = tables if tables is not None else TableNames()
        self._create_schema = create_schema
        self._migrate_on_open = False
        self._chain_heads: dict[str, tuple[int, bytes | None]] = {}
        """The head (version, hash) of sessions this store appended to, so that an append computes its
        chain hashes without a round trip; a stale entry only costs one (the statement checks both)."""
        self._sql = _Statements(self.schema, self.tables)
        self._notify_task: asyncio.Task[None] | None = None
        self._notifier: asyncpg.Connection | None = None
        self._appender: asyncpg.Connection | None = None
        self._reader: asyncpg.Connection | None = None
        self._reading = False
        """Whether the held reader connection is in use (a read that finds it so takes a pooled one)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._notify_wanted = False
        self._group = GroupCommit(self._commit_batch, take=_take_batch, backend="postgresql")
        self._listener_task: asyncio.Task[None] | None = None
        self._listeners = 0
        self._fence_task: asyncio.Task[None] | None = None
        self._home_ends: Callable[[], None] | None = None
        self._homing = AnyLoopLock()
        self._guests: dict[asyncio.AbstractEventLoop, _Guest] = {}
        self._guests_lock = threading.Lock()

    # -- connections -------------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._owns_pool:
            await self._make_home()
        else:
            self._loop = asyncio.get_running_loop()  # the caller's pool belongs to the loop opening the store
        try:
            if self._create_schema or self._migrate_on_open:
                await self.migrate()
            else:
                await self._check_schema()
        except BaseException:
            await self._close()
            raise

    async def _make_home(self) -> None:
        """Make the running loop the store's home: its pool, held connections and tasks live there.

        They are closed when that loop ends (``asyncio.run`` returning: see :func:`on_loop_end`), and
        the next loop that uses the store becomes its home; meanwhile other loops (other threads)
        get a pool of their own (:meth:`_guest_pool`).
        """
        pool = await self._new_pool()
        self._pool, self._loop = pool, asyncio.get_running_loop()
        self._home_ends = on_loop_end(self._home_ended)

    async def _new_pool(self) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(self._url, min_size=1, max_size=self._pool_size, reset=_no_reset)
        except (*_CONNECTION_LOST, asyncpg.PostgresError) as exc:
            raise StorageUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
        except (ValueError, OverflowError) as exc:  # asyncpg's URL parsing: a bad port or host
            raise InvalidArgumentError("db_url", f"not a usable PostgreSQL URL: {exc}") from exc

    async def _guest_pool(self) -> asyncpg.Pool:
        """A pool of the running loop's own, while another loop is home (another thread's
        ``asyncio.run``, ``run_blocking``'s loop): made on the loop's first operation, closed when the
        loop ends or the store closes."""
        loop = asyncio.get_running_loop()
        with self._guests_lock:
            guest = self._guests.get(loop)
            if guest is None:
                guest = self._guests[loop] = _Guest(loop)
                guest.making = loop.create_task(self._make_guest(guest))
        try:
            return await asyncio.shield(guest.making)  # a cancelled caller leaves the pool to the next one
        except Exception:
            with self._guests_lock:
                if self._guests.get(loop) is guest:
                    del self._guests[loop]  # the next operation tries again
            raise

    async def _make_guest(self, guest: _Guest) -> asyncpg.Pool:
        pool = await self._new_pool()

        async def close_at_loop_end() -> None:
            with self._guests_lock:
                if self._guests.get(guest.loop) is guest:
                    del self._guests[guest.loop]
            await guest.close()

        guest.stop_watching = on_loop_end(close_at_loop_end)
        return pool

    async def _close_guests(self) -> None:
        """Close every guest pool on its own loop, from whichever loop closes the store.

        Another thread's loop that has not closed is only ever asked, never touched: while it is
        running, this waits for the pool's close there; between ``asyncio.run``'s shutdown steps (not
        running, not closed), the close is queued for its next turn and its loop-end hook waits for it.
        """
        with self._guests_lock:
            guests, self._guests = list(self._guests.values()), {}
        for guest in guests:
            if guest.loop is asyncio.get_running_loop():
                await guest.close()
                guest.stop_watching()
            elif guest.loop.is_running():
                await finish_on(guest.loop, guest.close())
            elif not call_soon_on(guest.loop, guest.start_close):  # that loop has closed
                guest.terminate()

    async def _home_pool(self) -> asyncpg.Pool | None:
        """The pool, if the running loop is the store's home or can become it (the last home ended);
        ``None`` on a loop other than a live home."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return self._pool
        if not self._owns_pool:
            return self._pool if self._loop is None else None
        if self._loop is not None and not self._loop.is_closed():
            return None
        async with self._homing:
            if self._loop is not None and self._loop.is_closed():  # closed without ending politely
                self._abandon()
            if self._loop is None and self._state == "open":
                await self._make_home()
        return self._pool if self._loop is loop else None

    async def _home_ended(self) -> None:
        """The home loop is ending: close what lives on it, so that the next loop can be home."""
        self._home_ends = None
        await self._close_home()

    async def _close(self) -> None:
        """Close everything, from whichever loop: on each loop itself if it is running elsewhere."""
        await self._close_guests()
        home = self._loop
        if home is None or home is asyncio.get_running_loop():
            await self._close_home()
        elif home.is_running():
            await finish_on(home, self._close_home())
        else:  # its loop is not running (sync use) or has closed: nothing can be awaited there
            self._abandon()

    async def _close_home(self) -> None:
        """Close the home loop's connections and tasks; on that loop."""
        cancel, self._home_ends = self._home_ends, None
        if cancel is not None:
            cancel()
        notify, self._notify_task = self._notify_task, None
        if notify is not None:
            await asyncio.gather(notify, return_exceptions=True)  # the last appends' wake-up still goes out
        for connection in (self._notifier, self._appender, self._reader):
            if connection is not None:
                await connection.close()
        self._notifier = self._appender = self._reader = None
        for task in (self._listener_task, self._fence_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._listener_task = self._fence_task = None
        if self._owns_pool:
            pool, self._pool, self._loop = self._pool, None, None
            if pool is not None:
                await pool.close()

    def _abandon(self) -> None:
        """Drop every connection at once, without awaiting anything on the loop they belong to."""
        cancel, self._home_ends = self._home_ends, None
        if cancel is not None:
            cancel()
        with contextlib.suppress(RuntimeError):  # a closed loop can no longer schedule the clean-up
            for task in (self._notify_task, self._listener_task, self._fence_task):
                if task is not None and not task.done():
                    task.cancel()
        self._notify_task = self._listener_task = self._fence_task = None
        for connection in (self._notifier, self._appender, self._reader):
            if connection is not None:
                with contextlib.suppress(RuntimeError):
                    connection.terminate()
        self._notifier = self._appender = self._reader = None
        if self._owns_pool:
            pool, self._pool, self._loop = self._pool, None, None
            if pool is not None:
                with contextlib.suppress(RuntimeError):
                    pool.terminate()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[_AnyConnection]:
        """A pooled connection for one operation, with driver errors translated.

        The pool belongs to the store's home loop. Called from another loop (another thread's
        ``asyncio.run``, ``run_blocking``), the operation takes one from that loop's own pool, which
        needs the store's URL.
        """
        pool = self._pool
        if self._loop is not asyncio.get_running_loop():
            pool = await self._home_pool()
            if pool is None and self._state != "open" and self._loop is None:
                raise StorageError("the PostgreSQL pool is not open")
        elif pool is None:
            raise StorageError("the PostgreSQL pool is not open")
        with _translated_errors():
            if pool is not None:
                async with pool.acquire() as connection:
                    yield connection
                return
            if self._url is None:
                raise StorageError("a store built on a caller's pool can only be used from that pool's event loop")
            async with (await self._guest_pool()).acquire() as connection:
                yield connection

    def _on_own_loop(self) -> bool:
        return asyncio.get_running_loop() is self._loop

    @asynccontextmanager
    async def _appending_connection(self) -> AsyncIterator[_AnyConnection]:
        """The connection the group committer appends through.

        Only one batch is in flight at a time, so with a URL the store keeps one connection for
        appends instead of checking one out of the pool per batch (a checkout costs ~55 us here);
        a broken one is replaced on the next append. With the caller's pool, it checks one out.
        """
        if self._url is None or (not self._on_own_loop() and await self._home_pool() is None):
            async with self._connection() as pooled:
                yield pooled
            return
        with _translated_errors():
            if self._appender is None or self._appender.is_closed():
                self._appender = await _connect_to_the_end(self._url)
            appender = self._appender
            try:
                yield appender
            except BaseException:
                self._discard_appender(appender)
                raise

    def _discard_appender(self, appender: asyncpg.Connection) -> None:
        """Drop the held appending connection after an error or a cancellation mid-call: its state
        is unknown, so the next append opens a fresh one."""
        if self._appender is appender:
            self._appender = None
        appender.terminate()

    async def migrate(self) -> None:
        """Run the schema's missing migration steps in order, each in its own transaction that records
        it; idempotent, and safe from many processes at once (an advisory lock per step, under which
        the version is read again, so each step runs once)."""
        if self._pool is None and self._state != "open":  # not opening yet: opening migrates
            self._migrate_on_open = True
            await self._ensure_open()
            return
        async with self._connection() as connection:
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._sql.lock_key)
                for statement in self._sql.prepare:
                    await connection.execute(statement)
                found = await self._found_version(connection)
            for step in steps_after(self._sql.steps, found):
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._sql.lock_key)
                    if await self._found_version(connection) >= step.version:
                        continue
                    for statement in step.statements:
                        await connection.execute(statement)
                    await connection.execute(self._sql.record_step, self.tables.events, step.version, step.description)
                    await connection.execute(self._sql.set_schema_version, self.tables.events, step.version)

    async def _found_version(self, connection: _AnyConnection) -> int:
        found = await connection.fetchval(self._sql.schema_version, self.tables.events)
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaVersionError(found, SCHEMA_VERSION)
        return 0 if found is None else int(found)

    async def _check_schema(self) -> None:
        async with self._connection() as connection:
            try:
                found = await connection.fetchval(self._sql.schema_version, self.tables.events)
            except asyncpg.UndefinedTableError:
                found = None
        if found is None:
            raise SchemaMissingError(f"PostgreSQL schema {self.schema!r}", SCHEMA_VERSION)
        if found != SCHEMA_VERSION:
            raise SchemaVersionError(found, SCHEMA_VERSION)

    # -- notifications -----------------------------------------------------------------------------

    def _announce(self) -> None:
        """Send one payload-less NOTIFY shortly after appends commit, coalescing those that come close.

        Never inside the append's transaction: there PostgreSQL would hold a cluster-wide lock
        through the commit, serializing every notifying writer. It goes out on a connection of its
        own, so it never takes a pooled connection from the appends. One task at a time sends them.
        """
        self._notify_wanted = True
        if not self._on_own_loop():
            return  # the store's own loop sends it with its next append, or subscribers poll
        if self._notify_task is None or self._notify_task.done():
            self._notify_task = asyncio.create_task(self._notify_while_wanted())

    async def _notify_while_wanted(self) -> None:
        while True:
            await asyncio.sleep(_NOTIFY_DELAY)
            if not self._notify_wanted:
                return
            self._notify_wanted = False
            await self._notify()

    async def _notify(self) -> None:
        if self._url is None:  # only the caller's pool to talk through
            with contextlib.suppress(StorageError):
                async with self._connection() as pooled:
                    await pooled.execute("SELECT pg_notify($1, '')", self._sql.channel)
            return
        try:
            if self._notifier is None or self._notifier.is_closed():
                self._notifier = await _connect_to_the_end(self._url)
            await self._notifier.execute("SELECT pg_notify($1, '')", self._sql.channel)
        except (*_CONNECTION_LOST, asyncpg.PostgresError):
            notifier, self._notifier = self._notifier, None  # subscribers fall back to polling meanwhile
            if notifier is not None:
                notifier.terminate()

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[None]:
        """Keep a LISTEN connection (reconnecting if it drops) while any subscription is open.

        The connection lives on the store's home loop; a subscription on another loop is woken by
        this process's appends at once and by other processes' within its poll interval.
        """
        await self._ensure_open()
        if not self._on_own_loop() and await self._home_pool() is None:
            yield
            return
        self._listeners += 1
        if self._listener_task is None:
            ready = asyncio.Event()
            self._listener_task = asyncio.create_task(self._listen_forever(ready))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ready.wait()), _LISTEN_READY_TIMEOUT)
        try:
            yield
        finally:
            self._listeners -= 1
            if self._listeners == 0:
                tasks = [task for task in (self._listener_task, self._fence_task) if task is not None]
                self._listener_task = self._fence_task = None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen_forever(self, ready: asyncio.Event) -> None:
        delay = 0.05
        while True:
            try:
                async with self._listening_connection() as connection:
                    lost = asyncio.Event()
                    connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
                    await connection.add_listener(self._sql.channel, self._on_notify)
                    self.change_signal.fire()  # notifications may have been missed while away: re-read
                    ready.set()
                    delay = 0.05
                    await lost.wait()
            except (*_CONNECTION_LOST, asyncpg.PostgresError, StorageError):
                pass
            self.change_signal.fire()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _on_notify(self, *_: object) -> None:
        self.change_signal.fire()

    @asynccontextmanager
    async def _listening_connection(self) -> AsyncIterator[asyncpg.Connection | _Connection]:
        """A connection of its own when the store has a URL; else one held from the caller's pool."""
        if self._url is not None:
            connection = await _connect_to_the_end(self._url)
            try:
                yield connection
            finally:
                connection.terminate()
        else:
            async with self._connection() as pooled:
                yield pooled

    # -- writing -----------------------------------------------------------------------------------

    async def _append(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> AppendResult:
        """Commit through the group committer: a lone append is one statement; appends that arrive
        while others are being committed go together in one multi-session statement."""
        return await self._group.submit(AppendRequest(session_id, events, pending, expected, recorded_at))

    async def _commit_batch(self, batch: Sequence[AppendRequest]) -> list[AppendResult | Exception]:
        """One statement for the batch; an append it could not place goes through the single path."""
        appender = self._appender
        if len(batch) == 1 and appender is not None and self._loop is asyncio.get_running_loop():
            return [await self._append_held(appender, batch[0])]
        async with self._appending_connection() as connection:
            if len(batch) == 1:
                return [await self._append_alone(connection, batch[0])]
            # Appends with out-of-line payloads are left out of the statement: they go alone, below.
            self._chain_requests(batch)
            together = [request for request in batch if not _has_chunks(request)]
            try:
                rows = await connection.fetch(self._sql.append_batch, *_batch_arguments(together)) if together else []
            except Exception as error:
                if _connection_lost(error):
                    raise
                # An event id already stored, a value the server refuses, a deadlock with another
                # process: the statement wrote nothing. Each append goes alone, so only its own
                # caller learns of its failure.
                rows = []
            placed: dict[str, list[tuple[int, int]]] = {}
            for row in rows:
                placed.setdefault(row[0], []).append((row[1], row[2]))
            outcomes: list[AppendResult | Exception] = []
            lost: Exception | None = None
            for request in batch:
                numbered = placed.get(request.session_id)
                if numbered is not None:
                    self._remember(request)
                    outcomes.append(_result(request, sorted(numbered)))
                    continue
                if lost is not None:
                    outcomes.append(lost)
                    continue
                try:
                    outcomes.append(await self._append_alone(connection, request))
                except Exception as error:
                    failure = _translated(error)
                    outcomes.append(failure)
                    if _connection_lost(error):
                        lost = failure
            if lost is not None and connection is self._appender:
                self._discard_appender(connection)
            return outcomes

    async def _append_many(self, parts: Sequence[PendingAppend], recorded_at: float) -> list[AppendResult]:
        """One transaction for every part, its events inserted by the batch statement.

        Atomic on the global feed too: every row takes its position from the one transaction's id
        (numbered across all parts, so at most 65,535 events in all), and the fence lets readers see
        a transaction's rows all at once, once it has committed. Sessions are locked in one
        canonical order (the server's ``ORDER BY session_id``), existing rows first and new rows
        inserted in that order after, as the group committer's batches do, so two calls naming the
        same sessions in different orders wait for each other instead of deadlocking.
        """
        requests = [AppendRequest(p.session_id, p.events, p.pending, p.expected, recorded_at) for p in parts]
        ids = [new.event_id for request in requests for new in request.pending]
        async with self._connection() as connection:
            return await self._append_locked(connection, requests, ids)

    async def _append_locked(
        self, connection: _AnyConnection, requests: Sequence[AppendRequest], ids: list[UUID]
    ) -> list[AppendResult]:
        """:meth:`_append_many_in` in a transaction of its own, tried again while a session it names
        was being created by another writer (or an id stored by a racing retry of this call)."""
        for _ in range(_ANY_RETRIES):
            try:
                async with connection.transaction():
                    return await self._append_many_in(connection, requests, ids)
            except asyncpg.UniqueViolationError:
                continue  # an id was stored meanwhile (a racing retry of this call): look again
            except _Unplaced:
                continue  # another writer was creating one of the sessions: look again
        head = await connection.fetchval(self._sql.shared.version, requests[0].session_id)
        raise conflict(requests[0].session_id, requests[0].expected, head or 0)

    async def _append_many_in(
        self, connection: _AnyConnection, requests: Sequence[AppendRequest], ids: list[UUID]
    ) -> list[AppendResult]:
        """Inside the transaction: parts already stored with these ids are retries; the others are
        checked against their locked heads and inserted by one statement, or nothing is."""
        found = {row[3]: _stored(row) for row in await connection.fetch(self._sql.by_ids, ids)}
        retries = [
            match_retry(request.session_id, request.pending, [found.get(new.event_id) for new in request.pending])
            for request in requests
        ]
        todo = [request for request, retry in zip(requests, retries, strict=True) if retry is None]
        placed: dict[str, list[tuple[int, int]]] = {}
        if todo:
            locked = await connection.fetch(self._sql.lock_sessions, [request.session_id for request in todo])
            heads = {row[0]: (row[1], row[2]) for row in locked}
            for request in todo:
                head, chain_head = heads.get(request.session_id, (0, None))
                if (erased := refuse_erased(request.session_id, chain_head)) is not None:
                    raise erased
                if not check_expected(request.expected, head):
                    raise conflict(request.session_id, request.expected, head)
                request.at, request.prev = head, chain_head  # locked: the head cannot move
                request.hashes = self.chain.hashes(
                    request.session_id, chain_head, head, request.pending, request.recorded_at
                )
            for row in await connection.fetch(self._sql.append_batch, *_batch_arguments(todo)):
                placed.setdefault(row[0], []).append((row[1], row[2]))
            if any(request.session_id not in placed for request in todo):
                raise _Unplaced()
            chunked = [new for request in todo for new in request.pending if new.chunks]
            if chunked:  # out-of-line payloads, in the same transaction as their events
                await connection.execute(self._sql.chunk_put, *_chunk_arguments(chunked))
        for request in todo:
            self._remember(request)
        return [
            retry if retry is not None else _result(request, sorted(placed[request.session_id]))
            for request, retry in zip(requests, retries, strict=True)
        ]

    async def _truncate_before(
        self, session_id: str, version: int, expected: int | ExpectedVersion, snapshots: Sequence[Snapshot]
    ) -> int:
        """Lock the session row, as a delete does: an append in flight finishes first (and its events
        are above the truncation point), a later one waits and then lands untouched."""
        async with self._connection() as connection, connection.transaction():
            head = await connection.fetchval(self._sql.lock_head, session_id)
            check_truncation(session_id, version, expected, head or 0)
            removed: int = await connection.fetchval(self._sql.truncate, session_id, version)
            if removed:
                for snapshot in snapshots:
                    await self._put_snapshot(connection, snapshot)
        return removed

    async def _append_held(self, appender: asyncpg.Connection, request: AppendRequest) -> AppendResult | Exception:
        """A lone append on the held appending connection: the hot path, flat (each layer of context
        managers costs microseconds here); the same error handling as :meth:`_appending_connection`."""
        try:
            return await self._append_alone(appender, request)
        except BaseException:
            self._discard_appender(appender)
            with _translated_errors():
                raise

    async def _append_alone(
        self, connection: asyncpg.Connection | _Connection, request: AppendRequest
    ) -> AppendResult | Exception:
        """The single-append statement, with the error paths that tell a retry from a conflict.

        A conflict costs one round trip after the statement that wrote nothing: :meth:`_missed`
        answers with the current version (and head hash: an append chained from a stale one is
        chained again from the head just read and tried again). The happy path stays one statement.
        """
        session_id, pending, expected = request.session_id, request.pending, request.expected
        if request.hashes is None:
            self._chain_requests([request])
        for _ in range(_ANY_RETRIES):
            missed: tuple[int | None, bool, bool, bytes | None] | None = None
            try:
                rows = await self._try_lean(connection, request)
                if not rows and _lean_applies(request):
                    missed = head, deleted, stored, chain_head = await self._missed(connection, request)
                    if (erased := refuse_erased(session_id, chain_head)) is not None:
                        return erased
                    if not deleted and not stored:
                        if self._rechain(request, head, chain_head):
                            continue
                        if expected is not ExpectedVersion.ANY:  # an exact version the session is not at
                            return conflict(session_id, expected, head or 0)
                        continue
                if not rows and (missed is None or missed[1]):
                    # not lean, or a tombstone: the full statement decides (a stored id needs no try)
                    missed = None
                    rows = await self._append_statement(connection, request)
            except asyncpg.UniqueViolationError:
                rows = []
            if rows:
                self._remember(request)
                return _result(request, sorted((row[0], row[1]) for row in rows))
            # Nothing was written: the head did not match, a new session was created by another
            # writer at the same moment, or an event id is already stored.
            head, _, stored, chain_head = missed if missed is not None else await self._missed(connection, request)
            if (erased := refuse_erased(session_id, chain_head)) is not None:
                return erased
            if not stored:
                if self._rechain(request, head, chain_head):
                    continue
                if expected is not ExpectedVersion.ANY and (head is not None or request.wanted != 0):
                    return conflict(session_id, expected, head or 0)
                continue  # any version, or a new session another writer is creating: try again
            rows = await connection.fetch(self._sql.by_ids, [new.event_id for new in pending])
            found = {row[3]: _stored(row) for row in rows}
            try:
                retry = match_retry(session_id, pending, [found.get(new.event_id) for new in pending])
            except IdempotencyError as error:
                return error
            if retry is not None:
                return retry
            if expected is not ExpectedVersion.ANY:
                return conflict(session_id, expected, head or 0)
        # Any version, and other writers got in first every time: lock the session's row and append
        # at its head, which cannot move meanwhile (waiters on the lock take turns, so none starves).
        try:
            (result,) = await self._append_locked(connection, [request], [new.event_id for new in pending])
        except KernEventsError as error:
            return error
        return result

    def _chain_requests(self, requests: Sequence[AppendRequest]) -> None:
        """Chain each append from its session's head as this store last left it, or, for a session
        it has not written, from the head its expected version names with no hash yet. No round trip:
        the statement checks both the version and the hash, so a wrong guess writes nothing and
        costs the one query that a conflict costs anyway (:meth:`_missed`), which reads the head
        to chain from (:meth:`_rechain`)."""
        for request in requests:
            wanted = request.wanted
            cached = self._chain_heads.get(request.session_id)
            if cached is not None and (wanted is None or cached[0] == wanted):
                request.at, request.prev = cached
            else:
                request.at, request.prev = wanted or 0, None
            request.hashes = self.chain.hashes(
                request.session_id, request.prev, request.at, request.pending, request.recorded_at
            )

    def _rechain(self, request: AppendRequest, head: int | None, chain_head: bytes | None) -> bool:
        """After a statement that wrote nothing: if the append was chained from a head that is not
        the one just read but may append there (any version, or the exact one with another hash),
        chain it from that head; whether to try again."""
        version = head or 0
        if request.wanted is None:
            if (version, chain_head) == (request.at, request.prev):
                return False
            request.at = version
        elif version != request.at or chain_head == request.prev:
            return False
        request.prev = chain_head
        request.hashes = self.chain.hashes(
            request.session_id, chain_head, request.at, request.pending, request.recorded_at
        )
        self._chain_heads.pop(request.session_id, None)
        return True

    def _remember(self, request: AppendRequest) -> None:
        """Keep the head an append left, for the session's next append (a bounded cache)."""
        assert request.hashes is not None
        if len(self._chain_heads) >= _CHAIN_HEADS_KEPT:
            self._chain_heads.clear()
        self._chain_heads[request.session_id] = (request.at + len(request.pending), request.hashes[-1])

    async def _append_statement(self, connection: _AnyConnection, request: AppendRequest) -> list[asyncpg.Record]:
        """The full single-append statement; an append with out-of-line payloads runs it in a
        transaction with the insert of its chunks, so the event and its chunks land together or not
        at all (nothing is inserted if the statement placed no event)."""
        sql = self._sql.append_one if len(request.pending) == 1 else self._sql.append
        if not _has_chunks(request):
            rows: list[asyncpg.Record] = await connection.fetch(sql, *_single_arguments(request))
            return rows
        async with connection.transaction():
            rows = await connection.fetch(sql, *_single_arguments(request))
            if rows:
                await connection.execute(self._sql.chunk_put, *_chunk_arguments(request.pending))
        return rows

    async def _missed(
        self, connection: asyncpg.Connection | _Connection, request: AppendRequest
    ) -> tuple[int | None, bool, bool, bytes | None]:
        """After a statement that wrote nothing: the session's version (``None``: no row), whether it
        is a tombstone, whether any of the append's event ids is stored, and its head hash. One round
        trip, on a fresh snapshot, so it sees what a racing writer just committed."""
        row = await connection.fetchrow(self._sql.missed, request.session_id, [new.event_id for new in request.pending])
        assert row is not None
        return row[0], bool(row[1]), bool(row[2]), row[3]

    async def _try_lean(self, connection: _AnyConnection, request: AppendRequest) -> list[asyncpg.Record]:
        """The lean statement where it applies (see ``_Statements.append_existing``), else nothing."""
        delta, pending = request.delta, request.pending
        if not _lean_applies(request):
            return []
        sql = self._sql.append_existing_one if len(pending) == 1 else self._sql.append_existing
        events = _event_arguments(pending)
        arguments = (
            request.session_id,
            request.at,
            *events,
            request.recorded_at,
            delta.runs_started,
            len(pending),
            *_chain_arguments(request),
        )
        rows: list[asyncpg.Record] = await connection.fetch(sql, *arguments)
        return rows

    async def _delete_session(self, session_id: str) -> bool:
        """Lock the session row first: an append in flight (which holds the row until it commits)
        finishes before the events are deleted, and a later one waits for the delete. Deleting the
        events first would miss the rows of an append that commits meanwhile."""
        self._chain_heads.pop(session_id, None)
        async with self._connection() as connection, connection.transaction():
            await connection.execute(self._sql.lock_session, session_id)
            tombstoned = await connection.fetchval(self._sql.tombstone, session_id)
            erased = await connection.fetchval(self._sql.delete_events, session_id)
            await connection.execute(self._sql.delete_snapshots, session_id)
        return bool(erased or tombstoned)

    async def _erase_sessions(self, user_id: str, session_ids: Sequence[str]) -> None:
        """Delete the sessions as :meth:`_delete_session` does, in one transaction, each tombstone
        marked erased (:data:`ERASED_HEAD`); rows are locked in session-id order, as appends lock them."""
        for session_id in session_ids:
            self._chain_heads.pop(session_id, None)
        async with self._connection() as connection, connection.transaction():
            for session_id in sorted(session_ids):
                await connection.execute(self._sql.lock_session, session_id)
                await connection.fetchval(self._sql.tombstone, session_id)
                await connection.execute(self._sql.shared.mark_erased, session_id, ERASED_HEAD)
                await connection.fetchval(self._sql.delete_events, session_id)
                await connection.execute(self._sql.delete_snapshots, session_id)

    async def _save_snapshot(self, snapshot: Snapshot) -> None:
        async with self._connection() as connection:
            await self._put_snapshot(connection, snapshot)

    async def _put_snapshot(self, connection: _AnyConnection, snapshot: Snapshot) -> None:
        saved = await connection.fetchval(
            self._sql.snapshot_put,
            snapshot.session_id,
            snapshot.name,
            snapshot.version,
            snapshot.schema_version,
            snapshot.data,
            snapshot.created_at,
            ERASED_HEAD,
        )
        if not saved and (erased := refuse_erased(snapshot.session_id)) is not None:
            raise erased

    # -- reading -----------------------------------------------------------------------------------

    async def _fetch(self, sql: str, *arguments: Any) -> list[asyncpg.Record]:
        async with self._connection() as connection:
            rows: list[asyncpg.Record] = await connection.fetch(sql, *arguments)
        return rows

    async def _read_rows(self, sql: str, *arguments: Any) -> list[asyncpg.Record]:
        """A page of a session read: on a connection the store holds for reads while it is free, else
        (a concurrent read holds it, another loop, the caller's pool) on a pooled one.

        A pool checkout and release cost ~45 us here (asyncpg releases through a shielded task), half
        a 20-event tail read's query. It plans generically from the start (:data:`_READER_SETUP`).
        It is opened on the first read and, like the appender, replaced after a call
        that failed other than by its statement's own error (its state is then unknown). The path
        with the connection open is kept to a few tests: a tail read is short enough for the
        Python around it to show (a ``with`` over a generator-based context manager cost ~5 us).
        """
        if self._reading or self._url is None or asyncio.get_running_loop() is not self._loop:
            return await self._fetch(sql, *arguments)
        self._reading = True
        reader = self._reader
        try:
            if reader is None or reader.is_closed():
                with _translated_errors():
                    reader = self._reader = await _connect_to_the_end(self._url)
                    await reader.execute(_READER_SETUP)
            rows: list[asyncpg.Record] = await reader.fetch(sql, *arguments)
        except BaseException as exc:
            if reader is not None and (not isinstance(exc, asyncpg.PostgresError) or _connection_lost(exc)):
                if self._reader is reader:
                    self._reader = None
                reader.terminate()
            if isinstance(exc, Exception) and (translated := _translated(exc)) is not exc:
                raise translated from exc
            raise
        finally:
            self._reading = False
        return rows

    async def _find_events(self, event_ids: Sequence[UUID]) -> Sequence[StoredEvent | None]:
        rows = await self._fetch(self._sql.by_ids, list(event_ids))
        found = {row[3]: _stored(row) for row in rows}
        return [found.get(event_id) for event_id in event_ids]

    async def _read_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Sequence[StoredEvent]:
        return [_stored(row) for row in await self._page_rows(session_id, low, high, limit, backwards, types)]

    async def _read_session_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Any:
        """A read's page decoded straight from the driver's rows (see ``BaseEventStore._decoded_rows``)."""
        return await self._decoded_rows(await self._page_rows(session_id, low, high, limit, backwards, types), _stored)

    async def _page_rows(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> list[asyncpg.Record]:
        top = _MAX_VERSION if high is None else high
        if types is not None:
            pages = self._sql.state_pages if state_typed(types) else self._sql.typed_pages
            return await self._read_rows(pages[backwards], session_id, low, top, limit, list(types))
        sql = self._sql.page_backwards if backwards else self._sql.page
        return await self._read_rows(sql, session_id, low, top, limit)

    async def _load_context(
        self, session_id: str, snapshot: str, schema_version: int, types: tuple[str, ...], tail: int, after: int
    ) -> tuple[SessionInfo | None, Snapshot | None, Sequence[StoredEvent], Sequence[StoredEvent]]:
        """The reads of the default in one statement (``_Statements.context``), on the read connection."""
        sql = self._sql.state_context if state_typed(types) else self._sql.context
        rows = await self._read_rows(sql, session_id, snapshot, schema_version, tail, list(types), after)
        info: SessionInfo | None = None
        found: Snapshot | None = None
        parts: tuple[list[StoredEvent], list[StoredEvent]] = ([], [])
        for row in rows:
            if row[0] == 0:
                info = info_from_row(row[1:_SNAPSHOT_AT])
                if row[_SNAPSHOT_AT] is not None:
                    found = snapshot_from_row(row[_SNAPSHOT_AT:_EVENT_AT])
            else:
                parts[row[0] - 1].append(_stored(row[_EVENT_AT:]))
        return info, found, parts[0], parts[1]

    async def _read_all_page(self, from_position: int, limit: int) -> Sequence[StoredEvent]:
        page = [_stored(row) for row in await self._fetch(self._sql.all_page, from_position, limit)]
        if len(page) < limit and self._listeners and self._on_own_loop():
            await self._watch_fence(page[-1].position + 1 if page else from_position)
        return page

    async def _watch_fence(self, unread: int) -> None:
        """A subscription caught up at ``unread``: if stored events lie beyond it, held back by the
        fence, wake subscribers once they are readable. No append or NOTIFY announces that moment
        (the transaction holding the fence may be anyone's), so without this they would wait for
        their next poll. The fence is looked at again here, after the page was read: if it has
        moved past them meanwhile, subscribers are woken at once."""
        ((newest, fence),) = await self._fetch(self._sql.feed_edge)
        if newest is None or newest < unread:
            return
        if newest < fence:
            self.change_signal.fire()
        elif self._listeners and (self._fence_task is None or self._fence_task.done()):
            # (re-checked: the last subscription may have closed during the query above, and its
            # close cancels only a task that exists by then)
            self._fence_task = asyncio.create_task(self._wake_when_fence_moves(fence))

    async def _wake_when_fence_moves(self, fence: int) -> None:
        delay = 0.005
        with contextlib.suppress(StorageError):
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _FENCE_POLL)
                ((_, now),) = await self._fetch(self._sql.feed_edge)
                if now > fence:
                    break
        self.change_signal.fire()

    async def feed_lag(self) -> FeedLag:
        """Where the fence stands, how many committed events it holds back, and which transaction sets it.

        The transaction is shown (``since``, ``holder_pid``, ``holder_database``) when
        ``pg_stat_activity`` lets this role see it; a prepared transaction never shows there.
        """
        await self._ensure_open()
        ((fence, held_back, pid, database, since),) = await self._fetch(self._sql.feed_lag)
        if not held_back:
            return FeedLag(fence=fence)
        return FeedLag(fence=fence, held_back=held_back, since=since, holder_pid=pid, holder_database=database)

    async def _read_chunks(self, event_ids: Sequence[UUID]) -> Mapping[UUID, Sequence[bytes]]:
        found: dict[UUID, list[bytes]] = {}
        for event_id, chunk in await self._fetch(self._sql.chunks, list(event_ids)):
            found.setdefault(event_id, []).append(chunk)
        return found

    async def _current_version(self, session_id: str) -> int:
        rows = await self._fetch(self._sql.shared.version, session_id)
        return int(rows[0][0]) if rows else 0

    async def _get_session_info(self, session_id: str) -> SessionInfo | None:
        rows = await self._fetch(self._sql.shared.info, session_id)
        return info_from_row(rows[0]) if rows else None

    async def _list_sessions(self, query: SessionFilter) -> list[SessionInfo]:
        sql, arguments = self._sql.shared.list_sessions(query, no_limit=None)
        return [info_from_row(row) for row in await self._fetch(sql, *arguments)]

    async def _load_snapshot(
        self, session_id: str, name: str, schema_version: int | None, max_version: int | None
    ) -> Snapshot | None:
        rows = await self._fetch(
            self._sql.shared.snapshot_get,
            session_id,
            name,
            schema_version,
            _MAX_VERSION if max_version is None else max_version,
        )
        if not rows:
            return None
        return snapshot_from_row(rows[0])


class _Guest:
    """One guest loop's own pool (:meth:`PostgresEventStore._guest_pool`) and its one close.

    The pool is closed on its loop, once, by whichever asks first: the store's close or the loop's
    end (:func:`on_loop_end`, which ``asyncio.run`` awaits before it closes the loop). The other
    waits for that same close, so a loop never closes under a close in flight, and no other thread
    touches the pool while its loop can still run (there, an asyncpg transport aborted from another
    thread drops its socket from the loop's selector without waking it).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.making: asyncio.Task[asyncpg.Pool]
        self.stop_watching: Callable[[], None] = _nothing
        """Cancels the loop-end hook (on the guest's loop); it also keeps the hook alive until then."""
        self._closing: asyncio.Task[None] | None = None

    def start_close(self) -> asyncio.Task[None]:
        """The pool's close, started by the first call; on the guest's loop only."""
        if self._closing is None:
            self._closing = self.loop.create_task(self._close())
        return self._closing

    async def close(self) -> None:
        """Close the pool, or wait for its close under way; on the guest's loop only."""
        await asyncio.gather(self.start_close(), return_exceptions=True)

    async def _close(self) -> None:
        await asyncio.gather(self.making, return_exceptions=True)
        if not self.making.cancelled() and self.making.exception() is None:
            await self.making.result().close()

    def terminate(self) -> None:
        """Drop the pool's connections from any thread, once the guest's loop has closed."""
        if self.making.done() and not self.making.cancelled() and self.making.exception() is None:
            with contextlib.suppress(RuntimeError):
                self.making.result().terminate()


def _nothing() -> None:
    pass


class _Unplaced(Exception):
    """Inside ``append_many``'s transaction: a part's session row was being created by another
    writer, so the statement placed nothing for it; the transaction is rolled back and tried again."""


def _lean_applies(request: AppendRequest) -> bool:
    """Whether the lean statement can take the append: an existing head, no session start, no
    rename, no out-of-line payload."""
    delta = request.delta
    return request.at != 0 and delta.started is None and delta.name is None and not _has_chunks(request)


def _has_chunks(request: AppendRequest) -> bool:
    """Whether an append carries out-of-line payloads (then it needs a transaction)."""
    return any(new.chunks for new in request.pending)


def _chunk_arguments(pending: Sequence[PendingEvent]) -> tuple[list[UUID], list[int], list[bytes]]:
    """The chunks of ``pending`` as three column arrays: event id, part, bytes."""
    rows = [(new.event_id, part, chunk) for new in pending for part, chunk in enumerate(new.chunks)]
    return [row[0] for row in rows], [row[1] for row in rows], [row[2] for row in rows]


def _index_assignments(
    *, n: str, has_start: str, started: tuple[str, str, str, str, str], name: str, at: str, runs: str, chain: str
) -> str:
    """The session-index rule (``kern_events.backend.apply_delta``) as the SET list of an UPDATE of
    the row ``s``, over the given SQL expressions: a SessionStarted replaces the type, ids and user;
    a name replaces the name; a tombstoned row starts afresh (created now, no runs) but keeps counting
    versions; every append moves the version, the time and the run count."""
    session_type, agent_id, team_id, workflow_id, user_id = started
    return f"""
        version = s.version + {n},
        session_type = CASE WHEN {has_start} THEN {session_type} ELSE s.session_type END,
        agent_id = CASE WHEN {has_start} THEN {agent_id} ELSE s.agent_id END,
        team_id = CASE WHEN {has_start} THEN {team_id} ELSE s.team_id END,
        workflow_id = CASE WHEN {has_start} THEN {workflow_id} ELSE s.workflow_id END,
        user_id = CASE WHEN {has_start} THEN {user_id} ELSE s.user_id END,
        name = COALESCE({name}, s.name),
        created_at = CASE WHEN s.deleted THEN {at} ELSE s.created_at END,
        updated_at = {at},
        run_count = CASE WHEN s.deleted THEN 0 ELSE s.run_count END + {runs},
        chain_head = {chain},
        deleted = false"""


def _started_fields(delta: IndexDelta) -> tuple[str | None, ...]:
    started = delta.started
    if started is None:
        return (None, None, None, None, None)
    return (started.session_type, started.agent_id, started.team_id, started.workflow_id, started.user_id)


def _event_arguments(pending: Sequence[PendingEvent]) -> tuple[Any, ...]:
    """Ids, types, schema versions and bytes: plain values for one event, arrays for several."""
    if len(pending) == 1:
        new = pending[0]
        return (new.event_id, new.type, new.schema_version, new.data)
    return (
        [new.event_id for new in pending],
        [new.type for new in pending],
        [new.schema_version for new in pending],
        [new.data for new in pending],
    )


def _chain_arguments(request: AppendRequest) -> tuple[Any, bytes | None, bytes]:
    """The events' chain hashes as kept (one value for one event, else an array), the head hash they
    were computed from and the new head hash."""
    hashes = request.hashes
    assert hashes is not None
    return (hashes[0] if len(hashes) == 1 else Chain.kept(hashes)), request.prev, hashes[-1]


def _single_arguments(request: AppendRequest) -> tuple[Any, ...]:
    pending = request.pending
    return (
        request.session_id,
        request.at,
        *_event_arguments(pending),
        request.recorded_at,
        request.delta.started is not None,
        *_started_fields(request.delta),
        request.delta.name,
        request.delta.runs_started,
        len(pending),
        *_chain_arguments(request),
    )


def _batch_arguments(batch: Sequence[AppendRequest]) -> tuple[list[Any], ...]:
    """Column arrays: one entry per append (sessions are distinct in a batch), then one per event."""
    columns: tuple[list[Any], ...] = tuple([] for _ in range(22))
    (session, wanted, count, has_start, kind, agent, team, workflow, user, name, runs, at) = columns[:12]
    (owner, ordinal, serial, event_id, event_type, schema_version, data, chain, prev, head) = columns[12:]
    number = 0
    for request in batch:
        delta = request.delta
        hashes = request.hashes
        assert hashes is not None
        session.append(request.session_id)
        wanted.append(request.at)
        prev.append(request.prev)
        head.append(hashes[-1])
        chain += Chain.kept(hashes)
        count.append(len(request.pending))
        has_start.append(delta.started is not None)
        for column, value in zip((kind, agent, team, workflow, user), _started_fields(delta), strict=True):
            column.append(value)
        name.append(delta.name)
        runs.append(delta.runs_started)
        at.append(request.recorded_at)
        for offset, new in enumerate(request.pending, start=1):
            number += 1
            owner.append(request.session_id)
            ordinal.append(offset)
            serial.append(number)
            event_id.append(new.event_id)
            event_type.append(new.type)
            schema_version.append(new.schema_version)
            data.append(new.data)
    return columns


def _take_batch(queue: list[AppendRequest]) -> tuple[list[AppendRequest], list[AppendRequest]]:
    """Queued appends for one statement: one per session, and at most 65,535 events in all."""
    batch: list[AppendRequest] = []
    rest: list[AppendRequest] = []
    sessions: set[str] = set()
    events = 0
    for request in queue:
        if request.session_id in sessions or events + len(request.pending) > MAX_EVENTS_PER_APPEND:
            rest.append(request)
        else:
            batch.append(request)
            sessions.add(request.session_id)
            events += len(request.pending)
    return batch, rest


def _result(request: AppendRequest, numbered: Sequence[tuple[int, int]]) -> AppendResult:
    return AppendResult(
        session_id=request.session_id,
        from_version=numbered[0][0],
        to_version=numbered[-1][0],
        positions=tuple(position for _, position in numbered),
        event_ids=tuple(new.event_id for new in request.pending),
        recorded_at=request.recorded_at,
    )


class _Statements:
    """Every SQL statement of one schema and set of table names, built once."""

    def __init__(self, schema: str, tables: TableNames) -> None:
        def table(name: str) -> str:
            return f"{quote(schema)}.{quote(name)}"

        events, sessions = table(tables.events), table(tables.sessions)
        snapshots, versions = table(tables.snapshots), table(tables.schema)
        chunks = table(tables.chunks)
        self.lock_key = f"kern_events:{schema}.{tables.events}"
        self.channel = "kern_events_" + hashlib.sha256(self.lock_key.encode()).hexdigest()[:24]
        self.prepare = [
            f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}",
            f"CREATE TABLE IF NOT EXISTS {versions} (component text PRIMARY KEY, version integer NOT NULL)",
            migrations_ddl(table(tables.migrations), "text", "double precision"),
        ]
        # Every schema version's change, in order; ``IF NOT EXISTS`` where they create, so a schema an
        # older release made (its tables there, its version stamped) upgrades cleanly.
        self.steps = [
            MigrationStep(
                1,
                "events, session index and snapshots",
                (
                    f"CREATE TABLE IF NOT EXISTS {events} ("
                    "position bigint PRIMARY KEY, "
                    "session_id text NOT NULL, "
                    "version bigint NOT NULL, "
                    "event_id uuid NOT NULL, "
                    "type text NOT NULL, "
                    "schema_version integer NOT NULL, "
                    "data bytea NOT NULL, "
                    "recorded_at double precision NOT NULL, "
                    f"CONSTRAINT {quote(tables.events + '_session_version')} UNIQUE (session_id, version), "
                    f"CONSTRAINT {quote(tables.events + '_event_id')} UNIQUE (event_id))",
                    f"CREATE TABLE IF NOT EXISTS {sessions} ("
                    "session_id text PRIMARY KEY, session_type text, agent_id text, team_id text, workflow_id text, "
                    "user_id text, name text, created_at double precision NOT NULL, "
                    "updated_at double precision NOT NULL, run_count bigint NOT NULL, version bigint NOT NULL, "
                    "deleted boolean NOT NULL DEFAULT false)",
                    # A user's sessions are found by this index and sorted by updated_at after (a user
                    # has few); the listing of all sessions by updated_at has its own (schema 4).
                    f"CREATE INDEX IF NOT EXISTS {quote(tables.sessions + '_user_created')} "
                    f"ON {sessions} (user_id, created_at)",
                    f"CREATE TABLE IF NOT EXISTS {snapshots} ("
                    "session_id text NOT NULL, name text NOT NULL, version bigint NOT NULL, "
                    "schema_version integer NOT NULL, data bytea NOT NULL, created_at double precision NOT NULL, "
                    "PRIMARY KEY (session_id, name, version))",
                ),
            ),
            MigrationStep(
                2,
                "out-of-line payloads: the chunk table",
                (
                    # The foreign key takes chunks away with their event, whatever statement deletes it.
                    f"CREATE TABLE IF NOT EXISTS {chunks} ("
                    "event_id uuid NOT NULL, part integer NOT NULL, data bytea NOT NULL, "
                    f"CONSTRAINT {quote(tables.events + '_chunks_pkey')} PRIMARY KEY (event_id, part), "
                    f"CONSTRAINT {quote(tables.events + '_chunks_event')} FOREIGN KEY (event_id) "
                    f"REFERENCES {events} (event_id) ON DELETE CASCADE)",
                ),
            ),
            MigrationStep(
                3,
                "tamper evidence: each event's chain hash and the index's head hash",
                (
                    f"ALTER TABLE {events} ADD COLUMN IF NOT EXISTS chain bytea",
                    f"ALTER TABLE {sessions} ADD COLUMN IF NOT EXISTS chain_head bytea",
                ),
            ),
            newest_first_step(tables, sessions),
            state_events_step(tables, events),
        ]
        self.record_step = (
            f"INSERT INTO {table(tables.migrations)} (component, version, description, applied_at) "
            "VALUES ($1, $2, $3, extract(epoch FROM clock_timestamp()))"
        )
        self.schema_version = f"SELECT version FROM {versions} WHERE component = $1"
        self.set_schema_version = (
            f"INSERT INTO {versions} (component, version) VALUES ($1, $2) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version"
        )
        insert_events = (
            f"INSERT INTO {events} "
            "(position, session_id, version, event_id, type, schema_version, data, recorded_at, chain)"
        )
        # The events of one append, numbered from the head the CTE ``head`` found: from four arrays
        # ($3..$6), or, for one event (the common case), from plain parameters, which saves encoding
        # four arrays and the unnest (~25 us per append measured here).
        # ``{chain}`` is the parameter of the events' chain hashes (an array, or one value).
        from_arrays = f"""{insert_events}
SELECT (pg_current_xact_id()::text::bigint << 16) + e.ordinal, $1, head.base + e.ordinal,
       e.event_id, e.type, e.schema_version, e.data, $7, e.chain
FROM head, unnest($3::uuid[], $4::text[], $5::integer[], $6::bytea[], {{chain}}::bytea[])
     WITH ORDINALITY AS e(event_id, type, schema_version, data, chain, ordinal)
ORDER BY e.ordinal
RETURNING version, position"""
        from_parameters = f"""{insert_events}
SELECT (pg_current_xact_id()::text::bigint << 16) + 1, $1, head.base + 1, $3::uuid, $4::text, $5::integer,
       $6::bytea, $7, {{chain}}::bytea
FROM head
RETURNING version, position"""
        # $1 session, $2 expected head (NULL = any), $3..$6 the events, $7 recorded_at, $8 has
        # SessionStarted, $9..$13 its type and ids, $14 new name (NULL = keep), $15 runs started,
        # $16 number of events, $17 the events' chain hashes, $18 the head hash they were computed from
        # (NULL: none), $19 the new head hash. The session row is the lock: bumping its version only where it equals
        # the expectation makes a racing writer wait, re-check and find nothing to update, instead of
        # failing on the events' unique index; a new session's row is inserted (or, if another writer
        # just created it, not) in the same statement. No row bumped or created: nothing is written.
        any_session = f"""
WITH bumped AS (
    UPDATE {sessions} AS s SET {
            _index_assignments(
                n="$16",
                has_start="$8",
                started=("$9", "$10", "$11", "$12", "$13"),
                name="$14",
                at="$7",
                runs="$15",
                chain="$19",
            )
        }
    WHERE s.session_id = $1 AND s.version = $2::bigint AND s.chain_head IS NOT DISTINCT FROM $18::bytea
    RETURNING s.version - $16 AS base
), created AS (
    INSERT INTO {sessions} ({INFO_COLUMNS}, deleted, chain_head)
    SELECT $1, $9, $10, $11, $12, $13, $14, $7, $7, $15, $16, false, $19::bytea
    WHERE $2::bigint = 0 AND $18::bytea IS NULL AND NOT EXISTS (SELECT 1 FROM bumped)
    ON CONFLICT (session_id) DO NOTHING
    RETURNING 0::bigint AS base
), head AS (
    SELECT base FROM bumped UNION ALL SELECT base FROM created
)
"""
        self.append = any_session + from_arrays.format(chain="$17")
        self.append_one = any_session + from_parameters.format(chain="$17")
        # An existing session whose index row changes only in version, time and run count (most
        # appends: messages, tool calls, run outcomes): the index rule above with no session start,
        # no name and no tombstone, so no INSERT branch and no CASE per column, ~20 us less.
        # $8 runs started, $9 number of events, $10 the chain hashes, $11 the head hash they were
        # computed from, $12 the new one. Nothing returned (a tombstone, or the head moved): the
        # caller runs the full statement, which decides.
        existing_session = f"""
WITH head AS (
    UPDATE {sessions} AS s SET version = s.version + $9, updated_at = $7, run_count = s.run_count + $8,
                               chain_head = $12::bytea
    WHERE s.session_id = $1 AND s.version = $2::bigint AND NOT s.deleted
      AND s.chain_head IS NOT DISTINCT FROM $11::bytea
    RETURNING s.version - $9 AS base
)
"""
        self.append_existing = existing_session + from_arrays.format(chain="$10")
        self.append_existing_one = existing_session + from_parameters.format(chain="$10")
        # The batch form: $1..$12 one entry per append (distinct sessions), $13..$19 one per event,
        # $20 the events' chain hashes, $21 and $22 per append the head hash the chain was computed
        # from (NULL: none) and the new one.
        # Existing session rows are locked in session-id order first, and new sessions' rows are
        # inserted in session-id order too (an insert holds its key in the unique index until
        # commit), so two batches (in any processes) rarely wait on each other in a cycle; if they
        # do, the server aborts one and its appends go alone. An append whose row was not bumped
        # or created is simply absent from the result, and its caller retries it alone.
        self.append_batch = f"""
WITH request AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::boolean[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::float8[],
                         $21::bytea[], $22::bytea[])
    AS r(session_id, wanted, n, has_start, session_type, agent_id, team_id, workflow_id, user_id, name, runs, at,
         prev, chain_head)
), locked AS (
    SELECT s.session_id FROM {sessions} AS s
    WHERE s.session_id IN (SELECT session_id FROM request)
    ORDER BY s.session_id FOR UPDATE
), bumped AS (
    UPDATE {sessions} AS s SET {
            _index_assignments(
                n="r.n",
                has_start="r.has_start",
                started=("r.session_type", "r.agent_id", "r.team_id", "r.workflow_id", "r.user_id"),
                name="r.name",
                at="r.at",
                runs="r.runs",
                chain="r.chain_head",
            )
        }
    FROM request AS r
    WHERE s.session_id = r.session_id AND s.version = r.wanted AND s.chain_head IS NOT DISTINCT FROM r.prev
      AND (SELECT count(*) FROM locked) >= 0
    RETURNING s.session_id, s.version - r.n AS base
), created AS (
    INSERT INTO {sessions} ({INFO_COLUMNS}, deleted, chain_head)
    SELECT r.session_id, r.session_type, r.agent_id, r.team_id, r.workflow_id, r.user_id, r.name,
           r.at, r.at, r.runs, r.n, false, r.chain_head
    FROM request AS r
    WHERE r.wanted = 0 AND r.prev IS NULL
      AND NOT EXISTS (SELECT 1 FROM bumped AS b WHERE b.session_id = r.session_id)
      AND (SELECT count(*) FROM locked) >= 0
    ORDER BY r.session_id
    ON CONFLICT (session_id) DO NOTHING
    RETURNING session_id, 0::bigint AS base
), head AS (
    SELECT session_id, base FROM bumped UNION ALL SELECT session_id, base FROM created
)
{insert_events}
SELECT (pg_current_xact_id()::text::bigint << 16) + e.serial, e.session_id, head.base + e.ordinal,
       e.event_id, e.type, e.schema_version, e.data, r.at, e.chain
FROM unnest($13::text[], $14::bigint[], $15::bigint[], $16::uuid[], $17::text[], $18::integer[], $19::bytea[],
            $20::bytea[])
     AS e(session_id, ordinal, serial, event_id, type, schema_version, data, chain)
JOIN head USING (session_id)
JOIN request AS r USING (session_id)
ORDER BY e.serial
RETURNING session_id, version, position"""
        self.by_ids = f"SELECT {EVENT_COLUMNS} FROM {events} WHERE event_id = ANY($1::uuid[])"
        # After an append statement wrote nothing: the session's version and tombstone flag (NULLs
        # if it has no row) and whether any of the append's event ids ($2) is already stored.
        self.missed = f"""
SELECT s.version, s.deleted, EXISTS (SELECT 1 FROM {events} WHERE event_id = ANY($2::uuid[])), s.chain_head
FROM (SELECT 1) AS one LEFT JOIN {sessions} AS s ON s.session_id = $1"""
        self.chain_heads = f"SELECT session_id, version, chain_head FROM {sessions} WHERE session_id = ANY($1::text[])"
        # A session's pages (forwards, backwards), of all its events or of some types ($5). When
        # those are among the state events, the state events' predicate is said too, with its values
        # written in: the planner then reads them through their partial index (schema 5).
        of_types = " AND type = ANY($5::text[])"
        of_state = f" AND {STATE_TYPES}{of_types}"

        def pages(typed: str) -> tuple[str, str]:
            forwards, backwards = (
                f"SELECT {EVENT_COLUMNS} FROM {events} WHERE session_id = $1 AND version BETWEEN $2 AND $3"
                f"{typed} ORDER BY version{order} LIMIT $4"
                for order in ("", " DESC")
            )
            return forwards, backwards

        self.page, self.page_backwards = pages("")
        self.typed_pages, self.state_pages = pages(of_types), pages(of_state)
        # The context before a run (_load_context) in one statement: a row of part 0 with the index
        # row and the snapshot (NULLs if none), then the tail (part 1, newest first) and the typed
        # rows after the snapshot (part 2), each bounded by the index row's version; every row
        # leaves the other parts' columns NULL.
        no_header = ", ".join(["NULL"] * (_EVENT_AT - 1))
        no_event = ", ".join(["NULL"] * (EVENT_COLUMNS.count(",") + 1))

        def context(typed: str) -> str:
            return f"""
WITH info AS (SELECT {INFO_COLUMNS} FROM {sessions} WHERE session_id = $1 AND NOT deleted),
snap AS (
    SELECT {SNAPSHOT_COLUMNS} FROM {snapshots}
    WHERE session_id = $1 AND name = $2 AND schema_version = $3 AND version <= (SELECT version FROM info)
    ORDER BY version DESC LIMIT 1
)
SELECT 0, info.*, snap.*, {no_event} FROM info LEFT JOIN snap ON true
UNION ALL (
    SELECT 1, {no_header}, {EVENT_COLUMNS} FROM {events}
    WHERE session_id = $1 AND version <= (SELECT version FROM info)
    ORDER BY version DESC LIMIT $4
)
UNION ALL (
    SELECT 2, {no_header}, {EVENT_COLUMNS} FROM {events}
    WHERE session_id = $1 AND version > COALESCE((SELECT version FROM snap), 0)
    AND version <= (SELECT version FROM info){typed}
    ORDER BY version LIMIT $6
)"""

        self.context, self.state_context = context(of_types), context(of_state)
        self.all_page = (
            f"SELECT {EVENT_COLUMNS} FROM {events} WHERE position >= $1 "
            "AND position < (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16) "
            "ORDER BY position LIMIT $2"
        )
        # The newest stored position and the fence: the fence holds events back when newest >= fence.
        self.feed_edge = (
            f"SELECT (SELECT max(position) FROM {events}), pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16"
        )
        # The fence, the committed events at or above it, and the transaction that sets it: the one
        # whose id is the snapshot's xmin (the oldest transaction id still running in the cluster).
        self.feed_lag = f"""
WITH fence AS (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xid,
           pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16 AS position
)
SELECT fence.position,
       (SELECT count(*) FROM {events} WHERE position >= fence.position),
       holder.pid, holder.datname::text, extract(epoch FROM holder.xact_start)::float8
FROM fence LEFT JOIN LATERAL (
    SELECT pid, datname, xact_start FROM pg_stat_activity
    WHERE backend_xid = fence.xid::xid ORDER BY xact_start LIMIT 1
) AS holder ON true"""
        self.shared = SessionStatements(sessions, snapshots, lambda number: f"${number}")
        self.lock_session = f"SELECT 1 FROM {sessions} WHERE session_id = $1 FOR UPDATE"
        self.lock_head = f"SELECT version FROM {sessions} WHERE session_id = $1 FOR UPDATE"
        # The rows are locked in the order they are returned, after the sort: one canonical order.
        self.lock_sessions = (
            f"SELECT session_id, version, chain_head FROM {sessions} WHERE session_id = ANY($1::text[]) "
            "ORDER BY session_id FOR UPDATE"
        )
        self.truncate = (
            f"WITH gone AS (DELETE FROM {events} WHERE session_id = $1 AND version < $2 RETURNING 1) "
            "SELECT count(*) FROM gone"
        )
        self.delete_events = (
            f"WITH gone AS (DELETE FROM {events} WHERE session_id = $1 RETURNING 1) SELECT count(*) FROM gone"
        )
        self.delete_snapshots = f"DELETE FROM {snapshots} WHERE session_id = $1"
        self.chunk_put = (
            f"INSERT INTO {chunks} (event_id, part, data) SELECT * FROM unnest($1::uuid[], $2::integer[], $3::bytea[])"
        )
        self.chunks = f"SELECT event_id, data FROM {chunks} WHERE event_id = ANY($1::uuid[]) ORDER BY event_id, part"
        self.tombstone = f"WITH marked AS ({self.shared.tombstone} RETURNING 1) SELECT count(*) FROM marked"
        # The index row is share-locked (an erasure in flight, which holds it, commits first; a later
        # one waits) and the snapshot is saved only if the row is not marked erased (ERASED_HEAD, $7):
        # one statement, no extra round trip. It returns how many rows were saved (0: refused).
        self.snapshot_put = f"""
WITH fence AS (
    SELECT chain_head FROM {sessions} WHERE session_id = $1 FOR SHARE
), saved AS (
    INSERT INTO {snapshots} (session_id, name, version, schema_version, data, created_at)
    SELECT $1::text, $2::text, $3::bigint, $4::integer, $5::bytea, $6::double precision
    WHERE NOT EXISTS (SELECT 1 FROM fence WHERE chain_head = $7::bytea)
    ON CONFLICT (session_id, name, version) DO UPDATE
    SET schema_version = excluded.schema_version, data = excluded.data, created_at = excluded.created_at
    RETURNING version
), pruned AS (
    DELETE FROM {snapshots} WHERE session_id = $1 AND name = $2 AND version NOT IN (
        SELECT version FROM (
            SELECT version FROM {snapshots} WHERE session_id = $1 AND name = $2
            UNION SELECT version FROM saved
        ) AS kept ORDER BY version DESC LIMIT {SNAPSHOTS_KEPT}
    )
)
SELECT count(*) FROM saved"""
