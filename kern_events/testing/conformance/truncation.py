"""Prefix truncation behind a snapshot: the log starts later, everything else stays as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from kern_events import (
    TRUNCATION_SNAPSHOT,
    ConcurrencyError,
    EventStore,
    InvalidArgumentError,
    MessageAdded,
    SessionStarted,
    Snapshot,
    TruncatedError,
    UnsupportedError,
)
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled
from kern_events.testing._samples import conversation
from kern_events.timetravel import first_version


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r1", role="user", content=text)


async def _versions(store: EventStore, session_id: str, **options: int | bool) -> list[int]:
    return [record.version async for record in store.read(session_id, **options)]  # type: ignore[arg-type]


async def _feed(store: EventStore) -> list[tuple[str, int]]:
    await feed_settled(store)
    return [(record.session_id, record.version) async for record in store.read_all()]


async def _five(store: EventStore, session_id: str = "s") -> None:
    await store.append(session_id, [SessionStarted(session_type="agent", user_id="u", name="five")])
    await store.append(session_id, [_message(str(n)) for n in range(2, 6)])


def _snapshot(version: int, session_id: str = "s") -> Snapshot:
    return Snapshot(session_id=session_id, name="view", schema_version=1, version=version, data=b"state")


async def test_truncate_before_removes_the_prefix_and_keeps_head_index_and_numbering(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.store() as store:
        await _five(store)
        await store.append("other", [_message("o1"), _message("o2")])
        info = await store.get_session_info("s")
        assert await store.truncate_before("s", 4, snapshot=_snapshot(3)) == 3
        assert await _versions(store, "s") == [4, 5]
        assert await _versions(store, "s", from_version=2, to_version=4) == [4]
        assert await _versions(store, "s", backwards=True) == [5, 4]
        assert await store.current_version("s") == 5
        assert await store.get_session_info("s") == info
        assert await _feed(store) == [("s", 4), ("s", 5), ("other", 1), ("other", 2)]
        assert (await store.append("s", [_message("6")], expected_version=5)).from_version == 6
        assert await _versions(store, "s") == [4, 5, 6]
        assert await first_version(store, "s") == 4
    if backend.persistent:
        async with backend.store() as reopened:
            assert await _versions(reopened, "s") == [4, 5, 6]
            assert await first_version(reopened, "s") == 4


async def test_truncate_before_saves_its_snapshot_and_where_the_log_starts(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.store() as store:
        await _five(store)
        await store.truncate_before("s", 3, snapshot=_snapshot(2))
        saved = await store.load_snapshot("s", "view")
        assert saved is not None and (saved.version, saved.data) == (2, b"state") and saved.created_at > 0
        marker = await store.load_snapshot("s", TRUNCATION_SNAPSHOT)
        assert marker is not None and marker.version == 2
        await store.truncate_before("s", 5)  # no snapshot of its own: the marker moves on
        assert await first_version(store, "s") == 5
        assert (await store.load_snapshot("s", "view")) == saved


async def test_truncate_before_refuses_a_snapshot_that_does_not_fit(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.store() as store:
        await _five(store)
        cases = [
            (_snapshot(3, session_id="other"), "snapshot.session_id"),
            (_snapshot(2), "snapshot.version"),
            (
                Snapshot(session_id="s", name=TRUNCATION_SNAPSHOT, schema_version=0, version=3, data=b""),
                "snapshot.name",
            ),
        ]
        for snapshot, argument in cases:
            with pytest.raises(InvalidArgumentError) as raised:
                await store.truncate_before("s", 4, snapshot=snapshot)
            assert raised.value.argument == argument
        for version in (0, -1):
            with pytest.raises(InvalidArgumentError) as raised:
                await store.truncate_before("s", version)
            assert raised.value.argument == "version"
        assert await _versions(store, "s") == [1, 2, 3, 4, 5]
        with pytest.raises(InvalidArgumentError) as raised:  # nor can a plain save fake a truncation
            await store.save_snapshot(cases[2][0])
        assert raised.value.argument == "snapshot.name"
        assert await store.load_snapshot("s", TRUNCATION_SNAPSHOT) is None


async def test_truncate_before_past_the_head_names_the_head_and_head_plus_one_empties_the_log(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.store() as store:
        await _five(store)
        with pytest.raises(InvalidArgumentError) as raised:
            await store.truncate_before("s", 7)
        assert raised.value.argument == "version" and "at version 5" in str(raised.value)
        assert await _versions(store, "s") == [1, 2, 3, 4, 5]
        assert await store.truncate_before("s", 6, snapshot=_snapshot(5)) == 5
        assert await _versions(store, "s") == []
        assert await store.current_version("s") == 5
        assert await store.get_session_info("s") is not None
        assert (await store.append("s", [_message("6")], expected_version=5)).to_version == 6
        assert await _versions(store, "s") == [6]
        with pytest.raises(InvalidArgumentError) as raised:
            await store.truncate_before("never", 2)
        assert "at version 0" in str(raised.value)


async def test_truncate_before_with_a_stale_expected_version_removes_nothing(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.store() as store:
        await _five(store)
        with pytest.raises(ConcurrencyError) as raised:
            await store.truncate_before("s", 3, expected_version=4)
        assert (raised.value.session_id, raised.value.actual_version) == ("s", 5)
        assert await _versions(store, "s") == [1, 2, 3, 4, 5]
        assert await store.truncate_before("s", 3, expected_version=5) == 2


async def test_truncating_an_already_truncated_prefix_is_a_no_op(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.store() as store:
        await _five(store)
        assert await store.truncate_before("s", 1) == 0
        assert await store.load_snapshot("s", TRUNCATION_SNAPSHOT) is None
        assert await store.truncate_before("s", 4) == 3
        assert await store.truncate_before("s", 4, snapshot=_snapshot(3)) == 0
        assert await store.truncate_before("s", 2) == 0
        assert await store.load_snapshot("s", "view") is None, "a no-op saves nothing"
        assert await first_version(store, "s") == 4
        assert await _versions(store, "s") == [4, 5]
        assert await store.truncate_before("never", 1) == 0


async def test_appends_racing_a_truncation_are_never_lost(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.store() as store, backend.store() as other:
        writer = other if backend.persistent else store
        for trial in range(5):
            session = f"race{trial}"
            await store.append(session, [_message(str(n)) for n in range(10)])
            appends = [asyncio.ensure_future(writer.append(session, [_message(f"racing {n}")])) for n in range(5)]
            await asyncio.sleep(0)
            removed = await store.truncate_before(session, 6)
            await asyncio.gather(*appends)
            assert removed == 5
            assert await _versions(store, session) == list(range(6, 16))


async def test_a_truncated_session_reads_the_same_view_behind_its_checkpoint(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.db() as db:
        for batch in conversation(runs=3):
            await db.store.append("s", batch)
        view, state = await db.get_session("s"), await db.get_session_state("s")
        history = await db.get_history("s")
        checkpoint = await db.save_checkpoint("s")
        removed = await db.store.truncate_before("s", checkpoint.version + 1, snapshot=checkpoint)
        assert removed == checkpoint.version == await db.store.current_version("s")
        assert await db.get_session("s") == view
        assert await db.get_session_state("s") == state
        assert await db.get_history("s") == history
        assert await db.get_context("s") == (history, state)
        await db.store.append("s", [_message("after")])
        later = await db.get_session("s")
        assert later.runs[:-1] == view.runs[:-1] and later.updated_at >= view.updated_at


async def test_time_travel_before_the_truncation_point_names_the_first_readable_version(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.db() as db:
        for batch in conversation(runs=3):
            await db.store.append("s", batch)
        checkpoint = await db.save_checkpoint("s")
        await db.store.append("s", [_message("tail")])
        await db.store.truncate_before("s", checkpoint.version + 1, snapshot=checkpoint)
        first = checkpoint.version + 1
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: db.get_session("s", version=2),
            lambda: db.version_at("s", 0.0),
            lambda: db.fork_session("s", "copy"),
        ]
        for attempt in attempts:
            with pytest.raises(TruncatedError) as raised:
                await attempt()
            assert (raised.value.session_id, raised.value.first_version) == ("s", first)
            assert f"first readable version is {first}" in str(raised.value)
        assert (await db.get_session("s", version=checkpoint.version)).runs == (await db.get_session("s")).runs
        assert await db.version_at("s", 2**40) == first


async def test_a_deleted_truncated_session_starts_afresh(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.db() as db:
        for batch in conversation(runs=2):
            await db.store.append("s", batch)
        await db.store.truncate_before("s", 4)
        assert await db.delete_session("s")
        assert await db.store.load_snapshot("s", TRUNCATION_SNAPSHOT) is None
        for batch in conversation(runs=1):
            await db.store.append("s", batch)
        view = await db.get_session("s")
        assert [run.run_id for run in view.runs] == ["run-1"]
        assert await db.version_at("s", 0.0) == 0


async def test_a_store_without_truncate_before_raises_a_typed_error(backend: Backend) -> None:
    if backend.truncates:
        pytest.skip(f"{backend.name} has the capability 'truncates'")
    async with backend.store() as store:
        await store.append("s", [_message("1"), _message("2")])
        with pytest.raises(UnsupportedError) as raised:
            await store.truncate_before("s", 2)
        assert raised.value.capability == "truncate_before"
        assert await _versions(store, "s") == [1, 2]


async def test_reads_that_need_truncated_events_and_have_no_checkpoint_are_typed_errors(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.db() as db:
        for batch in conversation(runs=2):
            await db.store.append("s", batch)
        await db.store.truncate_before("s", 4)  # no checkpoint behind it: the view cannot be rebuilt
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: db.get_session("s"),
            lambda: db.get_session_state("s"),
            lambda: db.get_history("s"),
            lambda: db.get_context("s", num_history_runs=1),  # the window is whole; the state is not
        ]
        for attempt in attempts:
            with pytest.raises(TruncatedError) as raised:
                await attempt()
            assert raised.value.first_version == 4
        assert await first_version(db.store, "s") == 4
