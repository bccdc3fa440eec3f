"""A store written the way a third party would write one: on the public backend kit alone.

It keeps one :class:`Logbook` (the "database"): a single list of every stored event in position
order, with per-session lists of slots into it; an erased event's slot is emptied, never reused.
Several stores opened on the same logbook see each other's appends, as stores on one database do.
Only public names are imported (:mod:`kern_events.backend`, ``records``, ``events``), which the
suite in ``tests/test_surface.py`` checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from uuid import UUID

import anyio.lowlevel

from kern_events.backend import (
    SNAPSHOTS_KEPT,
    AppendResult,
    BaseEventStore,
    ExpectedVersion,
    PendingAppend,
    PendingEvent,
    SessionFilter,
    SessionInfo,
    Snapshot,
    StoredEvent,
    advance_index,
    check_expected,
    check_truncation,
    conflict,
    match_retry,
)
from kern_events.codec import Codec
from kern_events.events import Event

__all__ = ["Logbook", "LogbookStore"]


class Logbook:
    """The shared state of every :class:`LogbookStore` opened on it."""

    def __init__(self) -> None:
        self.log: list[StoredEvent | None] = []
        """Slot ``p - 1`` holds the event at position ``p``; ``None`` once erased."""
        self.slots: dict[str, list[int]] = {}
        self.heads: dict[str, int] = {}
        self.rows: dict[str, SessionInfo] = {}
        self.ids: dict[UUID, int] = {}
        self.snapshots: dict[tuple[str, str], dict[int, Snapshot]] = {}
        self.chain_heads: dict[str, bytes] = {}
        """Each session's head hash (the kit's ``Chain`` computes the hashes; the store keeps them)."""
        self.chunks: dict[UUID, tuple[bytes, ...]] = {}
        """Out-of-line payloads by event id (the kit cuts payloads above ``inline_limit`` into them)."""


class LogbookStore(BaseEventStore):
    """An event store on a :class:`Logbook` (a new one unless given)."""

    def __init__(
        self, logbook: Logbook | None = None, *, codec: Codec | None = None, chain_key: bytes | None = None
    ) -> None:
        super().__init__(codec=codec, chain_key=chain_key)
        self.logbook = logbook if logbook is not None else Logbook()

    async def _append(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> AppendResult:
        await anyio.lowlevel.checkpoint()
        book = self.logbook  # from here on no await: the check and the write are one step
        found = [book.log[book.ids[new.event_id]] if new.event_id in book.ids else None for new in pending]
        retry = match_retry(session_id, pending, found)
        if retry is not None:
            return retry
        head = book.heads.get(session_id, 0)
        if not check_expected(expected, head):
            raise conflict(session_id, expected, head)
        return self._write(session_id, events, pending, recorded_at)

    async def _append_many(self, parts: Sequence[PendingAppend], recorded_at: float) -> list[AppendResult]:
        """All parts are checked, then all written, with no await in between: all or nothing."""
        await anyio.lowlevel.checkpoint()
        book = self.logbook
        retries = []
        for part in parts:
            found = [book.log[book.ids[new.event_id]] if new.event_id in book.ids else None for new in part.pending]
            retry = match_retry(part.session_id, part.pending, found)
            head = book.heads.get(part.session_id, 0)
            if retry is None and not check_expected(part.expected, head):
                raise conflict(part.session_id, part.expected, head)
            retries.append(retry)
        return [
            retry or self._write(part.session_id, part.events, part.pending, recorded_at)
            for part, retry in zip(parts, retries, strict=True)
        ]

    async def _truncate_before(
        self, session_id: str, version: int, expected: int | ExpectedVersion, snapshots: Sequence[Snapshot]
    ) -> int:
        await anyio.lowlevel.checkpoint()
        book = self.logbook
        check_truncation(session_id, version, expected, book.heads.get(session_id, 0))
        removed = 0
        for slot in book.slots.get(session_id, []):
            stored = book.log[slot]
            if stored is not None and stored.version < version:
                del book.ids[stored.event_id]
                book.chunks.pop(stored.event_id, None)
                book.log[slot] = None
                removed += 1
        if removed:
            for snapshot in snapshots:
                await self._save_snapshot(snapshot)
        return removed

    def _write(
        self, session_id: str, events: Sequence[Event], pending: Sequence[PendingEvent], recorded_at: float
    ) -> AppendResult:
        book = self.logbook
        head = book.heads.get(session_id, 0)
        first_position = len(book.log) + 1
        hashes = self.chain.hashes(session_id, book.chain_heads.get(session_id), head, pending, recorded_at)
        book.chain_heads[session_id] = hashes[-1]
        for (version, new), chain in zip(enumerate(pending, start=head + 1), hashes, strict=True):
            book.ids[new.event_id] = len(book.log)
            if new.chunks:
                book.chunks[new.event_id] = new.chunks
            book.slots.setdefault(session_id, []).append(len(book.log))
            book.log.append(
                StoredEvent(
                    session_id=session_id,
                    version=version,
                    position=len(book.log) + 1,
                    event_id=new.event_id,
                    type=new.type,
                    schema_version=new.schema_version,
                    data=new.data,
                    recorded_at=recorded_at,
                    chain=chain,
                )
            )
        book.heads[session_id] = head + len(pending)
        book.rows[session_id] = advance_index(
            book.rows.get(session_id), session_id, events, head + len(pending), recorded_at
        )
        return AppendResult(
            session_id=session_id,
            from_version=head + 1,
            to_version=head + len(pending),
            positions=tuple(range(first_position, first_position + len(pending))),
            event_ids=tuple(new.event_id for new in pending),
            recorded_at=recorded_at,
        )

    async def _find_events(self, event_ids: Sequence[UUID]) -> Sequence[StoredEvent | None]:
        await anyio.lowlevel.checkpoint()
        book = self.logbook
        return [book.log[book.ids[event_id]] if event_id in book.ids else None for event_id in event_ids]

    def _session_events(self, session_id: str) -> list[StoredEvent]:
        log = self.logbook.log
        return [stored for slot in self.logbook.slots.get(session_id, []) if (stored := log[slot]) is not None]

    async def _read_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Sequence[StoredEvent]:
        await anyio.lowlevel.checkpoint()
        wanted = [
            stored
            for stored in self._session_events(session_id)
            if low <= stored.version
            and (high is None or stored.version <= high)
            and (types is None or stored.type in types)
        ]
        return (wanted[::-1] if backwards else wanted)[:limit]

    async def _read_all_page(self, from_position: int, limit: int) -> Sequence[StoredEvent]:
        await anyio.lowlevel.checkpoint()
        page: list[StoredEvent] = []
        for stored in self.logbook.log[max(from_position - 1, 0) :]:
            if stored is not None:
                page.append(stored)
                if len(page) == limit:
                    break
        return page

    async def _read_chunks(self, event_ids: Sequence[UUID]) -> Mapping[UUID, Sequence[bytes]]:
        await anyio.lowlevel.checkpoint()
        return {event_id: self.logbook.chunks[event_id] for event_id in event_ids if event_id in self.logbook.chunks}

    async def _current_version(self, session_id: str) -> int:
        return self.logbook.heads.get(session_id, 0)

    async def _get_session_info(self, session_id: str) -> SessionInfo | None:
        return self.logbook.rows.get(session_id)

    async def _list_sessions(self, query: SessionFilter) -> list[SessionInfo]:
        await anyio.lowlevel.checkpoint()
        matching = sorted(
            (info for info in self.logbook.rows.values() if query.matches(info)),
            key=lambda info: (getattr(info, query.sort_by), info.session_id),
            reverse=query.descending,
        )
        return matching[query.offset :][: query.limit]

    async def _delete_session(self, session_id: str) -> bool:
        await anyio.lowlevel.checkpoint()
        book = self.logbook
        existed = book.rows.pop(session_id, None) is not None
        book.chain_heads.pop(session_id, None)  # a session started again chains afresh
        for slot in book.slots.pop(session_id, []):
            stored = book.log[slot]
            if stored is not None:
                del book.ids[stored.event_id]
                book.chunks.pop(stored.event_id, None)
                book.log[slot] = None
                existed = True
        for key in [key for key in book.snapshots if key[0] == session_id]:
            del book.snapshots[key]
        return existed

    async def _save_snapshot(self, snapshot: Snapshot) -> None:
        kept = self.logbook.snapshots.setdefault((snapshot.session_id, snapshot.name), {})
        kept[snapshot.version] = snapshot
        for version in sorted(kept)[:-SNAPSHOTS_KEPT]:
            del kept[version]

    async def _load_snapshot(
        self, session_id: str, name: str, schema_version: int | None, max_version: int | None
    ) -> Snapshot | None:
        kept = self.logbook.snapshots.get((session_id, name), {})
        for version in sorted(kept, reverse=True):
            snapshot = kept[version]
            if (max_version is None or version <= max_version) and schema_version in (None, snapshot.schema_version):
                return snapshot
        return None
