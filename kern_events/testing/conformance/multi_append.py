"""Atomic multi-session appends: every part stored or none, each checked as ``append`` checks it."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kern_events import (
    NO_STREAM,
    ConcurrencyError,
    EventStore,
    IdempotencyError,
    InvalidArgumentError,
    InvalidIdentifierError,
    MessageAdded,
    RunStarted,
    SessionAppend,
    SessionStarted,
    UnsupportedError,
)
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r1", role="user", content=text)


async def _everything(store: EventStore) -> list[tuple[str, int]]:
    await feed_settled(store)
    return [(record.session_id, record.version) async for record in store.read_all()]


async def test_append_many_stores_every_part_and_answers_in_input_order(backend: Backend) -> None:
    backend.require("appends_many")
    async with backend.store() as store:
        await store.append("a", [SessionStarted(session_type="agent", agent_id="bot", user_id="u")])
        woken = store.change_signal.current()
        results = await store.append_many(
            [
                SessionAppend("b", [SessionStarted(session_type="team", team_id="t"), _message("b1")], NO_STREAM),
                SessionAppend("a", [RunStarted(run_id="r1"), _message("a2")], expected_version=1),
            ]
        )
        assert woken.is_set(), "the change signal fires for the call"
        assert [(r.session_id, r.from_version, r.to_version) for r in results] == [("b", 1, 2), ("a", 2, 3)]
        assert [[r.version async for r in store.read(s)] for s in ("a", "b")] == [[1, 2, 3], [1, 2]]
        info_a, info_b = await store.get_session_info("a"), await store.get_session_info("b")
        assert info_a is not None and (info_a.version, info_a.run_count, info_a.agent_id) == (3, 1, "bot")
        assert info_b is not None and (info_b.version, info_b.session_type, info_b.team_id) == (2, "team", "t")
        positions = [position for result in results for position in result.positions]
        assert len(set(positions)) == 4
        await feed_settled(store)
        records = {(r.session_id, r.version): r.position async for r in store.read_all()}
        assert all(records[(result.session_id, result.from_version)] == result.positions[0] for result in results)


async def test_append_many_conflict_in_one_part_stores_nothing_in_any(backend: Backend) -> None:
    backend.require("appends_many")
    async with backend.store() as store:
        await store.append("a", [_message("a1")])
        before = await _everything(store)
        with pytest.raises(ConcurrencyError) as raised:
            await store.append_many(
                [
                    SessionAppend("new", [SessionStarted(session_type="agent")], NO_STREAM),
                    SessionAppend("a", [_message("a2")], expected_version=5),
                ]
            )
        assert (raised.value.session_id, raised.value.expected_version, raised.value.actual_version) == ("a", 5, 1)
        assert await store.current_version("new") == 0
        assert await store.get_session_info("new") is None
        assert await store.current_version("a") == 1
        assert await _everything(store) == before
        # the same call with the right expectation then goes through whole
        results = await store.append_many(
            [
                SessionAppend("new", [SessionStarted(session_type="agent")], NO_STREAM),
                SessionAppend("a", [_message("a2")], expected_version=1),
            ]
        )
        assert [r.to_version for r in results] == [1, 2]


async def test_append_many_retried_with_the_same_ids_returns_the_first_results(backend: Backend) -> None:
    backend.require("appends_many")
    ids = [[uuid.uuid4(), uuid.uuid4()], [uuid.uuid4()]]
    call = [
        SessionAppend("a", [_message("a1"), _message("a2")], NO_STREAM, ids[0]),
        SessionAppend("b", [_message("b1")], NO_STREAM, ids[1]),
    ]
    async with backend.store() as store:
        first = await store.append_many(call)
        again = await store.append_many(call)
        assert again == first
        assert await _everything(store) == [("a", 1), ("a", 2), ("b", 1)]


async def test_append_many_reused_ids_with_other_content_store_nothing(backend: Backend) -> None:
    backend.require("appends_many")
    reused = uuid.uuid4()
    async with backend.store() as store:
        await store.append("a", [_message("original")], event_ids=[reused])
        with pytest.raises(IdempotencyError):
            await store.append_many(
                [
                    SessionAppend("b", [_message("b1")]),
                    SessionAppend("a", [_message("other content")], event_ids=[reused]),
                ]
            )
        assert await store.current_version("b") == 0
        assert await _everything(store) == [("a", 1)]


async def test_append_many_refuses_a_session_twice_naming_the_index(backend: Backend) -> None:
    backend.require("appends_many")
    async with backend.store() as store:
        with pytest.raises(InvalidArgumentError) as raised:
            await store.append_many(
                [
                    SessionAppend("a", [_message("1")]),
                    SessionAppend("b", [_message("2")]),
                    SessionAppend("a", [_message("3")]),
                ]
            )
        assert raised.value.argument == "appends[2].session_id"
        assert "appends[0]" in str(raised.value)
        assert await store.current_version("a") == 0


async def test_append_many_checks_each_part_as_append_does(backend: Backend) -> None:
    backend.require("appends_many")
    shared = uuid.uuid4()
    async with backend.store() as store:
        cases: list[tuple[object, str, type[InvalidArgumentError]]] = [
            ([], "appends", InvalidArgumentError),
            (["a"], "appends[0]", InvalidArgumentError),
            ([SessionAppend("a", [_message("1")]), SessionAppend("b", [])], "appends[1].events", InvalidArgumentError),
            ([SessionAppend("", [_message("1")])], "appends[0].session_id", InvalidIdentifierError),
            ([SessionAppend("a", [_message("1")], -1)], "appends[0].expected_version", InvalidArgumentError),
            ([SessionAppend("a", [_message("1")], event_ids=[])], "appends[0].event_ids", InvalidArgumentError),
            (
                [
                    SessionAppend("a", [_message("1")], event_ids=[shared]),
                    SessionAppend("b", [_message("2")], 0, [shared]),
                ],
                "appends[1].event_ids",
                InvalidArgumentError,
            ),
        ]
        for appends, argument, kind in cases:
            with pytest.raises(kind) as raised:
                await store.append_many(appends)  # type: ignore[arg-type]
            assert raised.value.argument == argument, appends
            assert str(raised.value).startswith(argument), raised.value
        assert await store.current_version("a") == 0


async def test_append_many_calls_over_the_same_sessions_in_any_order_all_land(backend: Backend) -> None:
    backend.require("appends_many")
    rounds = 10
    async with backend.store() as store, backend.store() as other:
        writers = [store, other] if backend.persistent else [store, store]

        async def write(order: tuple[str, ...], writer: EventStore) -> None:
            for n in range(rounds):
                await writer.append_many([SessionAppend(s, [_message(f"{n}"), _message(f"{n}'")]) for s in order])

        await asyncio.gather(
            write(("x", "y", "z"), writers[0]),
            write(("z", "y", "x"), writers[1]),
            write(("y", "x"), writers[0]),
        )
        for session in ("x", "y", "z"):
            versions = [record.version async for record in store.read(session)]
            assert versions == list(range(1, 1 + (6 if session != "z" else 4) * rounds))


async def test_the_global_feed_shows_an_append_many_whole_or_not_at_all(backend: Backend) -> None:
    backend.require("appends_many")
    calls = 15
    async with backend.store() as store, backend.store() as reader:
        feed = reader if backend.persistent else store
        done = False
        torn: list[tuple[int, int]] = []

        async def watch() -> None:
            while not done:
                seen: dict[int, int] = {}
                async for record in feed.read_all():
                    if isinstance(record.event, MessageAdded):
                        call = int(record.event.content.split(":")[0])
                        seen[call] = seen.get(call, 0) + 1
                torn.extend((call, count) for call, count in seen.items() if count != 6)
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        for call in range(calls):
            await store.append_many(
                [SessionAppend(s, [_message(f"{call}:{s}{i}") for i in range(2)]) for s in ("p", "q", "r")]
            )
            await asyncio.sleep(0)
        done = True
        await watcher
        assert not torn, f"the feed showed part of a call: {torn[:5]}"
        assert len(await _everything(store)) == 6 * calls


async def test_a_store_without_append_many_raises_a_typed_error(backend: Backend) -> None:
    if backend.appends_many:
        pytest.skip(f"{backend.name} has the capability 'appends_many'")
    async with backend.store() as store:
        with pytest.raises(UnsupportedError) as raised:
            await store.append_many([SessionAppend("a", [_message("1")])])
        assert raised.value.capability == "append_many"
        assert await store.current_version("a") == 0
