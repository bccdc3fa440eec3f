"""The DynamoDB backend: sessions as items of one table (``pip install 'kern-events[dynamodb]'``, on aioboto3).

One table, because an append must move a session's head and store its events in one
``TransactWriteItems``, and a single table keeps every item of a session under one partition key
(a session's events, head and snapshots are read by one ``Query``). Keys are strings ``pk``/``sk``:

* ``pk = s#<session>``, ``sk = h``: the session's head: its version ``v``, the chain hash ``hash`` of its
  last event, and its index row ``info`` (msgpack). Deletion removes ``info`` and ``hash`` and keeps ``v``.
  A head with a user also carries ``gu`` (the user id) and ``gt`` (``updated_at``), the keys of the
  global secondary index ``by_user`` that lists a user's sessions newest first (sparse: sessions without
  a user are not in it). Every live head also carries ``gs`` (its listing shard, ``crc32(session) %
  listing_shards``) and ``gt``, the keys of the global secondary index ``by_time``, which serves the
  listing without a user newest first (see *Listing* below). A GSI is eventually consistent on AWS: a
  session may show a moment late.
* ``pk = s#<session>``, ``sk = e#<version, 20 digits>``: one event (id, type, schema version, data,
  recorded time, chain hash). Versions sort as strings because they are zero-padded. An event whose
  type is one of the store's ``indexed_types`` (by default the state events a context load reads,
  :data:`STATE_EVENT_TYPES`) also carries ``x``, a copy of its sort key: the sort
  key of the sparse local secondary index ``by_type`` (see *Reads by type* below).
* ``pk = i#<event id>``, ``sk = i``: the event id's owner (session and version). Written with
  ``attribute_not_exists``, so an id is stored once in the whole table, enforced by DynamoDB.
* ``pk = c#<event id>``, ``sk = <part, 6 digits>``: the chunks of a payload above :attr:`inline_limit`.
* ``pk = s#<session>``, ``sk = n#<name>#<version, 20 digits>``: a snapshot; one above the inline limit
  keeps its data in parts ``pk = p#<session>#<name>#<version>``, written before the snapshot item.

**An append** is one ``TransactWriteItems``: the head item put on the condition that its version is the
one read (``attribute_not_exists`` for a new session), each id item and event item with
``attribute_not_exists``, and the chunk items. Exactly one of several racing writers gets in; the rest
see the condition fail and get a :class:`~kern_events.errors.ConcurrencyError` (with ``ExpectedVersion.ANY``
they read the new head and try again: that is optimistic concurrency, not an error retry). A failed
transaction whose ids are stored already is an idempotent retry, answered by the kit's
:func:`~kern_events.backend.match_retry` (same ids and content: the first result; other content:
:class:`~kern_events.errors.IdempotencyError`).

**Reads by type.** A context load reads the session's state events after its state checkpoint. A
``Query`` with a filter on the type is billed for every item it reads, kept or not, so that read grew
with the events since the checkpoint (15 RCU at 10 runs, 74 at 100). A read whose types are all
``indexed_types`` queries ``by_type`` instead, which holds only those events: it reads what it
returns, whatever the session's length (the agent workload's context load: 9 RCU at 10, 100 and 1,000 runs).
Chosen over the alternatives by cost per append plus per load: the sparse attribute costs nothing on
an append without a state event and one index write per state event, and adds no item to the
transaction (so 49 events per append still fit); a separate item per state event would take a
transaction slot each (fewer events per append) and the same write; the state kept in the head item
would be rewritten, whole, by every append (2 WCU per KB of state each time) and would make the store
fold a view. The index is *local* because a local index answers strongly consistent reads (a global
one does not: a state change could be missed just after its append). Its price: a local index caps a
session's items (its events, head and snapshots; chunks live under their own keys) at 10 GB, and it
exists only on tables created with it (DynamoDB cannot add one later; a table created by an older
kern-events must be recreated).

**Listing.** ``list_sessions`` with a user queries ``by_user``; without one it queries ``by_time``, one
``Query`` per listing shard newest first, merged, reading about as many heads as it returns when
sorted by ``updated_at`` descending (other sorts and orders read the whole index: heads only, never
events). ``updated_since`` is a condition on the index's sort key; the filters on type, agent, team
and workflow are applied to the rows as they come. Every live head is in the index, so every append
writes its row there, twice (a delete and a put, because ``gt``, the sort key, changes: 2 WCU for a
head under 1 KB). The trade-off: one index partition absorbs about 1,000 writes a second (so about
500 appends a second), and with a constant partition key every append in the table would land on
it, and a throttled index throttles the table's writes; ``listing_shards`` (default
:data:`DEFAULT_LISTING_SHARDS`) spreads the heads over that many partitions (that many times the
appends a second) at the price of one ``Query`` per shard for each listing. ``by_user`` is keyed by
user, so it is hot only for one very busy user.

**Limits.** A transaction holds at most 100 items and 4 MB. An append needs ``1 + 2 * events + chunks``
items, so it holds at most :data:`MAX_EVENTS_PER_APPEND` (49) events, and at most
:data:`MAX_APPEND_BYTES` of payload; a larger one is refused whole with
:class:`~kern_events.errors.AppendTooLargeError` before anything is written (splitting it would make it
visible to readers half written). One event is at most :data:`DEFAULT_MAX_EVENT_SIZE` (3.5 MB) by default.

**No global feed.** DynamoDB has no commit order across partitions, so the store has none:
``read_all`` and ``subscribe`` raise :class:`~kern_events.errors.UnsupportedError` (a change feed would
be DynamoDB Streams: per-shard order only). A record's ``position`` is its version. Neither
``append_many`` nor ``truncate_before`` is offered.

**Errors and retries.** botocore retries throttling and transient failures itself (retry mode
``adaptive``, which also rate-limits the client); what is left after its attempts becomes a typed
error at one seam, :func:`_translate`: throttling (``ProvisionedThroughputExceeded``, a transaction
cancelled for throttling or a conflicting transaction) and network failures are
:class:`~kern_events.errors.StorageUnavailableError` ("retry"), anything else a
:class:`~kern_events.errors.StorageError`, the botocore exception as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping, Sequence
from typing import Any
from uuid import UUID

import msgspec

from kern_events._loops import finish_on, on_loop_end
from kern_events.backend import (
    SNAPSHOTS_KEPT,
    STATE_EVENT_TYPES,
    BaseEventStore,
    Page,
    SessionFilter,
    SessionInfo,
    advance_index,
    check_expected,
    conflict,
    match_retry,
)
from kern_events.codec import Codec
from kern_events.errors import (
    AppendTooLargeError,
    CorruptRecordError,
    InvalidArgumentError,
    StorageError,
    StorageUnavailableError,
)
from kern_events.events import Event
from kern_events.records import AppendResult, ExpectedVersion, PendingEvent, Snapshot, StoredEvent

__all__ = [
    "DEFAULT_LISTING_SHARDS",
    "DEFAULT_MAX_EVENT_SIZE",
    "MAX_APPEND_BYTES",
    "MAX_EVENTS_PER_APPEND",
    "STATE_EVENT_TYPES",
    "DynamoEventStore",
]

_MAX_ITEMS = 100
"""DynamoDB's limit on the items of one ``TransactWriteItems``."""
MAX_EVENTS_PER_APPEND = (_MAX_ITEMS - 1) // 2
"""Most events one append may carry: each needs an event item and an id item, and the head one more."""
_ITEM_OVERHEAD = 256
"""Bytes counted per item for its keys and attribute names, on top of its payload."""
_MAX_TRANSACTION_BYTES = 4_000_000
"""What one transaction's items may add up to, counted as payload plus :data:`_ITEM_OVERHEAD` per item
(DynamoDB's limit is 4 MB, keys and names included)."""
MAX_APPEND_BYTES = _MAX_TRANSACTION_BYTES - _MAX_ITEMS * _ITEM_OVERHEAD
"""Payload bytes an append of any item count may carry: a larger one may be refused."""
DEFAULT_MAX_EVENT_SIZE = 3_500_000
"""The largest encoded event accepted by default: one event must fit one transaction with its chunks."""
_INLINE_LIMIT = 350_000
"""Payload bytes kept in one item (an item holds at most 400 KB, names and keys included)."""
_BATCH_WRITE = 25
_BATCH_GET = 100
_VERSION_DIGITS = 20
_PART_DIGITS = 6
_GSI = "by_user"
_BY_TIME = "by_time"
_BY_TYPE = "by_type"
DEFAULT_LISTING_SHARDS = 4
"""Partitions of the ``by_time`` index by default: about 4,000 head writes a second before it throttles."""
_UNAVAILABLE = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)
"""Error codes that mean "DynamoDB is busy or away, retry", left after botocore's own attempts."""
_TRANSIENT_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
"""Reasons a transaction was cancelled that say nothing about its conditions: retry it."""

_Item = dict[str, Any]


def _session_key(session_id: str) -> str:
    return f"s#{session_id}"


def _event_key(version: int) -> str:
    return f"e#{version:0{_VERSION_DIGITS}d}"


def _snapshot_key(name: str, version: int) -> str:
    return f"n#{name}#{version:0{_VERSION_DIGITS}d}"


def _key(pk: str, sk: str) -> _Item:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _head_key(session_id: str) -> _Item:
    return _key(_session_key(session_id), "h")


def _id_key(event_id: UUID) -> _Item:
    return _key(f"i#{event_id.hex}", "i")


def _number(value: int | float) -> dict[str, str]:
    return {"N": repr(value)}


class _Cancelled(Exception):
    """A transaction whose condition failed (the head moved, or an id or event item exists)."""


def _translate(error: Exception, what: str) -> Exception:
    """The kern-events error for a botocore exception left after botocore's retries (the one seam)."""
    import botocore.exceptions

    if isinstance(error, botocore.exceptions.ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        if code in _UNAVAILABLE:
            return StorageUnavailableError(f"DynamoDB is unavailable, retry ({what}: {code})")
        if code == "TransactionCanceledException":
            reasons = [reason.get("Code", "None") for reason in error.response.get("CancellationReasons", [])]
            if not reasons or set(reasons) <= {"ConditionalCheckFailed", "None"}:
                return _Cancelled()
            if set(reasons) & _TRANSIENT_REASONS:
                return StorageUnavailableError(f"DynamoDB is unavailable, retry ({what}: {', '.join(reasons)})")
            return StorageError(f"DynamoDB cancelled {what}: {', '.join(reasons)}")
        return StorageError(f"DynamoDB refused {what}: {code}: {error}")
    if isinstance(error, botocore.exceptions.BotoCoreError | OSError | asyncio.TimeoutError):
        return StorageUnavailableError(f"DynamoDB is unavailable, retry ({what}: {error})")
    return error


class DynamoEventStore(BaseEventStore):
    """An :class:`~kern_events.store.EventStore` in one DynamoDB table (see the module docstring).

    ``table`` is created on first use unless ``create_table=False`` (on-demand capacity, with the
    ``by_user``, ``by_time`` and ``by_type`` indexes). ``endpoint_url`` points the client at a local
    emulator; ``region_name`` and the credentials come from the usual AWS configuration unless given;
    ``max_attempts`` bounds botocore's adaptive retries. ``listing_shards`` spreads the ``by_time``
    index over that many partitions and ``indexed_types`` names the event types ``by_type`` holds (a
    table's values must not change once it holds sessions).
    """

    inline_limit: int | None = _INLINE_LIMIT

    def __init__(
        self,
        table: str = "kern_events",
        *,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        create_table: bool = True,
        max_attempts: int = 10,
        timeout: float = 10.0,
        codec: Codec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        chain_key: bytes | None = None,
        listing_shards: int = DEFAULT_LISTING_SHARDS,
        indexed_types: Collection[str] = STATE_EVENT_TYPES,
    ) -> None:
        super().__init__(codec=codec, max_event_size=max_event_size, chain_key=chain_key)
        if not isinstance(table, str) or not 3 <= len(table) <= 255:
            raise InvalidArgumentError("table", f"expected a DynamoDB table name, got {table!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidArgumentError("max_attempts", f"expected an int >= 1, got {max_attempts!r}")
        if isinstance(listing_shards, bool) or not isinstance(listing_shards, int) or not 1 <= listing_shards <= 100:
            raise InvalidArgumentError("listing_shards", f"expected an int from 1 to 100, got {listing_shards!r}")
        if isinstance(indexed_types, str) or not all(isinstance(name, str) for name in indexed_types):
            raise InvalidArgumentError("indexed_types", f"expected a collection of event types, got {indexed_types!r}")
        self._table = table
        self._listing_shards = listing_shards
        self._indexed_types = frozenset(indexed_types)
        self._endpoint_url = endpoint_url
        self._credentials = {
            "region_name": region_name,
            "aws_access_key_id": aws_access_key_id,
            "aws_secret_access_key": aws_secret_access_key,
        }
        self._create_table = create_table
        self._max_attempts = max_attempts
        self._timeout = timeout
        self._clients: dict[asyncio.AbstractEventLoop, tuple[Any, contextlib.AsyncExitStack]] = {}
        self._clients_lock = threading.Lock()
        self._loop_ends: dict[asyncio.AbstractEventLoop, Any] = {}

    # -- connection ----------------------------------------------------------------------------------

    async def _client(self) -> Any:
        """The client of the running event loop (an aiobotocore client belongs to the loop that made it)."""
        loop = asyncio.get_running_loop()
        known = self._clients.get(loop)
        if known is not None:
            return known[0]
        import aioboto3
        from botocore.config import Config

        config = Config(
            retries={"mode": "adaptive", "max_attempts": self._max_attempts},
            connect_timeout=self._timeout,
            read_timeout=self._timeout,
        )
        stack = contextlib.AsyncExitStack()
        session = aioboto3.Session(**{name: value for name, value in self._credentials.items() if value is not None})
        try:
            client = await stack.enter_async_context(
                session.client("dynamodb", endpoint_url=self._endpoint_url, config=config)
            )
        except Exception as error:
            raise _translate(error, "connecting") from error
        with self._clients_lock:
            raced = self._clients.get(loop)
            if raced is None:
                self._clients[loop] = (client, stack)
        if raced is not None:
            await stack.aclose()
            return raced[0]

        async def close_at_loop_end() -> None:
            with self._clients_lock:
                mine = self._clients.get(loop)
                if mine is not None and mine[0] is client:
                    del self._clients[loop]
            await stack.aclose()

        self._loop_ends[loop] = on_loop_end(close_at_loop_end)
        return client

    async def _call(self, operation: str, **arguments: Any) -> Any:
        """One DynamoDB call (botocore retries it as its retry mode says), its errors translated."""
        client = await self._client()
        try:
            return await getattr(client, operation)(**arguments)
        except Exception as error:
            translated = _translate(error, operation)
            if translated is error:
                raise
            raise translated from error

    async def _open(self) -> None:
        if self._create_table:
            await self._ensure_table()

    async def _ensure_table(self) -> None:
        """Create the table and its ``by_user`` index unless they exist, and wait until it is active."""
        try:
            await self._call("describe_table", TableName=self._table)
            return
        except StorageError as error:
            if "ResourceNotFoundException" not in str(error):
                raise
        try:
            await self._call(
                "create_table",
                TableName=self._table,
                BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "sk", "AttributeType": "S"},
                    {"AttributeName": "gu", "AttributeType": "S"},
                    {"AttributeName": "gt", "AttributeType": "N"},
                    {"AttributeName": "gs", "AttributeType": "S"},
                    {"AttributeName": "x", "AttributeType": "S"},
                ],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": _GSI,
                        "KeySchema": [
                            {"AttributeName": "gu", "KeyType": "HASH"},
                            {"AttributeName": "gt", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    },
                    {
                        "IndexName": _BY_TIME,
                        "KeySchema": [
                            {"AttributeName": "gs", "KeyType": "HASH"},
                            {"AttributeName": "gt", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["info"]},
                    },
                ],
                LocalSecondaryIndexes=[
                    {
                        "IndexName": _BY_TYPE,
                        "KeySchema": [
                            {"AttributeName": "pk", "KeyType": "HASH"},
                            {"AttributeName": "x", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                ],
            )
        except StorageError as error:
            if "ResourceInUseException" not in str(error):  # another process created it meanwhile
                raise
        waiter = (await self._client()).get_waiter("table_exists")
        try:
            await waiter.wait(TableName=self._table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        except Exception as error:
            raise _translate(error, "waiting for the table") from error

    async def _close(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, {}
            ends, self._loop_ends = self._loop_ends, {}
        here = asyncio.get_running_loop()
        for loop, (_, stack) in clients.items():
            if loop is here:
                ends[loop]()
                await stack.aclose()
            elif loop.is_running():  # another thread's loop: closed there, now or when that loop ends
                await finish_on(loop, stack.aclose())

    # -- reading items --------------------------------------------------------------------------------

    async def _get(self, key: _Item) -> _Item | None:
        reply = await self._call("get_item", TableName=self._table, Key=key, ConsistentRead=True)
        item: _Item | None = reply.get("Item")
        return item

    async def _get_many(self, keys: Sequence[_Item]) -> list[_Item]:
        """The items of ``keys`` that exist, in any order (``BatchGetItem``, 100 keys a call, again for
        the keys DynamoDB left unprocessed)."""
        found: list[_Item] = []
        for start in range(0, len(keys), _BATCH_GET):
            request: dict[str, Any] = {
                self._table: {"Keys": list(keys[start : start + _BATCH_GET]), "ConsistentRead": True}
            }
            while request:
                reply = await self._call("batch_get_item", RequestItems=request)
                found.extend(reply.get("Responses", {}).get(self._table, []))
                request = reply.get("UnprocessedKeys") or {}
        return found

    async def _query(self, limit: int | None = None, **arguments: Any) -> AsyncGenerator[_Item, None]:
        """The items of a ``Query``, page by page, up to ``limit`` (after any filter)."""
        start: _Item | None = None
        left = limit
        while True:
            page_arguments = dict(arguments, TableName=self._table)
            if start is not None:
                page_arguments["ExclusiveStartKey"] = start
            if left is not None and "FilterExpression" not in arguments:
                page_arguments["Limit"] = left
            reply = await self._call("query", **page_arguments)
            for item in reply.get("Items", []):
                yield item
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return
            start = reply.get("LastEvaluatedKey")
            if start is None:
                return

    async def _write_many(self, requests: Sequence[_Item]) -> None:
        """``BatchWriteItem`` requests (puts or deletes), 25 a call, again for the unprocessed ones.
        Not atomic: used only where a partial write is harmless (deletion, snapshot parts)."""
        for start in range(0, len(requests), _BATCH_WRITE):
            batch: dict[str, Any] = {self._table: list(requests[start : start + _BATCH_WRITE])}
            while batch:
                reply = await self._call("batch_write_item", RequestItems=batch)
                batch = reply.get("UnprocessedItems") or {}

    async def _head(self, session_id: str) -> tuple[int, bytes | None, SessionInfo | None]:
        """The session's version (0 if none), its head event's chain hash and its index row."""
        item = await self._get(_head_key(session_id))
        if item is None:
            return 0, None, None
        info = msgspec.msgpack.decode(item["info"]["B"], type=SessionInfo) if "info" in item else None
        return int(item["v"]["N"]), item["hash"]["B"] if "hash" in item else None, info

    # -- appending ------------------------------------------------------------------------------------

    async def _append(
        self,
        session_id: str,
        events: Sequence[Event],
        pending: Sequence[PendingEvent],
        expected: int | ExpectedVersion,
        recorded_at: float,
    ) -> AppendResult:
        _check_size(pending)
        while True:
            head, head_hash, info = await self._head(session_id)
            if not check_expected(expected, head):
                retry = match_retry(session_id, pending, await self._find_events([new.event_id for new in pending]))
                if retry is not None:
                    return retry
                raise conflict(session_id, expected, head)
            hashes = self.chain.hashes(session_id, head_hash, head, pending, recorded_at)
            to_version = head + len(pending)
            new_info = advance_index(info, session_id, events, to_version, recorded_at)
            items = [self._head_put(session_id, head, to_version, hashes[-1], new_info)]
            for offset, (new, chain) in enumerate(zip(pending, self.chain.kept(hashes), strict=True), start=1):
                items += self._event_puts(session_id, head + offset, new, chain, recorded_at)
            try:
                await self._call("transact_write_items", TransactItems=items)
            except _Cancelled:
                retry = match_retry(session_id, pending, await self._find_events([new.event_id for new in pending]))
                if retry is not None:
                    return retry
                if expected is ExpectedVersion.ANY:
                    continue  # another writer moved the head first: read it and go again
                actual = await self._current_version(session_id)
                raise conflict(session_id, expected, actual) from None
            return AppendResult(
                session_id=session_id,
                from_version=head + 1,
                to_version=to_version,
                positions=tuple(range(head + 1, to_version + 1)),
                event_ids=tuple(new.event_id for new in pending),
                recorded_at=recorded_at,
            )

    def _head_put(self, session_id: str, head: int, version: int, chain: bytes, info: SessionInfo) -> _Item:
        """The head item's put, on the condition that the head is still at ``head``."""
        item: _Item = {
            **_head_key(session_id),
            "v": _number(version),
            "hash": {"B": chain},
            "info": {"B": msgspec.msgpack.encode(info)},
        }
        item["gs"] = {"S": str(zlib.crc32(session_id.encode()) % self._listing_shards)}
        item["gt"] = _number(info.updated_at)
        if info.user_id is not None:
            item["gu"] = {"S": info.user_id}
        put: _Item = {"TableName": self._table, "Item": item}
        if head == 0:
            put["ConditionExpression"] = "attribute_not_exists(pk) OR v = :head"
        else:
            put["ConditionExpression"] = "v = :head"
        put["ExpressionAttributeValues"] = {":head": _number(head)}
        return {"Put": put}

    def _event_puts(
        self, session_id: str, version: int, new: PendingEvent, chain: bytes | None, recorded_at: float
    ) -> list[_Item]:
        """The id item, the event item and the chunk items of one event, each put only if absent."""
        absent = "attribute_not_exists(pk)"
        event: _Item = {
            **_key(_session_key(session_id), _event_key(version)),
            "id": {"B": new.event_id.bytes},
            "t": {"S": new.type},
            "sv": _number(new.schema_version),
            "d": {"B": new.data},
            "at": _number(recorded_at),
        }
        if chain is not None:
            event["ch"] = {"B": chain}
        if new.type in self._indexed_types:
            event["x"] = event["sk"]  # the sparse key of ``by_type``
        owner = {**_id_key(new.event_id), "s": {"S": session_id}, "v": _number(version)}
        puts = [
            {"Put": {"TableName": self._table, "Item": owner, "ConditionExpression": absent}},
            {"Put": {"TableName": self._table, "Item": event, "ConditionExpression": absent}},
        ]
        for part, chunk in enumerate(new.chunks):
            item = {**_key(f"c#{new.event_id.hex}", f"{part:0{_PART_DIGITS}d}"), "d": {"B": chunk}}
            puts.append({"Put": {"TableName": self._table, "Item": item}})
        return puts

    async def _find_events(self, event_ids: Sequence[UUID]) -> Sequence[StoredEvent | None]:
        owners = await self._get_many([_id_key(event_id) for event_id in dict.fromkeys(event_ids)])
        keys = [_key(_session_key(owner["s"]["S"]), _event_key(int(owner["v"]["N"]))) for owner in owners]
        by_id: dict[UUID, StoredEvent] = {}
        for item in await self._get_many(keys):
            stored = _stored(item)
            if isinstance(stored, StoredEvent):
                by_id[stored.event_id] = stored
        return [by_id.get(event_id) for event_id in event_ids]

    # -- reading --------------------------------------------------------------------------------------

    async def _read_page(
        self, session_id: str, low: int, high: int | None, limit: int, backwards: bool, types: tuple[str, ...] | None
    ) -> Page:
        top = min(high if high is not None else 10**_VERSION_DIGITS - 1, 10**_VERSION_DIGITS - 1)
        if low > top or limit <= 0:
            return []
        by_type = types is not None and self._indexed_types.issuperset(types)
        arguments: dict[str, Any] = {
            "KeyConditionExpression": f"pk = :pk AND {'x' if by_type else 'sk'} BETWEEN :low AND :high",
            "ExpressionAttributeValues": {
                ":pk": {"S": _session_key(session_id)},
                ":low": {"S": _event_key(low)},
                ":high": {"S": _event_key(top)},
            },
            "ConsistentRead": True,
            "ScanIndexForward": not backwards,
        }
        if by_type:
            arguments["IndexName"] = _BY_TYPE  # holds only events of indexed types: reads what it returns
        if types is not None and not (by_type and self._indexed_types == frozenset(types)):
            names = {f":t{index}": {"S": name} for index, name in enumerate(types)}
            arguments["FilterExpression"] = f"t IN ({', '.join(names)})"
            arguments["ExpressionAttributeValues"].update(names)
        page: list[StoredEvent | CorruptRecordError] = []
        async for item in self._query(limit, **arguments):
            stored = _stored(item)
            page.append(stored)
            if isinstance(stored, CorruptRecordError):
                break
        return page

    async def _read_chunks(self, event_ids: Sequence[UUID]) -> Mapping[UUID, Sequence[bytes]]:
        chunks: dict[UUID, list[bytes]] = {}
        for event_id in event_ids:
            parts = [
                item["d"]["B"]
                async for item in self._query(
                    KeyConditionExpression="pk = :pk",
                    ExpressionAttributeValues={":pk": {"S": f"c#{event_id.hex}"}},
                    ConsistentRead=True,
                )
            ]
            if parts:
                chunks[event_id] = parts
        return chunks

    async def _current_version(self, session_id: str) -> int:
        return (await self._head(session_id))[0]

    async def _get_session_info(self, session_id: str) -> SessionInfo | None:
        return (await self._head(session_id))[2]

    async def _list_sessions(self, query: SessionFilter) -> list[SessionInfo]:
        """A user's sessions come from ``by_user``, everyone's from ``by_time`` (its shards merged),
        both newest first. Sorted by ``updated_at`` descending, the read stops once it holds the page
        and every row tied with its last; other sorts read the whole index (from ``updated_since``
        on, a condition on the index's sort key). The filters, the cursor,
        the tie order (by session id) and the offset are applied here."""
        end = None if query.limit is None else query.offset + query.limit
        stop_after = end if query.sort_by == "updated_at" and query.descending else None
        rows: list[SessionInfo] = []
        page = None if stop_after is None else stop_after + 1
        async with contextlib.aclosing(self._newest_first(query.user_id, query.updated_since, page)) as infos:
            async for info in infos:
                if (
                    stop_after is not None
                    and len(rows) >= stop_after
                    and (not rows or info.updated_at < rows[-1].updated_at)
                ):
                    break  # every row left is older than the page's last: none can sort into it
                if query.matches(info):
                    rows.append(info)
        rows.sort(key=lambda info: info.session_id, reverse=query.descending)
        rows.sort(key=lambda info: getattr(info, query.sort_by), reverse=query.descending)
        return rows[query.offset : end]

    async def _newest_first(
        self, user_id: str | None, since: float | None, page: int | None
    ) -> AsyncGenerator[SessionInfo, None]:
        """Live index rows updated at ``since`` or later, newest first: a user's from ``by_user``, else
        every session's, merged from the ``by_time`` shards; ``page`` items per ``Query`` page."""
        if user_id is not None:
            shards = [("gu = :key", {"S": user_id}, _GSI)]
        else:
            shards = [("gs = :key", {"S": str(shard)}, _BY_TIME) for shard in range(self._listing_shards)]
        values: _Item = {} if since is None else {":since": _number(since)}
        streams = [
            self._query(
                IndexName=index,
                KeyConditionExpression=condition if since is None else f"{condition} AND gt >= :since",
                ExpressionAttributeValues={":key": key, **values},
                ScanIndexForward=False,
                **({} if page is None else {"Limit": min(page, 1000)}),
            )
            for condition, key, index in shards
        ]
        try:
            heads = {index: item for index, stream in enumerate(streams) if (item := await anext(stream, None))}
            while heads:
                newest = max(heads, key=lambda index: float(heads[index]["gt"]["N"]))
                info = _info(heads[newest])
                following = await anext(streams[newest], None)
                if following is None:
                    del heads[newest]
                else:
                    heads[newest] = following
                if info is not None:
                    yield info
        finally:
            for stream in streams:
                await stream.aclose()

    # -- deleting and snapshots -----------------------------------------------------------------------

    async def _delete_session(self, session_id: str) -> bool:
        """The index row goes first (one update of the head, which keeps the version), then every
        other item of the session: events, their id and chunk items, snapshots and their parts."""
        head = await self._get(_head_key(session_id))
        existed = head is not None and "info" in head
        if head is not None:
            await self._call(
                "update_item",
                TableName=self._table,
                Key=_head_key(session_id),
                UpdateExpression="REMOVE info, #hash, gu, gt, gs",
                ExpressionAttributeNames={"#hash": "hash"},
            )
        doomed = [
            item
            async for item in self._query(
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": _session_key(session_id)}},
                ConsistentRead=True,
            )
            if item["sk"]["S"] != "h"
        ]
        keys: list[_Item] = []
        for item in doomed:
            keys.append(_key(item["pk"]["S"], item["sk"]["S"]))
            if item["sk"]["S"].startswith("e#"):
                event_id = UUID(bytes=item["id"]["B"])
                keys.append(_id_key(event_id))
                keys += [_key(f"c#{event_id.hex}", sk) async for sk in self._sort_keys(f"c#{event_id.hex}")]
            elif item["sk"]["S"].startswith("n#"):
                parts = _parts_key(session_id, item["sk"]["S"])
                keys += [_key(parts, sk) async for sk in self._sort_keys(parts)]
        await self._write_many([{"DeleteRequest": {"Key": key}} for key in keys])
        return existed or bool(doomed)

    async def _sort_keys(self, pk: str) -> AsyncIterator[str]:
        async for item in self._query(
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": pk}},
            ProjectionExpression="sk",
            ConsistentRead=True,
        ):
            yield item["sk"]["S"]

    async def _save_snapshot(self, snapshot: Snapshot) -> None:
        """Parts first, then the snapshot item that makes them readable; then older ones are pruned."""
        sk = _snapshot_key(snapshot.name, snapshot.version)
        parts_key = _parts_key(snapshot.session_id, sk)
        data = snapshot.data
        item: _Item = {
            **_key(_session_key(snapshot.session_id), sk),
            "sv": _number(snapshot.schema_version),
            "at": _number(snapshot.created_at),
        }
        if len(data) <= _INLINE_LIMIT:
            item["d"] = {"B": data}
        else:
            parts = [data[start : start + _INLINE_LIMIT] for start in range(0, len(data), _INLINE_LIMIT)]
            await self._write_many(
                [
                    {"PutRequest": {"Item": {**_key(parts_key, f"{part:0{_PART_DIGITS}d}"), "d": {"B": chunk}}}}
                    for part, chunk in enumerate(parts)
                ]
            )
            item["np"] = _number(len(parts))
        await self._call("put_item", TableName=self._table, Item=item)
        kept = [
            found["sk"]["S"]
            async for found in self._query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :name)",
                ExpressionAttributeValues={
                    ":pk": {"S": _session_key(snapshot.session_id)},
                    ":name": {"S": f"n#{snapshot.name}#"},
                },
                ScanIndexForward=False,
                ProjectionExpression="sk",
                ConsistentRead=True,
            )
        ]
        doomed: list[_Item] = []
        for old in kept[SNAPSHOTS_KEPT:]:
            doomed.append(_key(_session_key(snapshot.session_id), old))
            old_parts = _parts_key(snapshot.session_id, old)
            doomed += [_key(old_parts, part) async for part in self._sort_keys(old_parts)]
        await self._write_many([{"DeleteRequest": {"Key": key}} for key in doomed])

    async def _load_snapshot(
        self, session_id: str, name: str, schema_version: int | None, max_version: int | None
    ) -> Snapshot | None:
        top = min(max_version if max_version is not None else 10**_VERSION_DIGITS - 1, 10**_VERSION_DIGITS - 1)
        async for item in self._query(
            KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
            ExpressionAttributeValues={
                ":pk": {"S": _session_key(session_id)},
                ":low": {"S": _snapshot_key(name, 0)},
                ":high": {"S": _snapshot_key(name, top)},
            },
            ScanIndexForward=False,
            ConsistentRead=True,
        ):
            if schema_version is not None and int(item["sv"]["N"]) != schema_version:
                continue
            if "d" in item:
                data = item["d"]["B"]
            else:
                parts_key = _parts_key(session_id, item["sk"]["S"])
                parts = [
                    part["d"]["B"]
                    async for part in self._query(
                        KeyConditionExpression="pk = :pk",
                        ExpressionAttributeValues={":pk": {"S": parts_key}},
                        ConsistentRead=True,
                    )
                ]
                if len(parts) != int(item["np"]["N"]):
                    continue  # being pruned or half written: an older one serves
                data = b"".join(parts)
            return Snapshot(
                session_id=session_id,
                name=name,
                schema_version=int(item["sv"]["N"]),
                version=int(item["sk"]["S"].rsplit("#", 1)[1]),
                data=data,
                created_at=float(item["at"]["N"]),
            )
        return None


def _check_size(pending: Sequence[PendingEvent]) -> None:
    """Refuse an append one transaction cannot hold, before anything is written."""
    items = 1 + sum(2 + len(new.chunks) for new in pending)
    size = sum(len(new.data) + sum(len(chunk) for chunk in new.chunks) for new in pending) + items * _ITEM_OVERHEAD
    if len(pending) > MAX_EVENTS_PER_APPEND or items > _MAX_ITEMS:
        raise AppendTooLargeError(
            f"the append needs {items} items ({len(pending)} events and their chunks) in one DynamoDB "
            f"transaction, which holds {_MAX_ITEMS} (at most {MAX_EVENTS_PER_APPEND} events)",
            events=len(pending),
            size=size,
        )
    if size > _MAX_TRANSACTION_BYTES:
        raise AppendTooLargeError(
            f"the append's items add up to about {size} bytes; one DynamoDB transaction holds 4 MB",
            events=len(pending),
            size=size,
        )


def _parts_key(session_id: str, snapshot_key: str) -> str:
    return f"p#{session_id}#{snapshot_key}"


def _info(item: _Item) -> SessionInfo | None:
    return msgspec.msgpack.decode(item["info"]["B"], type=SessionInfo) if "info" in item else None


def _stored(item: _Item) -> StoredEvent | CorruptRecordError:
    """The stored event of an event item, or the error naming it if its attributes are damaged."""
    session_id = item["pk"]["S"][2:]
    version = int(item["sk"]["S"][2:])
    try:
        return StoredEvent(
            session_id=session_id,
            version=version,
            position=version,
            event_id=UUID(bytes=item["id"]["B"]),
            type=item["t"]["S"],
            schema_version=int(item["sv"]["N"]),
            data=item["d"]["B"],
            recorded_at=float(item["at"]["N"]),
            chain=item["ch"]["B"] if "ch" in item else None,
        )
    except (KeyError, ValueError, TypeError) as error:
        event_type = item.get("t", {}).get("S", "?")
        return CorruptRecordError(session_id, version, str(event_type), f"damaged item: {error!r}", position=version)
