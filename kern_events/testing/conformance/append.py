"""Appends: atomic, ordered, idempotent on retry, guarded by optimistic concurrency."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kern_events import (
    ANY,
    NO_STREAM,
    ConcurrencyError,
    EventStore,
    IdempotencyError,
    InvalidArgumentError,
    InvalidEventError,
    InvalidIdentifierError,
    MessageAdded,
    PayloadTooLargeError,
    RunStarted,
    SessionRenamed,
    SessionStarted,
    UnknownEventTypeError,
)
from kern_events.events import EVENT_TYPES
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled
from kern_events.testing._samples import every_event_type


async def _events(store: EventStore, session_id: str) -> list[object]:
    return [record.event async for record in store.read(session_id)]


def _message(text: str, run_id: str = "r1") -> MessageAdded:
    return MessageAdded(run_id=run_id, role="user", content=text)


async def test_every_event_type_round_trips(backend: Backend) -> None:
    events = every_event_type()
    assert {type(event) for event in events} == set(EVENT_TYPES.values()), "a sample per event type"
    async with backend.store() as store:
        await store.append("s1", events, expected_version=NO_STREAM)
        records = [record async for record in store.read("s1")]
    assert [record.event for record in records] == events
    assert [record.type for record in records] == [str(type(e).__struct_config__.tag) for e in events]


async def test_versions_are_gapless_and_positions_strictly_increase(backend: Backend) -> None:
    async with backend.store() as store:
        results = []
        for round_ in range(3):
            for session in ("a", "b"):
                results.append(await store.append(session, [_message(f"{round_}-{i}") for i in range(round_ + 1)]))
        for session in ("a", "b"):
            records = [record async for record in store.read(session)]
            assert [record.version for record in records] == list(range(1, 7))
            positions = [record.position for record in records]
            assert positions == sorted(positions) and len(set(positions)) == 6
            assert await store.current_version(session) == 6
        if backend.global_feed:
            await feed_settled(store)
            everything = [record.position async for record in store.read_all()]
            assert everything == sorted(everything) and len(everything) == 12
    assert results[0].from_version == 1 and results[0].to_version == 1
    last = results[-1]
    assert (last.session_id, last.from_version, last.to_version) == ("b", 4, 6)
    assert len(last.positions) == len(last.event_ids) == 3


async def test_append_result_carries_what_was_stored(backend: Backend) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    async with backend.store() as store:
        result = await store.append("s", [_message("a"), _message("b")], event_ids=ids)
        records = [record async for record in store.read("s")]
    assert result.event_ids == tuple(ids) == tuple(record.event_id for record in records)
    assert result.positions == tuple(record.position for record in records)
    assert all(record.recorded_at == result.recorded_at for record in records)


async def test_no_stream_is_refused_once_the_session_exists(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message("first")], expected_version=NO_STREAM)
        with pytest.raises(ConcurrencyError) as caught:
            await store.append("s", [_message("second")], expected_version=NO_STREAM)
        assert await _events(store, "s") == [_message("first")]
    assert (caught.value.session_id, caught.value.expected_version, caught.value.actual_version) == (
        "s",
        "no stream",
        1,
    )


async def test_stale_expected_version_is_rejected_with_both_versions(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message("a"), _message("b")])
        with pytest.raises(ConcurrencyError) as caught:
            await store.append("s", [_message("c")], expected_version=1)
        await store.append("s", [_message("c")], expected_version=2)
        assert await store.current_version("s") == 3
    assert (caught.value.expected_version, caught.value.actual_version) == (1, 2)
    assert "expected version 1" in str(caught.value) and "version 2" in str(caught.value)


async def test_expected_version_ahead_of_the_head_is_rejected(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message("a")])
        with pytest.raises(ConcurrencyError) as caught:
            await store.append("s", [_message("gap")], expected_version=5)
        with pytest.raises(ConcurrencyError):
            await store.append("new", [_message("gap")], expected_version=3)
        with pytest.raises(ConcurrencyError):  # the largest version there is: no room after it, still a conflict
            await store.append("new", [_message("gap"), _message("gap")], expected_version=2**63 - 1)
        with pytest.raises(ConcurrencyError):
            await store.append("s", [_message("gap")], expected_version=2**63 - 1)
        assert await _events(store, "s") == [_message("a")]
        assert await store.current_version("new") == 0
    assert caught.value.actual_version == 1


async def test_concurrent_writers_with_the_same_expected_version_one_wins(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message("start")])

        async def write(n: int) -> str:
            try:
                await store.append("s", [_message(f"writer {n}"), _message(f"writer {n} again")], expected_version=1)
            except ConcurrencyError as error:
                assert error.actual_version == 3
                return "lost"
            return "won"

        outcomes = await asyncio.gather(*(write(n) for n in range(8)))
        events = await _events(store, "s")
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]
    winner = outcomes.index("won")
    assert events == [_message("start"), _message(f"writer {winner}"), _message(f"writer {winner} again")]


async def test_writers_on_two_store_instances_of_one_database_one_wins(backend: Backend) -> None:
    if not backend.persistent:
        pytest.skip("in-memory stores do not share a database")
    async with backend.store() as first, backend.store() as second:
        await first.append("s", [_message("start")])
        outcomes = await asyncio.gather(
            first.append("s", [_message("first")], expected_version=1),
            second.append("s", [_message("second")], expected_version=1),
            return_exceptions=True,
        )
        assert sum(isinstance(outcome, ConcurrencyError) for outcome in outcomes) == 1
        assert len(await _events(second, "s")) == 2


async def test_retry_with_the_same_event_ids_stores_nothing_new(backend: Backend) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    batch = [_message("a"), _message("b")]
    async with backend.store() as store:
        first = await store.append("s", batch, expected_version=NO_STREAM, event_ids=ids)
        await store.append("s", [_message("later")], expected_version=2)
        again_exact = await store.append("s", batch, expected_version=NO_STREAM, event_ids=ids)
        again_any = await store.append("s", batch, expected_version=ANY, event_ids=ids)
        again_head = await store.append("s", batch, expected_version=3, event_ids=ids)
        leading_part = await store.append("s", batch[:1], expected_version=NO_STREAM, event_ids=ids[:1])
        events = await _events(store, "s")
        if backend.global_feed:
            await feed_settled(store)
            assert len([record.position async for record in store.read_all()]) == 3
    assert first == again_exact == again_any == again_head
    assert leading_part.to_version == 1 and leading_part.positions == first.positions[:1]
    assert events == [*batch, _message("later")]


async def test_reusing_an_event_id_for_other_content_is_an_error(backend: Backend) -> None:
    ids = [uuid.uuid4(), uuid.uuid4()]
    async with backend.store() as store:
        await store.append("s", [_message("a"), _message("b")], event_ids=ids)
        with pytest.raises(IdempotencyError, match="different content") as caught:
            await store.append("s", [_message("a"), _message("changed")], event_ids=ids)
        assert caught.value.event_id == ids[1]
        with pytest.raises(IdempotencyError, match="another session"):
            await store.append("other", [_message("a"), _message("b")], event_ids=ids)
        with pytest.raises(IdempotencyError, match="other event ids"):
            await store.append("s", [_message("a"), _message("new")], event_ids=[ids[0], uuid.uuid4()])
        with pytest.raises(IdempotencyError, match="different batch"):
            await store.append("s", [_message("b"), _message("a")], event_ids=[ids[1], ids[0]])
        assert await _events(store, "s") == [_message("a"), _message("b")]
        assert await store.current_version("other") == 0


async def test_a_batch_that_fails_part_way_stores_none_of_it(backend: Backend) -> None:
    taken = uuid.uuid4()
    async with backend.store() as store:
        await store.append("other", [_message("x")], event_ids=[taken])
        await store.append("s", [SessionStarted(session_type="agent", user_id="u")])
        before = await store.get_session_info("s")
        batch = [RunStarted(run_id="r9"), _message("one"), _message("two"), _message("three")]
        with pytest.raises(IdempotencyError):
            await store.append("s", batch, event_ids=[uuid.uuid4(), uuid.uuid4(), taken, uuid.uuid4()])
        assert await store.current_version("s") == 1
        assert len(await _events(store, "s")) == 1
        assert await store.get_session_info("s") == before
        if backend.global_feed:
            await feed_settled(store)
            assert len([record async for record in store.read_all()]) == 2
        await store.append("s", batch, expected_version=1)
        assert await store.current_version("s") == 5


async def test_bad_input_gets_a_typed_error_and_changes_nothing(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message("kept")])
        with pytest.raises(UnknownEventTypeError, match=r"events\[1\].*dict"):
            await store.append("s", [_message("a"), {"type": "message_added"}])  # type: ignore[list-item]
        with pytest.raises(InvalidIdentifierError, match="session_id"):
            await store.append("", [_message("a")])
        with pytest.raises(InvalidIdentifierError, match="control"):
            await store.append("bad\x00id", [_message("a")])
        with pytest.raises(InvalidIdentifierError, match="longer"):
            await store.append("x" * 300, [_message("a")])
        with pytest.raises(InvalidIdentifierError):
            await store.append(42, [_message("a")])  # type: ignore[arg-type]
        with pytest.raises(InvalidIdentifierError, match=r"events\[1\]\.user_id"):
            await store.append("s", [_message("a"), SessionStarted(session_type="agent", user_id="a\x00b")])
        with pytest.raises(InvalidArgumentError, match=r"events\[0\]\.name"):
            await store.append("s", [SessionRenamed(name="nul\x00name")])
        with pytest.raises(InvalidIdentifierError, match=r"events\[0\]\.session_type"):
            await store.append("s", [SessionStarted(session_type=" ")])
        with pytest.raises(InvalidIdentifierError, match=r"events\[0\]\.session_type"):
            await store.append("s", [SessionStarted(session_type=7)])  # type: ignore[arg-type]
        with pytest.raises(InvalidEventError, match=r"events\[0\].*message_added"):
            await store.append("s", [MessageAdded(run_id="r", role="user", content=object())])
        with pytest.raises(InvalidArgumentError, match="at least one"):
            await store.append("s", [])
        with pytest.raises(InvalidArgumentError, match="expected_version"):
            await store.append("s", [_message("a")], expected_version=-1)
        with pytest.raises(InvalidArgumentError, match="event_ids"):
            await store.append("s", [_message("a")], event_ids=[uuid.uuid4(), uuid.uuid4()])
        same = uuid.uuid4()
        with pytest.raises(InvalidArgumentError, match="twice"):
            await store.append("s", [_message("a"), _message("b")], event_ids=[same, same])
        with pytest.raises(PayloadTooLargeError, match=r"events\[0\].*message_added") as caught:
            await store.append("s", [_message("x" * store.max_event_size)])
        assert await _events(store, "s") == [_message("kept")]
    assert caught.value.size > caught.value.limit


async def test_a_deleted_session_never_reuses_its_versions(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message("a"), _message("b")])
        assert await store.delete_session("s")
        assert await store.current_version("s") == 2
        with pytest.raises(ConcurrencyError):
            await store.append("s", [_message("again")], expected_version=NO_STREAM)
        result = await store.append("s", [_message("again")], expected_version=2)
        assert [record.version async for record in store.read("s")] == [3]
    assert result.from_version == 3


async def test_concurrent_appends_committed_together_fail_only_on_their_own_conflicts(backend: Backend) -> None:
    async with backend.store() as store:

        async def contend(n: int) -> str:
            try:
                await store.append("shared", [_message(f"contender {n}")], expected_version=NO_STREAM)
            except ConcurrencyError:
                return "conflict"
            return "won"

        async def own_session(n: int) -> int:
            return (
                await store.append(f"own-{n}", [_message("a"), _message("b")], expected_version=NO_STREAM)
            ).to_version

        outcomes = await asyncio.gather(*(contend(n) for n in range(20)), *(own_session(n) for n in range(40)))
        assert sorted(map(str, outcomes[:20])) == ["conflict"] * 19 + ["won"]
        assert outcomes[20:] == [2] * 40
        if backend.global_feed:
            await feed_settled(store)
            assert len([record async for record in store.read_all()]) == 1 + 80
        assert await store.current_version("shared") == 1
