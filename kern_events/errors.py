"""The errors kern-events raises, as one tree under :class:`KernEventsError`.

Every error carries the facts a caller needs as attributes as well as in its message. A driver's
own exception never escapes raw: each backend translates it at one seam, keeping the original as
``__cause__``.

::

    KernEventsError
    ├── ConcurrencyError            expected version != actual version (optimistic concurrency)
    ├── IdempotencyError            an event id reused with other content, or only partly matching
    ├── NotFoundError
    │   ├── SessionNotFoundError    no such session (or not visible to this user)
    │   ├── RunNotFoundError        no such run in the session
    │   ├── RequirementNotFoundError  no such requirement in the paused run
    │   ├── TruncatedError          the version asked for was removed by ``truncate_before``
    │   └── ErasedError             the session's user was erased (or its data key deleted: crypto-shredded)
    ├── RunStateError               the run is not in a state that allows this (not paused, already
    │                               resolved, requirements still open)
    ├── CorruptRecordError          stored bytes that cannot be decoded
    │   └── DecryptionError         a payload that does not decrypt: wrong key, or modified ciphertext
    ├── InvalidArgumentError        bad input, rejected before anything is written (also a ValueError)
    │   ├── InvalidIdentifierError  a session id or table name that is not allowed
    │   ├── UnknownEventTypeError   an object that is not a kern-events event
    │   ├── InvalidEventError       an event that would not read back as given (a field without its
    │   │                           declared type, or a value the codec cannot encode)
    │   ├── PayloadTooLargeError    an encoded event above the store's size limit
    │   ├── AppendTooLargeError     an append above what the backend writes atomically (DynamoDB's
    │   │                           transaction: 100 items, 4 MB), refused whole
    │   ├── ExportFileError         a file given to import that is foreign, cut short or edited (its line)
    │   └── ShardLayoutError        a feed cursor, or a store's ``shards``, of another shard layout
    ├── StorageError                the database failed in a way the caller cannot fix by changing input
    │   ├── KeyProviderError        the key provider failed (nothing is written unencrypted)
    │   ├── StorageUnavailableError the database could not be reached, or the connection was lost
    │   │   └── DatabaseOpenError   the database could not be opened at all (a directory, no such
    │   │                           file, no permission, not a database, too many open files)
    │   └── SchemaVersionError      the schema is missing (and may not be created) or is newer
    │       └── SchemaMissingError  no kern-events tables there, and this opening may not create them
    ├── StoreClosedError            the store was used after ``aclose()``
    ├── UnsupportedError            the backend lacks a capability (``append_many``, ``truncate_before``)
    └── BlockingCallError           a blocking call (``run_blocking``) on a thread whose event loop
                                    is running, where it would stall that loop
"""

from __future__ import annotations

from uuid import UUID

__all__ = [
    "AppendTooLargeError",
    "BlockingCallError",
    "ConcurrencyError",
    "CorruptRecordError",
    "DatabaseOpenError",
    "DecryptionError",
    "ErasedError",
    "ExportFileError",
    "IdempotencyError",
    "InvalidArgumentError",
    "InvalidEventError",
    "InvalidIdentifierError",
    "KernEventsError",
    "KeyProviderError",
    "NotFoundError",
    "PayloadTooLargeError",
    "RequirementNotFoundError",
    "RunNotFoundError",
    "RunStateError",
    "SchemaMissingError",
    "SchemaVersionError",
    "SessionNotFoundError",
    "ShardLayoutError",
    "StorageError",
    "StorageUnavailableError",
    "StoreClosedError",
    "TruncatedError",
    "UnknownEventTypeError",
    "UnsupportedError",
]


class KernEventsError(Exception):
    """The root of every error kern-events raises on purpose."""


class ConcurrencyError(KernEventsError):
    """An append's expected version did not match the session's version: another writer got there first."""

    def __init__(self, session_id: str, expected_version: int | str, actual_version: int) -> None:
        self.session_id = session_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"session {session_id!r}: expected version {expected_version}, but the session is at "
            f"version {actual_version}"
        )


class IdempotencyError(KernEventsError):
    """An event id was reused for different content, so the append is neither new nor a retry."""

    def __init__(self, session_id: str, event_id: UUID, reason: str) -> None:
        self.session_id = session_id
        self.event_id = event_id
        self.reason = reason
        super().__init__(f"session {session_id!r}: event id {event_id} {reason}")


class NotFoundError(KernEventsError):
    """Something that was asked for does not exist."""


class SessionNotFoundError(NotFoundError):
    """No session with this id exists, or it belongs to another user (never revealed as such)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        super().__init__(f"session {session_id!r} not found")


class TruncatedError(NotFoundError):
    """What was asked for lies before the session's truncation point (see ``truncate_before``):
    those events are gone; ``first_version`` is the first version still readable."""

    def __init__(self, session_id: str, first_version: int, asked: str) -> None:
        self.session_id = session_id
        self.first_version = first_version
        super().__init__(
            f"session {session_id!r}: {asked} needs events that were truncated; "
            f"the first readable version is {first_version}"
        )


class ErasedError(NotFoundError):
    """The session's data was erased: its user was erased (``erase_user``) while this call ran, or
    its data key was deleted, so its stored payloads can never be read again (crypto-shredding)."""

    def __init__(
        self, session_id: str, reason: str, *, version: int | None = None, position: int | None = None
    ) -> None:
        self.session_id = session_id
        self.version = version
        self.position = position
        """Where a feed reader resumes after a shredded row (``from_position=position + 1``)."""
        self.reason = reason
        at = "" if version is None else f" version {version}"
        super().__init__(f"session {session_id!r}{at} is erased: {reason}")


class RunNotFoundError(NotFoundError):
    """The session has no run with this id."""

    def __init__(self, session_id: str, run_id: str) -> None:
        self.session_id = session_id
        self.run_id = run_id
        super().__init__(f"session {session_id!r} has no run {run_id!r}")


class RequirementNotFoundError(NotFoundError):
    """The paused run has no requirement with this id."""

    def __init__(self, session_id: str, run_id: str, requirement_id: str) -> None:
        self.session_id = session_id
        self.run_id = run_id
        self.requirement_id = requirement_id
        super().__init__(f"run {run_id!r} of session {session_id!r} has no requirement {requirement_id!r}")


class RunStateError(KernEventsError):
    """The run's state does not allow the operation; ``status`` is what it is in."""

    def __init__(self, session_id: str, run_id: str, status: str, message: str) -> None:
        self.session_id = session_id
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id!r} of session {session_id!r} ({status}): {message}")


class CorruptRecordError(KernEventsError):
    """Stored bytes of a known event type could not be decoded; ``position`` lets a reader skip past."""

    def __init__(self, session_id: str, version: int, event_type: str, detail: str, *, position: int) -> None:
        self.session_id = session_id
        self.version = version
        self.event_type = event_type
        self.position = position
        super().__init__(
            f"session {session_id!r} version {version}: stored {event_type!r} event cannot be decoded: {detail}"
        )


class DecryptionError(CorruptRecordError):
    """A stored payload or snapshot that does not decrypt: the key is not the one it was sealed
    with, or the ciphertext (or the envelope it is bound to) was modified."""


class InvalidArgumentError(KernEventsError, ValueError):
    """An argument was rejected before anything was written; ``argument`` names it."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        super().__init__(f"{argument}: {message}")


class InvalidIdentifierError(InvalidArgumentError):
    """A session id, user id or SQL identifier that is empty, too long or has forbidden characters."""

    def __init__(self, argument: str, value: object, reason: str) -> None:
        self.value = value
        super().__init__(argument, f"{value!r} is not allowed: {reason}")


class UnknownEventTypeError(InvalidArgumentError):
    """An object handed to ``append`` that is not one of the kern-events event types."""

    def __init__(self, argument: str, value: object) -> None:
        self.value = value
        super().__init__(argument, f"{type(value).__qualname__} is not a kern-events event type")


class InvalidEventError(InvalidArgumentError):
    """An event that could not be stored and read back as given: a field without its declared type,
    or a value the codec cannot encode (too deep, self-referencing, an integer beyond 64 bits, a lone
    surrogate); ``field`` is its path in the event (``"metrics.input_tokens"``) where it is known."""

    def __init__(self, argument: str, event_type: str, detail: str, *, field: str | None = None) -> None:
        self.event_type = event_type
        self.detail = detail
        self.field = field
        shown = field if field is None or len(field) <= 120 else f"{field[:117]}..."
        at = f" (field {shown})" if shown is not None else ""
        super().__init__(argument, f"{event_type!r} event is invalid{at}: {detail}")


class PayloadTooLargeError(InvalidArgumentError):
    """An encoded event larger than the store accepts."""

    def __init__(self, argument: str, event_type: str, size: int, limit: int) -> None:
        self.event_type = event_type
        self.size = size
        self.limit = limit
        super().__init__(argument, f"{event_type!r} event encodes to {size} bytes; the limit is {limit}")


class AppendTooLargeError(InvalidArgumentError):
    """An append larger than the backend can write in one atomic step (``events`` events of about
    ``size`` bytes); nothing of it was stored. Split it into several appends."""

    def __init__(self, message: str, *, events: int, size: int) -> None:
        self.events = events
        self.size = size
        super().__init__("events", message)


class ExportFileError(InvalidArgumentError):
    """A file given to import that is foreign, cut short or tampered with; ``line`` says where
    (1-based), and nothing of the import was stored."""

    def __init__(self, line: int, detail: str) -> None:
        super().__init__("file", detail)
        self.args = (f"line {line}: {detail}",)  # the line is where; "file" is the argument, as an attribute
        self.line = line
        self.detail = detail


class ShardLayoutError(InvalidArgumentError):
    """A feed position or a store option that belongs to another shard layout than the store's: a
    :class:`~kern_events.records.FeedCursor` of another store or shard count, a cursor given to a store
    with one log, or ``shards=N`` for data written with another N. ``expected`` and ``found`` name both."""

    def __init__(self, argument: str, expected: str, found: str) -> None:
        self.expected = expected
        self.found = found
        super().__init__(argument, f"expected the shard layout {expected}, got {found}")


class StorageError(KernEventsError):
    """The database failed; the original driver exception is the ``__cause__``."""


class StorageUnavailableError(StorageError):
    """The database could not be reached or the connection broke mid-call.

    An append may or may not have landed: retry it with the same event ids.
    """


class KeyProviderError(StorageError):
    """The key provider failed to give or create a data key; nothing was written unencrypted."""

    def __init__(self, key_id: str, reason: str) -> None:
        self.key_id = key_id
        self.reason = reason
        super().__init__(f"the key provider failed for key {key_id!r}: {reason}")


class SchemaVersionError(StorageError):
    """The database schema is newer than this release understands, or missing where DDL is not allowed."""

    def __init__(self, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        if found > supported:
            message = (
                f"database schema version {found} is newer than this release supports ({supported}); "
                "upgrade kern-events"
            )
        else:
            message = (
                f"database schema version {found} is older than this release needs ({supported}) and "
                "creating tables at run time is off; run `kern-events migrate`"
            )
        super().__init__(message)


class DatabaseOpenError(StorageUnavailableError):
    """The database could not be opened: ``database`` names it, ``reason`` says why."""

    def __init__(self, database: str, reason: str) -> None:
        self.database = database
        self.reason = reason
        super().__init__(f"cannot open {database}: {reason}")


class SchemaMissingError(SchemaVersionError):
    """``database`` (a SQLite file, a PostgreSQL schema, a NATS server) has no kern-events tables (or,
    as ``missing`` says, no stream), and it was opened in a way that never creates them (read-only,
    ``create_schema=False`` or ``create_streams=False``)."""

    def __init__(self, database: str, supported: int, *, missing: str = "tables") -> None:
        self.database = database
        self.missing = missing
        self.found = 0
        self.supported = supported
        StorageError.__init__(
            self,
            f"{database} has no kern-events {missing} (`kern-events migrate` creates what is missing, "
            "if it is the right one)",
        )


class StoreClosedError(KernEventsError):
    """The store was used after it was closed."""

    def __init__(self) -> None:
        super().__init__("the store is closed")


class UnsupportedError(KernEventsError):
    """The backend cannot do this atomically, so it does not do it at all; ``capability`` names it."""

    def __init__(self, capability: str, backend: str) -> None:
        self.capability = capability
        super().__init__(f"{backend} does not support {capability}")


class BlockingCallError(KernEventsError, RuntimeError):
    """A synchronous bridge (``run_blocking``) was called on a thread whose event loop is running.

    Blocking there would stall every task of that loop, and deadlock if the call needed the loop:
    ``await`` the coroutine function ``function`` (its name) instead, or call it from a worker thread.
    """

    def __init__(self, function: str) -> None:
        self.function = function
        super().__init__(
            f"run_blocking({function}) called from a running event loop; await it instead, "
            "or call it from a thread without one"
        )
