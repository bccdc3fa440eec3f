"""Export and import: sessions as JSON lines that any backend restores, the hash chain included.

An export is a header line naming the format, one line per event with its whole envelope (session,
version, position, event id, type, schema version, recorded time), its payload as stored (base64,
the bytes the chain hashed) and its chain hash, and an end line with the counts, so that a file cut
short is caught. Each event line also carries the event decoded (``event``), for people and tools
that read the file; import ignores it. Events follow each other in global order (their positions'
order, as ``read_all`` gives them), so sessions interleave as their appends did; an export of one
session reads it directly.

Import reads the file twice in constant memory: the first pass checks every line (format, version
order, the chain hashes recomputed with the target store's key, payloads that decode, sessions that
already exist) and stores nothing if any is wrong, naming the line; the second pass appends each
original append as one :meth:`~kern_events.backend.BaseEventStore.append_stored`, keeping event ids,
versions, recorded times and each session's order, one after another in file order: positions are the
target's own, in the source's order across sessions. The index rows follow from the events, as in
any append. Both sides hold the ids of the sessions seen (never the events), so memory grows with the
number of sessions only.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

import msgspec

from kern_events._index import SessionInfo
from kern_events._validate import check_identifier
from kern_events.errors import ExportFileError, InvalidArgumentError, KernEventsError, SessionNotFoundError
from kern_events.records import StoredEvent, UnknownEvent
from kern_events.stores._base import MANIFEST_MARK, MAX_EVENTS_PER_APPEND, BaseEventStore, _check_indexed_fields
from kern_events.stores._chain import Chain

if TYPE_CHECKING:
    from kern_events.db import BaseDb

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "ExportFileError",
    "ImportReport",
    "export_events",
    "import_events",
]

EXPORT_FORMAT = "kern-events-export"
"""The ``format`` an export's header line names; a file without it is refused as foreign."""
EXPORT_FORMAT_VERSION = 2
"""The version of the line format this release writes; it reads version 1 too. Version 2 carries
the chain hash of an append's last event only (``chain`` is null on the others), which a release
reading version 1 alone would take for removed hashes: it refuses the file by its version instead."""

_BATCH_BYTES = 8 * 1024 * 1024
"""Payload bytes held before an import appends what it has of one original append (bounds memory)."""


class _Header(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="header"):
    format: str
    format_version: int
    exported_at: float = 0.0


_Version = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="event"):
    session_id: str
    version: _Version
    position: _Count
    event_id: UUID
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    schema_version: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
    recorded_at: Annotated[float, msgspec.Meta(ge=0, le=1e11)]
    data: bytes
    chain: bytes | None
    event: Any = None


class _End(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", tag="end"):
    sessions: _Count
    events: _Count


_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(_Header | _Event | _End)


class ImportReport(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`import_events` stored."""

    sessions: int = 0
    events: int = 0
    skipped: tuple[str, ...] = ()
    """Sessions left as they were because the target had them already (``skip_existing=True``)."""
    unchained: int = 0
    """Events exported without a chain hash (written before the chain existed), so not checked."""


def _store_of(db: BaseDb | BaseEventStore) -> BaseEventStore:
    store = db if isinstance(db, BaseEventStore) else getattr(db, "store", None)
    if not isinstance(store, BaseEventStore):
        kind = type(db).__qualname__
        raise InvalidArgumentError("db", f"expected a db or store built on the backend kit, got {kind}")
    return store


async def export_events(
    db: BaseDb | BaseEventStore,
    *,
    session_ids: Collection[str] | None = None,
    user_id: str | None = None,
    updated_since: float | None = None,
    exported_at: float = 0.0,
) -> AsyncIterator[bytes]:
    """Stream an export of the sessions matching every filter, line by line (each ends in a newline).

    ``session_ids`` picks sessions (each must exist); ``user_id`` and ``updated_since`` filter the
    index. The events come in global order, read from the global feed a page at a time (a filtered
    export reads the whole feed and keeps the chosen sessions'); one session is read directly. The
    file has every event the chosen sessions had when the export began: what the feed holds back
    (PostgreSQL's fence, see :meth:`~kern_events.backend.BaseEventStore.feed_lag`) is read from those
    sessions directly and written after the rest, still in position order.
    """
    store = _store_of(db)
    if session_ids is not None:  # a session that is not there is refused before anything is written
        session_ids = list(dict.fromkeys(session_ids))
        for session_id in session_ids:
            if await store.get_session_info(check_identifier("session_ids", session_id)) is None:
                raise SessionNotFoundError(session_id)
    yield _encoder.encode(_Header(format=EXPORT_FORMAT, format_version=EXPORT_FORMAT_VERSION, exported_at=exported_at))
    yield b"\n"
    heads = {info.session_id: (info.version, 0) async for info in _chosen(store, session_ids, user_id, updated_since)}
    chosen = None if session_ids is None and user_id is None and updated_since is None else set(heads)
    if chosen is not None and len(chosen) == 1:
        feed = store.read_stored(next(iter(chosen)))  # its own order is the global order
    else:
        feed = store.read_all_stored()
    seen: set[str] = set()
    events = 0
    async for stored in feed:
        if chosen is not None and stored.session_id not in chosen:
            continue
        seen.add(stored.session_id)
        head = heads.get(stored.session_id)
        if head is not None:  # not all it had when the export began is written yet
            if stored.version >= head[0]:
                del heads[stored.session_id]
            else:
                heads[stored.session_id] = (head[0], stored.version)
        events += 1
        yield _encoder.encode(await _event_line(store, stored)) + b"\n"
    async for stored in _held_back(store, heads):
        seen.add(stored.session_id)
        events += 1
        yield _encoder.encode(await _event_line(store, stored)) + b"\n"
    yield _encoder.encode(_End(sessions=len(seen), events=events)) + b"\n"


async def _held_back(store: BaseEventStore, missing: dict[str, tuple[int, int]]) -> AsyncIterator[StoredEvent]:
    """The rest of each session the feed stopped short of its head when the export began (``missing``:
    that head and the version written), read directly, merged in position order: only a feed fence
    (PostgreSQL's, behind a transaction still open on the server) holds committed events back, and
    every event it holds back comes after every event it gave, so the file stays in global order.
    Holds a page of each such session."""
    streams = [store.read_stored(session_id, from_version=written + 1) for session_id, (_, written) in missing.items()]
    heap: list[tuple[int, int, StoredEvent]] = []
    for index, stream in enumerate(streams):
        first = await anext(stream, None)
        if first is not None:
            heap.append((first.position, index, first))
    heapq.heapify(heap)
    while heap:
        _, index, stored = heap[0]
        yield stored
        following = await anext(streams[index], None)
        if following is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (following.position, index, following))


async def _chosen(
    store: BaseEventStore, session_ids: Collection[str] | None, user_id: str | None, updated_since: float | None
) -> AsyncIterator[SessionInfo]:
    """The index rows of the sessions to export, a page at a time."""
    if session_ids is not None:
        for session_id in session_ids:
            info = await store.get_session_info(session_id)
            if info is None:  # deleted since the export began
                continue
            if (user_id is None or info.user_id == user_id) and (
                updated_since is None or info.updated_at >= updated_since
            ):
                yield info
        return
    after: tuple[float, str] | None = None
    while True:
        page = await store.list_sessions(
            user_id=user_id,
            updated_since=updated_since,
            sort_by="created_at",
            descending=False,
            limit=1000,
            after=after,
        )
        for info in page:
            yield info
        if len(page) < 1000:
            return
        after = (page[-1].created_at, page[-1].session_id)


async def _event_line(store: BaseEventStore, stored: StoredEvent) -> _Event:
    """An event line; ``event`` is the decoded event for readers, ``None`` for an unknown type or
    an undecodable payload, and always when the store encrypts: the export then holds sealed
    payloads only, so deleting a user's key makes the export's copy of their events dark too."""
    readable: Any = None
    if store.encryption is None:
        try:
            record = await store.decode_stored(stored)
        except KernEventsError:
            pass
        else:
            if not isinstance(record.event, UnknownEvent):
                readable = msgspec.to_builtins(record.event)
    return _Event(
        session_id=stored.session_id,
        version=stored.version,
        position=stored.position,
        event_id=stored.event_id,
        type=stored.type,
        schema_version=stored.schema_version,
        recorded_at=stored.recorded_at,
        data=stored.data,
        chain=stored.chain,
        event=readable,
    )


# -- import ------------------------------------------------------------------------------------------


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """The file's lines, numbered from 1, without their line ends, one at a time."""
    try:
        file = path.open("rb")
    except OSError as error:
        raise InvalidArgumentError("file", f"cannot read {str(path)!r}: {error.strerror}") from None
    with file:
        yield from enumerate((line.rstrip(b"\r\n") for line in file), start=1)


def _stored(line: _Event) -> StoredEvent:
    return StoredEvent(
        session_id=line.session_id,
        version=line.version,
        position=line.position,
        event_id=line.event_id,
        type=line.type,
        schema_version=line.schema_version,
        data=line.data,
        recorded_at=line.recorded_at,
        chain=line.chain,
    )


class _Session(msgspec.Struct, gc=False):
    """What the checker keeps of one session: its last version, whether its chain has begun, and the
    hashes its last event may have (one per way its source may have stored the payloads since the
    last hash: inline, or behind a manifest above a limit, see :func:`_links`); with the lines of the
    events since its last hash (their append's hash is on its last event, see ``Chain.kept``)."""

    version: int
    chained: bool
    links: Sequence[tuple[bytes, float, float]]
    waiting: list[tuple[int, int, float]] | None = None
    """Line number, version and recorded time of each event since the last hash (``None``: none; a
    session keeps only this between its appends, so an export of many sessions imports in little memory)."""


class _Checker:
    """Checks an export's lines in order, in constant memory but for each session seen (its id, last
    version and chain hash);
    :meth:`events` yields each event line once it has passed, with its line number."""

    def __init__(self, store: BaseEventStore) -> None:
        self._store = store
        self.unchained = 0

    def _unhashed(self, head: _Session, session_id: str) -> None:
        """The waiting events' append ended without a hash: before the chain began they never had
        one; after it, the last one's was removed."""
        assert head.waiting is not None
        number, version, _ = head.waiting[-1]
        if head.chained:
            where = f"session {session_id!r} version {version}"
            raise ExportFileError(
                number,
                f"{where}: its chain hash is missing, yet the next event is of another append (another "
                "recorded time): the file was edited",
            )
        self.unchained += len(head.waiting)
        head.waiting, head.links = None, _hashed(self._store.chain.genesis(session_id))

    async def events(self, path: Path) -> AsyncIterator[tuple[int, StoredEvent]]:
        """Every event of the file in order, checked; an :class:`ExportFileError` at the first bad line."""
        store, chain = self._store, self._store.chain
        heads: dict[str, _Session] = {}
        sessions = events = 0
        ended = 0
        number = 0
        for number, text in _lines(path):
            try:
                line = _line_decoder.decode(text)
            except msgspec.DecodeError as error:
                if number == 1:
                    foreign = f"not a kern-events export (no {EXPORT_FORMAT!r} header): {error}"
                    raise ExportFileError(1, foreign) from None
                raise ExportFileError(number, f"not an export line: {error}") from None
            if number == 1:
                if not isinstance(line, _Header) or line.format != EXPORT_FORMAT:
                    raise ExportFileError(1, f"not a kern-events export (no {EXPORT_FORMAT!r} header)")
                if not 1 <= line.format_version <= EXPORT_FORMAT_VERSION:
                    raise ExportFileError(
                        1,
                        f"export format version {line.format_version}; this release reads "
                        f"versions 1-{EXPORT_FORMAT_VERSION}",
                    )
                continue
            if ended:
                raise ExportFileError(number, f"a line after the end line (line {ended})")
            if isinstance(line, _Header):
                raise ExportFileError(number, "a second header line (two exports joined?)")
            if isinstance(line, _End):
                if (line.sessions, line.events) != (sessions, events):
                    raise ExportFileError(
                        number,
                        f"the end line counts {line.sessions} sessions and {line.events} events, "
                        f"the file holds {sessions} and {events} (lines were removed or added)",
                    )
                for session_id, seen in heads.items():
                    if seen.waiting:
                        self._unhashed(seen, session_id)
                ended = number
                continue
            try:
                check_identifier("session_id", line.session_id)
            except InvalidArgumentError as error:
                raise ExportFileError(number, str(error)) from None
            where = f"session {line.session_id!r} version {line.version}"
            head = heads.get(line.session_id)
            if head is None:
                if line.version != 1:
                    raise ExportFileError(
                        number,
                        f"session {line.session_id!r} starts at version {line.version}: its earlier events "
                        "were removed (truncated, or deleted before it started again); only whole sessions import",
                    )
                head = heads[line.session_id] = _Session(
                    version=0, chained=False, links=_hashed(chain.genesis(line.session_id))
                )
                sessions += 1
            elif line.version != head.version + 1:
                raise ExportFileError(
                    number, f"{where} follows version {head.version} (a line is missing, repeated or out of order)"
                )
            if head.waiting and line.recorded_at != head.waiting[-1][2]:
                self._unhashed(head, line.session_id)
            stored = _stored(line)
            try:
                forms = (stored.data, store.stored_form(stored))
            except InvalidArgumentError as error:
                raise ExportFileError(number, f"{where}: {error}") from None
            links = _links(chain, head.links, stored, forms)
            if line.chain is None:
                if head.waiting is None:
                    head.waiting = []
                head.waiting.append((number, line.version, line.recorded_at))
                head.links = links
            else:
                if line.chain not in {link for link, _, _ in links}:
                    first = head.waiting[0][1] if head.waiting else line.version
                    what = "the event" if first == line.version else f"one of versions {first}-{line.version}"
                    raise ExportFileError(
                        number,
                        f"{where}: {what} does not match its chain hash (the file was edited, or it was "
                        "exported under another chain key)",
                    )
                head.links, head.chained, head.waiting = _hashed(line.chain), True, None
            try:
                record = await store.decode_stored(stored)
                if not isinstance(record.event, UnknownEvent):
                    _check_indexed_fields([record.event])  # what append_stored refuses, refused before any write
            except KernEventsError as error:
                raise ExportFileError(number, f"{where}: {error}") from None
            head.version = line.version
            events += 1
            yield number, stored
        if number == 0:
            raise ExportFileError(1, "the file is empty, not a kern-events export")
        if not ended:
            raise ExportFileError(number, "the file ends without its end line: it was cut short")


_INF = float("inf")
_NEG_INF = -_INF


def _hashed(link: bytes) -> tuple[tuple[bytes, float, float]]:
    """The one hash a session's next event may chain from, whatever the source's inline limit."""
    return ((link, _NEG_INF, _INF),)


def _links(
    chain: Chain, links: Sequence[tuple[bytes, float, float]], stored: StoredEvent, forms: tuple[bytes, bytes]
) -> list[tuple[bytes, float, float]]:
    """The hashes ``stored`` may have after each of ``links``. Its source hashed the payload as it
    stored it: inline (``forms[0]``), or behind a manifest (``forms[1]``, if this store would put it
    out of line) when it is longer than the source's inline limit, which is unknown but one for the
    whole append: each link carries the range of limits it assumes, so they stay one more than the
    sizes seen, not two to the power of their number."""
    size = len(stored.data)
    found = []
    for previous, low, high in links:
        if forms[1] == forms[0] or forms[0][:1] == MANIFEST_MARK:  # one form (a marked payload: out of line)
            found.append((chain.of(previous, msgspec.structs.replace(stored, data=forms[1])), low, high))
            continue
        if high > size:  # a limit of at least ``size``: stored inline
            found.append((chain.of(previous, stored), max(low, size), high))
        if low < size:  # a limit below ``size``: stored behind its manifest
            manifest = msgspec.structs.replace(stored, data=forms[1])
            found.append((chain.of(previous, manifest), low, min(high, size)))
    return found


async def import_events(
    db: BaseDb | BaseEventStore,
    path: str | os.PathLike[str],
    *,
    skip_existing: bool = False,
    progress: Callable[[Literal["checked", "imported"], int], None] | None = None,
) -> ImportReport:
    """Restore an export file (see :func:`export_events`) into ``db``, whatever its backend.

    The whole file is checked first, and nothing is stored if any line is wrong: a foreign, cut or
    edited file, a chain hash that does not match (under the target's ``chain_key``), or a session the
    target already has (unless ``skip_existing``, which leaves such sessions as they are) is an
    :class:`ExportFileError` naming the line. ``progress`` is called with ``"checked"`` (every
    thousand events) or ``"imported"`` (after each append) and the number of events so far, and
    with both at the end of their pass.
    """
    store = _store_of(db)
    source = Path(path)
    checker = _Checker(store)
    skipped: list[str] = []
    count = 0
    async for number, stored in checker.events(source):
        count += 1
        if stored.version == 1 and await store.current_version(stored.session_id) != 0:
            if not skip_existing:
                head = await store.current_version(stored.session_id)
                raise ExportFileError(
                    number,
                    f"session {stored.session_id!r} already exists in the target (version {head}); "
                    "nothing was imported (skip_existing leaves such sessions as they are)",
                )
            skipped.append(stored.session_id)
        if progress is not None and count % 1000 == 0:
            progress("checked", count)
    if progress is not None:
        progress("checked", count)
    leave = set(skipped)
    written = 0

    def stored_batch(count: int) -> None:
        nonlocal written
        written += count
        if progress is not None:
            progress("imported", written)

    sessions = await _restore(store, _batches(_Checker(store).events(source), leave), stored_batch)
    if progress is not None:
        progress("imported", written)
    return ImportReport(sessions=sessions, events=written, skipped=tuple(skipped), unchained=checker.unchained)


async def _batches(events: AsyncIterator[tuple[int, StoredEvent]], leave: set[str]) -> AsyncIterator[list[StoredEvent]]:
    """The checked events grouped as they were appended: one session, one recorded time, within
    :data:`MAX_EVENTS_PER_APPEND` events and about :data:`_BATCH_BYTES` of payload."""
    batch: list[StoredEvent] = []
    size = 0
    async for _, stored in events:
        if stored.session_id in leave:
            continue
        if batch and (
            stored.session_id != batch[0].session_id
            or stored.recorded_at != batch[0].recorded_at
            or len(batch) == MAX_EVENTS_PER_APPEND
            or size + len(stored.data) > _BATCH_BYTES
        ):
            yield batch
            batch, size = [], 0
        batch.append(stored)
        size += len(stored.data)
    if batch:
        yield batch


async def _restore(
    store: BaseEventStore, batches: AsyncIterator[list[StoredEvent]], stored: Callable[[int], None]
) -> int:
    """Append the batches one after another, in file order, so that the target's positions follow the
    source's across sessions (concurrent appends could commit in another order); the number of sessions."""
    sessions = 0
    async for batch in batches:
        await store.append_stored(batch, expected_version=batch[0].version - 1)
        sessions += batch[0].version == 1  # every session of the file starts at version 1
        stored(len(batch))
    return sessions
