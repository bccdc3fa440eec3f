"""What the SQL backends share: validated, quoted table names, the schema version they write, the
row shapes they read, the statements both run unchanged, and the append request their group
committers carry."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol
from uuid import UUID

import msgspec

from kern_events._validate import check_sql_identifier
from kern_events.backend import STATE_EVENT_TYPES, IndexDelta, SessionFilter, SessionInfo, index_delta
from kern_events.errors import ErasedError, InvalidArgumentError
from kern_events.events import Event
from kern_events.records import ExpectedVersion, PendingEvent, Snapshot, StoredEvent

__all__ = [
    "ERASED_HEAD",
    "EVENT_COLUMNS",
    "INFO_COLUMNS",
    "SCHEMA_VERSION",
    "SNAPSHOT_COLUMNS",
    "STATE_TYPES",
    "TOMBSTONE",
    "AppendRequest",
    "MigrationStep",
    "Placeholder",
    "Row",
    "SessionStatements",
    "TableNames",
    "event_columns",
    "info_from_row",
    "migrations_ddl",
    "newest_first_step",
    "quote",
    "refuse_erased",
    "snapshot_from_row",
    "state_events_step",
    "state_typed",
    "steps_after",
    "stored_from_row",
]


class Row(Protocol):
    """A result row of either driver: indexable by column number."""

    def __getitem__(self, index: int, /) -> Any: ...


_EVENT_COLUMN_NAMES = (
    "session_id",
    "version",
    "position",
    "event_id",
    "type",
    "schema_version",
    "data",
    "recorded_at",
    "chain",
)


def event_columns(*, as_blob: Collection[str] = (), chained: bool = True) -> str:
    """The events columns every read selects, in the order :func:`stored_from_row` expects, with
    those named in ``as_blob`` read as bytes (SQLite: whatever type a damaged row stored there);
    without ``chained``, for a table older than the hash chain (schema 2), the hash reads as NULL."""
    return ", ".join(
        "NULL" if name == "chain" and not chained else f"CAST({name} AS BLOB)" if name in as_blob else name
        for name in _EVENT_COLUMN_NAMES
    )


EVENT_COLUMNS = event_columns()
"""The events columns every read selects, in the order :func:`stored_from_row` expects."""
INFO_COLUMNS = (
    "session_id, session_type, agent_id, team_id, workflow_id, user_id, name, created_at, updated_at, "
    "run_count, version"
)
"""The session-index columns, in the order :func:`info_from_row` expects."""


SNAPSHOT_COLUMNS = "session_id, name, schema_version, version, data, created_at"
"""The snapshot columns every snapshot read selects, in the order :func:`snapshot_from_row` expects."""


def snapshot_from_row(row: Row) -> Snapshot:
    """A snapshot from a row of :data:`SNAPSHOT_COLUMNS`."""
    return Snapshot(
        session_id=row[0], name=row[1], schema_version=row[2], version=row[3], data=row[4], created_at=row[5]
    )


def stored_from_row(row: Row, event_id: UUID) -> StoredEvent:
    """A stored event from a row of :data:`EVENT_COLUMNS` (the driver's event id already a UUID)."""
    return StoredEvent(
        session_id=row[0],
        version=row[1],
        position=row[2],
        event_id=event_id,
        type=row[4],
        schema_version=row[5],
        data=row[6],
        recorded_at=row[7],
        chain=row[8],
    )


def info_from_row(row: Row) -> SessionInfo:
    """An index row from a row of :data:`INFO_COLUMNS`."""
    return SessionInfo(
        session_id=row[0],
        session_type=row[1],
        agent_id=row[2],
        team_id=row[3],
        workflow_id=row[4],
        user_id=row[5],
        name=row[6],
        created_at=row[7],
        updated_at=row[8],
        run_count=row[9],
        version=row[10],
    )


SCHEMA_VERSION = 5
"""The layout this release writes; a database recording a higher one is refused, a lower one migrated.
2 added the chunk table (:attr:`TableNames.chunks`), which a release that knows only 1 cannot read;
3 the hash chain (an events column ``chain`` and the index's ``chain_head``). Rows written before 3
keep no hash (verify counts them as unchained); the chain of such a session starts at its next append.
4 the index behind the newest-first listing (:func:`newest_first_step`); 5 the partial index of the
state events (:func:`state_events_step`)."""

STATE_TYPES = f"type IN ({', '.join(repr(name) for name in STATE_EVENT_TYPES)})"
"""The state events as a predicate with its values written in: the partial index of schema 5 holds
the rows it matches, and a read says it too to be read through that index (a planner matches a partial
index's predicate against the query's text, which a bound parameter would hide)."""


_STATE_EVENT_TYPES = frozenset(STATE_EVENT_TYPES)


def state_typed(types: Collection[str]) -> bool:
    """Whether a read of ``types`` only can go through the state events' partial index."""
    return bool(types) and _STATE_EVENT_TYPES.issuperset(types)


class MigrationStep(msgspec.Struct, frozen=True):
    """One schema version's change: the statements that take a database from ``version - 1`` to
    ``version``, run in one transaction that also records the step (see :func:`steps_after`)."""

    version: int
    description: str
    statements: tuple[str, ...]


def newest_first_step(tables: TableNames, sessions: str) -> MigrationStep:
    """Schema 4, the same on both SQL backends (``sessions`` already quoted and qualified): an index
    on ``(updated_at, session_id)``, the listing's whole ``ORDER BY`` (the sort column, then the
    tie-breaker), which the default listing (newest first, no user) reads backwards and stops after
    its page, and which a keyset page (``after``) enters by its row comparison. Without it that
    listing sorted every index row: 33 ms at 100,000 sessions, 154 ms at 1,000,000 (PostgreSQL).

    The price is paid by appends: every append moves ``updated_at``, so it now rewrites this index
    entry too, and on PostgreSQL the row update is no longer HOT (each index gets a new entry, which
    vacuum later reclaims). Measured at 100,000 sessions, appends alternating with and without it:
    on PostgreSQL no HOT update instead of about half, and an append's cost within the noise (under
    5%); on SQLite ~20 us more per append (~7%). The listing: 29 ms to 0.2 ms, and 10.5 to 0.14 ms."""
    return MigrationStep(
        4,
        "the newest-first listing: an index on (updated_at, session_id)",
        (f"CREATE INDEX IF NOT EXISTS {quote(tables.sessions + '_updated')} ON {sessions} (updated_at, session_id)",),
    )


def state_events_step(tables: TableNames, events: str) -> MigrationStep:
    """Schema 5, the same on both SQL backends (``events`` already quoted and qualified): a partial
    index on ``(session_id, version)`` of the state events alone. A context load reads the state
    events after the state checkpoint; through the session's own index it visited every event after
    the checkpoint (up to 999, as a db checkpoints every 1,000) to find the few state ones, 0.26 ms
    at 996 on SQLite; through this one, only those. Its price: an index entry for each state event
    appended. On a large PostgreSQL table the step's ``CREATE INDEX`` holds
    writes back while it builds; creating the index ``CONCURRENTLY`` under the same name beforehand
    makes the step a no-op."""
    return MigrationStep(
        5,
        "the state events a context load reads: a partial index on (session_id, version)",
        (
            f"CREATE INDEX IF NOT EXISTS {quote(tables.events + '_state')} ON {events} (session_id, version) "
            f"WHERE {STATE_TYPES}",
        ),
    )


def steps_after(steps: Sequence[MigrationStep], found: int) -> list[MigrationStep]:
    """The steps a database at version ``found`` still needs, in order; ``steps`` must number
    1 … :data:`SCHEMA_VERSION` without gaps (a backend's list that does not is a bug, said here)."""
    if [step.version for step in steps] != list(range(1, SCHEMA_VERSION + 1)):
        raise AssertionError(f"migration steps must be numbered 1..{SCHEMA_VERSION}")
    return [step for step in steps if step.version > found]


def migrations_ddl(table: str, text: str, real: str) -> str:
    """The table that records each migration step once, when it ran (``table`` already quoted)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (component {text} NOT NULL, version integer NOT NULL, "
        f"description {text} NOT NULL, applied_at {real} NOT NULL, PRIMARY KEY (component, version))"
    )


def quote(identifier: str) -> str:
    """Quote an already-validated identifier for SQL (doubling any quote, though validation forbids it)."""
    return '"' + identifier.replace('"', '""') + '"'


_ARGUMENT = {
    "events": "events_table",
    "sessions": "session_table",
    "snapshots": "snapshot_table",
    "schema": "schema_table",
}
"""The keyword users pass each table name as (``SqliteDb(session_table=...)``), for error messages."""


class TableNames(msgspec.Struct, frozen=True, kw_only=True):
    """The tables of one kern-events workload; give each workload its own names to isolate it."""

    events: str = "kern_events"
    sessions: str = "kern_sessions"
    snapshots: str = "kern_snapshots"
    schema: str = "kern_schema"

    @property
    def chunks(self) -> str:
        """The table of out-of-line payloads, named after the events table (it belongs to it; at most
        55 characters, within PostgreSQL's 63)."""
        return self.events + "_chunks"

    @property
    def migrations(self) -> str:
        """The record of migration steps run, named after the schema-version table (one row per
        events table and version)."""
        return self.schema + "_migrations"

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            check_sql_identifier(_ARGUMENT[field], getattr(self, field))
        names = [getattr(self, field) for field in self.__struct_fields__] + [self.chunks, self.migrations]
        if len({name.lower() for name in names}) != len(names):
            raise InvalidArgumentError("table names", f"each table needs its own name, got {names}")


TOMBSTONE = (
    "deleted = true, session_type = NULL, agent_id = NULL, team_id = NULL, workflow_id = NULL, "
    "user_id = NULL, name = NULL, run_count = 0, chain_head = NULL"
)
"""What deleting a session leaves of its index row: the version (so that it is never reused) and
the times; everything that identified it is gone, and a session started again there chains afresh."""

ERASED_HEAD = b"kern-events:erased"
"""The head hash an erased session's tombstone keeps instead of ``NULL``: the mark, in the database,
that :meth:`~kern_events.backend.BaseEventStore.erase_user` took the session. No hash equals it, so
no append chains from it, and each SQL backend's append refuses a session whose head it reads is this
one (:func:`refuse_erased`): appends from other store objects and processes racing an erasure land
before it (and are erased) or are refused, and the hot path reads nothing more than it did."""


def refuse_erased(session_id: str, chain_head: bytes | None = ERASED_HEAD) -> ErasedError | None:
    """The error for a write (an append, a snapshot) to a session whose index row carries
    :data:`ERASED_HEAD`, else ``None``; without ``chain_head``, the write's statement found the mark."""
    if chain_head == ERASED_HEAD:
        return ErasedError(session_id, "its user was erased; it takes no more events")
    return None


Placeholder = Callable[[int], str]
"""The marker of the n-th statement parameter: ``?n`` on SQLite, ``$n`` on PostgreSQL."""


class SessionStatements:
    """The statements on the session index and the snapshots that both SQL backends run unchanged,
    written once with numbered parameters."""

    def __init__(self, sessions: str, snapshots: str, param: Placeholder) -> None:
        self._param = param
        self.version = f"SELECT version FROM {sessions} WHERE session_id = {param(1)}"
        self.info = f"SELECT {INFO_COLUMNS} FROM {sessions} WHERE session_id = {param(1)} AND NOT deleted"
        self.tombstone = f"UPDATE {sessions} SET {TOMBSTONE} WHERE session_id = {param(1)} AND NOT deleted"
        self.mark_erased = f"UPDATE {sessions} SET chain_head = {param(2)} WHERE session_id = {param(1)}"
        self.snapshot_get = (
            f"SELECT {SNAPSHOT_COLUMNS} FROM {snapshots} WHERE session_id = {param(1)} AND name = {param(2)} "
            f"AND (CAST({param(3)} AS integer) IS NULL OR schema_version = {param(3)}) AND version <= {param(4)} "
            "ORDER BY version DESC LIMIT 1"
        )
        self._list = f"SELECT {INFO_COLUMNS} FROM {sessions} WHERE NOT deleted"

    def list_sessions(self, query: SessionFilter, *, no_limit: int | None) -> tuple[str, list[Any]]:
        """The listing for ``query`` and its parameters; ``no_limit`` is what the backend's ``LIMIT``
        takes for "all" (SQLite -1, PostgreSQL NULL)."""
        sql, parameters = self._list, []
        for column in ("user_id", "session_type", "agent_id", "team_id", "workflow_id"):
            value = getattr(query, column)
            if value is not None:
                parameters.append(value)
                sql += f" AND {column} = {self._param(len(parameters))}"
        if query.updated_since is not None:
            parameters.append(query.updated_since)
            sql += f" AND updated_at >= {self._param(len(parameters))}"
        if query.after is not None:
            parameters += query.after
            past = "<" if query.descending else ">"
            first, second = self._param(len(parameters) - 1), self._param(len(parameters))
            sql += f" AND ({query.sort_by}, session_id) {past} ({first}, {second})"
        order = "DESC" if query.descending else "ASC"
        parameters += (no_limit if query.limit is None else query.limit, query.offset)
        limit, offset = self._param(len(parameters) - 1), self._param(len(parameters))
        return f"{sql} ORDER BY {query.sort_by} {order}, session_id {order} LIMIT {limit} OFFSET {offset}", parameters


class AppendRequest:
    """One append on its way through a SQL backend's group committer."""

    __slots__ = ("at", "delta", "expected", "hashes", "pending", "prev", "recorded_at", "session_id")

    def __init__(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> None:
        self.session_id = session_id
        self.pending = pending
        self.expected = expected
        self.delta: IndexDelta = index_delta(events)
        """What the append changes in the session's index row."""
        self.recorded_at = recorded_at
        self.at = 0
        """The head version the chain hashes were computed from (a backend that computes them
        outside its atomic step appends only at this head; see :class:`~kern_events.backend.Chain`)."""
        self.prev: bytes | None = None
        """The head hash the index held at :attr:`at` (``None``: none yet, the chain starts afresh)."""
        self.hashes: list[bytes] | None = None
        """The events' chain hashes, once computed."""

    @property
    def wanted(self) -> int | None:
        """The head the append requires, or ``None`` for any."""
        if self.expected is ExpectedVersion.ANY:
            return None
        return 0 if self.expected is ExpectedVersion.NO_STREAM else self.expected
