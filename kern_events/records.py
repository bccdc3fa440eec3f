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
    "FEED_SHARD_SHIFT",
    "NO_STREAM",
    "TRUNCATION_SNAPSHOT",
    "AppendResult",
    "ErasureReport",
    "ExpectedVersion",
    "FeedCursor",
    "FeedLag",
    "FeedPosition",
    "PendingEvent",
    "Record",
    "SessionAppend",
    "Snapshot",
    "StoredEvent",
    "UnknownEvent",
    "next_position",
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


class Record(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A decoded event in its envelope: which session, at which version and global position, and when.

    Not tracked by the garbage collector (``gc=False``): a read makes one per event, and tracking
    them made collections run about twice as often as the events alone do. A record refers only to
    its event (tracked itself, if it holds containers), which never refers back to it, so no cycle
    runs through a record unless a caller puts it inside its own event's mutable fields."""

    session_id: str
    version: int
    """1, 2, 3 … within the session, without gaps."""
    position: int
    """Strictly increasing across the whole store (it may skip numbers); in a sharded store (one whose
    feed resumes from a :class:`FeedCursor`), strictly increasing within the record's shard, which it
    carries in the bits above :data:`FEED_SHARD_SHIFT`."""
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


FEED_SHARD_SHIFT: Final = 56
"""In a sharded store, a record's position is ``shard << FEED_SHARD_SHIFT | position in its shard``."""

_IN_SHARD = (1 << FEED_SHARD_SHIFT) - 1


class FeedCursor(msgspec.Struct, frozen=True, kw_only=True):
    """Where a reader of a sharded store's global feed stands: for each shard, the position in that
    shard after the last record delivered from it.

    A sharded store (sessions spread over independent logs, e.g. ``NatsEventStore(shards=3)``) has no
    single sequence that orders every append, so one int cannot say where a reader stopped without a
    gap or a repeat when it resumes; a cursor can. ``read_all``, ``subscribe`` and
    :attr:`Subscription.position <kern_events.subscription.Subscription.position>` use it there (stores
    with one log keep plain ints). Checkpoint it as ``str(cursor)`` and read it back with
    :meth:`parse`. ``layout`` names the store's shard layout: a store of another layout refuses the
    cursor with :class:`~kern_events.errors.ShardLayoutError`.
    """

    layout: str
    positions: tuple[int, ...]

    def after(self, position: int) -> FeedCursor:
        """This cursor moved past the record at ``position`` (a record position of this store)."""
        shard = position >> FEED_SHARD_SHIFT
        if not 0 <= shard < len(self.positions):
            from kern_events.errors import ShardLayoutError

            expected = f"{self.layout} (shards 0 to {len(self.positions) - 1})"
            raise ShardLayoutError("position", expected, f"shard {shard}")
        positions = list(self.positions)
        positions[shard] = (position & _IN_SHARD) + 1
        return FeedCursor(layout=self.layout, positions=tuple(positions))

    def __str__(self) -> str:
        return f"{self.layout}@{','.join(str(position) for position in self.positions)}"

    @classmethod
    def parse(cls, text: str) -> FeedCursor:
        """The cursor ``str(cursor)`` wrote; :class:`~kern_events.errors.InvalidArgumentError` if
        ``text`` is not one."""
        from kern_events.errors import InvalidArgumentError

        layout, at, numbers = text.rpartition("@") if isinstance(text, str) else ("", "", "")
        try:
            positions = tuple(int(number) for number in numbers.split(","))
        except ValueError:
            positions = ()
        if not at or not layout or not positions or any(position < 0 for position in positions):
            raise InvalidArgumentError("cursor", f"expected 'LAYOUT@P0,P1,...' as str(FeedCursor) writes, got {text!r}")
        return cls(layout=layout, positions=positions)


FeedPosition = int | FeedCursor
"""Where the global feed resumes: an int in a store with one log, a :class:`FeedCursor` in a sharded one."""


def next_position(position: FeedPosition, record_position: int) -> FeedPosition:
    """Where the feed resumes after the record at ``record_position``, read from ``position``."""
    if isinstance(position, FeedCursor):
        return position.after(record_position)
    return record_position + 1
