"""Group commit: every queued append gets a leader and its own outcome, whatever the first caller does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from kern_events.records import AppendResult
from kern_events.stores._group import GroupCommit


def _result(name: str) -> AppendResult:
    return AppendResult(session_id=name, from_version=1, to_version=1, positions=(1,), event_ids=(), recorded_at=0.0)


class _Committer:
    """Records each batch; the first commit waits until released, so others queue behind it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def commit(self, batch: Sequence[str]) -> list[AppendResult | Exception]:
        self.batches.append(list(batch))
        if len(self.batches) == 1:
            self.started.set()
            await self.release.wait()
        return [ValueError(name) if name.startswith("bad") else _result(name) for name in batch]


async def test_appends_queued_behind_a_lone_commit_are_committed_together_by_its_caller() -> None:
    committer = _Committer()
    group: GroupCommit[str] = GroupCommit(committer.commit)
    first = asyncio.create_task(group.submit("a"))
    await committer.started.wait()
    queued = [asyncio.create_task(group.submit(name)) for name in ("b", "bad-c", "d")]
    await asyncio.sleep(0)
    committer.release.set()
    assert (await first).session_id == "a"
    await asyncio.wait_for(asyncio.wait(queued), 5)
    assert [(await task).session_id for task in (queued[0], queued[2])] == ["b", "d"]
    with pytest.raises(ValueError, match="bad-c"):
        await queued[1]
    assert committer.batches == [["a"], ["b", "bad-c", "d"]]


async def test_cancelling_a_lone_commit_still_commits_what_queued_behind_it() -> None:
    committer = _Committer()
    group: GroupCommit[str] = GroupCommit(committer.commit)
    first = asyncio.create_task(group.submit("a"))
    await committer.started.wait()
    second = asyncio.create_task(group.submit("b"))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await asyncio.wait_for(second, 5)).session_id == "b"
    assert committer.batches == [["a"], ["b"]]
