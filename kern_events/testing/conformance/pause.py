"""Paused runs: requirements persisted with a checkpoint, resolved and continued by another writer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from kern_events import (
    BaseDb,
    ConcurrencyError,
    Event,
    ExternalExecution,
    InputField,
    InvalidArgumentError,
    RequirementNotFoundError,
    RunNotFoundError,
    RunResumed,
    RunStateError,
    Session,
    Snapshot,
    ToolConfirmation,
    UserInput,
)
from kern_events.checkpoints import run_checkpoint
from kern_events.testing._backend import Backend
from projections import fold_records
from projections.runs import RUN_SCHEMA_VERSION

REQUIREMENTS = (
    ToolConfirmation(requirement_id="q1", tool_call_id="c1", tool_name="book_flight", arguments={"to": "Oslo"}),
    UserInput(requirement_id="q2", fields=(InputField(name="date", field_type="date"),), prompt="When?"),
    ExternalExecution(requirement_id="q3", tool_call_id="c3", tool_name="charge_card", arguments={"eur": 120}),
)


async def _pause(db: BaseDb) -> None:
    """A session with run r1 paused on three requirements, checkpointed at the pause."""
    session = await db.open_session("s", user_id="alice")
    run = await session.start_run("r1", input="Book me a flight to Oslo")
    run.message("user", "Book me a flight to Oslo")
    await run.pause(REQUIREMENTS)
    snapshot = await db.store.load_snapshot("s", "session")
    assert snapshot is not None and snapshot.version == session.version, "checkpointed at the pause"


async def test_a_paused_run_is_resolved_and_continued_by_another_writer(backend: Backend) -> None:
    pausing = await backend.db().__aenter__()
    await _pause(pausing)
    continuing = pausing
    if backend.persistent:  # the pausing process is gone; another one continues the run
        await pausing.aclose()
        continuing = backend.db()
    async with continuing as db:
        (session_id, paused), *_ = await db.get_paused_runs(user_id="alice")
        assert (session_id, paused.run_id, paused.status) == ("s", "r1", "paused")
        assert [r.requirement_id for r in paused.open_requirements] == ["q1", "q2", "q3"]
        session = await db.open_session("s")
        await session.resolve("r1", "q1", confirmed=True)
        await session.resolve("r1", "q2", values={"date": "2026-12-24"})
        await session.resolve("r1", "q3", result={"charged": True})
        run = await session.continue_run("r1")
        run.message("assistant", "Booked for 2026-12-24.")
        await run.complete("booked")
        view = await db.get_session("s")
        assert await db.get_paused_runs(user_id="alice") == []
    done = view.get_run("r1")
    assert done is not None and done.status == "completed"
    assert [(r.status, r.confirmed, r.values, r.result) for r in done.requirements] == [
        ("resolved", True, None, None),
        ("resolved", None, {"date": "2026-12-24"}, None),
        ("resolved", None, None, {"charged": True}),
    ]


async def test_wrong_resolutions_are_typed_errors_that_change_nothing(backend: Backend) -> None:
    async with backend.db() as db:
        session = await db.open_session("s")
        run = await session.start_run("r1")
        await run.pause(REQUIREMENTS[:2])
        done = await session.start_run("r2")
        await done.complete()
        version = await db.store.current_version("s")
        with pytest.raises(RunStateError, match="still open"):
            await session.continue_run("r1")
        with pytest.raises(RequirementNotFoundError, match="q9"):
            await session.resolve("r1", "q9", confirmed=True)
        with pytest.raises(RunNotFoundError, match="nope"):
            await session.resolve("nope", "q1", confirmed=True)
        with pytest.raises(RunStateError, match="not paused"):
            await session.continue_run("r2")
        assert await db.store.current_version("s") == version
        await session.resolve("r1", "q1", confirmed=False, note="too expensive")
        with pytest.raises(RunStateError, match="'q1' is resolved"):
            await session.resolve("r1", "q1", confirmed=True)
        await session.resolve("r1", "q2", values={"date": "tomorrow"})
        await session.continue_run("r1")
        with pytest.raises(RunStateError, match="not paused"):
            await session.continue_run("r1")
        assert [run.run_id for _, run in await db.get_paused_runs(session_id="s")] == []


async def test_two_writers_racing_to_continue_one_run_only_one_continues(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    both_checked = asyncio.Barrier(2)
    append = Session.append

    async def append_once_both_have_checked(self: Session, events: Sequence[Event], **options: Any) -> Any:
        if any(isinstance(event, RunResumed) for event in events):
            await both_checked.wait()  # both found the run paused: a true race for the next version
        return await append(self, events, **options)

    async with backend.db() as db:
        session = await db.open_session("s")
        run = await session.start_run("r1")
        await run.pause(REQUIREMENTS[:1])
        await session.resolve("r1", "q1", confirmed=True)
        first, second = await db.open_session("s"), await db.open_session("s")
        monkeypatch.setattr(Session, "append", append_once_both_have_checked)
        outcomes = await asyncio.gather(first.continue_run("r1"), second.continue_run("r1"), return_exceptions=True)
        resumed = [record async for record in db.store.read("s") if isinstance(record.event, RunResumed)]
        with pytest.raises(RunStateError, match="not paused"):  # too late is not a race: it is not paused
            await (await db.open_session("s")).continue_run("r1")
    assert sum(not isinstance(outcome, BaseException) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, ConcurrencyError) for outcome in outcomes) == 1
    assert len(resumed) == 1


async def test_sessions_are_checkpointed_every_n_events(backend: Backend) -> None:
    async with backend.db(checkpoint_every=5) as db:
        session = await db.open_session("s")
        for number in range(6):
            run = await session.start_run(f"r{number}")
            run.message("user", f"message {number}")
            await run.complete()
        snapshot = await db.store.load_snapshot("s", "session")
        assert snapshot is not None
        assert session.version - snapshot.version < 5 + 3, "at most one step past the last multiple of 5"
        full = [record async for record in db.store.read("s")]
        assert await db.get_session("s") == fold_records(full)


async def test_time_travel_by_timestamp_and_forks(backend: Backend) -> None:
    async with backend.db() as db:
        session = await db.open_session("s", user_id="u")
        first = await session.start_run("r1")
        first.message("user", "first try")
        await first.complete()
        cut = session.version
        await asyncio.sleep(0.02)
        middle = (await db.store.get_session_info("s")).updated_at  # type: ignore[union-attr]
        second = await session.start_run("r2")
        second.message("user", "second try")
        await second.complete()
        then = await db.get_session("s", as_of=middle + 0.001)
        assert [run.run_id for run in then.runs] == ["r1"]
        assert await db.get_session("s", as_of=middle + 0.001) == await db.get_session("s", version=cut)

        forked = await db.fork_session("s", "s-edit", version=cut, user_id="u")
        assert (forked.user_id, forked.run_count) == ("u", 1)
        edit = await db.open_session("s-edit")
        retry = await edit.start_run("r2-edited")
        retry.message("user", "a better second try")
        await retry.complete()
        fork_view = await db.get_session("s-edit")
        original = await db.get_session("s")
    assert [run.run_id for run in fork_view.runs] == ["r1", "r2-edited"]
    assert fork_view.metadata == {"forked_from": "s", "forked_at_version": cut}
    assert [run.run_id for run in original.runs] == ["r1", "r2"], "the original is untouched"


async def test_a_fork_may_land_on_a_deleted_id_but_not_on_a_live_session_or_before_version_1(
    backend: Backend,
) -> None:
    async with backend.db() as db:
        source = await db.open_session("s")
        await source.update_state({"k": 1})
        taken = await db.open_session("taken")
        await db.open_session("gone")
        await db.delete_session("gone")
        forked = await db.fork_session("s", "gone")
        assert (await db.get_session_state("gone")) == {"k": 1}
        assert forked.version == 1 + 2 + 1  # after the tombstone: the two copied events and the fork's note
        with pytest.raises(ConcurrencyError):
            await db.fork_session("s", "taken")
        assert await db.store.current_version("taken") == taken.version
        with pytest.raises(InvalidArgumentError) as caught:
            await db.fork_session("s", "t", version=0)
        assert caught.value.argument == "version"


async def test_a_run_checkpoint_that_no_longer_decodes_is_rebuilt_from_the_log(backend: Backend) -> None:
    async with backend.db() as db:
        session = await db.open_session("s")
        run = await session.start_run("r1")
        await run.pause(REQUIREMENTS[:1])
        stale = Snapshot(
            session_id="s",
            name=run_checkpoint("r1"),
            schema_version=RUN_SCHEMA_VERSION,
            version=session.version,
            data=b"\xc1",
        )
        await db.store.save_snapshot(stale)
        await session.resolve("r1", "q1", confirmed=True)
        checked = await db.get_run("s", "r1")
        assert checked == (await db.get_session("s")).get_run("r1")
        assert checked.requirements[0].status == "resolved"
        await session.continue_run("r1")
        assert (await db.get_run("s", "r1")).status == "running"
