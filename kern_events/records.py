"""The envelope around stored events, and the small values the store protocol passes around.

A backend stores and returns :class:`StoredEvent` (envelope + encoded bytes); the codec turns it into
a :class:`Record` whose ``event`` is either a known :class:`~kern_events.events.Event` or an
:class:`UnknownEvent` carrying the raw bytes of a type this release does not know.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Final
from uuid import UUID

import msgspec

from kern_events.events import Event

__all__ = [
    "ANY",
    "NO_STREAM",
    "TRUNCATION_SNAPSHOT",
    "AppendResult",
    "ErasureReport",
    "ExpectedVersion",
    "FeedLag",
    "PendingEvent",
    "Record",
    "SessionAppend",
    "Snapshot",
    "StoredEvent",
    "UnknownEvent",
]


class ExpectedVersion(enum.Enum):
    """The non-numeric expectations an append can state about a session's current version."""

    ANY = "any"
    """Append whatever the session's version is (no concurrency check)."""
    NO_STREAM = "no stream"
    """The session must not exist yet (no event was ever appended to it)."""

    def __str__(self) -> str:
        return self.value


ANY: Final = ExpectedVersion.ANY
NO_STREAM: Final = ExpectedVersion.NO_STREAM


class UnknownEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event whose type this release does not know; audit tools see it, projections skip it."""

    type: str
    schema_version: int
    data: bytes


class PendingEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An encoded event on its way into a backend.

    A payload above the backend's ``inline_limit`` arrives as a small manifest in ``data`` and the
    payload itself in ``chunks``, which the backend stores with the event, in the same atomic step,
    keyed by event id and part number (0, 1, ...).
    """

    event_id: UUID
    type: str
    schema_version: int
    data: bytes
    chunks: tuple[bytes, ...] = ()


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """An event as a backend stores it: the envelope and the encoded bytes.

    Array-like, so a page of database rows in this field order converts to stored events in one
    ``msgspec.convert`` call (16-byte event ids included), about 6x faster than building them one by one.
    Not tracked by the garbage collector (``gc=False``): its fields are strings, numbers, bytes and a
    UUID, which can form no cycle, and a page of them no longer makes collections run twice as often.
    """

    session_id: str
    version: int
    position: int
    event_id: UUID
    type: str
    schema_version: int
    data: bytes
    recorded_at: float
    chain: bytes | None = None
    """The hash chaining the event to the previous one of its session (see
    :class:`kern_events.backend.Chain`); ``None`` for an event written before the chain existed."""


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded event in its envelope: which session, at which version and global position, and when."""

    session_id: str
    version: int
    """1, 2, 3 … within the session, without gaps."""
    position: int
    """Strictly increasing across the whole store (it may skip numbers)."""
    event_id: UUID
    recorded_at: float
    """Unix time in seconds at which the store accepted the append."""
    event: Event | UnknownEvent

    @property
    def type(self) -> str:
        """The event's type tag, also for unknown events."""
        if isinstance(self.event, UnknownEvent):
            return self.event.type
        return str(self.event.__struct_config__.tag)


class AppendResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an append stored: the versions, positions and ids of its events, and when."""

    session_id: str
    from_version: int
    to_version: int
    """The session's version after the append."""
    positions: tuple[int, ...]
    event_ids: tuple[UUID, ...]
    recorded_at: float


class SessionAppend(msgspec.Struct, frozen=True):
    """One session's part of :meth:`~kern_events.store.EventStore.append_many`: what ``append`` takes,
    as one value, so that several sessions' appends can be committed all or nothing."""

    session_id: str
    events: Sequence[Event]
    expected_version: int | ExpectedVersion = ExpectedVersion.ANY
    event_ids: Sequence[UUID] | None = None


TRUNCATION_SNAPSHOT: Final = "kern-events:truncated"
"""The snapshot name under which ``truncate_before`` records where a session's log now starts: its
version is the last removed one, so the first readable version is ``version + 1``. It is saved in
the truncation's own transaction and erased with the session, so no backend needs another table."""


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A checkpoint: a projection's serialized state for a session, as of a version."""

    session_id: str
    name: str
    """Which projection wrote it (e.g. ``"session"``)."""
    schema_version: int
    """The projection's own state version; a reader ignores snapshots of other versions."""
    version: int
    """The session version the state includes."""
    data: bytes
    created_at: float = 0.0


class FeedLag(msgspec.Struct, frozen=True, kw_only=True):
    """How far the global feed (``read_all``, subscriptions) is held back behind what has committed.

    PostgreSQL's feed stops below a fence set by the oldest transaction still open *anywhere in the
    cluster* (any database, any client), so that it never skips an event that commits late; one
    long transaction therefore delays every global reader. Backends without a fence report none.
    """

    fence: int | None = None
    """Positions below this are final and readable; ``None`` if the backend has no fence."""
    held_back: int = 0
    """Committed events at or above the fence: stored, but not yet delivered to global readers."""
    since: float | None = None
    """When the transaction that sets the fence began (unix seconds), if the server shows it."""
    holder_pid: int | None = None
    """The server process running that transaction (PostgreSQL ``pg_stat_activity.pid``), if shown."""
    holder_database: str | None = None
    """The database that transaction is connected to, which may be another one than the store's."""


class ErasureReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``erase_user`` removed: the user's sessions (each with its events, snapshots, checkpoints
    and index row) and how many events they held."""

    user_id: str
    session_ids: tuple[str, ...] = ()
    events: int = 0
    keys_deleted: int = 0
    """Data keys deleted from the key provider (crypto-shredding), when the store encrypts."""
