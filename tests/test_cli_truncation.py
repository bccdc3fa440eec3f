"""``kern-events verify`` on truncated sessions: a log that starts where its truncation says is clean;
one that starts anywhere else is a problem."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from kern_events.db import SqliteDb
from kern_events.events import MessageAdded
from tests.test_cli import cli


def _write(path: Path, truncate_before: int) -> None:
    async def write() -> None:
        async with SqliteDb(path) as db:
            await db.store.append("s", [MessageAdded(run_id="r", role="user", content=str(n)) for n in range(5)])
            await db.store.append("t", [MessageAdded(run_id="r", role="user", content="other")])
            await db.store.truncate_before("s", truncate_before)

    asyncio.run(write())


@pytest.mark.parametrize(("before", "left"), [(3, 4), (6, 1)])
def test_verify_accepts_a_truncated_session(
    before: int, left: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "kern.db", before)
    code, out, _ = cli(capsys, "verify", "--db", str(tmp_path / "kern.db"))
    assert (code, out) == (0, f"verified {_events(left)} in 2 sessions: ok\n")


def _events(count: int) -> str:
    return "1 event" if count == 1 else f"{count} events"


def test_verify_reports_events_missing_after_the_truncation_point(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path / "kern.db", 3)
    with sqlite3.connect(tmp_path / "kern.db") as connection:
        connection.execute("DELETE FROM kern_events WHERE session_id = 's' AND version = 3")
    connection.close()
    code, out, _ = cli(capsys, "verify", "--db", str(tmp_path / "kern.db"))
    assert code == 1
    assert "problem: session 's': its log starts at version 4, but it was truncated before version 3" in out
