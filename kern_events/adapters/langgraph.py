"""LangGraph's checkpointer on kern-events: :class:`KernEventsSaver`, a ``BaseCheckpointSaver`` (async and sync).

One stream (session ``langgraph:<thread_id>``) per LangGraph thread. ``aput`` appends a ``langgraph.blobs``
event holding the channel values the checkpoint changed, then a ``langgraph.checkpoint`` event; ``aput_writes``
appends a ``langgraph.writes`` event. A thread's *index* (which checkpoints exist, in which event each blob and
write lies) is a fold of the small events only, saved as a snapshot once ``snapshot_every`` of them follow the
last one, so a read loads the snapshot, folds the tail after it and fetches just the events it returns: it never
folds the whole thread. A second stream per run (``langgraph-run:<run_id>``) names the threads the run wrote to,
so ``adelete_for_runs`` visits those threads only.

Every append names the version the saver last saw of the thread (``expected_version``): a second writer that
went on from the same state loses with :class:`~kern_events.ConcurrencyError` instead of forking the chain.

List channels (message histories) are stored as deltas against their previous version, with a full copy every
``full_every`` versions, so a thread's bytes grow with what is new each step, not with the whole history.
"""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, Final, ParamSpec, TypeVar, cast

import msgspec
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from kern_events import (
    BlockingCallError,
    Event,
    EventStore,
    SessionStarted,
    Snapshot,
    event_id_for,
    register_event_type,
    run_blocking,
)
from kern_events._validate import check_non_negative
from kern_events.adapters._streams import stream_id as _stream_id
from kern_events.db import BaseDb
from kern_events.errors import InvalidArgumentError
from kern_events.records import NO_STREAM

__all__ = [
    "Blob",
    "BlobsPut",
    "CheckpointPut",
    "KernEventsSaver",
    "RunWroteThread",
    "TypedValue",
    "Write",
    "WritesPut",
]

T = TypeVar("T")
P = ParamSpec("P")

SESSION_TYPE: Final = "langgraph"
_THREAD_PREFIX: Final = "langgraph:"
_RUN_PREFIX: Final = "langgraph-run:"
_INDEX: Final = "langgraph.index"
_INDEX_SCHEMA: Final = 1
_PAGE: Final = 256
_REWRITE_BATCH: Final = 1024
"""Events per append when a thread's kept checkpoints are written again (prune, delete_for_runs)."""
_SCATTERED: Final = 4
"""More events than this to fetch for blobs are read in one span rather than one read each."""


class TypedValue(msgspec.Struct, frozen=True, array_like=True):
    """A value as LangGraph's serializer wrote it: ``serde.dumps_typed`` gives ``(type, data)``."""

    type: str
    data: bytes


class Blob(msgspec.Struct, frozen=True, array_like=True):
    """One channel's value at one version; ``value is None`` when the channel is empty at that version.

    With ``base`` set, ``value`` holds only the items appended to the list the channel held at version
    ``base`` (a delta ``depth`` links away from a full copy)."""

    channel: str
    version: str
    value: TypedValue | None
    base: str | None = None
    depth: int = 0


class Write(msgspec.Struct, frozen=True, array_like=True):
    """One pending write: its index in the task's writes (negative for LangGraph's special channels)."""

    idx: int
    channel: str
    value: TypedValue


@register_event_type
class BlobsPut(Event, tag="langgraph.blobs", frozen=True, kw_only=True):
    """The channel values a checkpoint changed; always appended just before its ``langgraph.checkpoint``."""

    checkpoint_ns: str
    blobs: tuple[Blob, ...]


@register_event_type
class CheckpointPut(Event, tag="langgraph.checkpoint", frozen=True, kw_only=True):
    """A checkpoint without its channel values (those are in blobs, found through the thread's index)."""

    checkpoint_ns: str
    checkpoint_id: str
    parent_id: str | None = None
    checkpoint: TypedValue
    metadata: TypedValue
    run_id: str | None = None
    blobs: tuple[tuple[str, str, str | None], ...] = ()
    """``(channel, version, base)`` of each blob in the ``langgraph.blobs`` event just before this one."""


@register_event_type
class WritesPut(Event, tag="langgraph.writes", frozen=True, kw_only=True):
    """A task's pending writes against a checkpoint."""

    checkpoint_ns: str
    checkpoint_id: str
    task_id: str
    task_path: str = ""
    writes: tuple[Write, ...]


@register_event_type
class RunWroteThread(Event, tag="langgraph.run_thread", frozen=True, kw_only=True):
    """In a run's stream: the run wrote checkpoints to this thread (the index ``adelete_for_runs`` reads)."""

    thread_id: str


_INDEX_TYPES: Final = ("langgraph.checkpoint", "langgraph.writes")


class _Entry(msgspec.Struct, array_like=True):
    version: int
    parent_id: str | None
    metadata: TypedValue
    run_id: str | None


class _BlobAt(msgspec.Struct, array_like=True):
    version: int
    base: str | None


class _WriteAt(msgspec.Struct, array_like=True):
    version: int
    position: int


class _Index(msgspec.Struct):
    """Where a thread's checkpoints, blobs and writes are stored: a fold of its small events."""

    checkpoints: dict[str, dict[str, _Entry]] = {}
    """namespace -> checkpoint id -> entry"""
    blobs: dict[str, dict[str, dict[str, _BlobAt]]] = {}
    """namespace -> channel -> version -> the ``langgraph.blobs`` event holding it"""
    writes: dict[str, dict[str, dict[str, _WriteAt]]] = {}
    """namespace -> checkpoint id -> ``task_id \\0 idx`` -> the write that counts"""

    def apply(self, version: int, event: object) -> None:
        """Fold one event stored at ``version``; a regular write keeps the first value stored for its key,
        LangGraph's special writes (error, interrupt, ...) the last."""
        if isinstance(event, CheckpointPut):
            ns = event.checkpoint_ns
            self.checkpoints.setdefault(ns, {})[event.checkpoint_id] = _Entry(
                version, event.parent_id, event.metadata, event.run_id
            )
            if event.blobs:
                by_channel = self.blobs.setdefault(ns, {})
                for channel, blob_version, base in event.blobs:
                    by_channel.setdefault(channel, {})[blob_version] = _BlobAt(version - 1, base)
        elif isinstance(event, WritesPut):
            stored = self.writes.setdefault(event.checkpoint_ns, {}).setdefault(event.checkpoint_id, {})
            for position, write in enumerate(event.writes):
                key = f"{event.task_id}\0{write.idx}"
                if write.idx >= 0 and key in stored:
                    continue
                stored[key] = _WriteAt(version, position)


_encode_index = msgspec.msgpack.Encoder().encode
_decode_index = msgspec.msgpack.Decoder(_Index).decode


class KernEventsSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer storing each thread as a kern-events stream:
    ``graph = builder.compile(checkpointer=KernEventsSaver(db))`` with an open ``InMemoryDb``, ``SqliteDb``
    or ``PostgresDb`` (or any :class:`~kern_events.EventStore`).

    The async methods are the native ones; the sync ones run them on the event loop the saver was last used
    on (LangGraph calls them from worker threads of async graphs), or to completion when there is none.
    """

    def __init__(
        self,
        db: BaseDb | EventStore,
        *,
        serde: SerializerProtocol | None = None,
        snapshot_every: int = 64,
        full_every: int = 50,
    ) -> None:
        super().__init__(serde=serde)
        for argument, value in (("snapshot_every", snapshot_every), ("full_every", full_every)):
            check_non_negative(argument, value)
            if value < 1:
                raise InvalidArgumentError(argument, f"expected an integer of at least 1, got {value!r}")
        self.store: EventStore = db.store if isinstance(db, BaseDb) else db
        self.snapshot_every = snapshot_every
        self.full_every = full_every
        """A full copy of a list channel after this many deltas (1: never a delta)."""
        self._seen: dict[str, int] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._runs_indexed: set[tuple[str, str]] = set()
        self._started: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_put: dict[tuple[str, str], tuple[str, dict[str, str], dict[str, tuple[str, list[Any], int]]]] = {}

    # -- identities -------------------------------------------------------------------------------------

    @staticmethod
    def _session(thread_id: object) -> str:
        return _stream_id(_THREAD_PREFIX, str(thread_id))

    @staticmethod
    def _run_session(run_id: str) -> str:
        return _stream_id(_RUN_PREFIX, run_id)

    def _typed(self, value: Any) -> TypedValue:
        kind, data = self.serde.dumps_typed(value)
        return TypedValue(kind, data)

    def _load_typed(self, value: TypedValue) -> Any:
        return self.serde.loads_typed((value.type, value.data))

    def _lock(self, session: str) -> asyncio.Lock:
        lock = self._locks.get(session)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session] = lock
        return lock

    def _saw(self, session: str, version: int) -> None:
        """Versions only grow (a deleted session keeps its version), so a late reader never moves it back."""
        self._seen[session] = max(self._seen.get(session, 0), version)

    def _forget(self, session: str) -> None:
        """Drop what this saver remembers of a thread it erased or cut."""
        self._seen.pop(session, None)
        self._started.discard(session)
        for key in [key for key in self._last_put if key[0] == session]:
            del self._last_put[key]

    def _enter(self) -> None:
        self._loop = asyncio.get_running_loop()

    # -- reading ----------------------------------------------------------------------------------------

    async def _load(self, session: str) -> tuple[_Index, int]:
        """The thread's index and version: its latest snapshot plus the small events after it."""
        head = await self.store.current_version(session)
        snapshot = await self.store.load_snapshot(session, _INDEX, schema_version=_INDEX_SCHEMA, max_version=head)
        index = _decode_index(snapshot.data) if snapshot is not None else _Index()
        start = snapshot.version + 1 if snapshot is not None else 1
        folded = 0
        if start <= head:
            async for record in self.store.read(session, from_version=start, to_version=head, types=_INDEX_TYPES):
                index.apply(record.version, record.event)
                folded += 1
        if folded >= self.snapshot_every:
            await self.store.save_snapshot(
                Snapshot(
                    session_id=session,
                    name=_INDEX,
                    schema_version=_INDEX_SCHEMA,
                    version=head,
                    data=_encode_index(index),
                )
            )
        return index, head

    async def _fetch(self, session: str, versions: Iterable[int]) -> dict[int, object]:
        """The events stored at ``versions``, one read per run of consecutive versions."""
        ordered = sorted(set(versions))
        found: dict[int, object] = {}
        i = 0
        while i < len(ordered):
            j = i
            while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
                j += 1
            async for record in self.store.read(session, from_version=ordered[i], to_version=ordered[j]):
                found[record.version] = record.event
            i = j + 1
        return found

    async def _blobs(
        self, session: str, index: _Index, ns: str, wanted: Iterable[tuple[str, str]], events: dict[int, object]
    ) -> dict[tuple[str, str], Blob]:
        """The stored blobs of ``(channel, version)`` pairs and of every delta base they rest on."""
        by_channel = index.blobs.get(ns, {})
        places: dict[tuple[str, str], int] = {}
        for channel, version in wanted:
            at = by_channel.get(channel, {}).get(version)
            while at is not None and (channel, version) not in places:
                places[(channel, version)] = at.version
                if at.base is None:
                    break
                version = at.base
                at = by_channel.get(channel, {}).get(version)
        missing = sorted({v for v in places.values() if v not in events})
        if len(missing) > _SCATTERED:
            # A delta chain lies in many events far apart: one read of the blobs events over its span.
            wanted_versions = set(missing)
            async for record in self.store.read(
                session, from_version=missing[0], to_version=missing[-1], types=("langgraph.blobs",)
            ):
                if record.version in wanted_versions:
                    events[record.version] = record.event
        elif missing:
            events.update(await self._fetch(session, missing))
        found: dict[tuple[str, str], Blob] = {}
        for (channel, version), at_version in places.items():
            event = events.get(at_version)
            if isinstance(event, BlobsPut):
                for blob in event.blobs:
                    if blob.channel == channel and blob.version == version:
                        found[(channel, version)] = blob
        return found

    def _value(self, blobs: dict[tuple[str, str], Blob], channel: str, version: str) -> tuple[bool, Any]:
        """``(present, value)`` of a channel at a version, following a delta chain to its full copy."""
        chain: list[Blob] = []
        blob = blobs.get((channel, version))
        while blob is not None and len(chain) <= len(blobs):
            chain.append(blob)
            if blob.base is None:
                break
            blob = blobs.get((channel, blob.base))
        if not chain or chain[-1].base is not None or chain[0].value is None:
            return False, None
        full = chain[-1].value
        value: Any = self._load_typed(full) if full is not None else None
        for delta in reversed(chain[:-1]):
            assert delta.value is not None
            value = [*value, *self._load_typed(delta.value)]
        return True, value

    async def _tuple(
        self, thread_id: Any, session: str, index: _Index, ns: str, checkpoint_id: str | None
    ) -> CheckpointTuple | None:
        entry = index.checkpoints.get(ns, {}).get(checkpoint_id) if checkpoint_id is not None else None
        if entry is None or checkpoint_id is None:
            return None
        write_places = index.writes.get(ns, {}).get(checkpoint_id, {})
        events = await self._fetch(
            session, [max(1, entry.version - 1), entry.version, *(w.version for w in write_places.values())]
        )
        put = events[entry.version]
        assert isinstance(put, CheckpointPut)
        checkpoint: Checkpoint = self._load_typed(put.checkpoint)
        versions = {channel: str(version) for channel, version in checkpoint["channel_versions"].items()}
        blobs = await self._blobs(session, index, ns, versions.items(), events)
        values: dict[str, Any] = {}
        for channel, version in versions.items():
            present, value = self._value(blobs, channel, version)
            if present:
                values[channel] = value
        pending: list[tuple[tuple[str, str, int], PendingWrite]] = []
        for key, place in write_places.items():
            event = events[place.version]
            assert isinstance(event, WritesPut)
            write = event.writes[place.position]
            task_id = key.rsplit("\0", 1)[0]
            pending.append(
                (
                    writes_sort_key(event.task_path, task_id, write.idx),
                    (task_id, write.channel, self._load_typed(write.value)),
                )
            )
        pending.sort(key=lambda item: item[0])
        return CheckpointTuple(
            config={"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}},
            checkpoint={**checkpoint, "channel_values": values},
            metadata=self._load_typed(entry.metadata),
            parent_config=(
                {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": entry.parent_id}}
                if entry.parent_id
                else None
            ),
            pending_writes=[write for _, write in pending],
        )

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``), or the thread's latest in its namespace."""
        self._enter()
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        session = self._session(thread_id)
        index, head = await self._load(session)
        self._saw(session, head)
        ns = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config) or max(index.checkpoints.get(ns, {}), default=None)
        return await self._tuple(thread_id, session, index, ns, checkpoint_id)

    async def _threads(self) -> AsyncIterator[str]:
        offset = 0
        while True:
            page = await self.store.list_sessions(
                session_type=SESSION_TYPE, sort_by="created_at", descending=False, limit=_PAGE, offset=offset
            )
            for info in page:
                if info.name is not None:
                    yield info.name
            if len(page) < _PAGE:
                return
            offset += len(page)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first (by id), of one thread (and namespace, if ``config`` names one) or of
        every thread, matching every ``filter`` key of their metadata, older than ``before``, ``limit`` of them."""
        self._enter()
        if config is not None:
            threads: AsyncIterator[Any] | None = None
            only: list[Any] = [config["configurable"]["thread_id"]]
            ns_wanted = config["configurable"].get("checkpoint_ns")
            id_wanted = get_checkpoint_id(config)
        else:
            threads, only, ns_wanted, id_wanted = self._threads(), [], None, None
        before_id = get_checkpoint_id(before) if before is not None else None
        remaining = limit

        async def each_thread() -> AsyncIterator[Any]:
            for thread in only:
                yield thread
            if threads is not None:
                async for thread in threads:
                    yield thread

        async for thread_id in each_thread():
            session = self._session(thread_id)
            index, head = await self._load(session)
            self._saw(session, head)
            for ns, entries in index.checkpoints.items():
                if ns_wanted is not None and ns != ns_wanted:
                    continue
                for checkpoint_id in sorted(entries, reverse=True):
                    if id_wanted is not None and checkpoint_id != id_wanted:
                        continue
                    if before_id is not None and checkpoint_id >= before_id:
                        continue
                    if filter:
                        metadata = self._load_typed(entries[checkpoint_id].metadata)
                        if not all(metadata.get(key) == value for key, value in filter.items()):
                            continue
                    if remaining is not None:
                        if remaining <= 0:
                            return
                        remaining -= 1
                    found = await self._tuple(thread_id, session, index, ns, checkpoint_id)
                    if found is not None:
                        yield found

    # -- writing ----------------------------------------------------------------------------------------

    async def _append(self, thread_id: Any, events: list[Event], *, run_ids: Iterable[str] = ()) -> int:
        """Append to the thread's stream at the version this saver last saw of it; returns the new version."""
        session = self._session(thread_id)
        async with self._lock(session):
            expected = self._seen.get(session)
            if session not in self._started:
                info = await self.store.get_session_info(session)
                if expected is None:
                    expected = info.version if info is not None else await self.store.current_version(session)
                if info is None:
                    events = [SessionStarted(session_type=SESSION_TYPE, name=str(thread_id)), *events]
            assert expected is not None
            for run_id in run_ids:
                if (run_id, session) not in self._runs_indexed:
                    await self.store.append(
                        self._run_session(run_id),
                        [RunWroteThread(thread_id=str(thread_id))],
                        event_ids=[event_id_for(run_id, session)],
                        skip_existing=True,
                    )
                    self._runs_indexed.add((run_id, session))
            result = await self.store.append(session, events, expected_version=expected if expected > 0 else NO_STREAM)
            self._saw(session, result.to_version)
            self._started.add(session)
            return result.to_version

    def _delta(self, thread_id: Any, ns: str, parent_id: str | None, channel: str, version: str, value: Any) -> Blob:
        """The blob of a channel's new value: a delta when it extends the list this saver last put as the
        parent checkpoint's value of the channel, else a full copy."""
        last = self._last_put.get((self._session(thread_id), ns))
        if not isinstance(value, list) or self.full_every <= 1 or last is None or last[0] != parent_id:
            return Blob(channel, version, self._typed(value))
        base_version = last[1].get(channel)
        base = last[2].get(channel)
        # A delta never rests on its own version (a channel put again at the same version is stored whole).
        if base_version is None or base is None or base[0] != base_version or base_version == version:
            return Blob(channel, version, self._typed(value))
        _, base_value, depth = base
        n = len(base_value)
        if depth + 1 >= self.full_every or len(value) < n or not _starts_with(value, base_value):
            return Blob(channel, version, self._typed(value))
        return Blob(channel, version, self._typed(value[n:]), base=base_version, depth=depth + 1)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint and the channel values that changed with it (``new_versions``)."""
        self._enter()
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        ns = configurable.get("checkpoint_ns", "")
        parent_id = configurable.get("checkpoint_id")
        stripped = cast(dict[str, Any], checkpoint.copy())
        values: dict[str, Any] = stripped.pop("channel_values")
        blobs: list[Blob] = []
        for channel, version in new_versions.items():
            if channel in values:
                blobs.append(self._delta(thread_id, ns, parent_id, channel, str(version), values[channel]))
            else:
                blobs.append(Blob(channel, str(version), None))
        full_metadata = get_checkpoint_metadata(config, metadata)
        run_id = full_metadata.get("run_id")
        events: list[Event] = []
        if blobs:
            events.append(BlobsPut(checkpoint_ns=ns, blobs=tuple(blobs)))
        events.append(
            CheckpointPut(
                checkpoint_ns=ns,
                checkpoint_id=checkpoint["id"],
                parent_id=parent_id,
                checkpoint=self._typed(stripped),
                metadata=self._typed(full_metadata),
                run_id=str(run_id) if run_id is not None else None,
                blobs=tuple((blob.channel, blob.version, blob.base) for blob in blobs),
            )
        )
        await self._append(thread_id, events, run_ids=[str(run_id)] if run_id is not None else [])
        self._remember(thread_id, ns, checkpoint, blobs, values)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    def _remember(
        self, thread_id: Any, ns: str, checkpoint: Checkpoint, blobs: list[Blob], values: dict[str, Any]
    ) -> None:
        """Keep the list values just put, the bases of the next checkpoint's deltas."""
        key = (self._session(thread_id), ns)
        previous = self._last_put.get(key)
        lists: dict[str, tuple[str, list[Any], int]] = dict(previous[2]) if previous is not None else {}
        for blob in blobs:
            value = values.get(blob.channel)
            if isinstance(value, list):
                lists[blob.channel] = (blob.version, list(value), blob.depth)
            else:
                lists.pop(blob.channel, None)
        versions = {channel: str(version) for channel, version in checkpoint["channel_versions"].items()}
        self._last_put[key] = (checkpoint["id"], versions, lists)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against a checkpoint; a regular write already stored for the same task and
        index keeps its first value, LangGraph's special channels (error, interrupt, ...) take the last."""
        self._enter()
        configurable = config["configurable"]
        event = WritesPut(
            checkpoint_ns=configurable.get("checkpoint_ns", ""),
            checkpoint_id=configurable["checkpoint_id"],
            task_id=task_id,
            task_path=task_path,
            writes=tuple(
                Write(WRITES_IDX_MAP.get(channel, idx), channel, self._typed(value))
                for idx, (channel, value) in enumerate(writes)
            ),
        )
        await self._append(configurable["thread_id"], [event])

    async def adelete_thread(self, thread_id: str) -> None:
        """Erase the thread's stream (its version stays as a tombstone)."""
        self._enter()
        session = self._session(thread_id)
        async with self._lock(session):
            await self.store.delete_session(session)
            self._forget(session)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Append every event of the source thread to the target thread (delta chains come along whole)."""
        self._enter()
        source = self._session(source_thread_id)
        batch: list[Event] = []
        run_ids: set[str] = set()
        async for record in self.store.read(source):
            event = record.event
            if not isinstance(event, BlobsPut | CheckpointPut | WritesPut):
                continue
            batch.append(event)
            if isinstance(event, CheckpointPut) and event.run_id is not None:
                run_ids.add(event.run_id)
            # A blobs event goes in the same append as the checkpoint after it.
            if len(batch) >= _PAGE and not isinstance(event, BlobsPut):
                await self._append(target_thread_id, batch, run_ids=run_ids)
                batch, run_ids = [], set()
        if batch:
            await self._append(target_thread_id, batch, run_ids=run_ids)

    async def _rewrite(self, thread_id: str, keep: Callable[[_Index], set[int]]) -> None:
        """Keep only the checkpoints whose event versions ``keep`` picks from the index (with their winning
        writes and the blobs they show), appended again after the head, then cut the thread before them: the
        rest is erased."""
        session = self._session(thread_id)
        async with self._lock(session):
            index, head = await self._load(session)
            keep_versions = keep(index)
            kept = sorted(
                (
                    (entry.version, ns, checkpoint_id, entry)
                    for ns, entries in index.checkpoints.items()
                    for checkpoint_id, entry in entries.items()
                    if entry.version in keep_versions
                ),
                key=lambda item: item[0],
            )
            total = sum(len(entries) for entries in index.checkpoints.values())
            if len(kept) == total:
                return
            if not kept:
                await self.store.delete_session(session)
                self._forget(session)
                return
            events: list[Event] = []
            emitted: set[tuple[str, str, str]] = set()
            for _, ns, checkpoint_id, entry in kept:
                stored = await self._fetch(session, [entry.version])
                put = stored[entry.version]
                assert isinstance(put, CheckpointPut)
                checkpoint: Checkpoint = self._load_typed(put.checkpoint)
                wanted = [(ch, str(v)) for ch, v in checkpoint["channel_versions"].items()]
                blobs = await self._blobs(session, index, ns, wanted, stored)
                new_blobs: list[Blob] = []
                for channel, version in wanted:
                    blob = blobs.get((channel, version))
                    if blob is None or (ns, channel, version) in emitted:
                        continue
                    if blob.base is not None and (ns, channel, blob.base) not in emitted:
                        present, value = self._value(blobs, channel, version)
                        blob = Blob(channel, version, self._typed(value) if present else None)
                    new_blobs.append(blob)
                    emitted.add((ns, channel, version))
                if new_blobs:
                    events.append(BlobsPut(checkpoint_ns=ns, blobs=tuple(new_blobs)))
                events.append(
                    msgspec.structs.replace(
                        put, blobs=tuple((blob.channel, blob.version, blob.base) for blob in new_blobs)
                    )
                )
                winners: dict[int, list[int]] = {}
                for place in index.writes.get(ns, {}).get(checkpoint_id, {}).values():
                    winners.setdefault(place.version, []).append(place.position)
                written = await self._fetch(session, winners)
                for at in sorted(winners):
                    event = written[at]
                    assert isinstance(event, WritesPut)
                    positions = sorted(winners[at])
                    events.append(msgspec.structs.replace(event, writes=tuple(event.writes[p] for p in positions)))
            # In appends of a bounded size; one cut off halfway leaves copies that fold to the same index.
            first, new_head = head + 1, head
            for batch in _batches(events, _REWRITE_BATCH):
                new_head = (await self.store.append(session, batch, expected_version=new_head)).to_version
            # Behind the cut, an empty index: the events kept are folded again from where the log now starts.
            await self.store.truncate_before(
                session,
                first,
                snapshot=Snapshot(
                    session_id=session,
                    name=_INDEX,
                    schema_version=_INDEX_SCHEMA,
                    version=first - 1,
                    data=_encode_index(_Index()),
                ),
                expected_version=new_head,
            )
            self._forget(session)
            self._saw(session, new_head)
            self._started.add(session)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: keep each namespace's latest checkpoint (its values stored whole again, so no
        delta rests on what is cut); ``"delete"``: erase the threads."""
        self._enter()
        for thread_id in thread_ids:
            if strategy == "delete":
                await self.adelete_thread(thread_id)
                continue
            if strategy != "keep_latest":
                raise InvalidArgumentError("strategy", f"expected 'keep_latest' or 'delete', got {strategy!r}")
            await self._rewrite(thread_id, _latest_per_namespace)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Erase the checkpoints (and their writes) of these runs, visiting only the threads they wrote to."""
        self._enter()
        doomed = {str(run_id) for run_id in run_ids}
        threads: set[str] = set()
        for run_id in doomed:
            async for record in self.store.read(self._run_session(run_id)):
                if isinstance(record.event, RunWroteThread):
                    threads.add(record.event.thread_id)
        for thread_id in sorted(threads):
            await self._rewrite(
                thread_id,
                lambda index: {
                    entry.version
                    for entries in index.checkpoints.values()
                    for entry in entries.values()
                    if entry.run_id not in doomed
                },
            )
        for run_id in doomed:
            await self.store.delete_session(self._run_session(run_id))
            self._runs_indexed = {pair for pair in self._runs_indexed if pair[0] != run_id}

    def get_next_version(self, current: str | None, channel: None) -> str:
        """A version that sorts after ``current`` and is unique across branches (a random fraction after the
        counter): a fork's blob never lands on another branch's version."""
        if current is None:
            counter = 0
        elif isinstance(current, int):
            counter = current
        else:
            counter = int(str(current).split(".")[0])
        return f"{counter + 1:032}.{random.random():016}"

    # -- sync methods -----------------------------------------------------------------------------------

    def _sync(self, function: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run an async method from synchronous code. While the loop the saver is used on runs (LangGraph
        calls sync methods from worker threads of async graphs), on that loop, so one thread's writes stay
        in one order; otherwise with :func:`~kern_events.run_blocking`. On that loop's own thread, where
        waiting would deadlock, :class:`~kern_events.BlockingCallError`."""
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                raise BlockingCallError(f"KernEventsSaver.{function.__name__}")
            return asyncio.run_coroutine_threadsafe(function(*args, **kwargs), loop).result()
        return run_blocking(function, *args, **kwargs)

    async def _alist_all(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> list[CheckpointTuple]:
        return [item async for item in self.alist(config, filter=filter, before=before, limit=limit)]

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Sync :meth:`aget_tuple`."""
        return self._sync(self.aget_tuple, config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Sync :meth:`alist`."""

        return iter(self._sync(self._alist_all, config, filter=filter, before=before, limit=limit))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Sync :meth:`aput`."""
        return self._sync(self.aput, config, checkpoint, metadata, new_versions)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Sync :meth:`aput_writes`."""
        self._sync(self.aput_writes, config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        """Sync :meth:`adelete_thread`."""
        self._sync(self.adelete_thread, thread_id)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Sync :meth:`acopy_thread`."""
        self._sync(self.acopy_thread, source_thread_id, target_thread_id)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Sync :meth:`aprune`."""
        self._sync(self.aprune, thread_ids, strategy=strategy)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Sync :meth:`adelete_for_runs`."""
        self._sync(self.adelete_for_runs, run_ids)


def _batches(events: Sequence[Event], size: int) -> Iterator[list[Event]]:
    """``events`` in runs of about ``size``; a blobs event stays in the run of the checkpoint after it."""
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) >= size and not isinstance(event, BlobsPut):
            yield batch
            batch = []
    if batch:
        yield batch


def _starts_with(value: list[Any], prefix: list[Any]) -> bool:
    """Whether ``value`` begins with ``prefix``; the same objects (what reducers such as ``add_messages``
    carry over) are checked by identity, cheaply, before falling back to equality."""
    return all(a is b or a == b for a, b in zip(value, prefix, strict=False))


def _latest_per_namespace(index: _Index) -> set[int]:
    return {entries[max(entries)].version for entries in index.checkpoints.values() if entries}
