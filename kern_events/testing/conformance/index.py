"""The session index: kept in the append's own transaction, so listings never fold logs."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kern_events import (
    EventStore,
    IdempotencyError,
    InvalidArgumentError,
    RunStarted,
    SessionRenamed,
    SessionStarted,
)
from kern_events.testing._backend import Backend


async def test_index_row_follows_each_append(backend: Backend) -> None:
    async with backend.store() as store:
        first = await store.append(
            "s",
            [
                SessionStarted(
                    session_type="team", agent_id="a", team_id="t", workflow_id="w", user_id="u", name="first name"
                ),
                RunStarted(run_id="r1"),
                RunStarted(run_id="r1.1", parent_run_id="r1"),
            ],
        )
        info = await store.get_session_info("s")
        assert info is not None
        assert (info.session_type, info.agent_id, info.team_id, info.workflow_id, info.user_id) == (
            "team",
            "a",
            "t",
            "w",
            "u",
        )
        assert (info.name, info.run_count, info.version) == ("first name", 1, 3)
        assert info.created_at == info.updated_at == first.recorded_at
        second = await store.append("s", [RunStarted(run_id="r2"), SessionRenamed(name="second name")])
        info = await store.get_session_info("s")
        assert info is not None
        assert (info.name, info.run_count, info.version) == ("second name", 2, 5)
        assert (info.created_at, info.updated_at) == (first.recorded_at, second.recorded_at)
        third = await store.append("s", [RunStarted(run_id="r3"), RunStarted(run_id="r4")], expected_version=5)
        fourth = await store.append("s", [RunStarted(run_id="r5")], expected_version=7)
        info = await store.get_session_info("s")
        assert info is not None
        assert (info.name, info.run_count, info.version, info.user_id) == ("second name", 5, 8, "u")
        assert (third.to_version, info.created_at, info.updated_at) == (7, first.recorded_at, fourth.recorded_at)
        assert await store.get_session_info("missing") is None


async def test_a_failed_append_leaves_the_index_row_alone(backend: Backend) -> None:
    taken = uuid.uuid4()
    async with backend.store() as store:
        await store.append("elsewhere", [RunStarted(run_id="x")], event_ids=[taken])
        await store.append("s", [SessionStarted(session_type="agent", name="before")])
        before = await store.get_session_info("s")
        with pytest.raises(IdempotencyError):
            await store.append(
                "s", [SessionRenamed(name="after"), RunStarted(run_id="r")], event_ids=[uuid.uuid4(), taken]
            )
        assert await store.get_session_info("s") == before


async def _seed(store: EventStore) -> None:
    """Five sessions, created in order, with distinct times (so the expected order has no ties)."""
    plan = [
        ("s1", "agent", "alice", "a1"),
        ("s2", "team", "alice", None),
        ("s3", "agent", "bob", "a1"),
        ("s4", "workflow", "alice", None),
        ("s5", "agent", "alice", "a2"),
    ]
    for session_id, kind, user, agent in plan:
        await store.append(session_id, [SessionStarted(session_type=kind, user_id=user, agent_id=agent)])
        await asyncio.sleep(0.002)
    await store.append("s2", [RunStarted(run_id="late")])  # s2 becomes the most recently updated


async def test_list_sessions_filters_sorts_and_pages(backend: Backend) -> None:
    async with backend.store() as store:
        await _seed(store)

        async def ids(**query: object) -> list[str]:
            return [info.session_id for info in await store.list_sessions(**query)]  # type: ignore[arg-type]

        assert await ids() == ["s2", "s5", "s4", "s3", "s1"]
        assert await ids(sort_by="created_at", descending=False) == ["s1", "s2", "s3", "s4", "s5"]
        assert await ids(user_id="alice") == ["s2", "s5", "s4", "s1"]
        assert await ids(user_id="alice", session_type="agent") == ["s5", "s1"]
        assert await ids(agent_id="a1") == ["s3", "s1"]
        assert await ids(session_type="workflow") == ["s4"]
        assert await ids(user_id="carol") == []
        assert await ids(user_id="alice", limit=2) == ["s2", "s5"]
        assert await ids(user_id="alice", limit=2, offset=2) == ["s4", "s1"]
        assert await ids(limit=0) == []
        with pytest.raises(InvalidArgumentError, match="sort_by"):
            await ids(sort_by="name")
        with pytest.raises(InvalidArgumentError, match="session_type"):
            await ids(session_type=" ")
        assert await ids(session_type="robot") == []
        with pytest.raises(InvalidArgumentError, match="offset"):
            await ids(offset=-1)


async def test_list_sessions_pages_by_keyset_cursor_and_filters_by_update_time(backend: Backend) -> None:
    async with backend.store() as store:
        await _seed(store)
        for sort_by in ("updated_at", "created_at"):
            for descending in (True, False):
                everything = await store.list_sessions(sort_by=sort_by, descending=descending)
                paged: list[str] = []
                after: tuple[float, str] | None = None
                while True:
                    page = await store.list_sessions(
                        sort_by=sort_by,
                        descending=descending,
                        limit=2,
                        after=after,
                    )
                    paged += [info.session_id for info in page]
                    if len(page) < 2:
                        break
                    after = (getattr(page[-1], sort_by), page[-1].session_id)
                assert paged == [info.session_id for info in everything], (sort_by, descending)
        alice = await store.list_sessions(user_id="alice")
        assert [
            info.session_id
            for info in await store.list_sessions(user_id="alice", after=(alice[1].updated_at, alice[1].session_id))
        ] == [info.session_id for info in alice[2:]]
        newest = await store.list_sessions()
        since = newest[1].updated_at
        assert [info.session_id for info in await store.list_sessions(updated_since=since)] == [
            info.session_id for info in newest if info.updated_at >= since
        ]
        assert await store.list_sessions(updated_since=newest[0].updated_at + 1) == []
        with pytest.raises(InvalidArgumentError, match="after"):
            await store.list_sessions(after=("x", "s1"))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="updated_since"):
            await store.list_sessions(updated_since=float("nan"))
