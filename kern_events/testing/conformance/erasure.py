"""Erasing a user: every session, snapshot, checkpoint and index row of the user goes, and no read
path, listing or feed returns anything of theirs afterwards; other users are left exactly as they were."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from kern_events import TRUNCATION_SNAPSHOT, ErasedError, MessageAdded, SessionStarted, Snapshot
from kern_events.store import EventStore
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled
from kern_events.testing._samples import conversation


def _checkpoint(session_id: str, name: str = "state") -> Snapshot:
    return Snapshot(session_id=session_id, name=name, schema_version=1, version=1, data=b"personal")


async def _write(db: object, session_id: str, user_id: str) -> None:
    for batch in conversation(user_id=user_id):
        await db.store.append(session_id, batch)  # type: ignore[attr-defined]


async def _race_erasure(
    eraser: EventStore,
    user: str,
    sessions: list[str],
    write: Callable[[str, int], Awaitable[object]],
    *,
    writes: int = 3,
    tries: int = 5,
) -> None:
    """Race ``write(session_id, n)`` (``writes`` of them per session, each tried up to ``tries`` times
    until it is refused) against ``eraser.erase_user(user)``: a refusal is an :class:`ErasedError`
    naming the session written, and the erasure reports every session of the user."""

    async def attempt(session_id: str, number: int) -> None:
        for _ in range(tries):
            try:
                await write(session_id, number)
            except ErasedError as error:
                assert error.session_id == session_id
                return
            await asyncio.sleep(0)

    writers = [asyncio.ensure_future(attempt(session_id, n)) for session_id in sessions for n in range(writes)]
    await asyncio.sleep(0)
    report = await eraser.erase_user(user)
    await asyncio.gather(*writers)
    assert sorted(report.session_ids) == sessions


async def test_erase_user_removes_every_session_and_leaves_other_users_alone(backend: Backend) -> None:
    backend.require("erases_users")
    async with backend.db() as db:
        await _write(db, "a1", "alice")
        await _write(db, "a2", "alice")
        await _write(db, "b1", "bob")
        await db.save_checkpoint("a1")
        await db.save_checkpoint("b1")
        bob_view = await db.get_session("b1")
        listed = await db.erase_user("alice", dry_run=True)
        assert len(await db.get_sessions(user_id="alice")) == 2  # a dry run erases nothing
        report = await db.erase_user("alice")
        assert (sorted(listed.session_ids), listed.events) == (sorted(report.session_ids), report.events)
        assert report.user_id == "alice"
        assert sorted(report.session_ids) == ["a1", "a2"]
        assert report.events == 2 * sum(map(len, conversation()))
        assert await db.get_sessions(user_id="alice") == []
        assert [info.session_id for info in await db.get_sessions()] == ["b1"]
        for session_id in ("a1", "a2"):
            assert [record async for record in db.store.read(session_id)] == []
            assert await db.store.get_session_info(session_id) is None
            assert await db.store.load_snapshot(session_id, "session") is None
            assert await db.store.load_snapshot(session_id, "state") is None
        if backend.global_feed:
            await feed_settled(db.store)
            feed = [record async for record in db.store.read_all()]
            assert {record.session_id for record in feed} == {"b1"}
            async with db.store.subscribe() as subscription:
                seen = []
                async for record in subscription:
                    seen.append(record.session_id)
                    if len(seen) == len(feed):
                        break
            assert set(seen) == {"b1"}
        assert await db.get_session("b1") == bob_view
        assert await db.get_paused_runs(user_id="alice") == []


async def test_erasing_an_unknown_user_reports_zero_and_changes_nothing(backend: Backend) -> None:
    backend.require("erases_users")
    async with backend.db() as db:
        await _write(db, "b1", "bob")
        before = await db.get_sessions()
        report = await db.erase_user("nobody")
        assert (report.session_ids, report.events) == ((), 0)
        assert await db.get_sessions() == before
        assert len([record async for record in db.store.read("b1")]) == sum(map(len, conversation()))


async def test_erase_user_refuses_a_bad_user_id(backend: Backend) -> None:
    backend.require("erases_users")
    from kern_events import InvalidArgumentError

    async with backend.db() as db:
        with pytest.raises(InvalidArgumentError) as raised:
            await db.erase_user("")
        assert raised.value.argument == "user_id"


async def test_appends_racing_an_erasure_land_first_or_are_refused_never_left_behind(backend: Backend) -> None:
    backend.require("erases_users")
    async with backend.store() as store:
        for trial in range(3):
            user = f"racer{trial}"
            sessions = [f"{user}-s{n}" for n in range(3)]
            for session_id in sessions:
                await store.append(session_id, [SessionStarted(session_type="agent", user_id=user)])

            async def write(session_id: str, number: int) -> None:
                await store.append(session_id, [MessageAdded(run_id="r", role="user", content=str(number))])

            await _race_erasure(store, user, sessions, write, writes=4, tries=1)
            for session_id in sessions:
                assert [record async for record in store.read(session_id)] == []
                assert await store.get_session_info(session_id) is None
                with pytest.raises(ErasedError):
                    await store.append(session_id, [MessageAdded(run_id="r", role="user", content="late")])
                with pytest.raises(ErasedError):  # a checkpoint would leave their data behind just the same
                    await store.save_snapshot(_checkpoint(session_id))
                assert await store.load_snapshot(session_id, "state") is None
            if backend.global_feed:
                await feed_settled(store)
                assert not [record async for record in store.read_all() if record.session_id.startswith(user)]


async def test_appends_from_another_store_racing_an_erasure_land_first_or_are_refused(backend: Backend) -> None:
    backend.require("erases_users")
    backend.require("persistent")
    backend.require("fences_erasure_across_stores")
    async with backend.store() as eraser, backend.store() as other:  # as two processes on one database
        for trial in range(3):
            user = f"far{trial}"
            sessions = [f"{user}-s{n}" for n in range(3)]
            for session_id in sessions:
                await other.append(session_id, [SessionStarted(session_type="agent", user_id=user)])

            async def write(session_id: str, number: int) -> None:
                await other.append(session_id, [MessageAdded(run_id="r", role="user", content=str(number))])

            await _race_erasure(eraser, user, sessions, write)
            for session_id in sessions:
                with pytest.raises(ErasedError):  # the other store is refused too, not only the eraser
                    await other.append(session_id, [MessageAdded(run_id="r", role="user", content="late")])
                for store in (eraser, other):
                    assert [record async for record in store.read(session_id)] == []
                    assert await store.get_session_info(session_id) is None
            if backend.global_feed:
                await feed_settled(eraser)
                assert not [record async for record in eraser.read_all() if record.session_id.startswith(user)]


async def test_snapshots_from_another_store_racing_or_after_an_erasure_are_erased_or_refused(backend: Backend) -> None:
    """A checkpoint is the user's data as much as an event: one saved by another process while or after
    the user is erased is erased with them or refused (the error appends get), never left behind."""
    backend.require("erases_users")
    backend.require("persistent")
    backend.require("fences_erasure_across_stores")
    async with backend.store() as eraser, backend.store() as other:  # as two processes on one database
        for trial in range(3):
            user = f"snap{trial}"
            sessions = [f"{user}-s{n}" for n in range(3)]
            for session_id in sessions:
                await other.append(session_id, [SessionStarted(session_type="agent", user_id=user)])
            exported = {session_id: [event async for event in other.read_stored(session_id)] for session_id in sessions}

            async def save(session_id: str, number: int) -> None:
                await other.save_snapshot(_checkpoint(session_id, f"state{number}"))

            await _race_erasure(eraser, user, sessions, save)
            for session_id in sessions:
                with pytest.raises(ErasedError) as raised:  # the other store is refused too, not only the eraser
                    await other.save_snapshot(_checkpoint(session_id))
                assert raised.value.session_id == session_id
                head = await other.current_version(session_id)
                with pytest.raises(ErasedError):  # nor does an import bring the user back
                    await other.append_stored(
                        [msgspec.structs.replace(exported[session_id][0], version=head + 1)], expected_version=head
                    )
                assert await other.truncate_before(session_id, head + 1) == 0  # nothing to cut, nothing saved
                for store in (eraser, other):
                    assert await store.get_session_info(session_id) is None
                    assert await store.load_snapshot(session_id, TRUNCATION_SNAPSHOT) is None
                    for name in ("state", "state0", "state1", "state2"):
                        assert await store.load_snapshot(session_id, name) is None
