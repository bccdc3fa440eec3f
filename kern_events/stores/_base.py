"""What every backend shares: argument checks, encoding, paging, lifecycle and the retry rules.

A backend subclasses :class:`BaseEventStore` and implements the underscore hooks over its storage; it
stores and returns :class:`~kern_events.records.StoredEvent` rows and never sees the codec. The rules
that decide between "conflict", "idempotent retry" and "reused id" live here once
(:func:`check_expected`, :func:`match_retry`) so that every backend answers the same way.
"""

from __future__ import annotations

import abc
import hashlib
import os
import struct
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import Any, Self, TypeVar, cast, get_args
from uuid import UUID

import anyio
import msgspec

from kern_events import _telemetry
from kern_events._index import SessionInfo
from kern_events._loops import AnyLoopLock
from kern_events._validate import (
    MAX_INT32,
    MAX_INT64,
    MAX_SNAPSHOT_NAME_LENGTH,
    check_choice,
    check_event_types,
    check_flag,
    check_identifier,
    check_items,
    check_name,
    check_non_negative,
    check_optional_identifier,
    check_seconds,
)
from kern_events.codec import Codec, MsgpackCodec, tagged_payload
from kern_events.encryption import Encryption, Sealer, session_key_id, user_key_id
from kern_events.errors import (
    ConcurrencyError,
    CorruptRecordError,
    ErasedError,
    IdempotencyError,
    InvalidArgumentError,
    InvalidEventError,
    PayloadTooLargeError,
    ShardLayoutError,
    StoreClosedError,
    UnknownEventTypeError,
    UnsupportedError,
)
from kern_events.events import Event, SessionRenamed, SessionStarted, SessionStateChanged, SessionType
from kern_events.records import (
    TRUNCATION_SNAPSHOT,
    AppendResult,
    ErasureReport,
    ExpectedVersion,
    FeedCursor,
    FeedLag,
    FeedPosition,
    PendingEvent,
    Record,
    SessionAppend,
    Snapshot,
    StoredEvent,
    UnknownEvent,
)
from kern_events.store import SessionSort
from kern_events.stores._chain import Chain, ChainVerifier, VerifyReport
from kern_events.subscription import ChangeSignal, Subscription

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "MANIFEST_MARK",
    "MAX_EVENTS_PER_APPEND",
    "SNAPSHOTS_KEPT",
    "BaseEventStore",
    "Page",
    "PendingAppend",
    "SessionContext",
    "SessionFilter",
    "check_expected",
    "check_truncation",
    "conflict",
    "match_retry",
    "new_event_id",
    "split_stored",
    "stored_result",
]

DEFAULT_MAX_EVENT_SIZE = 64 * 1024 * 1024
"""Largest encoded event accepted by default (64 MiB): a big channel value or tool result fits; media
belong elsewhere, referenced by url. Payloads above a backend's :attr:`BaseEventStore.inline_limit`
are stored out of line, in chunks."""

MANIFEST_MARK = b"\xc1"
"""The first byte of a chunk manifest: a byte msgpack never uses, so no event msgpack encodes starts
with it. (A payload of another codec that does is stored out of line too, so that every row starting
with it is a manifest.)"""

_MARK_BYTE = MANIFEST_MARK[0]
_MANIFEST = struct.Struct(">cBQI32s")
"""A chunk manifest, the row an out-of-line payload leaves in the event's place: the mark, the format
(1), the payload's length, its number of chunks and its SHA-256. Deterministic from the content, so
an idempotent retry writes the same row."""
_MANIFEST_FORMAT = 1
_MIN_INLINE_LIMIT = _MANIFEST.size

_ASSEMBLY_BUDGET = 16 * 1024 * 1024
"""Out-of-line bytes fetched in one round trip while reading a page: a page's chunks come in one
``_read_chunks`` call unless they add up to more, so a reader holds about this much (or one event,
if larger) beyond the page, however many large events the page has."""

MAX_EVENTS_PER_APPEND = 65_535
"""Most events one append may carry (PostgreSQL numbers a transaction's events in 16 bits)."""

_FIRST_TAIL_PAGE = 32

SNAPSHOTS_KEPT = 3
"""Snapshots kept per session and projection name; older ones are pruned when a new one is saved."""

STATE_EVENT_TYPES: tuple[str, ...] = tuple(
    str(kind.__struct_config__.tag) for kind in (SessionStarted, SessionStateChanged)
)
"""The types a db's context load asks :meth:`BaseEventStore.load_context` for after the state
checkpoint, which a backend may index apart (the SQL backends and DynamoDB do): the same types as
``projections.session.STATE_EVENT_TYPES``, which the write side may not import (a test pins them equal)."""

_SORTS = frozenset(get_args(SessionSort))


class SessionFilter:
    """A checked ``list_sessions`` query, handed to a backend as one object."""

    __slots__ = (
        "after",
        "agent_id",
        "descending",
        "limit",
        "offset",
        "session_type",
        "sort_by",
        "team_id",
        "updated_since",
        "user_id",
        "workflow_id",
    )

    def __init__(
        self,
        *,
        user_id: str | None,
        session_type: SessionType | None,
        agent_id: str | None,
        team_id: str | None,
        workflow_id: str | None,
        sort_by: SessionSort,
        descending: bool,
        limit: int | None,
        offset: int,
        updated_since: float | None = None,
        after: tuple[float, str] | None = None,
    ) -> None:
        self.user_id = check_optional_identifier("user_id", user_id)
        self.agent_id = check_optional_identifier("agent_id", agent_id)
        self.team_id = check_optional_identifier("team_id", team_id)
        self.workflow_id = check_optional_identifier("workflow_id", workflow_id)
        self.session_type = check_optional_identifier("session_type", session_type)
        check_choice("sort_by", sort_by, _SORTS)
        self.sort_by: SessionSort = sort_by
        self.descending = check_flag("descending", descending)
        check_non_negative("limit", limit, allow_none=True)
        check_non_negative("offset", offset)
        self.limit = limit
        self.offset = offset
        self.updated_since = None if updated_since is None else check_seconds("updated_since", updated_since)
        self.after: tuple[float, str] | None = None
        """The keyset cursor: only rows sorting after ``(sort value, session_id)`` in this order."""
        if after is not None:
            if not isinstance(after, tuple) or len(after) != 2:
                raise InvalidArgumentError("after", f"expected a (sort value, session id) pair, got {after!r}")
            self.after = (check_seconds("after", after[0]), check_identifier("after", after[1]))

    def matches(self, info: SessionInfo) -> bool:
        """Whether an index row passes every filter and lies past the cursor (for backends that
        filter in Python)."""
        if self.after is not None:
            key = (getattr(info, self.sort_by), info.session_id)
            if (key <= self.after) if not self.descending else (key >= self.after):
                return False
        return (
            (self.updated_since is None or info.updated_at >= self.updated_since)
            and (self.user_id is None or info.user_id == self.user_id)
            and (self.session_type is None or info.session_type == self.session_type)
            and (self.agent_id is None or info.agent_id == self.agent_id)
            and (self.team_id is None or info.team_id == self.team_id)
            and (self.workflow_id is None or info.workflow_id == self.workflow_id)
        )


def new_event_id() -> UUID:
    """A time-ordered UUID (version 7: 48 bits of unix milliseconds, then random bits).

    Event ids are indexed uniquely; ids that grow with time land at the end of that index instead
    of on a random page of it, which keeps appends to long logs as cheap as to short ones.
    """
    millis = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    random = int.from_bytes(os.urandom(10), "big")
    value = millis << 80 | 0x7 << 76 | (random >> 64 & 0xFFF) << 64 | 0b10 << 62 | random & ((1 << 62) - 1)
    return UUID(int=value)


def _check_indexed_fields(events: Sequence[Event]) -> None:
    """The fields the session index stores as text must be valid ids and names in every backend."""
    for index, event in enumerate(events):
        if isinstance(event, SessionStarted):
            check_identifier(f"events[{index}].session_type", event.session_type)
            for field in ("agent_id", "team_id", "workflow_id", "user_id"):
                check_optional_identifier(f"events[{index}].{field}", getattr(event, field))
            if event.name is not None:
                check_name(f"events[{index}].name", event.name)
        elif isinstance(event, SessionRenamed):
            check_name(f"events[{index}].name", event.name)


def check_truncation(session_id: str, version: int, expected: int | ExpectedVersion, head: int) -> None:
    """The rule a truncation is checked by, against the session's head read in its own transaction:
    the expected version must hold, and ``version`` may be at most ``head + 1`` (remove everything)."""
    if not check_expected(expected, head):
        raise conflict(session_id, expected, head)
    if version > head + 1:
        raise InvalidArgumentError(
            "version",
            f"session {session_id!r} is at version {head}; truncating before {version} is past it "
            f"(at most {head + 1}, which removes every event)",
        )


def _within(error: InvalidArgumentError, prefix: str) -> InvalidArgumentError:
    """``error`` (of its own type, with its own facts) naming its argument inside a part of a call."""
    error.argument = prefix + error.argument
    error.args = (prefix + str(error),)
    return error


def _stamped(snapshot: Snapshot, now: float) -> Snapshot:
    """The snapshot with its creation time set, if the caller left it unset."""
    if snapshot.created_at != 0.0:
        return snapshot
    return msgspec.structs.replace(snapshot, created_at=now)


class SessionContext(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`BaseEventStore.load_context` read for a session at its current version: what a
    runtime loads before each run, in one round trip where the backend can."""

    info: SessionInfo | None
    """The session's index row; ``None`` (and nothing else read) if absent or deleted."""
    snapshot: Snapshot | None
    """The newest snapshot of the name and schema asked for at or below the session's version."""
    tail: list[Record]
    """The session's newest records, newest first."""
    tail_more: bool
    """Whether older records may follow the tail's last one (read on from below it)."""
    after: list[Record]
    """The records of the types asked for after :attr:`snapshot` (from version 1 without one), oldest first."""
    after_more: bool
    """Whether more such records may follow :attr:`after`'s last one (read on from above it)."""


class PendingAppend(msgspec.Struct, frozen=True, kw_only=True):
    """One checked, encoded part of an ``append_many`` on its way into a backend."""

    session_id: str
    events: Sequence[Event]
    pending: Sequence[PendingEvent]
    expected: int | ExpectedVersion


def _check_read(
    session_id: object,
    from_version: object,
    to_version: object,
    limit: object,
    backwards: object,
    types: Collection[str] | None,
) -> tuple[str, ...] | None:
    """The checks of a session read, and its event types as the backend takes them. Plain ints and
    bools in range take one test; anything else goes through the full checks, which name what is wrong."""
    if (
        type(from_version) is int
        and 0 <= from_version <= MAX_INT64
        and (to_version is None or (type(to_version) is int and 0 <= to_version <= MAX_INT64))
        and (limit is None or (type(limit) is int and 0 <= limit <= MAX_INT64))
        and type(backwards) is bool
    ):
        check_identifier("session_id", session_id)
        return None if types is None else check_event_types("types", types)
    check_identifier("session_id", session_id)
    wanted = check_event_types("types", types)
    check_non_negative("from_version", from_version)
    check_non_negative("to_version", to_version, allow_none=True)
    check_non_negative("limit", limit, allow_none=True)
    check_flag("backwards", backwards)
    return wanted


def _check_snapshot(snapshot: object) -> None:
    """Every field of a snapshot must be of its declared type and bindable by every backend."""
    if not isinstance(snapshot, Snapshot):
        raise InvalidArgumentError("snapshot", f"expected a Snapshot, got {type(snapshot).__qualname__}")
    check_identifier("snapshot.session_id", snapshot.session_id)
    check_identifier("snapshot.name", snapshot.name, max_length=MAX_SNAPSHOT_NAME_LENGTH)
    check_non_negative("snapshot.schema_version", snapshot.schema_version, maximum=MAX_INT32)
    check_non_negative("snapshot.version", snapshot.version)
    if not isinstance(snapshot.data, bytes):
        raise InvalidArgumentError("snapshot.data", f"expected bytes, got {type(snapshot.data).__qualname__}")
    check_seconds("snapshot.created_at", snapshot.created_at, finite=True)


Page = Sequence[StoredEvent | CorruptRecordError]
"""What a backend's page read returns: stored events in read order. A row the backend cannot turn
into a stored event (a damaged envelope) ends the page as a :class:`CorruptRecordError` naming its
session, version and position, after every good row before it; readers get those rows, then the
error, and resume after it (``from_version=error.version + 1``, ``from_position=error.position + 1``)."""
_Start = TypeVar("_Start")
"""Where a paged read starts: a version, or a feed position."""


def _split(page: Page) -> tuple[Sequence[StoredEvent], CorruptRecordError | None]:
    """A page's good rows and the error that ends it, if one does (checked once per page, not per row)."""
    if page and isinstance(page[-1], CorruptRecordError):
        return cast(Sequence[StoredEvent], page[:-1]), page[-1]
    return cast(Sequence[StoredEvent], page), None


def _after_version(_: int, page: Sequence[StoredEvent]) -> int:
    """The version just past ``page``, one session's rows in version order."""
    return page[-1].version + 1


def _after(position: FeedPosition, page: Sequence[StoredEvent]) -> FeedPosition:
    """The feed position just past ``page``, read from ``position``: on a sharded feed each row moves
    its own shard's position."""
    if isinstance(position, FeedCursor):
        for stored in page:
            position = position.after(stored.position)
        return position
    return page[-1].position + 1


def _ahead(page: Page, size: int) -> tuple[Sequence[StoredEvent], CorruptRecordError | None, bool]:
    """A page of ``size`` read with one row of look-ahead (``size + 1`` asked for, unless the reader
    wants no more than ``size``): its good rows without the extra one, the error that ends it, and
    whether another page follows. The extra row saves the empty read that would otherwise follow a
    full last page; it is read again as the next page's first."""
    rows, damaged = _split(page)
    if len(rows) > size:
        return rows[:size], None, True
    return rows, damaged, False


def check_expected(expected: int | ExpectedVersion, head: int) -> bool:
    """Whether ``expected`` admits appending at ``head``; ``False`` means a conflict."""
    if expected is ExpectedVersion.ANY:
        return True
    if expected is ExpectedVersion.NO_STREAM:
        return head == 0
    return expected == head


def conflict(session_id: str, expected: int | ExpectedVersion, head: int) -> ConcurrencyError:
    """The error for an append whose expectation did not hold."""
    shown: int | str = expected.value if isinstance(expected, ExpectedVersion) else expected
    return ConcurrencyError(session_id, shown, head)


def match_retry(
    session_id: str, pending: Sequence[PendingEvent], found: Sequence[StoredEvent | None]
) -> AppendResult | None:
    """Decide what an append whose event ids may already be stored is.

    ``found[i]`` is the stored event whose id is ``pending[i].event_id``, or ``None``. If none is
    stored, the append is new (``None``). If all are stored, in this session, with the same content,
    at consecutive versions, it is a retry and the first call's result is returned. Anything else is
    an :class:`IdempotencyError`: an id reused for other content is never silently accepted.
    """
    if all(stored is None for stored in found):
        return None
    first = found[0]
    for index, (new, stored) in enumerate(zip(pending, found, strict=True)):
        if stored is None:
            raise IdempotencyError(session_id, new.event_id, "was not stored, but other event ids of this batch were")
        if stored.session_id != session_id:
            raise IdempotencyError(session_id, new.event_id, "is already used by another session")
        if stored.type != new.type or (stored.data != new.data and not _same_payload(stored.data, new.data, new.type)):
            raise IdempotencyError(session_id, new.event_id, "was already stored with different content")
        if first is None or stored.version != first.version + index:
            raise IdempotencyError(session_id, new.event_id, "was stored in a different batch")
    return stored_result(session_id, [stored for stored in found if stored is not None])


def stored_result(session_id: str, stored: Sequence[StoredEvent]) -> AppendResult:
    """The result of an append that wrote nothing because its events are ``stored`` already (in the
    call's order): their lowest and highest versions, and their positions and ids."""
    versions = [event.version for event in stored]
    return AppendResult(
        session_id=session_id,
        from_version=min(versions),
        to_version=max(versions),
        positions=tuple(event.position for event in stored),
        event_ids=tuple(event.event_id for event in stored),
        recorded_at=stored[0].recorded_at,
    )


def split_stored(session_id: str, pending: Sequence[PendingEvent], found: Sequence[StoredEvent | None]) -> list[int]:
    """For an append with ``skip_existing=True``: the indexes of the events still to write.

    ``found[i]`` is the stored event whose id is ``pending[i].event_id``, or ``None``. An id stored in
    this session is skipped whatever its content (first write wins); an id stored in another session
    raises :class:`IdempotencyError`, as it does without ``skip_existing``.
    """
    for new, stored in zip(pending, found, strict=True):
        if stored is not None and stored.session_id != session_id:
            raise IdempotencyError(session_id, new.event_id, "is already used by another session")
    return [index for index, stored in enumerate(found) if stored is None]


def _parse_manifest(data: bytes) -> tuple[int, int, bytes] | None:
    """The length, chunk count and SHA-256 a manifest row records; ``None`` if it is not one."""
    if len(data) != _MANIFEST.size:
        return None
    mark, version, length, count, digest = _MANIFEST.unpack(data)
    if mark != MANIFEST_MARK or version != _MANIFEST_FORMAT:
        return None
    return length, count, digest


class _DecodedRows:
    """A session page that its backend decoded straight from its rows (:meth:`BaseEventStore._decoded_rows`):
    the records, the error of the first row that does not decode (``None`` if all do), and how many
    rows were read (the look-ahead row included), which tells the reader whether a page follows."""

    __slots__ = ("error", "records", "rows")

    def __init__(self, records: list[Record], error: Exception | None, rows: int) -> None:
        self.records, self.error, self.rows = records, error, rows


def _rows_have_manifest(rows: Sequence[Sequence[Any]]) -> bool:
    """:func:`_has_manifest` for rows in :class:`StoredEvent`'s field order (the payload is the seventh)."""
    try:
        return _MARK_BYTE in [row[6][0] for row in rows]
    except IndexError:  # an empty payload (another codec's): no first byte to look at
        return MANIFEST_MARK in [row[6][:1] for row in rows]


def _page_decoder(codec: Codec, name: str) -> Callable[..., tuple[list[Record], Exception | None]] | None:
    """The codec's one-pass page decoder ``name``, if it reads as the codec's ``decode`` does: defined
    by the class that defines ``decode`` or one derived from it. A subclass that overrides only
    ``decode`` gets ``None``, so its pages are read through its ``decode``, not around it."""
    mro = type(codec).__mro__
    page_owner = next((cls for cls in mro if name in vars(cls)), None)
    decode_owner = next((cls for cls in mro if "decode" in vars(cls)), None)
    if page_owner is None or decode_owner is None or not issubclass(page_owner, decode_owner):
        return None
    return cast(Callable[..., tuple[list[Record], Exception | None]], getattr(codec, name))


def _has_manifest(page: Sequence[StoredEvent]) -> bool:
    """Whether a row of the page is a chunk manifest: one pass over first bytes, ~50 ns a row."""
    try:
        return _MARK_BYTE in [stored.data[0] for stored in page]
    except IndexError:  # an empty payload (another codec's): no first byte to look at
        return MANIFEST_MARK in [stored.data[:1] for stored in page]


def _same_payload(stored: bytes, new: bytes, tag: str) -> bool:
    """Whether two rows that differ as bytes still hold the same payload: one inline and one out of
    line, or out of line in chunks of another size (the store's inline limit changed in between), or
    the stored one written by a release that kept the type tag inside the payload."""
    if stored == tagged_payload(new, tag):
        return True
    digests = []
    for data in (stored, new):
        manifest = _parse_manifest(data) if data[:1] == MANIFEST_MARK else None
        digests.append((len(data), hashlib.sha256(data).digest()) if manifest is None else manifest[::2])
    return digests[0] == digests[1]


def _out_of_line(pending: PendingEvent, chunk_size: int) -> PendingEvent:
    """``pending`` with its payload cut into chunks of ``chunk_size`` bytes, and a manifest in its place."""
    data = pending.data
    chunks = tuple(data[start : start + chunk_size] for start in range(0, len(data), chunk_size))
    manifest = _MANIFEST.pack(MANIFEST_MARK, _MANIFEST_FORMAT, len(data), len(chunks), hashlib.sha256(data).digest())
    return PendingEvent(
        event_id=pending.event_id,
        type=pending.type,
        schema_version=pending.schema_version,
        data=manifest,
        chunks=chunks,
    )


def _joined(stored: StoredEvent, chunks: Sequence[bytes]) -> StoredEvent:
    """The stored event of a manifest row with its payload put back together from ``chunks`` (in
    part order), checked against the manifest's length and SHA-256."""

    def damaged(detail: str) -> CorruptRecordError:
        return CorruptRecordError(stored.session_id, stored.version, stored.type, detail, position=stored.position)

    manifest = _parse_manifest(stored.data)
    if manifest is None:
        raise damaged("the row starts like a chunk manifest but is not one")
    length, count, digest = manifest
    if len(chunks) != count:
        raise damaged(f"{len(chunks)} of its {count} chunks are stored")
    data = b"".join(chunks)
    if len(data) != length:
        raise damaged(f"its chunks hold {len(data)} bytes, the manifest says {length}")
    if hashlib.sha256(data).digest() != digest:
        raise damaged("its chunks do not match the manifest's SHA-256")
    return msgspec.structs.replace(stored, data=data)


class BaseEventStore(abc.ABC):
    """The shared half of every backend; see the module docstring."""

    read_page_size = 1000
    """Rows fetched per round trip while streaming; reads hold no cursor open between pages."""

    feed_layout: str | None = None
    """``None`` for a store with one log, whose global feed is one sequence of int positions. A sharded
    store (independent logs, none ordering the others' appends) names its shard layout here, e.g.
    ``"nats:KERN:3"``, and its feed resumes from a :class:`~kern_events.records.FeedCursor` of that
    layout; it implements :meth:`_feed_start` and :meth:`_read_feed_page` instead of
    :meth:`_read_all_page`, and its record positions carry their shard (:data:`FEED_SHARD_SHIFT`)."""

    inline_limit: int | None = None
    """The largest encoded payload a row of this backend holds; a larger one is stored out of line, in
    chunks of at most this many bytes that :meth:`_append` writes with the event (``PendingEvent.chunks``)
    and :meth:`_read_chunks` returns. ``None``: every payload is stored inline. A backend whose rows
    are small (a message or item size limit) sets it (at least 46 bytes, so that a manifest fits) and
    implements :meth:`_read_chunks`; without that hook, a payload above the limit is refused
    (:class:`PayloadTooLargeError`) instead of being cut into chunks nobody would store."""

    def __init__(
        self,
        *,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
    ) -> None:
        check_non_negative("max_event_size", max_event_size)
        if chain_key is not None and (not isinstance(chain_key, bytes) or len(chain_key) < 16):
            raise InvalidArgumentError("chain_key", "expected bytes of at least 16 (a secret HMAC key) or None")
        self.chain = Chain(chain_key)
        """The tamper-evidence rule: a backend computes its events' hashes with ``self.chain.hashes``
        in its atomic append (see :class:`Chain`)."""
        self.change_signal = ChangeSignal()
        self._stores_chunks = type(self)._read_chunks is not BaseEventStore._read_chunks
        self._codec: Codec = codec if codec is not None else MsgpackCodec()
        self._decode_page: Callable[..., tuple[list[Record], Exception | None]] = (
            _page_decoder(self._codec, "decode_page") or self._decode_rows
        )
        """The page's records and the error of the first row that does not decode (``None`` if all
        do), given the page and, if it was opened, its payloads: the codec's ``decode_page`` where it
        has one (:class:`MsgpackCodec` does), else ``decode`` row by row; looked up once."""
        self._rows_decoder: Callable[..., tuple[list[Record], Exception | None]] | None = _page_decoder(
            self._codec, "decode_rows"
        )
        """The codec's ``decode_rows`` (records straight from database rows, see :meth:`_decoded_rows`),
        if it has one; looked up once."""
        self._max_event_size = max_event_size
        self._state = "new"
        self._open_lock = AnyLoopLock()  # opening and closing may come from any thread's event loop
        self._encryption: Encryption | None = None
        self._erased: set[str] = set()
        """Sessions erased (or being erased) by :meth:`erase_user`: appends to them are refused."""
        self._writing: dict[str, int] = {}
        """Appends in flight per session, which an erasure waits for before it deletes."""

    @property
    def encryption(self) -> Encryption | None:
        """How payloads and snapshots are sealed at rest (:mod:`kern_events.encryption`); ``None``:
        stored as encoded. Set it before the first write; rows written without it stay readable."""
        return self._encryption

    @encryption.setter
    def encryption(self, encryption: Encryption | None) -> None:
        if encryption is not None and not isinstance(encryption, Encryption):
            raise InvalidArgumentError("encryption", f"expected an Encryption, got {type(encryption).__qualname__}")
        self._encryption = encryption

    async def _user_of(self, session_id: str) -> str | None:
        info = await self._get_session_info(session_id)
        return None if info is None else info.user_id

    async def _sealer(self, session_id: object, events: object) -> Sealer | None:
        """The sealer of an append to ``session_id`` when the store encrypts (``None`` otherwise, or
        for an argument the append's checks will refuse)."""
        if self._encryption is None or not isinstance(session_id, str):
            return None
        try:
            check_identifier("session_id", session_id)
        except InvalidArgumentError:
            return None
        await self._ensure_open()
        key_id = await self._encryption.key_id(session_id, events, self._user_of)
        return await self._encryption.sealer(session_id, key_id)

    async def _sealed_snapshot(self, snapshot: Snapshot) -> Snapshot:
        if self._encryption is None:
            return snapshot
        key_id = await self._encryption.key_id(snapshot.session_id, (), self._user_of)
        return await self._encryption.seal_snapshot(snapshot, key_id)

    @property
    def max_event_size(self) -> int:
        """The largest encoded event this store accepts; a larger one is :class:`PayloadTooLargeError`."""
        return self._max_event_size

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _ensure_open(self) -> None:
        if self._state == "open":
            return
        async with self._open_lock:
            if self._state == "closed":
                raise StoreClosedError()
            if self._state == "new":
                await self._open()
                self._state = "open"

    async def aclose(self) -> None:
        """Release every connection and thread; safe to call twice and under cancellation."""
        async with self._open_lock:
            was_open = self._state == "open"
            self._state = "closed"
        if was_open:
            with anyio.CancelScope(shield=True):
                await self._close()

    # -- writing -----------------------------------------------------------------------------------

    async def append(
        self,
        session_id: str,
        events: Sequence[Event],
        *,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
        event_ids: Sequence[UUID] | None = None,
        skip_existing: bool = False,
    ) -> AppendResult:
        """Append ``events`` atomically; see :meth:`kern_events.store.EventStore.append`."""
        probe = _telemetry.probe
        if probe is None:
            return await self._append_call(session_id, events, expected_version, event_ids, skip_existing)
        return await probe.append(
            self,
            session_id,
            events,
            lambda: self._append_call(session_id, events, expected_version, event_ids, skip_existing),
        )

    async def _append_call(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_version: int | ExpectedVersion,
        event_ids: Sequence[UUID] | None,
        skip_existing: bool,
    ) -> AppendResult:
        """The append itself, behind :meth:`append`'s telemetry check (see :mod:`kern_events._telemetry`)."""
        if check_flag("skip_existing", skip_existing) and event_ids is None:
            raise InvalidArgumentError(
                "skip_existing", "needs event_ids (fresh ids are never stored already): derive them with event_id_for"
            )
        seal = await self._sealer(session_id, events)
        events, pending = self._checked_append(session_id, events, expected_version, event_ids, seal)
        await self._ensure_open()
        await self._refuse_past_last_version(session_id, expected_version, len(pending))
        self._enter_writes((session_id,))
        try:
            if skip_existing:
                result = await self._append_new(session_id, events, pending, expected_version, time.time())
            else:
                result = await self._append(session_id, events, pending, expected_version, time.time())
        finally:
            self._leave_writes((session_id,))
        self.change_signal.fire()
        self._announce()
        return result

    def _checked_append(
        self,
        session_id: str,
        events: Sequence[Event],
        expected_version: int | ExpectedVersion,
        event_ids: Sequence[UUID] | None,
        seal: Sealer | None = None,
    ) -> tuple[Sequence[Event], list[PendingEvent]]:
        """The checks every append passes (alone or as part of :meth:`append_many`), and its encoding."""
        check_identifier("session_id", session_id)
        if not isinstance(expected_version, ExpectedVersion):
            check_non_negative("expected_version", expected_version)
        events = check_items("events", events)
        if not events:
            raise InvalidArgumentError("events", "at least one event is required")
        if len(events) > MAX_EVENTS_PER_APPEND:
            raise InvalidArgumentError(
                "events", f"{len(events)} events in one append; at most {MAX_EVENTS_PER_APPEND} are allowed"
            )
        _check_indexed_fields(events)
        return events, self._encode(events, event_ids, seal)

    async def _refuse_past_last_version(self, session_id: str, expected: int | ExpectedVersion, count: int) -> None:
        """An expected version with no room after it for ``count`` events (versions are 64-bit) is
        no session's head that could take them: a conflict, answered before any backend computes
        versions or hashes it cannot represent."""
        if isinstance(expected, int) and expected + count > MAX_INT64:
            raise conflict(session_id, expected, await self.current_version(session_id))

    async def append_many(self, appends: Sequence[SessionAppend]) -> list[AppendResult]:
        """Append to several sessions all or nothing; see :meth:`kern_events.store.EventStore.append_many`."""
        probe = _telemetry.probe
        if probe is None:
            return await self._append_many_call(appends)
        return await probe.append_many(self, appends, lambda: self._append_many_call(appends))

    async def _append_many_call(self, appends: Sequence[SessionAppend]) -> list[AppendResult]:
        """The append itself, behind :meth:`append_many`'s telemetry check."""
        parts = check_items("appends", appends)
        if not parts:
            raise InvalidArgumentError("appends", "at least one append is required")
        seals = [
            await self._sealer(part.session_id, part.events) if isinstance(part, SessionAppend) else None
            for part in parts
        ]
        checked: list[PendingAppend] = []
        where: dict[str, int] = {}
        ids: dict[UUID, int] = {}
        total = 0
        for index, part in enumerate(parts):
            if not isinstance(part, SessionAppend):
                raise InvalidArgumentError(
                    f"appends[{index}]", f"expected a SessionAppend, got {type(part).__qualname__}"
                )
            try:
                events, pending = self._checked_append(
                    part.session_id, part.events, part.expected_version, part.event_ids, seals[index]
                )
            except InvalidArgumentError as error:
                raise _within(error, f"appends[{index}].") from error.__cause__
            if part.session_id in where:
                raise InvalidArgumentError(
                    f"appends[{index}].session_id",
                    f"session {part.session_id!r} is already appended to by appends[{where[part.session_id]}]; "
                    "give each session one part",
                )
            where[part.session_id] = index
            for new in pending:
                if ids.setdefault(new.event_id, index) != index:
                    raise InvalidArgumentError(
                        f"appends[{index}].event_ids", f"id {new.event_id} is also used by appends[{ids[new.event_id]}]"
                    )
            total += len(pending)
            checked.append(
                PendingAppend(
                    session_id=part.session_id, events=events, pending=pending, expected=part.expected_version
                )
            )
        if total > MAX_EVENTS_PER_APPEND:
            raise InvalidArgumentError(
                "appends", f"{total} events in one call; at most {MAX_EVENTS_PER_APPEND} are allowed"
            )
        await self._ensure_open()
        for pending_part in checked:
            await self._refuse_past_last_version(
                pending_part.session_id, pending_part.expected, len(pending_part.pending)
            )
        writing = [part.session_id for part in checked]
        self._enter_writes(writing)
        try:
            results = await self._append_many(checked, time.time())
        finally:
            self._leave_writes(writing)
        self.change_signal.fire()
        self._announce()
        return results

    async def truncate_before(
        self,
        session_id: str,
        version: int,
        *,
        snapshot: Snapshot | None = None,
        expected_version: int | ExpectedVersion = ExpectedVersion.ANY,
    ) -> int:
        """Remove the session's events below ``version`` behind ``snapshot``, atomically; see
        :meth:`kern_events.store.EventStore.truncate_before`."""
        check_identifier("session_id", session_id)
        check_non_negative("version", version)
        if version < 1:
            raise InvalidArgumentError("version", f"expected a version >= 1, got {version}")
        if not isinstance(expected_version, ExpectedVersion):
            check_non_negative("expected_version", expected_version)
        now = time.time()
        await self._ensure_open()
        saved = [
            Snapshot(
                session_id=session_id,
                name=TRUNCATION_SNAPSHOT,
                schema_version=0,
                version=version - 1,
                data=await self._chain_at(session_id, version - 1),
                created_at=now,
            )
        ]
        if snapshot is not None:
            _check_snapshot(snapshot)
            if snapshot.session_id != session_id:
                raise InvalidArgumentError(
                    "snapshot.session_id", f"the snapshot is of session {snapshot.session_id!r}, not {session_id!r}"
                )
            if snapshot.version != version - 1:
                raise InvalidArgumentError(
                    "snapshot.version",
                    f"a snapshot behind a truncation before version {version} must be at version {version - 1}, "
                    f"got {snapshot.version}",
                )
            if snapshot.name == TRUNCATION_SNAPSHOT:
                raise InvalidArgumentError(
                    "snapshot.name", f"{TRUNCATION_SNAPSHOT!r} is written by truncate_before only"
                )
            await self._ensure_open()
            saved.append(await self._sealed_snapshot(_stamped(snapshot, now)))
        return await self._truncate_before(session_id, version, expected_version, saved)

    async def _chain_at(self, session_id: str, version: int) -> bytes:
        """The hash of the event at ``version`` (empty if it has none or is gone), which the truncation
        marker keeps so that the chain still verifies from the cut. Read before the truncation's
        atomic step: an event below the head never changes. An event that keeps no hash (not the
        last of its append, see :meth:`Chain.kept`) has it recomputed from the hash before its
        append, if the hash its append ends with proves it."""
        if version < 1:
            return b""
        page, _ = _split(await self._read_page(session_id, version, version, 1, False, None))
        if not page or page[0].chain is not None:
            return page[0].chain or b"" if page else b""
        at = page[0].recorded_at
        before: list[StoredEvent] = []  # the append's events before ``version``, then the one before them
        while len(before) < MAX_EVENTS_PER_APPEND + 1:
            high = version - 1 - len(before)
            rows, damaged = _split(await self._read_page(session_id, 1, high, self.read_page_size, True, None))
            before += rows
            if damaged is not None or any(row.chain is not None or row.recorded_at != at for row in rows):
                break
            if len(rows) < self.read_page_size:
                break
        after: list[StoredEvent] = []  # the append's events after ``version``, up to the one with its hash
        while not after or after[-1].chain is None:
            low = version + 1 + len(after)
            rows, damaged = _split(await self._read_page(session_id, low, None, self.read_page_size, False, None))
            after += rows
            if damaged is not None or len(rows) < self.read_page_size or len(after) > MAX_EVENTS_PER_APPEND:
                break
        start = next((n for n, row in enumerate(before) if row.chain is not None or row.recorded_at != at), None)
        end = next((n for n, row in enumerate(after) if row.chain is not None or row.recorded_at != at), None)
        if end is None or after[end].chain is None or after[end].recorded_at != at:
            return b""  # no hash ends the append: nothing proves one
        if start is None:  # the append starts the log: it chains from the truncation marker or the genesis
            first = before[-1].version if before else version
            marker = await self.load_snapshot(session_id, TRUNCATION_SNAPSHOT) if first > 1 else None
            previous = marker.data if marker is not None and marker.version == first - 1 else b""
            previous = previous or self.chain.genesis(session_id)
            own = before[::-1]
        elif (stored := before[start].chain) is None:
            return b""  # an event without a hash before the append: before the chain began (or edited)
        else:
            previous, own = stored, before[:start][::-1]
        hashes: list[bytes] = []
        for row in [*own, page[0], *after[: end + 1]]:
            previous = self.chain.of(previous, row)
            hashes.append(previous)
        return hashes[len(own)] if hashes[-1] == after[end].chain else b""

    async def verify(
        self, session_id: str | None = None, *, progress: Callable[[int], None] | None = None
    ) -> VerifyReport:
        """Recompute the hash chains of one session or of every session in the index, reporting by
        session and version what was edited, deleted, moved or cut off (see :class:`ChainProblem`).
        Reads each session's stored rows directly (no decoding, no data keys); ``progress`` is
        called with the number of events checked after each page."""
        report = VerifyReport()
        verifier = ChainVerifier(self.chain, report)
        if session_id is not None:
            check_identifier("session_id", session_id)
            await self._verify_session(verifier, session_id, await self.current_version(session_id), progress)
            return report
        offset = 0
        while True:
            infos = await self.list_sessions(sort_by="created_at", descending=False, limit=1000, offset=offset)
            for info in infos:
                await self._verify_session(verifier, info.session_id, info.version, progress)
            if len(infos) < 1000:
                return report
            offset += len(infos)

    async def _verify_session(
        self, verifier: ChainVerifier, session_id: str, head: int, progress: Callable[[int], None] | None
    ) -> None:
        marker = await self.load_snapshot(session_id, TRUNCATION_SNAPSHOT)
        first = 1 if marker is None else marker.version + 1
        verifier.start(session_id, first, None if marker is None else marker.data)
        low = first
        while True:
            page, damaged = _split(await self._read_page(session_id, low, None, self.read_page_size, False, None))
            for stored in page:
                verifier.check(stored)
            if damaged is not None:
                verifier.corrupt(damaged.version, str(damaged))
            if progress is not None:
                progress(len(page) + (damaged is not None))
            if damaged is not None:
                low = damaged.version + 1
            elif len(page) < self.read_page_size:
                break
            else:
                low = page[-1].version + 1
        verifier.finish(head)

    # -- export and import (kern_events.transfer) ---------------------------------------------------

    async def read_stored(self, session_id: str, *, from_version: int = 1) -> AsyncIterator[StoredEvent]:
        """Stream the session's events as stored, in version order from ``from_version``: payload bytes
        as the chain hashed them (still sealed, if the store encrypts), out-of-line payloads put back
        together. What an export writes; a damaged row raises its :class:`CorruptRecordError` after the
        rows before it."""
        check_identifier("session_id", session_id)
        check_non_negative("from_version", from_version)
        await self._ensure_open()

        def fetch(low: int) -> Awaitable[Page]:
            return self._read_page(session_id, low, None, self.read_page_size, False, None)

        async with aclosing(self._stored_pages(fetch, from_version, _after_version)) as pages:
            async for stored in pages:
                yield stored

    async def read_all_stored(self, *, from_position: FeedPosition = 0) -> AsyncIterator[StoredEvent]:
        """Stream every session's events as stored (as :meth:`read_stored` gives them) in global
        order, from ``from_position`` on: what an export writes when sessions' order matters. Like
        :meth:`read_all`, it stops at the backend's feed fence (see :meth:`feed_lag`)."""
        self._check_feed_position(from_position)
        self._require_feed()
        await self._ensure_open()
        position = await self.feed_cursor(from_position)

        def fetch(start: FeedPosition) -> Awaitable[Page]:
            return self._feed_page(start, self.read_page_size)

        async with aclosing(self._stored_pages(fetch, position, _after)) as pages:
            async for stored in pages:
                yield stored

    async def _stored_pages(
        self,
        fetch: Callable[[_Start], Awaitable[Page]],
        start: _Start,
        after: Callable[[_Start, Sequence[StoredEvent]], _Start],
    ) -> AsyncGenerator[StoredEvent]:
        """The paging of :meth:`read_stored` and :meth:`read_all_stored`: ``fetch(start)``, then
        ``fetch(after(start, page))`` while pages come back full, each page's rows as stored
        (out-of-line payloads joined); a damaged row raises its error after the rows before it."""
        while True:
            page, damaged = _split(await fetch(start))
            page = await self._whole(page)
            for stored in page:
                yield stored
            if damaged is not None:
                raise damaged
            if len(page) < self.read_page_size:
                return
            start = after(start, page)
            del page  # not held while the next page is fetched: one page in memory at a time

    async def _whole(self, page: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
        """The page with its out-of-line payloads put back together (one :meth:`_read_chunks` round trip)."""
        if not (self._stores_chunks and _has_manifest(page)):
            return page
        wanted = [stored.event_id for stored in page if stored.data[:1] == MANIFEST_MARK]
        chunks = dict(await self._read_chunks(wanted))
        return [
            _joined(stored, chunks.pop(stored.event_id, ())) if stored.data[:1] == MANIFEST_MARK else stored
            for stored in page
        ]

    async def decode_stored(self, stored: StoredEvent) -> Record:
        """A stored event (payload whole, as :meth:`read_stored` returns it) decoded as a read would:
        opened with this store's encryption, if any, then decoded; a bad payload is a
        :class:`CorruptRecordError`."""
        if self._encryption is not None:
            stored = await self._encryption.open(stored)
        return self._codec.decode(stored)

    def stored_form(self, stored: StoredEvent) -> bytes:
        """The payload bytes this store would keep for ``stored`` (a manifest in its place if it is
        stored out of line): what its chain hash here is computed over."""
        pending = PendingEvent(
            event_id=stored.event_id, type=stored.type, schema_version=stored.schema_version, data=stored.data
        )
        return self._stored_form(pending, "stored.data").data

    async def append_stored(self, stored: Sequence[StoredEvent], *, expected_version: int) -> AppendResult:
        """Append events in the form :meth:`read_stored` returns them, keeping their ids, types,
        payload bytes and recorded time, at the versions they carry: the restoring half of an export.

        They must be of one session, share one recorded time (one original append) and number on
        from ``expected_version``, which must be the session's head (else :class:`ConcurrencyError`).
        Their positions are this store's, in the order given; their hashes are this store's chain
        from its head, which equals the exported chain when the chain key and the stored forms match.
        """
        items = check_items("stored", stored)
        if not items or not all(isinstance(item, StoredEvent) for item in items):
            raise InvalidArgumentError("stored", "expected one or more StoredEvent")
        session_id = check_identifier("stored[0].session_id", items[0].session_id)
        check_non_negative("expected_version", expected_version)
        recorded_at = check_seconds("stored[0].recorded_at", items[0].recorded_at, finite=True)
        if len(items) > MAX_EVENTS_PER_APPEND:
            raise InvalidArgumentError("stored", f"{len(items)} events; at most {MAX_EVENTS_PER_APPEND} per call")
        for index, item in enumerate(items):
            if item.session_id != session_id or item.recorded_at != recorded_at:
                raise InvalidArgumentError(f"stored[{index}]", "every event must share the first's session and time")
            if item.version != expected_version + 1 + index:
                raise InvalidArgumentError(
                    f"stored[{index}].version", f"expected {expected_version + 1 + index}, got {item.version}"
                )
        await self._ensure_open()
        events = []
        for item in items:
            event = (await self.decode_stored(item)).event
            if not isinstance(event, UnknownEvent):
                events.append(event)  # the index learns from known events only
        _check_indexed_fields(events)
        pending = [
            self._stored_form(
                PendingEvent(
                    event_id=item.event_id, type=item.type, schema_version=item.schema_version, data=item.data
                ),
                f"stored[{index}].data",
            )
            for index, item in enumerate(items)
        ]
        self._enter_writes((session_id,))
        try:
            result = await self._append(session_id, events, pending, expected_version, recorded_at)
        finally:
            self._leave_writes((session_id,))
        self.change_signal.fire()
        self._announce()
        return result

    async def _append_new(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> AppendResult:
        """``skip_existing``: append the events whose ids are not stored yet, in one append.

        The first try is a plain append: when no id is stored (the usual case) it costs nothing more,
        and when all are stored as an exact retry it answers like one. An :class:`IdempotencyError`
        means some id is stored: look them up, leave those out (:func:`split_stored`) and append the
        rest, checking ``expected`` against the head; if a racing writer stores some of the rest
        first, look again. Each turn of the loop finds at least one more id stored, so it ends.
        """
        try:
            return await self._append(session_id, events, pending, expected, recorded_at)
        except IdempotencyError:
            pass
        for _ in range(len(pending) + 1):
            found = await self._find_events([new.event_id for new in pending])
            missing = split_stored(session_id, pending, found)
            if not missing:
                return stored_result(session_id, [stored for stored in found if stored is not None])
            try:
                return await self._append(
                    session_id,
                    [events[index] for index in missing],
                    [pending[index] for index in missing],
                    expected,
                    recorded_at,
                )
            except IdempotencyError:
                continue  # another writer stored some of them meanwhile
        raise AssertionError("unreachable: every IdempotencyError means one more id is stored")  # pragma: no cover

    def _encode(
        self, events: Sequence[Event], event_ids: Sequence[UUID] | None, seal: Sealer | None = None
    ) -> list[PendingEvent]:
        if event_ids is None:
            ids = [new_event_id() for _ in events]
        else:
            ids = check_items("event_ids", event_ids)
            if len(ids) != len(events):
                raise InvalidArgumentError(
                    "event_ids", f"got {len(ids)} ids for {len(events)} events; give one id per event"
                )
            for index, event_id in enumerate(ids):
                if not isinstance(event_id, UUID):
                    raise InvalidArgumentError(f"event_ids[{index}]", f"expected a UUID, got {event_id!r}")
            if len(set(ids)) != len(ids):
                raise InvalidArgumentError("event_ids", "an id appears twice in one append")
        pending = []
        inline_limit = self.inline_limit
        if inline_limit is not None and (isinstance(inline_limit, bool) or inline_limit < _MIN_INLINE_LIMIT):
            raise InvalidArgumentError(
                "inline_limit", f"expected at least {_MIN_INLINE_LIMIT} bytes, got {inline_limit!r}"
            )
        for index, (event, event_id) in enumerate(zip(events, ids, strict=True)):
            try:
                encoded = self._codec.encode(event, event_id)
            except UnknownEventTypeError:
                raise UnknownEventTypeError(f"events[{index}]", event) from None
            except InvalidEventError as error:
                raise InvalidEventError(
                    f"events[{index}]", error.event_type, error.detail, field=error.field
                ) from error.__cause__
            if seal is not None:
                encoded = seal(encoded)
            pending.append(self._stored_form(encoded, f"events[{index}]"))
        return pending

    def _stored_form(self, encoded: PendingEvent, argument: str) -> PendingEvent:
        """An encoded event as this backend stores it: refused above ``max_event_size``, and cut into
        chunks behind a manifest above :attr:`inline_limit` (the form its chain hash is computed over)."""
        inline_limit = self.inline_limit
        if len(encoded.data) > self._max_event_size:
            raise PayloadTooLargeError(argument, encoded.type, len(encoded.data), self._max_event_size)
        if inline_limit is not None and (len(encoded.data) > inline_limit or encoded.data[:1] == MANIFEST_MARK):
            if not self._stores_chunks:  # a row limit but no chunk table: the limit is a hard one
                raise PayloadTooLargeError(argument, encoded.type, len(encoded.data), inline_limit)
            encoded = _out_of_line(encoded, inline_limit)
        return encoded

    def _enter_writes(self, session_ids: Sequence[str]) -> None:
        """Count appends in flight (so that an erasure waits for them), refusing erased sessions."""
        for session_id in session_ids:
            if session_id in self._erased:
                raise ErasedError(session_id, "its user was erased; it takes no more events")
        for session_id in session_ids:
            self._writing[session_id] = self._writing.get(session_id, 0) + 1

    def _leave_writes(self, session_ids: Sequence[str]) -> None:
        for session_id in session_ids:
            left = self._writing[session_id] - 1
            if left:
                self._writing[session_id] = left
            else:
                del self._writing[session_id]

    async def erase_user(self, user_id: str, *, dry_run: bool = False) -> ErasureReport:
        """Erase every session of ``user_id``; see :meth:`kern_events.store.EventStore.erase_user`."""
        check_identifier("user_id", user_id)
        check_flag("dry_run", dry_run)
        await self._ensure_open()
        erased: list[str] = []
        events = 0
        query = SessionFilter(
            user_id=user_id,
            session_type=None,
            agent_id=None,
            team_id=None,
            workflow_id=None,
            sort_by="created_at",
            descending=False,
            limit=None,
            offset=0,
        )
        while True:  # a session of the user started while erasing is found by the next listing
            sessions = [info for info in await self._list_sessions(query) if info.session_id not in erased]
            if not sessions:
                break
            ids = [info.session_id for info in sessions]
            if not dry_run:
                self._erased.update(ids)
                # Appends already past the fence land first, then go too. Polled, not an anyio.Event:
                # they may run on other threads' event loops, where an Event cannot be awaited.
                while any(session_id in self._writing for session_id in ids):  # noqa: ASYNC110
                    await anyio.sleep(0.001)
            for session_id in ids:
                marker = await self._load_snapshot(session_id, TRUNCATION_SNAPSHOT, None, None)
                head = await self._current_version(session_id)
                events += head - (0 if marker is None else marker.version)
            if not dry_run:
                await self._erase_sessions(user_id, ids)
            erased += ids
        if dry_run:
            return ErasureReport(user_id=user_id, session_ids=tuple(erased), events=events)
        keys = 0
        if self._encryption is not None:  # crypto-shredding: copies elsewhere (backups, exports) go dark too
            keys = await self._encryption.forget([user_key_id(user_id), *map(session_key_id, erased)], erased)
        return ErasureReport(user_id=user_id, session_ids=tuple(erased), events=events, keys_deleted=keys)

    async def _erase_sessions(self, user_id: str, session_ids: Sequence[str]) -> None:
        """Erase the sessions of ``user_id`` as :meth:`_delete_session` does each one. A backend that
        can do it in one statement or transaction overrides this; the default deletes one by one."""
        for session_id in session_ids:
            await self._delete_session(session_id)

    async def delete_session(self, session_id: str) -> bool:
        """Erase the session's events, snapshots and index row, keeping its version as a tombstone."""
        check_identifier("session_id", session_id)
        await self._ensure_open()
        return await self._delete_session(session_id)

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Store a checkpoint of a projection's state for a session at a version."""
        _check_snapshot(snapshot)
        if snapshot.name == TRUNCATION_SNAPSHOT:
            raise InvalidArgumentError("snapshot.name", f"{TRUNCATION_SNAPSHOT!r} is written by truncate_before only")
        await self._ensure_open()
        head = await self._current_version(snapshot.session_id)
        if snapshot.version > head:
            raise InvalidArgumentError(
                "snapshot.version",
                f"{snapshot.version} is ahead of session {snapshot.session_id!r} (version {head})",
            )
        sealed = await self._sealed_snapshot(_stamped(snapshot, time.time()))
        self._enter_writes((snapshot.session_id,))  # a user's checkpoint is fenced by an erasure as appends are
        try:
            await self._save_snapshot(sealed)
        finally:
            self._leave_writes((snapshot.session_id,))

    # -- reading -----------------------------------------------------------------------------------

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
        """Stream the session's records; see :meth:`kern_events.store.EventStore.read`."""
        records = self._read(session_id, from_version, to_version, limit, backwards, types)
        probe = _telemetry.probe
        return records if probe is None else probe.read(self, session_id, records)

    async def _read(
        self,
        session_id: str,
        from_version: int,
        to_version: int | None,
        limit: int | None,
        backwards: bool,
        types: Collection[str] | None,
    ) -> AsyncIterator[Record]:
        """The read itself, which :meth:`read` hands to telemetry when it is on."""
        wanted = _check_read(session_id, from_version, to_version, limit, backwards, types)
        if self._state != "open":
            await self._ensure_open()
        low, high, remaining = from_version, to_version, limit
        # A backwards read is usually a tail read that stops early (history for the next run): its
        # pages start small and double, so the first round trip does not fetch a thousand rows. A
        # read whose limit fits in a page takes one round trip, asking for no look-ahead row.
        page_size = min(_FIRST_TAIL_PAGE, self.read_page_size) if backwards else self.read_page_size
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page_size = min(page_size * 2, self.read_page_size)
            ahead = remaining is None or remaining > size
            fetched = await self._read_session_page(session_id, low, high, size + ahead, backwards, wanted)
            if type(fetched) is _DecodedRows:
                records, more = fetched.records, fetched.rows > size
                if len(records) > size:  # the look-ahead row is read again as the next page's first
                    records = records[:size]
                for record in records:
                    yield record
                if fetched.error is not None:
                    raise fetched.error
                last = records[-1].version if more else 0
            else:
                page, damaged, more = _ahead(cast(Page, fetched), size)
                decoded = self._decoded(page, damaged) or await self._opened(page, damaged, skip_erased=False)
                if decoded is None:
                    async for record in self._assembled(page, damaged, skip_erased=False):
                        yield record
                else:
                    for record in decoded[0]:
                        yield record
                    if decoded[1] is not None:
                        raise decoded[1]
                last = page[-1].version if more else 0
            if not more:  # a page with a row past it is full: ``size`` rows, the last at ``last``
                return
            if remaining is not None:
                remaining -= size
            if backwards:
                high = last - 1
            else:
                low = last + 1

    def read_all(self, *, from_position: FeedPosition = 0, limit: int | None = None) -> AsyncIterator[Record]:
        """Stream every session's records in global order, from ``from_position`` on (inclusive)."""
        records = self._read_all(from_position, limit)
        probe = _telemetry.probe
        return records if probe is None else probe.read_all(self, records)

    async def _read_all(self, from_position: FeedPosition, limit: int | None) -> AsyncIterator[Record]:
        """The read itself, which :meth:`read_all` hands to telemetry when it is on."""
        self._check_feed_position(from_position)
        check_non_negative("limit", limit, allow_none=True)
        self._require_feed()
        await self._ensure_open()
        position, remaining = await self.feed_cursor(from_position), limit
        while remaining is None or remaining > 0:
            size = self.read_page_size if remaining is None else min(self.read_page_size, remaining)
            ahead = remaining is None or remaining > size
            page, damaged, more = _ahead(await self._feed_page(position, size + ahead), size)
            decoded = self._decoded(page, damaged) or await self._opened(page, damaged, skip_erased=True)
            if decoded is None:
                async for record in self._assembled(page, damaged, skip_erased=True):
                    yield record
            else:
                for record in decoded[0]:
                    yield record
                if decoded[1] is not None:
                    raise decoded[1]
            if not more:
                return
            if remaining is not None:
                remaining -= len(page)
            position = _after(position, page)

    async def _feed_page(self, position: FeedPosition, limit: int) -> Page:
        """The global feed's next ``limit`` rows from ``position``: one log's, or a sharded store's merged."""
        if isinstance(position, FeedCursor):
            return await self._read_feed_page(position, limit)
        return await self._read_all_page(position, limit)

    async def feed_cursor(self, from_position: FeedPosition = 0) -> FeedPosition:
        """``from_position`` as this store's feed resumes from it: an int for a store with one log; for a
        sharded store, a :class:`~kern_events.records.FeedCursor`, where an int is the record at that
        position (0: the start) and everything after it in the merged feed as it stands now. A cursor
        of another layout, or a cursor given to a store with one log, is a
        :class:`~kern_events.errors.ShardLayoutError`."""
        self._check_feed_position(from_position)
        self._require_feed()
        if isinstance(from_position, FeedCursor):
            return from_position
        if self.feed_layout is None:
            return from_position
        await self._ensure_open()
        return await self._feed_start(from_position)

    @property
    def global_feed(self) -> bool:
        """Whether the store has a global feed (``read_all``, subscriptions, ``read_all_stored``): it
        implements :meth:`_read_all_page` (or, sharded, :meth:`_read_feed_page`). A store whose storage
        orders nothing across sessions (DynamoDB) leaves them out, and those calls raise
        :class:`UnsupportedError` naming the capability ``global feed``."""
        return self.feed_layout is not None or type(self)._read_all_page is not BaseEventStore._read_all_page

    def _require_feed(self) -> None:
        """Refuse a feed call on a store without a global feed (after its arguments were checked: bad
        input is an :class:`InvalidArgumentError` on every store)."""
        if not self.global_feed:
            raise UnsupportedError("global feed", type(self).__name__)

    def _check_feed_position(self, position: object) -> None:
        if isinstance(position, FeedCursor):
            if position.layout != self.feed_layout or self.feed_layout is None:
                raise ShardLayoutError(
                    "from_position", self.feed_layout or "of one log (int positions)", repr(position.layout)
                )
            return
        check_non_negative("from_position", position)

    def _decoded(
        self, page: Sequence[StoredEvent], damaged: CorruptRecordError | None
    ) -> tuple[list[Record], Exception | None] | None:
        """A page's records, decoded in one pass, and the error that ends them (a row that does not
        decode, else ``damaged``); ``None`` if the page needs awaits to decode (payloads to open:
        :meth:`_opened`; chunks to fetch: :meth:`_assembled`). The reader then gets each record with
        no await and no generator between them."""
        if self._encryption is not None or (self._stores_chunks and _has_manifest(page)):
            return None
        records, error = self._decode_page(page)
        return records, damaged if error is None else error

    async def _opened(
        self, page: Sequence[StoredEvent], damaged: CorruptRecordError | None, *, skip_erased: bool
    ) -> tuple[list[Record], Exception | None] | None:
        """A page of sealed payloads opened in one pass and decoded beside their envelopes in one more,
        as :meth:`_decoded` returns it (one await per page, none per record); ``None`` if the page has
        chunks to fetch. A row whose data key was deleted is left out (``skip_erased``: the global
        feed, which a shredded user must not stop for everyone else) or ends the records as
        :class:`ErasedError` (a session's own read); a row that does not open ends them as
        :class:`DecryptionError`."""
        if self._stores_chunks and _has_manifest(page):
            return None
        encryption = cast(Encryption, self._encryption)
        rows, payloads, failed = await encryption.open_payloads(page, skip_erased=skip_erased)
        records, error = self._decode_page(rows, payloads)
        return records, error or failed or damaged

    def _decode_rows(
        self, page: Sequence[StoredEvent], payloads: Sequence[bytes] | None = None
    ) -> tuple[list[Record], Exception | None]:
        """:meth:`_decode_page` for a codec without ``decode_page``: ``decode`` row by row (with
        ``payloads``, opened by the encryption, in place of the rows' own bytes, as far as they go)."""
        records: list[Record] = []
        try:
            if payloads is None:
                for stored in page:
                    records.append(self._codec.decode(stored))
            else:
                for stored, data in zip(page, payloads, strict=False):
                    records.append(self._codec.decode(msgspec.structs.replace(stored, data=data)))
        except Exception as exc:  # the codec's own error; raised after the rows before it are read
            return records, exc
        return records, None

    async def _assembled(
        self, page: Sequence[StoredEvent], damaged: CorruptRecordError | None, *, skip_erased: bool
    ) -> AsyncIterator[Record]:
        """The page's records, out-of-line payloads put back together, then ``damaged`` raised if the
        page ends with it: the chunks of the page's manifests come in one :meth:`_read_chunks` round
        trip (more only past :data:`_ASSEMBLY_BUDGET` bytes), and each chunk list is dropped as soon
        as its event is rebuilt. A row whose data key was deleted is skipped (``skip_erased``, the
        global feed) or raised as :class:`ErasedError`."""
        start = 0
        while start < len(page):
            wanted: list[UUID] = []
            end, total = start, 0
            while end < len(page):
                data = page[end].data
                manifest = _parse_manifest(data) if data[:1] == MANIFEST_MARK else None
                if manifest is not None:
                    if wanted and total + manifest[0] > _ASSEMBLY_BUDGET:
                        break
                    wanted.append(page[end].event_id)
                    total += manifest[0]
                end += 1
            chunks = dict(await self._read_chunks(wanted)) if wanted else {}
            for stored in page[start:end]:
                if stored.data[:1] == MANIFEST_MARK:
                    stored = _joined(stored, chunks.pop(stored.event_id, ()))
                if self._encryption is not None:
                    try:
                        stored = await self._encryption.open(stored)
                    except ErasedError:
                        if skip_erased:
                            continue
                        raise
                yield self._codec.decode(stored)
            start = end
        if damaged is not None:
            raise damaged

    async def current_version(self, session_id: str) -> int:
        """The session's version (0 if it never had an event; kept after deletion)."""
        check_identifier("session_id", session_id)
        await self._ensure_open()
        return await self._current_version(session_id)

    async def get_session_info(self, session_id: str) -> SessionInfo | None:
        """The session's index row, or ``None``."""
        check_identifier("session_id", session_id)
        await self._ensure_open()
        return await self._get_session_info(session_id)

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
        """Index rows matching every given filter, sorted (ties broken by session id), paged."""
        query = SessionFilter(
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
        await self._ensure_open()
        return await self._list_sessions(query)

    async def load_snapshot(
        self,
        session_id: str,
        name: str,
        *,
        schema_version: int | None = None,
        max_version: int | None = None,
    ) -> Snapshot | None:
        """The newest matching snapshot, or ``None``."""
        check_identifier("session_id", session_id)
        check_identifier("name", name, max_length=MAX_SNAPSHOT_NAME_LENGTH)
        check_non_negative("schema_version", schema_version, allow_none=True, maximum=MAX_INT32)
        check_non_negative("max_version", max_version, allow_none=True)
        await self._ensure_open()
        snapshot = await self._load_snapshot(session_id, name, schema_version, max_version)
        if snapshot is None or self._encryption is None or snapshot.name == TRUNCATION_SNAPSHOT:
            return snapshot  # the truncation marker holds a chain hash, never sealed
        return await self._encryption.open_snapshot(snapshot)

    async def load_context(
        self, session_id: str, *, snapshot: str, schema_version: int, types: Collection[str], tail: int
    ) -> SessionContext:
        """The session's index row, its newest snapshot ``snapshot`` of ``schema_version``, the newest
        ``tail`` records and the records of ``types`` after that snapshot: the context a runtime
        loads before each run (history window and state), in one round trip on the SQL backends.

        Each list is cut at a page (``tail`` records, :attr:`read_page_size` after the snapshot) and
        at a row that does not read (a damaged row, an erased payload): its ``*_more`` flag then says
        that a :meth:`read` must go on from its last record, and that read meets the error where a
        plain read would.
        """
        check_identifier("session_id", session_id)
        check_identifier("snapshot", snapshot, max_length=MAX_SNAPSHOT_NAME_LENGTH)
        check_non_negative("schema_version", schema_version, maximum=MAX_INT32)
        wanted = check_event_types("types", types)
        check_non_negative("tail", tail, maximum=self.read_page_size)
        await self._ensure_open()
        info, found, newest, later = await self._load_context(
            session_id, snapshot, schema_version, wanted or (), tail + 1, self.read_page_size + 1
        )
        if found is not None and self._encryption is not None:
            found = await self._encryption.open_snapshot(found)
        records, tail_more = await self._context_records(newest, tail)
        after, after_more = await self._context_records(later, self.read_page_size)
        return SessionContext(
            info=info, snapshot=found, tail=records, tail_more=tail_more, after=after, after_more=after_more
        )

    async def _context_records(self, page: Page, size: int) -> tuple[list[Record], bool]:
        """A page read with one row of look-ahead, as records, and whether a read must go on after it."""
        rows, damaged, more = _ahead(page, size)
        decoded = self._decoded(rows, damaged) or await self._opened(rows, damaged, skip_erased=False)
        if decoded is not None:
            return decoded[0], more or decoded[1] is not None
        records: list[Record] = []
        try:
            async for record in self._assembled(rows, damaged, skip_erased=False):
                records.append(record)
        except Exception:  # the read that goes on after the last good record raises it again, in place
            return records, True
        return records, more

    async def feed_lag(self) -> FeedLag:
        """How far the global feed is held back behind committed appends (see :class:`FeedLag`).

        The default has no fence: whatever has committed is readable at once.
        """
        await self._ensure_open()
        return FeedLag()

    def subscribe(self, *, from_position: FeedPosition = 0, poll_interval: float = 1.0) -> Subscription:
        """Every record from ``from_position`` on, then new ones as they land (see :class:`Subscription`).

        Appends through this store wake the subscription at once; appends by other processes are
        seen through the backend's notifications where it has them, else within ``poll_interval``.
        """
        self._check_feed_position(from_position)
        if check_seconds("poll_interval", poll_interval, finite=True) <= 0:
            raise InvalidArgumentError("poll_interval", f"expected seconds > 0, got {poll_interval!r}")
        self._require_feed()
        return Subscription(self, from_position=from_position, poll_interval=poll_interval)

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[None]:
        """While open, the backend turns other processes' appends into :attr:`change_signal` fires.

        The default has no cross-process notifications: subscriptions poll.
        """
        await self._ensure_open()
        yield

    def _announce(self) -> None:  # noqa: B027 - optional hook
        """Tell other processes that something was appended (after the commit)."""

    # -- the backend's half ------------------------------------------------------------------------

    async def _open(self) -> None:  # noqa: B027 - optional hook
        """Connect and create tables; called once, on first use."""

    async def _close(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`_open` acquired."""

    @abc.abstractmethod
    async def _append(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> AppendResult:
        """Store ``pending`` atomically after checking ``expected`` and advance the session index."""

    async def _find_events(self, event_ids: Sequence[UUID]) -> Sequence[StoredEvent | None]:
        """The stored event of each id (in any session), or ``None`` for an id not stored; needed by
        ``append(..., skip_existing=True)`` only, and only after an append found some id stored."""
        raise InvalidArgumentError(
            "skip_existing", f"{type(self).__qualname__} does not implement _find_events, which skip_existing needs"
        )

    async def _append_many(self, parts: Sequence[PendingAppend], recorded_at: float) -> list[AppendResult]:
        """Store every part as :meth:`_append` would, all or nothing, in one atomic step; results in
        input order. Sessions are distinct. A conflict or a reused id in any part stores nothing.

        There is no default: one built from several ``_append`` calls would not be atomic. A backend
        that cannot do it leaves this as it is, and ``append_many`` raises :class:`UnsupportedError`.
        """
        raise UnsupportedError("append_many", type(self).__name__)

    @property
    def truncates(self) -> bool:
        """Whether :meth:`truncate_before` is offered (the backend implements ``_truncate_before``):
        retention asks before it lists compactions it could not do."""
        return type(self)._truncate_before is not BaseEventStore._truncate_before

    async def _truncate_before(
        self, session_id: str, version: int, expected: int | ExpectedVersion, snapshots: Sequence[Snapshot]
    ) -> int:
        """In one atomic step: check :func:`check_truncation` against the session's head, delete the
        events with a version below ``version``, and, if any was deleted, save ``snapshots`` (the
        truncation marker and the caller's snapshot); the number of events deleted.

        No default, for the same reason as :meth:`_append_many`.
        """
        raise UnsupportedError("truncate_before", type(self).__name__)

    @abc.abstractmethod
    async def _read_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Page:
        """Up to ``limit`` rows with ``low <= version <= high`` (and a type in ``types``, if given),
        ordered by version; a :data:`Page`."""

    async def _read_session_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Page | _DecodedRows:
        """:meth:`_read_page` for :meth:`read`, which a backend whose driver returns rows it can decode
        straight into records (PostgreSQL's: ids already UUIDs) overrides to return
        :meth:`_decoded_rows` of them, so that no stored event is built per row on the way."""
        return await self._read_page(session_id, low, high, limit, backwards, types)

    async def _decoded_rows(self, rows: Sequence[Any], stored: Callable[[Any], StoredEvent]) -> Page | _DecodedRows:
        """A page of ``rows`` (in :class:`StoredEvent`'s field order; ``stored`` turns one into a
        stored event) for :meth:`_read_session_page`: decoded straight into records by the codec's
        ``decode_rows`` (sealed payloads opened first, row by row beside their envelopes), or, when a
        row needs more than that (a chunk manifest, a codec without ``decode_rows``), as stored events
        for the general path."""
        decode = self._rows_decoder
        if decode is None or (self._stores_chunks and _rows_have_manifest(rows)):
            return [stored(row) for row in rows]
        if self._encryption is None:
            records, error = decode(rows, stored)
            return _DecodedRows(records, error, len(rows))
        _, payloads, failed = await self._encryption.open_payloads(rows, stored)
        records, error = decode(rows, stored, payloads)
        return _DecodedRows(records, error or failed, len(rows))

    async def _load_context(
        self, session_id: str, snapshot: str, schema_version: int, types: tuple[str, ...], tail: int, after: int
    ) -> tuple[SessionInfo | None, Snapshot | None, Page, Page]:
        """The session's index row (``None``: nothing else is read), its newest snapshot ``snapshot``
        of ``schema_version`` at or below its version, up to ``tail`` of its newest rows (newest
        first) and up to ``after`` rows of ``types`` after the snapshot (oldest first), all at or below
        the index row's version. The default calls the other hooks in turn; a backend that can read
        it all in one round trip overrides it."""
        info = await self._get_session_info(session_id)
        if info is None:
            return None, None, (), ()
        found = await self._load_snapshot(session_id, snapshot, schema_version, info.version)
        newest = await self._read_page(session_id, 1, info.version, tail, True, None)
        low = 1 if found is None else found.version + 1
        return info, found, newest, await self._read_page(session_id, low, info.version, after, False, types)

    async def _read_all_page(self, from_position: int, limit: int) -> Page:
        """Up to ``limit`` rows with ``position >= from_position``, in position order; a :data:`Page`.
        No default: a store without it has no global feed (:attr:`global_feed` is false)."""
        raise UnsupportedError("global feed", type(self).__name__)

    async def _feed_start(self, from_position: int) -> FeedCursor:
        """A sharded store's cursor at the record at ``from_position`` (0: every shard's start), so that
        reading from it gives that record and what follows it in the merged order. Only a store that
        sets :attr:`feed_layout` needs it."""
        raise NotImplementedError(f"{type(self).__qualname__} has one log")

    async def _read_feed_page(self, cursor: FeedCursor, limit: int) -> Page:
        """A sharded store's next ``limit`` rows from ``cursor``: each shard's rows in its order, merged;
        a :data:`Page`. Only a store that sets :attr:`feed_layout` needs it."""
        raise NotImplementedError(f"{type(self).__qualname__} has one log")

    async def _read_chunks(self, event_ids: Sequence[UUID]) -> Mapping[UUID, Sequence[bytes]]:
        """The chunks of out-of-line payloads, in part order, for each of ``event_ids`` that has any;
        one round trip. Only a backend that sets :attr:`inline_limit` needs it."""
        raise NotImplementedError(f"{type(self).__qualname__} stores no chunks")

    @abc.abstractmethod
    async def _current_version(self, session_id: str) -> int: ...

    @abc.abstractmethod
    async def _get_session_info(self, session_id: str) -> SessionInfo | None: ...

    @abc.abstractmethod
    async def _list_sessions(self, query: SessionFilter) -> list[SessionInfo]: ...

    @abc.abstractmethod
    async def _delete_session(self, session_id: str) -> bool: ...

    @abc.abstractmethod
    async def _save_snapshot(self, snapshot: Snapshot) -> None: ...

    @abc.abstractmethod
    async def _load_snapshot(
        self, session_id: str, name: str, schema_version: int | None, max_version: int | None
    ) -> Snapshot | None: ...
