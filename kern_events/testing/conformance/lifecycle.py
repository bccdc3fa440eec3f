"""Deletion (the GDPR path), snapshots, and the store's own lifecycle (close, cancellation)."""

from __future__ import annotations

import asyncio

import pytest

from kern_events import InvalidArgumentError, MessageAdded, SessionStarted, Snapshot, StoreClosedError
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled


def _message(n: int) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=f"m{n}")


def _snapshot(session_id: str, version: int, *, name: str = "session", schema_version: int = 1) -> Snapshot:
    return Snapshot(
        session_id=session_id,
        name=name,
        schema_version=schema_version,
        version=version,
        data=f"state@{version}".encode(),
    )


async def test_delete_erases_events_snapshots_and_index_row_of_that_session_only(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("gone", [SessionStarted(session_type="agent", user_id="u"), _message(1)])
        await store.append("kept", [SessionStarted(session_type="agent", user_id="u"), _message(2)])
        await store.save_snapshot(_snapshot("gone", 2))
        await store.save_snapshot(_snapshot("kept", 2))
        assert await store.delete_session("gone") is True
        assert [record async for record in store.read("gone")] == []
        if backend.global_feed:
            await feed_settled(store)
            assert [record.session_id async for record in store.read_all()] == ["kept", "kept"]
        assert await store.load_snapshot("gone", "session") is None
        assert await store.get_session_info("gone") is None
        assert [info.session_id for info in await store.list_sessions(user_id="u")] == ["kept"]
        assert await store.load_snapshot("kept", "session") is not None
        assert await store.delete_session("gone") is False
        assert await store.delete_session("never-existed") is False


async def test_snapshots_keep_the_newest_and_filter_by_version_and_schema(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message(n) for n in range(10)])
        for version in (2, 4, 6, 8):
            await store.save_snapshot(_snapshot("s", version))
        await store.save_snapshot(_snapshot("s", 9, schema_version=2))
        await store.save_snapshot(_snapshot("s", 10, name="other"))
        latest = await store.load_snapshot("s", "session")
        assert latest is not None and latest.version == 9 and latest.created_at > 0
        old_schema = await store.load_snapshot("s", "session", schema_version=1)
        assert old_schema is not None and (old_schema.version, old_schema.data) == (8, b"state@8")
        at_most_7 = await store.load_snapshot("s", "session", schema_version=1, max_version=7)
        assert at_most_7 is not None and at_most_7.version == 6
        assert await store.load_snapshot("s", "session", max_version=5) is None, "only the newest 3 are kept"
        other = await store.load_snapshot("s", "other")
        assert other is not None and other.version == 10
        assert await store.load_snapshot("s", "missing") is None


async def test_a_snapshot_ahead_of_the_session_is_refused(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message(1)])
        with pytest.raises(InvalidArgumentError, match="ahead"):
            await store.save_snapshot(_snapshot("s", 2))
        with pytest.raises(InvalidArgumentError, match="ahead"):
            await store.save_snapshot(_snapshot("nobody", 1))
        assert await store.load_snapshot("s", "session") is None


async def test_a_closed_store_refuses_work_and_closing_twice_is_fine(backend: Backend) -> None:
    store = backend.store()
    await store.append("s", [_message(1)])  # opens on first use
    await store.aclose()
    await store.aclose()
    with pytest.raises(StoreClosedError):
        await store.append("s", [_message(2)])
    with pytest.raises(StoreClosedError):
        _ = [record async for record in store.read("s")]
    never_opened = backend.store()
    await never_opened.aclose()
    with pytest.raises(StoreClosedError):
        await never_opened.current_version("s")


async def test_cancelled_appends_leave_whole_batches_or_nothing(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", [_message(0)])
        tasks = [asyncio.create_task(store.append("s", [_message(n), _message(n), _message(n)])) for n in range(1, 30)]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        versions = [record.version async for record in store.read("s")]
        assert versions == list(range(1, len(versions) + 1))
        assert (len(versions) - 1) % 3 == 0 and len(versions) >= 1 + 3 * 14  # the 14 never cancelled
        await store.append("s", [_message(99)], expected_version=len(versions))
    if backend.persistent:
        async with backend.store() as reopened:
            assert await reopened.current_version("s") == len(versions) + 1
