"""The DynamoDB backend beyond the conformance suite, on moto's server (tests/_dynamo.py): racing
writers, chunked payloads, appends too large for one transaction, the typed errors, the ``by_user``,
``by_time`` and ``by_type`` indexes, and the reference Agent across two processes."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import pytest

from kern_events import (
    AppendTooLargeError,
    ConcurrencyError,
    IdempotencyError,
    InvalidArgumentError,
    MessageAdded,
    SessionStarted,
    SessionStateChanged,
    StorageError,
    StorageUnavailableError,
    UnsupportedError,
)
from tests import _agent_process, _dynamo

pytest.importorskip("aioboto3", reason="the dynamodb extra is not installed")

from kern_events.stores.dynamodb import MAX_EVENTS_PER_APPEND, DynamoEventStore, _translate


def _message(content: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=content)


def _store(emulator: _dynamo.Emulator, table: str | None = None, **options: Any) -> DynamoEventStore:
    return DynamoEventStore(table or _dynamo.new_table(), **emulator.options(), **options)


async def _items(store: DynamoEventStore) -> list[dict[str, Any]]:
    """Every item of the store's table (a scan: what a reader of the table itself would see)."""
    items: list[dict[str, Any]] = []
    arguments: dict[str, Any] = {"TableName": store._table, "ConsistentRead": True}
    while True:
        reply = await store._call("scan", **arguments)
        items += reply["Items"]
        if "LastEvaluatedKey" not in reply:
            return items
        arguments["ExclusiveStartKey"] = reply["LastEvaluatedKey"]


async def test_exactly_one_of_16_racing_writers_gets_in(dynamo_server: _dynamo.Emulator) -> None:
    async with _store(dynamo_server) as store:
        await store.append("s", [_message("first")])
        outcomes = await asyncio.gather(
            *(store.append("s", [_message(f"w{n}")], expected_version=1) for n in range(16)), return_exceptions=True
        )
        won = [outcome for outcome in outcomes if not isinstance(outcome, BaseException)]
        lost = [outcome for outcome in outcomes if isinstance(outcome, ConcurrencyError)]
        assert (len(won), len(lost)) == (1, 15), outcomes
        assert all(error.actual_version == 2 for error in lost)
        assert [record.version async for record in store.read("s")] == [1, 2]


async def test_racing_writers_with_any_version_all_get_in_in_order(dynamo_server: _dynamo.Emulator) -> None:
    async with _store(dynamo_server) as store:
        await asyncio.gather(*(store.append("s", [_message(f"w{n}")]) for n in range(16)))
        assert [record.version async for record in store.read("s")] == list(range(1, 17))
        assert len({record.event.content async for record in store.read("s")}) == 16  # type: ignore[union-attr]


async def test_a_payload_above_the_item_limit_is_chunked_in_the_same_transaction(
    dynamo_server: _dynamo.Emulator,
) -> None:
    big = _message("x" * 1_000_000)
    async with _store(dynamo_server) as store:
        result = await store.append("s", [big, _message("after")])
        chunks = [item for item in await _items(store) if item["pk"]["S"].startswith("c#")]
        assert len(chunks) == 3  # 1 MB in parts of at most 350 KB, each an item of its own
        assert all(len(item["d"]["B"]) <= 350_000 for item in chunks)
        assert [record.event async for record in store.read("s")] == [big, _message("after")]
        again = await store.append("s", [big, _message("after")], event_ids=result.event_ids)
        assert again == result  # a retry of a chunked append stores nothing new
        assert await store.delete_session("s")
        assert [item["pk"]["S"] for item in await _items(store)] == ["s#s"]  # only the head (its version)


@pytest.mark.parametrize(
    "events",
    [
        [_message(f"m{n}") for n in range(MAX_EVENTS_PER_APPEND + 1)],  # over 100 items
        [_message("x" * 1_500_000) for _ in range(3)],  # over 4 MB
    ],
    ids=["items", "bytes"],
)
async def test_an_append_one_transaction_cannot_hold_is_refused_whole(
    dynamo_server: _dynamo.Emulator, events: list[MessageAdded]
) -> None:
    async with _store(dynamo_server) as store:
        with pytest.raises(AppendTooLargeError) as caught:
            await store.append("s", events)
        assert caught.value.events == len(events) and caught.value.argument == "events"
        assert await _items(store) == []
        assert await store.current_version("s") == 0
        result = await store.append("s", events[:2])  # a smaller one goes through
        assert (result.from_version, result.to_version) == (1, 2)


async def test_the_most_events_one_transaction_holds_go_in_as_one_append(dynamo_server: _dynamo.Emulator) -> None:
    events = [_message(f"m{n}") for n in range(MAX_EVENTS_PER_APPEND)]
    async with _store(dynamo_server) as store:
        result = await store.append("s", events)
        assert result.to_version == MAX_EVENTS_PER_APPEND
        assert [record.event async for record in store.read("s")] == events


async def test_an_event_id_reused_with_other_content_is_an_idempotency_error(
    dynamo_server: _dynamo.Emulator,
) -> None:
    event_id = uuid.uuid4()
    async with _store(dynamo_server) as store:
        first = await store.append("s", [_message("a")], event_ids=[event_id])
        assert await store.append("s", [_message("a")], event_ids=[event_id], expected_version=0) == first
        with pytest.raises(IdempotencyError):
            await store.append("s", [_message("b")], event_ids=[event_id])
        with pytest.raises(IdempotencyError):
            await store.append("other", [_message("a")], event_ids=[event_id])
        assert [record.version async for record in store.read("s")] == [1]
        assert await store.current_version("other") == 0


async def test_a_users_sessions_list_newest_first_through_the_index(dynamo_server: _dynamo.Emulator) -> None:
    async with _store(dynamo_server) as store:
        for name in ("a", "b", "c"):
            await store.append(name, [SessionStarted(session_type="agent", user_id="u")])
        await store.append("x", [SessionStarted(session_type="agent", user_id="someone else")])
        await store.append("a", [_message("a again")])
        listed = await store.list_sessions(user_id="u")
        assert [info.session_id for info in listed] == ["a", "c", "b"]
        reply = await store._call(
            "query",
            TableName=store._table,
            IndexName="by_user",
            KeyConditionExpression="gu = :u",
            ExpressionAttributeValues={":u": {"S": "u"}},
            ScanIndexForward=False,
        )
        assert [item["pk"]["S"] for item in reply["Items"]] == ["s#a", "s#c", "s#b"]
        await store.delete_session("c")
        assert [info.session_id for info in await store.list_sessions(user_id="u")] == ["a", "b"]


def _recording(store: DynamoEventStore) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Every call the store makes from now on: (operation, arguments, reply)."""
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    call = store._call

    async def recorded(operation: str, **arguments: Any) -> Any:
        reply = await call(operation, **arguments)
        calls.append((operation, arguments, reply))
        return reply

    store._call = recorded  # type: ignore[method-assign]
    return calls


def test_the_default_indexed_types_are_the_state_event_types() -> None:
    from kern_events.stores.dynamodb import STATE_EVENT_TYPES
    from projections.session import STATE_EVENT_TYPES as READ_SIDE

    assert STATE_EVENT_TYPES == READ_SIDE


async def test_a_context_load_reads_the_state_events_alone_however_long_the_session(
    dynamo_server: _dynamo.Emulator,
) -> None:
    from kern_events.stores.dynamodb import STATE_EVENT_TYPES

    async with _store(dynamo_server) as store:
        await store.append("s", [SessionStarted(session_type="agent", user_id="u")])
        for batch in range(3):
            await store.append("s", [_message(f"{batch}-{n}") for n in range(40)])
        await store.append("s", [SessionStateChanged(set={"k": 1})])
        calls = _recording(store)
        context = await store.load_context("s", snapshot="state", schema_version=1, types=STATE_EVENT_TYPES, tail=5)
        assert [record.type for record in context.after] == ["session_started", "session_state_changed"]
        assert [record.version for record in context.tail] == [122, 121, 120, 119, 118]
        read = sum(reply.get("ScannedCount", 0) for operation, _, reply in calls if operation == "query")
        assert read <= 6 + 2, calls  # the tail (with one ahead) and the two state events, not 122 events
        changes = [record.version async for record in store.read("s", types=["session_state_changed"])]
        assert changes == [122]  # a subset of the indexed types: from by_type, filtered
        mixed = [record.version async for record in store.read("s", types=["session_state_changed", "message_added"])]
        assert mixed == list(range(2, 123))  # a type outside the index: from the table


async def test_sessions_without_a_user_list_newest_first_from_the_index_not_a_scan(
    dynamo_server: _dynamo.Emulator,
) -> None:
    async with _store(dynamo_server) as store:
        for n in range(30):
            await store.append(
                f"s{n:02}", [SessionStarted(session_type="team" if n % 3 else "agent", agent_id=f"a{n % 2}")]
            )
        await store.append("s05", [_message("again")])
        newest = ["s05"] + [f"s{n:02}" for n in range(29, -1, -1) if n != 5]
        calls = _recording(store)
        assert [info.session_id for info in await store.list_sessions(limit=3)] == newest[:3]
        read = sum(reply.get("ScannedCount", 0) for _, _, reply in calls)
        assert read <= 4 * 4, calls  # a page of 4 per shard, not the 30 heads and their events
        assert [info.session_id for info in await store.list_sessions()] == newest
        agents = [info.session_id for info in await store.list_sessions(session_type="agent", agent_id="a1")]
        assert agents == [name for name in newest if int(name[1:]) % 6 == 3]
        assert [info.session_id for info in await store.list_sessions(descending=False, limit=2)] == newest[::-1][:2]
        assert [info.session_id for info in await store.list_sessions(limit=2, offset=2)] == newest[2:4]
        since = (await store.list_sessions(limit=4))[-1].updated_at
        calls.clear()
        assert [info.session_id for info in await store.list_sessions(updated_since=since)] == newest[:4]
        assert sum(reply.get("ScannedCount", 0) for _, _, reply in calls) <= 5  # a key condition: 4 and ties
        assert "scan" not in {operation for operation, _, _ in calls}
        await store.delete_session("s05")
        assert [info.session_id for info in await store.list_sessions(limit=2)] == newest[1:3]


async def test_one_listing_shard_lists_the_same_and_a_bad_shard_count_is_refused(
    dynamo_server: _dynamo.Emulator,
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        _store(dynamo_server, listing_shards=0)
    assert caught.value.argument == "listing_shards"
    async with _store(dynamo_server, listing_shards=1) as store:
        for name in ("a", "b", "c"):
            await store.append(name, [SessionStarted(session_type="agent")])
        assert [info.session_id for info in await store.list_sessions(limit=2)] == ["c", "b"]
        heads = [item for item in await _items(store) if item["sk"]["S"] == "h"]
        assert {item["gs"]["S"] for item in heads} == {"0"}


async def test_the_global_feed_is_a_capability_it_lacks(dynamo_server: _dynamo.Emulator) -> None:
    async with _store(dynamo_server) as store:
        await store.append("s", [_message("a")])
        assert not store.global_feed
        with pytest.raises(UnsupportedError) as caught:
            [record async for record in store.read_all()]
        assert caught.value.capability == "global feed"
        with pytest.raises(UnsupportedError):
            store.subscribe()


async def test_an_unreachable_endpoint_is_storage_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        store = DynamoEventStore(
            "kern_events", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1, **_dynamo.CREDENTIALS
        )
        with pytest.raises(StorageUnavailableError) as caught:
            await store.current_version("s")
        await store.aclose()
    assert "retry" in str(caught.value) and caught.value.__cause__ is not None


def _client_error(code: str, **extra: Any) -> Exception:
    """The exception botocore raises for an error response of DynamoDB's shape."""
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "..."}, **extra}, "TransactWriteItems")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("ProvisionedThroughputExceededException"), StorageUnavailableError),
        (_client_error("ThrottlingException"), StorageUnavailableError),
        (
            _client_error(
                "TransactionCanceledException",
                CancellationReasons=[{"Code": "None"}, {"Code": "TransactionConflict"}],
            ),
            StorageUnavailableError,
        ),
        (
            _client_error(
                "TransactionCanceledException", CancellationReasons=[{"Code": "ValidationError"}, {"Code": "None"}]
            ),
            StorageError,
        ),
        (_client_error("ValidationException"), StorageError),
    ],
    ids=["throughput", "throttling", "transaction-conflict", "transaction-validation", "validation"],
)
def test_dynamodb_errors_become_typed_errors(error: Exception, expected: type[Exception]) -> None:
    """The one seam's table: throttling and conflicting transactions say "retry"; what botocore's
    adaptive retries leave of them reaches the caller typed, never raw."""
    translated = _translate(error, "an append")
    assert type(translated) is expected, translated
    assert isinstance(translated, StorageError)


async def test_a_transaction_cancelled_by_a_failed_condition_is_a_conflict_not_an_error(
    dynamo_server: _dynamo.Emulator,
) -> None:
    """moto's own cancellation reasons go through the same table: a failed condition is a conflict."""
    async with _store(dynamo_server) as store:
        await store.append("s", [_message("a")])
        with pytest.raises(ConcurrencyError):
            await store._append("s", [_message("b")], store._encode([_message("b")], None, None), 0, 0.0)


def test_the_reference_agent_pauses_in_one_process_and_continues_in_another_on_dynamodb(
    dynamo_server: _dynamo.Emulator,
) -> None:
    """The reference Agent's demo path on DynamoDB: a run pauses for a confirmation and is stored; a
    new process confirms and finishes it, and answers from the history the first process wrote."""
    table = _dynamo.new_table()
    paused = _agent_process.run("pause", "dynamodb", dynamo_server.url, table)
    assert paused["status"] == "paused" and paused["booked"] == []
    finished = _agent_process.run("continue", "dynamodb", dynamo_server.url, table)
    assert finished["run_id"] == paused["run_id"]
    assert finished["content"] == "Flight to Oslo: booked Oslo."
    assert finished["booked"] == ["Oslo"]  # the confirmed tool ran in the second process
    assert finished["name"] == "Your name is Alice."  # from runs the first process stored
    assert finished["statuses"] == ["completed", "completed", "completed"]
