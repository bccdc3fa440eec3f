"""The in-memory backend: for tests and demos; everything is gone when the process exits.

Appends run without an await between the check and the write, so on one event loop they are atomic;
a thread lock around that step keeps them so when several threads' loops share the store.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Mapping, Sequence
from uuid import UUID

import anyio.lowlevel

from kern_events.backend import (
    DEFAULT_MAX_EVENT_SIZE,
    SNAPSHOTS_KEPT,
    BaseEventStore,
    PendingAppend,
    SessionFilter,
    SessionInfo,
    advance_index,
    check_expected,
    check_truncation,
    conflict,
    match_retry,
)
from kern_events.codec import Codec
from kern_events.events import Event
from kern_events.records import AppendResult, ExpectedVersion, PendingEvent, Snapshot, StoredEvent

__all__ = ["InMemoryEventStore"]


class InMemoryEventStore(BaseEventStore):
    """An :class:`~kern_events.store.EventStore` held in this process's memory."""

    def __init__(
        self,
        *,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
    ) -> None:
        super().__init__(codec=codec, max_event_size=max_event_size, chain_key=chain_key)
        self._streams: dict[str, list[StoredEvent]] = {}
        self._heads: dict[str, int] = {}
        self._chain_heads: dict[str, bytes] = {}
        """The hash of each session's head event (gone with the session's events when it is deleted)."""
        self._index: dict[str, SessionInfo] = {}
        self._by_id: dict[UUID, StoredEvent] = {}
        self._positions: list[int] = []
        self._all: list[StoredEvent] = []
        self._last_position = 0
        self._snapshots: dict[tuple[str, str], list[Snapshot]] = {}
        self._chunks: dict[UUID, tuple[bytes, ...]] = {}
        """Out-of-line payloads, by event id (only when :attr:`inline_limit` is set: memory has no row limit)."""
        self._mutex = threading.RLock()  # writes from several threads' event loops never interleave

    async def _append(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> AppendResult:
        await anyio.lowlevel.checkpoint()
        with self._mutex:
            head = self._heads.get(session_id, 0)
            retry = match_retry(session_id, pending, [self._by_id.get(p.event_id) for p in pending])
            if retry is not None:
                return retry
            if not check_expected(expected, head):
                raise conflict(session_id, expected, head)
            return self._store(session_id, events, pending, recorded_at)

    async def _append_many(self, parts: Sequence[PendingAppend], recorded_at: float) -> list[AppendResult]:
        """Every part is checked before any is stored, with no await in between: all or nothing."""
        await anyio.lowlevel.checkpoint()
        with self._mutex:
            retries = []
            for part in parts:
                retry = match_retry(part.session_id, part.pending, [self._by_id.get(p.event_id) for p in part.pending])
                head = self._heads.get(part.session_id, 0)
                if retry is None and not check_expected(part.expected, head):
                    raise conflict(part.session_id, part.expected, head)
                retries.append(retry)
            return [
                retry if retry is not None else self._store(part.session_id, part.events, part.pending, recorded_at)
                for part, retry in zip(parts, retries, strict=True)
            ]

    def _store(
        self, session_id: str, events: Sequence[Event], pending: Sequence[PendingEvent], recorded_at: float
    ) -> AppendResult:
        head = self._heads.get(session_id, 0)
        stream = self._streams.setdefault(session_id, [])
        stored_events = []
        hashes = self.chain.hashes(session_id, self._chain_heads.get(session_id), head, pending, recorded_at)
        self._chain_heads[session_id] = hashes[-1]
        for offset, (new, chain) in enumerate(zip(pending, self.chain.kept(hashes), strict=True), start=1):
            self._last_position += 1
            stored = StoredEvent(
                session_id=session_id,
                version=head + offset,
                position=self._last_position,
                event_id=new.event_id,
                type=new.type,
                schema_version=new.schema_version,
                data=new.data,
                recorded_at=recorded_at,
                chain=chain,
            )
            stored_events.append(stored)
            stream.append(stored)
            self._by_id[new.event_id] = stored
            if new.chunks:
                self._chunks[new.event_id] = new.chunks
            self._positions.append(stored.position)
            self._all.append(stored)
        to_version = head + len(pending)
        self._heads[session_id] = to_version
        self._index[session_id] = advance_index(
            self._index.get(session_id), session_id, events, to_version, recorded_at
        )
        return AppendResult(
            session_id=session_id,
            from_version=head + 1,
            to_version=to_version,
            positions=tuple(stored.position for stored in stored_events),
            event_ids=tuple(stored.event_id for stored in stored_events),
            recorded_at=recorded_at,
        )

    async def _find_events(self, event_ids: Sequence[UUID]) -> Sequence[StoredEvent | None]:
        await anyio.lowlevel.checkpoint()
        return [self._by_id.get(event_id) for event_id in event_ids]

    async def _truncate_before(
        self, session_id: str, version: int, expected: int | ExpectedVersion, snapshots: Sequence[Snapshot]
    ) -> int:
        await anyio.lowlevel.checkpoint()
        with self._mutex:
            check_truncation(session_id, version, expected, self._heads.get(session_id, 0))
            stream = self._streams.get(session_id, [])
            removed = [stored for stored in stream if stored.version < version]
            if not removed:
                return 0
            del stream[: len(removed)]
            gone = {stored.position for stored in removed}
            for stored in removed:
                self._forget(stored)
            self._all = [stored for stored in self._all if stored.position not in gone]
            self._positions = [stored.position for stored in self._all]
            for snapshot in snapshots:
                await self._save_snapshot(snapshot)
            return len(removed)

    async def _read_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Sequence[StoredEvent]:
        await anyio.lowlevel.checkpoint()
        stream = self._streams.get(session_id, [])
        if not stream:
            return []
        base = stream[0].version
        start = max(low - base, 0)
        stop = len(stream) if high is None else max(min(high - base + 1, len(stream)), 0)
        if start >= stop:
            return []
        if types is not None:
            matching = [stored for stored in stream[start:stop] if stored.type in types]
            return matching[::-1][:limit] if backwards else matching[:limit]
        if backwards:
            return stream[max(stop - limit, start) : stop][::-1]
        return stream[start : min(start + limit, stop)]

    async def _read_all_page(self, from_position: int, limit: int) -> Sequence[StoredEvent]:
        await anyio.lowlevel.checkpoint()
        start = bisect.bisect_left(self._positions, from_position)
        return self._all[start : start + limit]

    async def _current_version(self, session_id: str) -> int:
        return self._heads.get(session_id, 0)

    async def _get_session_info(self, session_id: str) -> SessionInfo | None:
        return self._index.get(session_id)

    async def _list_sessions(self, query: SessionFilter) -> list[SessionInfo]:
        await anyio.lowlevel.checkpoint()
        rows = [info for info in self._index.values() if query.matches(info)]
        rows.sort(key=lambda info: info.session_id, reverse=query.descending)
        rows.sort(key=lambda info: getattr(info, query.sort_by), reverse=query.descending)
        end = None if query.limit is None else query.offset + query.limit
        return rows[query.offset : end]

    async def _delete_session(self, session_id: str) -> bool:
        await anyio.lowlevel.checkpoint()
        with self._mutex:
            stream = self._streams.pop(session_id, [])
            self._chain_heads.pop(session_id, None)
            for key in [key for key in self._snapshots if key[0] == session_id]:
                del self._snapshots[key]
            existed = self._index.pop(session_id, None) is not None or bool(stream)
            if stream:
                gone = {stored.position for stored in stream}
                for stored in stream:
                    self._forget(stored)
                self._all = [stored for stored in self._all if stored.position not in gone]
                self._positions = [stored.position for stored in self._all]
            return existed

    def _forget(self, stored: StoredEvent) -> None:
        """Drop an erased event's id and its out-of-line chunks (every removal of events goes through here)."""
        del self._by_id[stored.event_id]
        self._chunks.pop(stored.event_id, None)

    async def _read_chunks(self, event_ids: Sequence[UUID]) -> Mapping[UUID, Sequence[bytes]]:
        await anyio.lowlevel.checkpoint()
        return {event_id: self._chunks[event_id] for event_id in event_ids if event_id in self._chunks}

    async def _save_snapshot(self, snapshot: Snapshot) -> None:
        with self._mutex:
            kept = self._snapshots.setdefault((snapshot.session_id, snapshot.name), [])
            kept[:] = [item for item in kept if item.version != snapshot.version]
            kept.append(snapshot)
            kept.sort(key=lambda item: item.version)
            del kept[:-SNAPSHOTS_KEPT]

    async def _load_snapshot(
        self, session_id: str, name: str, schema_version: int | None, max_version: int | None
    ) -> Snapshot | None:
        for snapshot in reversed(self._snapshots.get((session_id, name), [])):
            if (schema_version is None or snapshot.schema_version == schema_version) and (
                max_version is None or snapshot.version <= max_version
            ):
                return snapshot
        return None
