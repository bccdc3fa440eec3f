"""The NATS JetStream backend: sessions as subjects of one replicated stream (``pip install
'kern-events[nats]'``, nats-server 2.12 or newer).

Layout, all in the stream ``<prefix>`` (subjects ``<prefix>.>``):

* ``<prefix>.e.<session>``: one message per append (a msgpack list of its events), headers carrying
  the versions it holds and, on an append's last message, the session's index row. A record's global
  position is ``stream sequence << 16 | index in its message`` (an append holds at most 65,535 events).
  Optimistic concurrency is ``Nats-Expected-Last-Subject-Sequence`` on this subject.
* ``<prefix>.id.<event id>``: one message per event (its session and version), written with
  expected last subject sequence 0, so an event id is stored once, ever, enforced by the server.
* ``<prefix>.c.<event id>``: the chunks of an out-of-line payload.
* ``<prefix>.s.<session>.<name>``: snapshots.

With ``shards=N`` (N > 1) sessions are spread over N such streams by a stable hash of the session id
(BLAKE2b, the same in every process): shard 0 is the stream ``<prefix>``, shard k the stream
``<prefix>~k`` with subjects ``<prefix>~k.>``, each with its own leader, so writes to different shards
do not queue behind one leader. Shard 0's stream records N; opening the data with another N is a
:class:`ShardLayoutError`. Nothing orders appends across streams, so the global feed is merged (by the
time each leader stored a message) and resumes from a :class:`~kern_events.records.FeedCursor` holding
a position per shard; a record's position carries its shard above ``FEED_SHARD_SHIFT``. What a sharded
store does not offer: ``append_many`` (a batch is within one stream), and an event id is unique per
shard by the server, across shards only by a look before the append (not atomic with it).

An append is one atomic batch (ADR-50) of its id messages, chunks and event messages: all or nothing.
Deleting a session publishes a tombstone with ``Nats-Rollup: sub`` (the session's events are gone and
its version stays), then purges its ids, chunks and snapshots. Every read goes through the stream
leader (``STREAM.MSG.GET``): direct gets may be answered by a lagging replica.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from uuid import UUID

import msgspec

from kern_events._loops import finish_on, on_loop_end
from kern_events._validate import check_seconds
from kern_events.backend import (
    DEFAULT_MAX_EVENT_SIZE,
    SNAPSHOTS_KEPT,
    BaseEventStore,
    Page,
    PendingAppend,
    SessionFilter,
    SessionInfo,
    advance_index,
    check_expected,
    conflict,
    match_retry,
)
from kern_events.codec import Codec
from kern_events.errors import (
    CorruptRecordError,
    IdempotencyError,
    InvalidArgumentError,
    SchemaMissingError,
    ShardLayoutError,
    StorageError,
    StorageUnavailableError,
    UnsupportedError,
)
from kern_events.events import Event
from kern_events.records import (
    FEED_SHARD_SHIFT,
    AppendResult,
    ExpectedVersion,
    FeedCursor,
    PendingEvent,
    Snapshot,
    StoredEvent,
)

__all__ = ["MIN_SERVER_VERSION", "NatsEventStore"]

_LAYOUT_VERSION = 1
"""The stream layout this release writes and reads (the module docstring's); the first, so far."""

MIN_SERVER_VERSION = (2, 12)
"""Older servers have no atomic batches (they store a "batch" message by message) and check the
expected sequence before de-duplication (a retried append gets a conflict instead of its ack)."""

_BATCH_INCOMPLETE = 10176
"""A batch whose earlier messages a new leader never saw (lost with the old one): nothing was stored."""

_T = TypeVar("_T")

_SHIFT = 16
_MAX_SHARDS = 64
_PLAIN = re.compile(r"[A-Za-z0-9_-]{1,200}")
_BATCH_TOO_LARGE = 10199
_LOOKUPS = 256
_CACHED_HEADS = 4096
_WRONG_LAST_SEQUENCE = 10071
_NO_MESSAGE = 10037
_NOT_CLUSTERED = 10074
"""A stream of more than one replica asked of a server that is not in a cluster."""
_HEADER_ROOM = 4096

_Row = tuple[bytes, str, int, bytes, bytes]
"""An event in a message: its id, type, schema version, data and chain hash."""
_Head = tuple[int, int, SessionInfo | None, bytes | None]
"""A session's last message sequence (0 if none), version, index row (None if deleted) and chain hash."""


def _token(value: str) -> str:
    """A subject token for an id: as is when it is plain, else ``~`` and its UTF-8 in hex."""
    return value if _PLAIN.fullmatch(value) else "~" + value.encode().hex()


def _headers(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    lines = base64.b64decode(raw).decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


class _Message(msgspec.Struct, frozen=True):
    subject: str
    seq: int
    headers: dict[str, str]
    data: bytes
    nanos: int
    """When the stream's leader stored it, in nanoseconds since the epoch (the sharded feed's merge key)."""


class NatsEventStore(BaseEventStore):
    """An :class:`~kern_events.store.EventStore` in a JetStream stream on a NATS cluster.

    ``servers`` are the cluster's client urls; ``prefix`` names the stream and its subjects (one
    stream per prefix); ``replicas`` is its replication factor (3: a write is acknowledged once two
    of three servers hold it); ``timeout`` bounds each request, after which the call raises
    :class:`~kern_events.errors.StorageUnavailableError` (as during a leader election); ``shards``
    spreads sessions over that many streams (see the module docstring; fixed for the life of the data).
    With ``create_streams=False`` opening never creates a stream: a missing one is a
    :class:`~kern_events.errors.SchemaMissingError` (what read-only tools such as ``kern-events
    verify`` need, so that a misspelt prefix is an error rather than a new, empty stream).
    """

    inline_limit: int | None = 512 * 1024

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        prefix: str = "KERN",
        replicas: int = 3,
        timeout: float = 5.0,
        shards: int = 1,
        create_streams: bool = True,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
    ) -> None:
        super().__init__(codec=codec, max_event_size=max_event_size, chain_key=chain_key)
        if not isinstance(prefix, str) or not _PLAIN.fullmatch(prefix):
            raise InvalidArgumentError("prefix", f"expected letters, digits, '-' or '_', got {prefix!r}")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise InvalidArgumentError("replicas", f"expected 1 to 5, got {replicas!r}")
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        if not self._servers or not all(isinstance(url, str) and url for url in self._servers):
            raise InvalidArgumentError("servers", f"expected a url or a list of urls, got {servers!r}")
        if check_seconds("timeout", timeout, finite=True) <= 0:
            raise InvalidArgumentError("timeout", f"expected seconds > 0, got {timeout!r}")
        if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= _MAX_SHARDS:
            raise InvalidArgumentError("shards", f"expected 1 to {_MAX_SHARDS}, got {shards!r}")
        self._prefix = prefix
        self._streams = [prefix] + [f"{prefix}~{shard}" for shard in range(1, shards)]
        """Shard k's stream, which is also the first token of its subjects (so a subject names its stream)."""
        self._shard_numbers = {stream: shard for shard, stream in enumerate(self._streams)}
        if shards > 1:
            self.feed_layout = f"nats:{prefix}:{shards}"
        self._replicas = replicas
        self._timeout = timeout
        self._create_streams = create_streams
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._clients_lock = threading.Lock()
        self._heads_lock = threading.Lock()
        self._heads: OrderedDict[str, _Head] = OrderedDict()
        self._loop_ends: dict[asyncio.AbstractEventLoop, Callable[[], None]] = {}
        self._connecting: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    # -- connection ----------------------------------------------------------------------------------

    async def _open(self) -> None:
        await self._ensure_stream()

    async def _connect(self) -> Any:
        """The connection of the running event loop (a nats client belongs to the loop that made it)."""
        loop = asyncio.get_running_loop()
        known = self._clients.get(loop)
        if known is not None and not known.is_closed:
            return known
        with self._clients_lock:
            connecting = self._connecting.setdefault(loop, asyncio.Lock())
        async with connecting:  # concurrent first requests of a loop share one connection
            known = self._clients.get(loop)
            if known is not None and not known.is_closed:
                return known
            return await self._connect_now(loop)

    async def _connect_now(self, loop: asyncio.AbstractEventLoop) -> Any:
        import nats
        import nats.errors

        try:
            async with asyncio.timeout(self._timeout):
                nc = await nats.connect(
                    servers=self._servers,
                    connect_timeout=self._timeout,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.2,
                    allow_reconnect=True,
                    error_cb=_quiet,
                )
        except (nats.errors.Error, OSError, TimeoutError) as error:
            raise StorageUnavailableError(f"cannot connect to NATS at {', '.join(self._servers)}: {error}") from error
        version = nc.connected_server_version
        if (version.major, version.minor) < MIN_SERVER_VERSION:
            await nc.close()
            raise UnsupportedError(
                f"nats-server {version} (2.12 or newer is needed: atomic batch publish, and de-duplication "
                "before the expected-sequence check)",
                type(self).__name__,
            )
        with self._clients_lock:
            self._clients[loop] = nc

        async def close_at_loop_end() -> None:
            with self._clients_lock:
                if self._clients.get(loop) is nc:
                    del self._clients[loop]
                self._connecting.pop(loop, None)
            await nc.close()

        self._loop_ends[loop] = on_loop_end(close_at_loop_end)
        return nc

    async def _close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, {}
            ends, self._loop_ends = self._loop_ends, {}
        here = asyncio.get_running_loop()
        for loop, nc in clients.items():
            if loop is here:
                ends[loop]()
                await nc.close()
            elif loop.is_running():  # another thread's loop: closed there, now or when that loop ends
                await finish_on(loop, nc.close())

    async def _ensure_stream(self) -> None:
        """Create the shards' streams that are missing; shard 0's stream (``<prefix>``, made first)
        records the shard count, and opening the data with another count is a :class:`ShardLayoutError`
        (its sessions would be looked for in the wrong streams). Without ``create_streams`` a missing
        stream is a :class:`SchemaMissingError` and nothing is created."""
        for shard, stream in enumerate(self._streams):
            config = {
                "name": stream,
                "subjects": [f"{stream}.>"],
                "retention": "limits",
                "storage": "file",
                "num_replicas": self._replicas,
                "allow_rollup_hdrs": True,
                "allow_atomic": True,
                "allow_direct": False,
                "discard": "old",
                "max_msgs_per_subject": -1,
                "metadata": {"kern_shards": str(len(self._streams))},
            }
            reply = await self._api(f"STREAM.INFO.{stream}", None, allow=(10059,))
            if reply.get("error") and not self._create_streams:
                raise SchemaMissingError(
                    f"NATS at {', '.join(self._servers)}", _LAYOUT_VERSION, missing=f"stream {stream!r}"
                )
            if reply.get("error"):
                # Another store may be creating it at the same moment (the server then answers 10058,
                # or 500 while that creation is under way): if it exists now, that is as good.
                reply = await self._api(f"STREAM.CREATE.{stream}", config, allow=(10058, 10049))
                if reply.get("error"):
                    reply = await self._api(f"STREAM.INFO.{stream}", None)
            if shard == 0:
                found = ((reply.get("config") or {}).get("metadata") or {}).get("kern_shards", "1")
                if found != str(len(self._streams)):
                    raise ShardLayoutError(
                        "shards",
                        f"{len(self._streams)} shards",
                        f"{found} shards (the data under prefix {self._prefix!r}: open it with shards={found})",
                    )

    async def _api(self, name: str, body: object, *, allow: tuple[int, ...] = ()) -> dict[str, Any]:
        """A JetStream API request; an error not in ``allow`` (by ``err_code``) raises."""
        payload = b"" if body is None else json.dumps(body).encode()
        reply = json.loads(await self._request(f"$JS.API.{name}", payload))
        error = reply.get("error")
        if error and error.get("err_code") not in allow:
            raise self._failure(error, name)
        return reply  # type: ignore[no-any-return]

    def _failure(self, error: dict[str, Any], what: str) -> Exception:
        """A JetStream API error as ours: unavailable (retry) for elections, timeouts and overload,
        replicas a lone server cannot hold as :class:`InvalidArgumentError`, else a
        :class:`StorageError` with the server's words."""
        description = f"{what}: {error.get('description')} (code {error.get('code')}, {error.get('err_code')})"
        words = str(error.get("description")).lower()
        if (
            error.get("code") in (503, 408, 429)
            or error.get("err_code") == _BATCH_INCOMPLETE
            or any(word in words for word in ("offline", "leader", "not avail"))
        ):
            return StorageUnavailableError(f"JetStream is unavailable, retry ({description})")
        if error.get("err_code") == _NOT_CLUSTERED:
            return InvalidArgumentError(
                "replicas", f"{self._replicas} replicas need a cluster; a lone server holds replicas=1 ({description})"
            )
        return StorageError(f"JetStream refused {description}")

    async def _until_answered(self, send: Callable[[], Awaitable[_T]]) -> _T:
        """``send()`` again while nothing answers it (:class:`_NoResponders`: nothing was stored), until
        the timeout. A stream just created or electing has no interest on every server yet; a batch is
        resent whole by its caller's ``send``, since its earlier messages went nowhere either."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return await send()
            except _NoResponders:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> bytes:
        """A request, sent again while no server answers it (except a batch's commit: see :meth:`_commit`)."""
        if headers is not None and "Nats-Batch-Id" in headers:
            return await self._request_once(subject, payload, headers)
        return await self._until_answered(lambda: self._request_once(subject, payload, headers))

    async def _request_once(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> bytes:
        import nats.errors

        nc = await self._connect()
        try:
            reply = await nc.request(subject, payload, timeout=self._timeout, headers=headers)
        except nats.errors.NoRespondersError as error:
            raise _NoResponders("JetStream is unavailable, retry (no responders)") from error
        except nats.errors.TimeoutError as error:
            raise StorageUnavailableError("JetStream is unavailable, retry (timed out)") from error
        except nats.errors.Error as error:
            raise StorageUnavailableError(f"NATS failed: {error!r}") from error
        return bytes(reply.data)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        import nats.errors

        try:
            await (await self._connect()).publish(subject, payload, headers=headers)
        except nats.errors.Error as error:
            raise StorageUnavailableError(f"NATS failed: {error!r}") from error

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[None]:
        """While open, every append committed to the stream (by any process) fires
        :attr:`change_signal`: an ordered push consumer of the events' subjects, new messages only,
        headers only (a core subscription would also see batches before they commit, or never do).
        If it cannot be made (the cluster is away), subscriptions poll."""
        await self._ensure_open()
        import nats.errors
        from nats.js import api

        async def wake(message: Any) -> None:
            self.change_signal.fire()

        subscriptions = []
        with contextlib.suppress(nats.errors.Error, StorageUnavailableError, TimeoutError):
            js = (await self._connect()).jetstream()
            for stream in self._streams:
                subscriptions.append(
                    await js.subscribe(
                        f"{stream}.e.>",
                        stream=stream,
                        cb=wake,
                        ordered_consumer=True,
                        deliver_policy=api.DeliverPolicy.NEW,
                        headers_only=True,
                        idle_heartbeat=5.0,
                    )
                )
        try:
            yield
        finally:
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()

    # -- reading messages --------------------------------------------------------------------------

    async def _get(self, query: dict[str, object], stream: str | None = None) -> _Message | None:
        """One message through the stream leader, or ``None`` if there is none; the stream is the one
        the query's subject names, unless given."""
        if stream is None:
            stream = _stream_of(str(query.get("last_by_subj") or query["next_by_subj"]))
        reply = await self._api(f"STREAM.MSG.GET.{stream}", query, allow=(_NO_MESSAGE,))
        message = reply.get("message")
        if reply.get("error") or message is None:
            return None
        data = base64.b64decode(message["data"]) if message.get("data") else b""
        return _Message(
            message["subject"], int(message["seq"]), _headers(message.get("hdrs")), data, _nanos(message.get("time"))
        )

    async def _purge(self, subject: str, **options: object) -> dict[str, Any]:
        """Remove the messages of ``subject`` (a filter) from its stream."""
        return await self._api(f"STREAM.PURGE.{_stream_of(subject)}", {"filter": subject, **options})

    def _stream_for(self, session_id: str) -> str:
        """The stream of the session's shard: a stable hash of its id (the same in every process)."""
        if len(self._streams) == 1:
            return self._streams[0]
        digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
        return self._streams[int.from_bytes(digest) % len(self._streams)]

    def _position(self, message: _Message, number: int) -> int:
        """A record's position: its message's sequence and index in it, and its shard in the high bits."""
        return self._shard_numbers[_stream_of(message.subject)] << FEED_SHARD_SHIFT | message.seq << _SHIFT | number

    async def _last(self, subject: str) -> _Message | None:
        return await self._get({"last_by_subj": subject})

    async def _next(self, subject: str, seq: int) -> _Message | None:
        return await self._get({"seq": max(seq, 1), "next_by_subj": subject})

    def _events_subject(self, session_id: str) -> str:
        return f"{self._stream_for(session_id)}.e.{_token(session_id)}"

    def _id_subject(self, event_id: UUID, stream: str) -> str:
        return f"{stream}.id.{event_id.hex}"

    def _chunk_subject(self, event_id: UUID, stream: str) -> str:
        return f"{stream}.c.{event_id.hex}"

    def _snapshot_subject(self, session_id: str, name: str) -> str:
        return f"{self._stream_for(session_id)}.s.{_token(session_id)}.{_token(name)}"

    async def _head(self, session_id: str) -> _Head:
        """The session's head, read through the leader: see :data:`_Head`."""
        last = await self._last(self._events_subject(session_id))
        if last is None:
            return 0, 0, None, None
        version = int(last.headers.get("Kern-To", "0"))
        info_text = last.headers.get("Kern-Info")
        info = msgspec.json.decode(base64.b64decode(info_text), type=SessionInfo) if info_text else None
        chain = last.headers.get("Kern-Chain")
        return last.seq, version, info, bytes.fromhex(chain) if chain else None

    # -- appending ---------------------------------------------------------------------------------

    async def _append(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> AppendResult:
        part = PendingAppend(session_id=session_id, events=events, pending=pending, expected=expected)
        return (await self._append_parts([part], recorded_at))[0]

    async def _append_many(self, parts: Sequence[PendingAppend], recorded_at: float) -> list[AppendResult]:
        """One atomic batch: within one stream only, so a sharded store does not offer it."""
        if len(self._streams) > 1:
            raise UnsupportedError("append_many", f"{type(self).__name__} with {len(self._streams)} shards")
        return await self._append_parts(parts, recorded_at)

    async def _append_parts(self, parts: Sequence[PendingAppend], recorded_at: float) -> list[AppendResult]:
        suspect = False  # a batch was refused: an id may be taken, so look at all of them
        fresh = False  # read the heads through the leader, not from this writer's cache
        while True:
            heads = []
            for part in parts:
                with self._heads_lock:
                    cached = None if fresh else self._heads.get(part.session_id)
                heads.append(cached if cached is not None else await self._head(part.session_id))
            if not fresh and any(
                not check_expected(part.expected, head[1]) for part, head in zip(parts, heads, strict=True)
            ):
                fresh = True  # a cached head may be behind another writer's append: ask the leader
                continue
            retries: list[AppendResult | None] = []
            for part, (_, version, _, _) in zip(parts, heads, strict=True):
                retry = None
                if suspect or not check_expected(part.expected, version):
                    retry = match_retry(part.session_id, part.pending, await self._find_events(_ids(part)))
                    if retry is None and not check_expected(part.expected, version):
                        raise conflict(part.session_id, part.expected, version)
                retries.append(retry)
            todo = [index for index, retry in enumerate(retries) if retry is None]
            if not todo:
                return [retry for retry in retries if retry is not None]
            if len(self._streams) > 1:
                await self._used_in_other_shards([parts[index] for index in todo])
            max_payload = int((await self._connect()).max_payload)
            messages: list[tuple[str, bytes, dict[str, str]]] = []
            spans: dict[int, list[int]] = {}
            for index in todo:
                part, (seq, version, info, chain) = parts[index], heads[index]
                start = len(messages)
                messages.extend(self._part_messages(part, seq, version, info, chain, recorded_at, max_payload))
                spans[index] = [start, len(messages)]
            try:
                first, last = await self._commit(messages)
            except _Rejected as rejected:
                # another writer moved a session, or one of the ids is stored: look again
                with self._heads_lock:
                    for part in parts:
                        self._heads.pop(part.session_id, None)
                await self._taken_elsewhere(parts, rejected.seq)
                suspect = fresh = True
                continue
            results: list[AppendResult] = []
            offset = first
            for index, part in enumerate(parts):
                retry = retries[index]
                if retry is not None:
                    results.append(retry)
                    continue
                _, version, _, _ = heads[index]
                start, end = spans[index]
                last_headers = messages[end - 1][2]
                info = msgspec.json.decode(base64.b64decode(last_headers["Kern-Info"]), type=SessionInfo)
                chain = bytes.fromhex(last_headers["Kern-Chain"])
                self._remember(part.session_id, (offset + end - 1, version + len(part.pending), info, chain))
                positions: list[int] = []
                for number in range(start, end):
                    subject, _, headers = messages[number]
                    if subject == self._events_subject(part.session_id):
                        count = int(headers["Kern-To"]) - int(headers["Kern-From"]) + 1
                        at = _Message(subject, offset + number, {}, b"", 0)
                        positions.extend(self._position(at, n) for n in range(count))
                results.append(
                    AppendResult(
                        session_id=part.session_id,
                        from_version=version + 1,
                        to_version=version + len(part.pending),
                        positions=tuple(positions),
                        event_ids=tuple(new.event_id for new in part.pending),
                        recorded_at=recorded_at,
                    )
                )
            assert offset + len(messages) - 1 == last
            return results

    def _remember(self, session_id: str, head: _Head) -> None:
        """Keep the head this store just wrote: its next append to the session needs no read first (the
        server still checks it, and a refused batch reads the head through the leader)."""
        with self._heads_lock:
            self._heads[session_id] = head
            self._heads.move_to_end(session_id)
            while len(self._heads) > _CACHED_HEADS:
                self._heads.popitem(last=False)

    def _part_messages(
        self,
        part: PendingAppend,
        seq: int,
        version: int,
        info: SessionInfo | None,
        chain: bytes | None,
        recorded_at: float,
        max_payload: int,
    ) -> list[tuple[str, bytes, dict[str, str]]]:
        """The id, chunk and event messages of one session's append."""
        subject, stream = self._events_subject(part.session_id), self._stream_for(part.session_id)
        out: list[tuple[str, bytes, dict[str, str]]] = []
        for offset, new in enumerate(part.pending, start=1):
            out.append(
                (
                    self._id_subject(new.event_id, stream),
                    part.session_id.encode(),
                    {"Kern-Version": str(version + offset), "Nats-Expected-Last-Subject-Sequence": "0"},
                )
            )
            for number, chunk in enumerate(new.chunks):
                out.append((self._chunk_subject(new.event_id, stream), chunk, {"Kern-Part": str(number)}))
        room = max(max_payload - _HEADER_ROOM, 1024)
        groups: list[list[_Row]] = [[]]
        size = 0
        hashes = self.chain.hashes(part.session_id, chain, version, part.pending, recorded_at)
        for new, link in zip(part.pending, hashes, strict=True):
            row_size = len(new.data) + len(new.type) + 32
            if groups[-1] and size + row_size > room:
                groups.append([])
                size = 0
            groups[-1].append((new.event_id.bytes, new.type, new.schema_version, new.data, link))
            size += row_size
        to_version = version + len(part.pending)
        index = advance_index(info, part.session_id, part.events, to_version, recorded_at)
        low = version + 1
        for number, rows in enumerate(groups):
            headers = {
                "Kern-From": str(low),
                "Kern-To": str(low + len(rows) - 1),
                "Kern-Recorded": repr(recorded_at),
            }
            if number == 0:
                headers["Nats-Expected-Last-Subject-Sequence"] = str(seq)
            if number == len(groups) - 1:
                headers["Kern-Info"] = base64.b64encode(msgspec.json.encode(index)).decode()
                headers["Kern-Chain"] = hashes[-1].hex()
            out.append((subject, msgspec.msgpack.encode(rows), headers))
            low += len(rows)
        return out

    async def _commit(self, messages: Sequence[tuple[str, bytes, dict[str, str]]]) -> tuple[int, int]:
        """Publish ``messages`` as one atomic batch; the sequences of its first and last message. A
        commit that found no responders stored nothing: the whole batch is sent again, under a new
        batch id, until the timeout."""
        return await self._until_answered(lambda: self._commit_once(messages))

    async def _commit_once(self, messages: Sequence[tuple[str, bytes, dict[str, str]]]) -> tuple[int, int]:
        """One attempt of :meth:`_commit`."""
        batch = uuid.uuid4().hex
        for number, (subject, data, headers) in enumerate(messages, start=1):
            headers = {**headers, "Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(number)}
            if number < len(messages):
                await self._publish(subject, data, headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            reply = json.loads(await self._request(subject, data, headers))
            error = reply.get("error")
            if error:
                if error.get("err_code") == _WRONG_LAST_SEQUENCE:
                    found = re.search(r"wrong last sequence: (\d+)", str(error.get("description")))
                    raise _Rejected(int(found[1]) if found else None)
                if error.get("err_code") == _BATCH_TOO_LARGE:
                    raise InvalidArgumentError(
                        "events",
                        f"this append needs {len(messages)} messages (one per event id, the chunks of large "
                        "payloads, and the events), more than the server's atomic batch limit (nats-server's "
                        "jetstream { limits { batch { max_msgs } } }, 1,000 by default)",
                    )
                raise self._failure(error, "an append")
            last = int(reply["seq"])
            return last - len(messages) + 1, last
        raise AssertionError("unreachable: an append has messages")  # pragma: no cover

    async def _taken_elsewhere(self, parts: Sequence[PendingAppend], seq: int | None) -> None:
        """If the message that failed a batch's check is the id entry of one of its events stored in
        another session, that is an :class:`IdempotencyError` at once, without looking up every id
        of the batch (thousands, for a large append)."""
        stream = self._stream_for(parts[0].session_id)  # a batch is within one stream
        message = None if seq is None else await self._get({"seq": seq}, stream)
        if message is None or not message.subject.startswith(f"{stream}.id."):
            return
        try:
            event_id = UUID(hex=message.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        part = next((part for part in parts if event_id in {new.event_id for new in part.pending}), None)
        if part is None:
            return
        stored = (await self._find_events([event_id]))[0]
        if stored is not None and stored.session_id != part.session_id:
            raise IdempotencyError(part.session_id, event_id, "is already used by another session")

    async def _find_events(
        self, event_ids: Sequence[UUID], streams: Sequence[str] | None = None
    ) -> Sequence[StoredEvent | None]:
        """Each id's event: its id message (in the stream of its session's shard, so every shard's is
        looked at, or those of ``streams``) names the session and version. Up to :data:`_LOOKUPS`
        lookups go at once, so a batch of thousands is not thousands of round trips in a row."""
        found: list[StoredEvent | None] = [None] * len(event_ids)
        wanted = [(index, stream) for index in range(len(event_ids)) for stream in (streams or self._streams)]
        for start in range(0, len(wanted), _LOOKUPS):
            window = wanted[start : start + _LOOKUPS]
            entries = await asyncio.gather(
                *(self._last(self._id_subject(event_ids[index], stream)) for index, stream in window)
            )
            for (index, _), entry in zip(window, entries, strict=True):
                if entry is not None:
                    session_id, version = entry.data.decode(), int(entry.headers["Kern-Version"])
                    page = await self._read_page(session_id, version, version, 1, False, None)
                    stored = page[0] if page and isinstance(page[0], StoredEvent) else None
                    if stored is None or stored.event_id != event_ids[index]:
                        # left by a delete that stopped before purging its ids: the id is free again
                        await self._purge(entry.subject, seq=entry.seq + 1)
                        stored = None
                    found[index] = found[index] or stored
        return found

    async def _used_in_other_shards(self, parts: Sequence[PendingAppend]) -> None:
        """An :class:`IdempotencyError` if an event id of ``parts`` is stored in another shard's
        session. The server enforces an id once per stream only; across shards this check is not
        atomic with the append (two concurrent appends of one id to sessions of different shards can
        both be stored: reusing ids across sessions is the caller's mistake, and a retry of one
        session's append is still recognised, in its own shard)."""
        for part in parts:
            others = [stream for stream in self._streams if stream != self._stream_for(part.session_id)]
            for event_id, stored in zip(_ids(part), await self._find_events(_ids(part), others), strict=True):
                if stored is not None:
                    raise IdempotencyError(part.session_id, event_id, "is already used by another session")

    # -- reading -------------------------------------------------------------------------------------

    def _rows(self, message: _Message, session_id: str | None) -> list[StoredEvent | CorruptRecordError]:
        """The stored events of one event message (a damaged one ends the list as an error)."""
        low = int(message.headers.get("Kern-From", "0"))
        if session_id is None:
            token = message.subject.split(".", 2)[2]
            session_id = bytes.fromhex(token[1:]).decode() if token.startswith("~") else token
        try:
            rows = msgspec.msgpack.decode(message.data, type=list[_Row])
            recorded_at = float(message.headers["Kern-Recorded"])
        except (msgspec.DecodeError, KeyError, ValueError) as error:
            return [
                CorruptRecordError(
                    session_id, low, "?", f"undecodable message: {error}", position=self._position(message, 0)
                )
            ]
        return [
            StoredEvent(
                session_id=session_id,
                version=low + number,
                position=self._position(message, number),
                event_id=UUID(bytes=event_id),
                type=type_,
                schema_version=schema_version,
                data=data,
                recorded_at=recorded_at,
                chain=chain,
            )
            for number, (event_id, type_, schema_version, data, chain) in enumerate(rows)
        ]

    async def _seek(self, subject: str, version: int) -> int:
        """A sequence from which the session's first message holding ``version`` (or a later one) is
        the next on ``subject``: a binary search over sequences, one leader round trip a step, after
        two shortcuts (the session's first and last message) that cover reads from the start and tails."""
        first = await self._next(subject, 1)
        if first is None or _to(first) >= version:
            return 1 if first is None else first.seq
        last = await self._last(subject)
        if last is None or _to(last) < version:
            return 1 << 62
        if int(last.headers.get("Kern-From", "0")) <= version:
            return last.seq
        low, high = first.seq + 1, last.seq
        while low < high:
            middle = (low + high) // 2
            found = await self._next(subject, middle)
            if found is None or _to(found) >= version:
                high = middle
            else:
                low = found.seq + 1
        return low

    async def _read_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Page:
        subject = self._events_subject(session_id)
        start = low
        if backwards and types is None:
            top = high
            if top is None:
                last = await self._last(subject)
                top = 0 if last is None else _to(last)
            start = max(low, top - limit + 1)
        found: list[StoredEvent | CorruptRecordError] = []
        seq = await self._seek(subject, start)
        while True:
            message = await self._next(subject, seq)
            if message is None:
                break
            seq = message.seq + 1
            if "Kern-Deleted" in message.headers or _to(message) < start:
                continue
            for row in self._rows(message, session_id):
                if isinstance(row, CorruptRecordError):
                    found.append(row)
                    break
                if high is not None and row.version > high:
                    break
                if row.version >= start and (types is None or row.type in types):
                    found.append(row)
            if isinstance(found[-1:] and found[-1], CorruptRecordError):
                break
            if not backwards and len(found) >= limit:
                break
            if high is not None and _to(message) >= high:
                break
        if backwards:
            good = [row for row in found if isinstance(row, StoredEvent)]
            return good[::-1][:limit]
        return found[:limit]

    async def _read_all_page(self, from_position: int, limit: int) -> Page:
        subject = f"{self._streams[0]}.e.>"
        found: list[StoredEvent | CorruptRecordError] = []
        seq = max(from_position >> _SHIFT, 1)
        while len(found) < limit:
            message = await self._next(subject, seq)
            if message is None:
                break
            seq = message.seq + 1
            if "Kern-Deleted" in message.headers:
                continue
            for row in self._rows(message, None):
                if isinstance(row, CorruptRecordError):
                    found.append(row)
                    return found
                if row.position >= from_position:
                    found.append(row)
        return found[:limit]

    # A sharded feed: each shard's stream in its own (commit) order, merged by the time its leader
    # stored each message (ties by shard). Nothing orders appends to different shards, so a message
    # may become readable after a later-stamped one of another shard was delivered: the cursor keeps
    # a position per shard, so it is still delivered once, after it, and never skipped.

    async def _feed_start(self, from_position: int) -> FeedCursor:
        shard, position = from_position >> FEED_SHARD_SHIFT, from_position & ((1 << FEED_SHARD_SHIFT) - 1)
        if shard >= len(self._streams):
            raise InvalidArgumentError("from_position", f"{from_position} names shard {shard} of {len(self._streams)}")
        positions = [0] * len(self._streams)
        if from_position == 0:
            return FeedCursor(layout=self.feed_layout or "", positions=tuple(positions))
        positions[shard] = position
        at = await self._next(f"{self._streams[shard]}.e.>", position >> _SHIFT)
        for other, stream in enumerate(self._streams):
            if other == shard:
                continue
            if at is None:  # past the shard's end: the other shards from their ends too
                info = await self._api(f"STREAM.INFO.{stream}", None)
                positions[other] = (int(info["state"]["last_seq"]) + 1) << _SHIFT
                continue
            query: dict[str, object] = {"start_time": _rfc3339(at.nanos), "next_by_subj": f"{stream}.e.>"}
            found = await self._get(query)
            while found is not None and found.nanos == at.nanos and other < shard:
                found = await self._next(f"{stream}.e.>", found.seq + 1)  # a tie: shard order decides
            if found is None:
                info = await self._api(f"STREAM.INFO.{stream}", None)
                positions[other] = (int(info["state"]["last_seq"]) + 1) << _SHIFT
            else:
                positions[other] = found.seq << _SHIFT
        return FeedCursor(layout=self.feed_layout or "", positions=tuple(positions))

    async def _read_feed_page(self, cursor: FeedCursor, limit: int) -> Page:
        if len(cursor.positions) != len(self._streams):
            raise ShardLayoutError("from_position", f"{len(self._streams)} positions", str(len(cursor.positions)))
        subjects = [f"{stream}.e.>" for stream in self._streams]
        heads = list(
            await asyncio.gather(
                *(
                    self._next(subject, start >> _SHIFT)
                    for subject, start in zip(subjects, cursor.positions, strict=True)
                )
            )
        )
        found: list[StoredEvent | CorruptRecordError] = []
        in_shard = (1 << FEED_SHARD_SHIFT) - 1
        while len(found) < limit:
            ready = [(message.nanos, shard) for shard, message in enumerate(heads) if message is not None]
            if not ready:
                break
            shard = min(ready)[1]
            message = heads[shard]
            assert message is not None
            heads[shard] = await self._next(subjects[shard], message.seq + 1)
            if "Kern-Deleted" in message.headers:
                continue
            for row in self._rows(message, None):
                if isinstance(row, CorruptRecordError):
                    found.append(row)
                    return found
                if row.position & in_shard >= cursor.positions[shard]:
                    found.append(row)
        return found[:limit]

    async def _read_chunks(self, event_ids: Sequence[UUID]) -> Mapping[UUID, Sequence[bytes]]:
        chunks: dict[UUID, list[bytes]] = {}
        for event_id in event_ids:
            for stream in self._streams:  # in the shard of the event's session
                subject, seq = self._chunk_subject(event_id, stream), 1
                while (message := await self._next(subject, seq)) is not None:
                    chunks.setdefault(event_id, []).append(message.data)
                    seq = message.seq + 1
                if event_id in chunks:
                    break
        return chunks

    async def _current_version(self, session_id: str) -> int:
        return (await self._head(session_id))[1]

    async def _get_session_info(self, session_id: str) -> SessionInfo | None:
        return (await self._head(session_id))[2]

    async def _list_sessions(self, query: SessionFilter) -> list[SessionInfo]:
        subjects: list[str] = []
        for stream in self._streams:
            reply = await self._api(f"STREAM.INFO.{stream}", {"subjects_filter": f"{stream}.e.*"})
            subjects.extend(reply.get("state", {}).get("subjects") or {})
        rows = []
        for subject in subjects:
            last = await self._last(subject)
            if last is None or "Kern-Info" not in last.headers:
                continue
            info = msgspec.json.decode(base64.b64decode(last.headers["Kern-Info"]), type=SessionInfo)
            if query.matches(info):
                rows.append(info)
        rows.sort(key=lambda info: info.session_id, reverse=query.descending)
        rows.sort(key=lambda info: getattr(info, query.sort_by), reverse=query.descending)
        end = None if query.limit is None else query.offset + query.limit
        return rows[query.offset : end]

    # -- deleting and snapshots -----------------------------------------------------------------------

    async def _delete_session(self, session_id: str) -> bool:
        with self._heads_lock:
            self._heads.pop(session_id, None)
        subject = self._events_subject(session_id)
        seq, version, info, _ = await self._head(session_id)
        stream = self._stream_for(session_id)
        snapshots = await self._purge(f"{stream}.s.{_token(session_id)}.>")
        if seq == 0 or info is None:
            return bool(snapshots.get("purged"))
        stored = list(await self._read_page(session_id, 1, None, 1 << 30, False, None))
        headers = {
            "Kern-From": str(version + 1),
            "Kern-To": str(version),
            "Kern-Deleted": "1",
            "Nats-Rollup": "sub",
            "Nats-Expected-Last-Subject-Sequence": str(seq),
        }
        reply = json.loads(await self._request(subject, b"", headers))
        if reply.get("error"):
            if reply["error"].get("err_code") == _WRONG_LAST_SEQUENCE:
                return await self._delete_session(session_id)
            raise self._failure(reply["error"], "a delete")
        for row in stored:
            if isinstance(row, StoredEvent):
                await self._purge(self._id_subject(row.event_id, stream))
                if row.data[:1] == b"\xc1":
                    await self._purge(self._chunk_subject(row.event_id, stream))
        return True

    async def _snapshots(self, session_id: str, name: str) -> list[tuple[int, Snapshot]]:
        subject, seq, found = self._snapshot_subject(session_id, name), 1, []
        while (message := await self._next(subject, seq)) is not None:
            seq = message.seq + 1
            try:
                snapshot = msgspec.msgpack.decode(message.data, type=Snapshot)
            except msgspec.DecodeError:
                continue
            found.append((message.seq, snapshot))
        return found

    async def _save_snapshot(self, snapshot: Snapshot) -> None:
        subject = self._snapshot_subject(snapshot.session_id, snapshot.name)
        encoded = msgspec.msgpack.encode(snapshot)
        limit = int((await self._connect()).max_payload)
        if len(encoded) > limit:
            raise InvalidArgumentError(
                "snapshot.data",
                f"the snapshot encodes to {len(encoded)} bytes; this NATS server takes messages of at most "
                f"{limit} bytes (its max_payload)",
            )
        reply = json.loads(await self._request(subject, encoded, {}))
        if reply.get("error"):
            raise self._failure(reply["error"], "a snapshot")
        kept = await self._snapshots(snapshot.session_id, snapshot.name)
        newest: dict[int, int] = {}
        for seq, item in kept:
            newest[item.version] = seq
        keep = set(sorted(newest.items())[-SNAPSHOTS_KEPT:])
        for seq, item in kept:
            if (item.version, seq) not in keep:
                await self._api(
                    f"STREAM.MSG.DELETE.{self._stream_for(snapshot.session_id)}", {"seq": seq}, allow=(10057,)
                )

    async def _load_snapshot(
        self, session_id: str, name: str, schema_version: int | None, max_version: int | None
    ) -> Snapshot | None:
        best: Snapshot | None = None
        for _, snapshot in await self._snapshots(session_id, name):
            if (
                (schema_version is None or snapshot.schema_version == schema_version)
                and (max_version is None or snapshot.version <= max_version)
                and (best is None or snapshot.version >= best.version)
            ):
                best = snapshot
        return best


class _NoResponders(StorageUnavailableError):
    """Nothing received a request (no stream has interest in its subject on this server yet)."""


class _Rejected(Exception):
    """The batch's expected sequences no longer held (a concurrent writer, or an event id is taken);
    ``seq`` is the sequence the server found on the subject whose check failed, when it says."""

    def __init__(self, seq: int | None) -> None:
        super().__init__(seq)
        self.seq = seq


def _stream_of(subject: str) -> str:
    """The stream holding ``subject``: its first token (``<prefix>`` or ``<prefix>~<shard>``)."""
    return subject.split(".", 1)[0]


def _nanos(text: object) -> int:
    """A message's RFC 3339 time (as the server writes it, with up to 9 fraction digits) in nanoseconds."""
    if not isinstance(text, str) or len(text) < 20:
        return 0
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = int(datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC).timestamp())
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def _rfc3339(nanos: int) -> str:
    seconds, fraction = divmod(nanos, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"


def _to(message: _Message) -> int:
    """The last version an event message holds (a tombstone's: the version the session was deleted at)."""
    return int(message.headers.get("Kern-To", "0"))


def _ids(part: PendingAppend) -> list[UUID]:
    return [new.event_id for new in part.pending]


async def _quiet(error: Exception) -> None:
    """nats-py's error callback: its errors reach callers as typed errors, not as log noise."""
