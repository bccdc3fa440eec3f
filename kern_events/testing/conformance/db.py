"""The storage objects runtimes use: session views, user scoping, checkpoints, rename and delete."""

from __future__ import annotations

import msgspec
import pytest

from kern_events import (
    BaseDb,
    InvalidArgumentError,
    MessageAdded,
    SessionNotFoundError,
    SessionRenamed,
    Snapshot,
    UnknownEvent,
)
from kern_events.testing._backend import Backend
from kern_events.testing._codecs import FutureCodec
from kern_events.testing._samples import conversation
from projections import SessionView, fold_records

SEED_FIELDS = [
    "session_id",
    "session_type",
    "agent_id",
    "team_id",
    "workflow_id",
    "user_id",
    "session_data",
    "agent_data",
    "team_data",
    "workflow_data",
    "metadata",
    "runs",
    "summary",
    "created_at",
    "updated_at",
]


def test_the_session_view_has_exactly_the_seed_fields() -> None:
    assert list(SessionView.__struct_fields__) == SEED_FIELDS


async def test_a_session_reads_back_as_its_view(backend: Backend) -> None:
    async with backend.db() as db:
        for batch in conversation(runs=2):
            await db.store.append("s", batch)
        view = await db.get_session("s")
        records = [record async for record in db.store.read("s")]
    assert view == fold_records(records)
    assert (view.session_type, view.agent_id, view.user_id) == ("agent", "agent-1", "alice@example.com")
    assert view.agent_data == {"model": "m"}
    assert view.session_state == {"turns": 2}
    assert [run.run_id for run in view.runs] == ["run-1", "run-2"]
    assert all(run.status == "completed" for run in view.runs)
    assert [message.content for message in view.runs[1].messages] == ["question 2", "answer 2"]
    assert view.runs[0].metrics is not None and view.runs[0].metrics.total_tokens == 8
    assert isinstance(view.created_at, int) and view.created_at <= view.updated_at


async def test_a_session_of_another_user_is_not_found_not_leaked(backend: Backend) -> None:
    async with backend.db() as db:
        for batch in conversation(user_id="alice"):
            await db.store.append("s", batch)
        assert (await db.get_session("s", user_id="alice")).user_id == "alice"
        with pytest.raises(SessionNotFoundError) as caught:
            await db.get_session("s", user_id="mallory")
        assert "alice" not in str(caught.value)
        with pytest.raises(SessionNotFoundError):
            await db.rename_session("s", "stolen", user_id="mallory")
        assert await db.delete_session("s", user_id="mallory") is False
        assert [info.session_id for info in await db.get_sessions(user_id="mallory")] == []
        assert (await db.get_session("s")).session_name is None
        with pytest.raises(SessionNotFoundError, match="'nope'"):
            await db.get_session("nope")


async def test_a_session_reads_as_of_any_version(backend: Backend) -> None:
    async with backend.db() as db:
        for batch in conversation(runs=3):
            await db.store.append("s", batch)
        await db.save_checkpoint("s")
        at_6 = await db.get_session("s", version=6)
        records = [record async for record in db.store.read("s", to_version=6)]
        assert at_6 == fold_records(records)
        assert [run.run_id for run in at_6.runs] == ["run-1"]
        assert at_6.session_state == {"turns": 1}
        head = await db.store.current_version("s")
        with pytest.raises(InvalidArgumentError, match=f"is at version {head};") as caught:
            await db.get_session("s", version=10_000)  # past the head: an error naming it, not the head
        assert caught.value.argument == "version"


async def test_checkpoint_plus_tail_equals_the_full_fold(backend: Backend) -> None:
    async with backend.db() as db:
        batches = conversation(runs=4)
        for batch in batches[:3]:
            await db.store.append("s", batch)
        snapshot = await db.save_checkpoint("s")
        assert snapshot.version == 11
        for batch in batches[3:]:
            await db.store.append("s", batch)
        await db.store.append("s", [MessageAdded(run_id="run-4", role="assistant", content="p.s.")])
        full = fold_records([record async for record in db.store.read("s")])
        assert await db.get_session("s") == full


async def test_a_checkpoint_that_no_longer_decodes_is_ignored(backend: Backend) -> None:
    async with backend.db() as db:
        for batch in conversation(runs=2):
            await db.store.append("s", batch)
        expected = await db.get_session("s")
        stale = Snapshot(
            session_id="s",
            name="session",
            schema_version=1,
            version=6,
            data=msgspec.msgpack.encode({"session_id": "s", "shape": "of an older release"}),
        )
        await db.store.save_snapshot(stale)
        assert await db.get_session("s") == expected


async def test_rename_and_delete(backend: Backend) -> None:
    async with backend.db() as db:
        for batch in conversation():
            await db.store.append("s", batch)
        info = await db.rename_session("s", "Holiday plans", user_id="alice@example.com")
        assert info.name == "Holiday plans"
        assert (await db.get_session("s")).session_name == "Holiday plans"
        assert [row.name for row in await db.get_sessions()] == ["Holiday plans"]
        with pytest.raises(InvalidArgumentError, match="name"):
            await db.rename_session("s", "  ")
        assert await db.delete_session("s") is True
        with pytest.raises(SessionNotFoundError):
            await db.get_session("s")
        with pytest.raises(SessionNotFoundError):
            await db.rename_session("s", "again")
        assert await db.get_sessions() == []


async def test_unknown_events_do_not_break_session_reads(backend: Backend) -> None:
    async with BaseDb(backend.store(codec=FutureCodec())) as db:
        for batch in conversation():
            await db.store.append("s", batch)
        await db.store.append("s", [SessionRenamed(name="from a newer release")])
        view = await db.get_session("s")
        (last,) = [record async for record in db.store.read("s", backwards=True, limit=1)]
    assert isinstance(last.event, UnknownEvent)
    assert view.session_name is None and len(view.runs) == 2
