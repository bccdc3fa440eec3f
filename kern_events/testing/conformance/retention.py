"""Retention: old sessions deleted, long sessions compacted to their last runs behind checkpoints,
with every view reading exactly as before and versions counting on."""

from __future__ import annotations

import asyncio
import time

import pytest

from kern_events import InvalidArgumentError, MessageAdded, RetentionPolicy, RunPaused, RunStarted, ToolConfirmation
from kern_events.testing._backend import Backend
from kern_events.testing._samples import conversation
from kern_events.timetravel import first_version


async def _write(db: object, session_id: str, runs: int = 2, user_id: str = "u") -> None:
    for batch in conversation(user_id=user_id, runs=runs):
        await db.store.append(session_id, batch)  # type: ignore[attr-defined]


async def test_sessions_older_than_max_age_are_deleted_after_a_dry_run_lists_them(backend: Backend) -> None:
    async with backend.db() as db:
        await _write(db, "old")
        await asyncio.sleep(2.0)
        written = time.time()
        await _write(db, "new")
        # "old" is two seconds older than "new": the cut falls a second before "new" was written and
        # moves on with the clock, leaving a second for the calls below (a loaded machine is slow)
        policy = RetentionPolicy(max_age=time.time() - written + 1.0)
        dry = await db.apply_retention(policy, dry_run=True)
        assert dry.dry_run and [info.session_id for info in dry.deleted] == ["old"]
        assert {info.session_id for info in await db.get_sessions()} == {"old", "new"}
        done: list[tuple[int, int]] = []
        report = await db.apply_retention(policy, progress=lambda n, total: done.append((n, total)))
        assert [info.session_id for info in report.deleted] == ["old"]
        assert done[-1] == (2, 2)
        assert [info.session_id for info in await db.get_sessions()] == ["new"]
        assert [record async for record in db.store.read("old")] == []


async def test_keeping_the_last_runs_compacts_and_every_view_reads_as_before(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.db() as db:
        await _write(db, "s", runs=4)
        await db.store.append(
            "s",
            [
                RunStarted(run_id="p", input="pay?"),
                RunPaused(
                    run_id="p",
                    requirements=(ToolConfirmation(requirement_id="q", tool_call_id="c", tool_name="pay"),),
                ),
            ],
        )
        await _write(db, "short", runs=1)
        view, state = await db.get_session("s"), await db.get_session_state("s")
        history = await db.get_history("s", num_history_runs=2)
        paused = await db.get_paused_runs(session_id="s")
        short = await db.get_session("short")
        head = await db.store.current_version("s")
        db.retention_policy = RetentionPolicy(keep_runs=2)
        dry = await db.apply_retention(dry_run=True)
        assert [(c.session_id, c.events_removed) for c in dry.compacted] == [("s", 16)]
        assert await first_version(db.store, "s") == 1
        report = await db.apply_retention()
        assert [(c.session_id, c.before_version, c.events_removed) for c in report.compacted] == [("s", 17, 16)]
        assert await first_version(db.store, "s") == 17
        assert await db.get_session("s") == view
        assert await db.get_session_state("s") == state
        assert await db.get_history("s", num_history_runs=2) == history
        assert await db.get_paused_runs(session_id="s") == paused
        assert await db.get_run("s", "run-1") == view.get_run("run-1")
        assert await db.get_session("short") == short
        result = await db.store.append("s", [MessageAdded(run_id="p", role="user", content="more")])
        assert result.from_version == head + 1
        assert (await db.apply_retention()).compacted == ()


async def test_appends_racing_a_compaction_are_never_lost(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.db() as db:
        for trial in range(3):
            session_id = f"race{trial}"
            await _write(db, session_id, runs=4)
            writes = [
                asyncio.ensure_future(
                    db.store.append(session_id, [MessageAdded(run_id="run-4", role="user", content=str(n))])
                )
                for n in range(5)
            ]
            await asyncio.sleep(0)
            await db.apply_retention(RetentionPolicy(keep_runs=1))
            await asyncio.gather(*writes)
            versions = [record.version async for record in db.store.read(session_id)]
            head = await db.store.current_version(session_id)
            assert head == 21 + 5 and versions == list(range(versions[0], head + 1))
            assert versions[0] == await first_version(db.store, session_id) == 17
            assert len((await db.get_session(session_id)).runs) == 4


@pytest.mark.parametrize(("max_age", "keep_runs"), [(0, None), (None, 0), (0.0, 0)])
async def test_a_policy_that_deletes_everything_is_refused_unless_forced(
    backend: Backend, max_age: float | None, keep_runs: int | None
) -> None:
    with pytest.raises(InvalidArgumentError, match="force=True"):
        RetentionPolicy(max_age=max_age, keep_runs=keep_runs)
    if keep_runs is not None:
        backend.require("truncates")  # keeping the last runs compacts by truncation
    async with backend.db() as db:
        await _write(db, "s")
        report = await db.apply_retention(RetentionPolicy(max_age=max_age, keep_runs=keep_runs, force=True))
        assert report.deleted or report.compacted
