"""Export and import: sessions as JSON lines that any backend restores, the hash chain included.

An export is a header line naming the format, one line per event with its whole envelope (session,
version, position, event id, type, schema version, recorded time), its payload as stored (base64,
the bytes the chain hashed) and its chain hash, and an end line with the counts, so that a file cut
short is caught. Each event line also carries the event decoded (``event``), for people and tools
that read the file; import ignores it. Sessions follow each other whole, oldest first.

Import reads the file twice in constant memory: the first pass checks every line (format, version
order, the chain hashes recomputed with the target store's key, payloads that decode, sessions that
already exist) and stores nothing if any is wrong, naming the line; the second pass appends each
original append as one :meth:`~kern_events.backend.BaseEventStore.append_stored`, keeping event ids,
versions, recorded times and each session's order. The index rows follow from the events, as in any
append. Positions are the target's own, in each session's order; up to 16 sessions are restored at
once, so that their appends share commits.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from uuid import UUID

import anyio
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kern_events._validate import check_identifier
from kern_events.errors import ExportFileError, InvalidArgumentError, KernEventsError, SessionNotFoundError
from kern_events.records import StoredEvent, UnknownEvent
from kern_events.stores._base import MAX_EVENTS_PER_APPEND, BaseEventStore, _check_indexed_fields

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
EXPORT_FORMAT_VERSION = 1
"""The version of the line format this release writes and reads."""

_BATCH_BYTES = 8 * 1024 * 1024
"""Payload bytes held before an import appends what it has of one original append (bounds memory)."""
_SESSIONS_IN_FLIGHT = 16
"""Sessions an import appends to at once: their appends share commits (SQLite and PostgreSQL group
concurrent appends), several times faster than one after another; each session stays in order."""
_BYTES_IN_FLIGHT = 1024 * 1024
"""About how much of the file (payloads and envelopes) import holds read ahead of its appends."""


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
    index. Each session is read directly (never through the global feed) a page at a time, whole, so
    the file imports anywhere; memory does not grow with the log.
    """
    store = _store_of(db)
    if session_ids is not None:  # a session that is not there is refused before anything is written
        session_ids = list(dict.fromkeys(session_ids))
        for session_id in session_ids:
            if await store.get_session_info(check_identifier("session_ids", session_id)) is None:
                raise SessionNotFoundError(session_id)
    yield _encoder.encode(_Header(format=EXPORT_FORMAT, format_version=EXPORT_FORMAT_VERSION, exported_at=exported_at))
    yield b"\n"
    sessions = events = 0
    async for session_id in _chosen(store, session_ids, user_id, updated_since):
        sessions += 1
        async for stored in store.read_stored(session_id):
            events += 1
            yield _encoder.encode(await _event_line(store, stored)) + b"\n"
    yield _encoder.encode(_End(sessions=sessions, events=events)) + b"\n"


async def _chosen(
    store: BaseEventStore, session_ids: Collection[str] | None, user_id: str | None, updated_since: float | None
) -> AsyncIterator[str]:
    """The ids of the sessions to export, oldest first (or in the order given), a page at a time."""
    if session_ids is not None:
        for session_id in session_ids:
            info = await store.get_session_info(session_id)
            if info is None:  # deleted since the export began
                continue
            if (user_id is None or info.user_id == user_id) and (
                updated_since is None or info.updated_at >= updated_since
            ):
                yield session_id
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
            yield info.session_id
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


class _Checker:
    """Checks an export's lines in order, in constant memory but for the set of session ids seen;
    :meth:`events` yields each event line once it has passed, with its line number."""

    def __init__(self, store: BaseEventStore) -> None:
        self._store = store
        self.unchained = 0

    async def events(self, path: Path) -> AsyncIterator[tuple[int, StoredEvent]]:
        """Every event of the file in order, checked; an :class:`ExportFileError` at the first bad line."""
        store, chain = self._store, self._store.chain
        seen: set[str] = set()
        session, version, previous, chained = "", 0, b"", False
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
                if line.format_version != EXPORT_FORMAT_VERSION:
                    raise ExportFileError(
                        1,
                        f"export format version {line.format_version}; this release reads "
                        f"version {EXPORT_FORMAT_VERSION}",
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
                ended = number
                continue
            try:
                check_identifier("session_id", line.session_id)
            except InvalidArgumentError as error:
                raise ExportFileError(number, str(error)) from None
            where = f"session {line.session_id!r} version {line.version}"
            if line.session_id != session:
                if line.session_id in seen:
                    raise ExportFileError(number, f"session {line.session_id!r} appears again after other sessions")
                if line.version != 1:
                    raise ExportFileError(
                        number,
                        f"session {line.session_id!r} starts at version {line.version}: its earlier events "
                        "were removed (truncated, or deleted before it started again); only whole sessions import",
                    )
                seen.add(line.session_id)
                session, version, previous, chained = line.session_id, 0, chain.genesis(line.session_id), False
                sessions += 1
            elif line.version != version + 1:
                raise ExportFileError(
                    number, f"{where} follows version {version} (a line is missing, repeated or out of order)"
                )
            stored = _stored(line)
            if line.chain is None:
                if chained:
                    raise ExportFileError(number, f"{where}: its chain hash is missing (the file was edited)")
                self.unchained += 1
            else:
                try:
                    forms = {stored.data, store.stored_form(stored)}
                except InvalidArgumentError as error:
                    raise ExportFileError(number, f"{where}: {error}") from None
                expected = {chain.of(previous, msgspec.structs.replace(stored, data=form)) for form in forms}
                if line.chain not in expected:
                    raise ExportFileError(
                        number,
                        f"{where}: the event does not match its chain hash (the file was edited, or it was "
                        "exported under another chain key)",
                    )
                previous, chained = line.chain, True
            try:
                record = await store.decode_stored(stored)
                if not isinstance(record.event, UnknownEvent):
                    _check_indexed_fields([record.event])  # what append_stored refuses, refused before any write
            except KernEventsError as error:
                raise ExportFileError(number, f"{where}: {error}") from None
            version = line.version
            events += 1
            yield number, stored
        if number == 0:
            raise ExportFileError(1, "the file is empty, not a kern-events export")
        if not ended:
            raise ExportFileError(number, "the file ends without its end line: it was cut short")


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
    """Append the batches, each session's in order, up to :data:`_SESSIONS_IN_FLIGHT` sessions at
    once (their appends share commits where the backend groups them); the number of sessions.
    Batches read ahead but not yet appended stay within :data:`_BYTES_IN_FLIGHT`."""
    slots = anyio.Semaphore(_SESSIONS_IN_FLIGHT)
    budget = _Budget(_BYTES_IN_FLIGHT)
    sessions = 0

    failed: list[Exception] = []

    async def session(receive: MemoryObjectReceiveStream[list[StoredEvent]]) -> None:
        try:
            async with receive:
                async for batch in receive:
                    await store.append_stored(batch, expected_version=batch[0].version - 1)
                    await budget.give(_weight(batch))
                    stored(len(batch))
        except Exception as error:  # the first failure stops the import and is raised as itself
            failed.append(error)
            group.cancel_scope.cancel()
        finally:
            slots.release()

    async with anyio.create_task_group() as group:
        send: MemoryObjectSendStream[list[StoredEvent]] | None = None
        current = ""
        try:
            async for batch in batches:
                if send is None or batch[0].session_id != current:
                    if send is not None:
                        await send.aclose()
                    await slots.acquire()
                    send, receive = anyio.create_memory_object_stream[list[StoredEvent]](math.inf)
                    group.start_soon(session, receive)
                    current, sessions = batch[0].session_id, sessions + 1
                await budget.take(_weight(batch))
                send.send_nowait(batch)
        finally:
            if send is not None:
                await send.aclose()
    if failed:
        raise failed[0]
    return sessions


def _weight(batch: list[StoredEvent]) -> int:
    """About the memory a batch holds: its payloads and each event's envelope."""
    return sum(len(stored.data) for stored in batch) + 500 * len(batch)


class _Budget:
    """Bytes in flight: :meth:`take` waits while taking would pass the limit (one batch always
    passes, however large, so that a single large event is never stuck)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._changed = anyio.Condition()

    async def take(self, amount: int) -> None:
        async with self._changed:
            while self._used and self._used + amount > self._limit:
                await self._changed.wait()
            self._used += amount

    async def give(self, amount: int) -> None:
        async with self._changed:
            self._used -= amount
            self._changed.notify_all()
