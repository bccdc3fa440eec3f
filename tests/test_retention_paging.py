"""Retention walks the session index a page at a time (keyset pages by update time), never loading
the whole index into memory, and still sees and judges every session once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kern_events import RetentionPolicy
from kern_events.backend import SessionInfo
from kern_events.db import BaseDb
from kern_events.stores.sqlite import SqliteEventStore
from kern_events.testing._samples import conversation


class _ListingSpy(SqliteEventStore):
    """A real SQLite store that records the limit of every listing asked of it."""

    limits: list[int | None]

    async def list_sessions(self, **query: Any) -> list[SessionInfo]:
        self.limits.append(query.get("limit"))
        return await super().list_sessions(**query)


@pytest.mark.parametrize("keep_runs", [None, 1])
async def test_retention_lists_sessions_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_runs: int | None
) -> None:
    from kern_events import retention

    monkeypatch.setattr(retention, "_PAGE", 2)
    store = _ListingSpy(tmp_path / "paged.db")
    store.limits = []
    async with BaseDb(store) as db:
        for number in range(5):
            for batch in conversation(user_id="u", runs=2):
                await db.store.append(f"s{number}", batch)
        policy = RetentionPolicy(max_age=1e9, keep_runs=keep_runs)
        done: list[tuple[int, int]] = []
        report = await db.apply_retention(policy, progress=lambda n, total: done.append((n, total)))
        assert report.deleted == ()
        compacted = sorted(compaction.session_id for compaction in report.compacted)
        assert compacted == ([] if keep_runs is None else [f"s{n}" for n in range(5)])
        assert done[-1] == (5, 5)
        assert store.limits and all(limit is not None and limit <= 2 for limit in store.limits)
        everything = RetentionPolicy(max_age=0, force=True)
        report = await db.apply_retention(everything)
        assert sorted(info.session_id for info in report.deleted) == [f"s{n}" for n in range(5)]
        assert await db.get_sessions() == []
