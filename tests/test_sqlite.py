"""SQLite-specific behaviour: files shared between processes, positions never reused, the schema row."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kern_events import CorruptRecordError, MessageAdded, SchemaVersionError, SqliteDb, SqliteEventStore, TableNames
from kern_events.errors import InvalidIdentifierError
from kern_events.testing._samples import conversation

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from kern_events import SqliteDb
    from kern_events.testing._samples import conversation

    async def main(path):
        async with SqliteDb(path) as db:
            for batch in conversation(runs=3):
                await db.store.append("from-child", batch)
            view = await db.get_session("from-child")
            print(len(view.runs), view.session_state["turns"])

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_a_file_written_by_one_process_reads_the_same_in_a_fresh_one(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    child = subprocess.run(
        [sys.executable, "-c", WRITER, path],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert child.stdout.split() == ["3", "3"]
    async with SqliteDb(path) as db:
        view = await db.get_session("from-child")
        assert [run.run_id for run in view.runs] == ["run-1", "run-2", "run-3"]
        assert view.session_state == {"turns": 3}
        assert await db.store.current_version("from-child") == 16
        await db.store.append("from-child", conversation(runs=4)[4], expected_version=16)
    reader = subprocess.run(
        [sys.executable, "-m", "kern_events", "show", "from-child", "--db", path, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(reader.stdout)
    assert [run["run_id"] for run in shown["runs"]] == ["run-1", "run-2", "run-3", "run-4"]


async def test_a_deleted_last_position_is_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "positions.db"
    async with SqliteEventStore(path) as store:
        await store.append("a", [MessageAdded(run_id="r", role="user", content="1")])
        last = await store.append("b", [MessageAdded(run_id="r", role="user", content="2")])
        await store.delete_session("b")
        after = await store.append("c", [MessageAdded(run_id="r", role="user", content="3")])
    assert after.positions[0] > last.positions[0]


async def test_a_damaged_row_envelope_is_a_corrupt_record_naming_it_and_its_neighbours_stay_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "damaged.db"
    async with SqliteEventStore(path) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content=f"m{n}") for n in range(3)])
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE kern_events SET event_id = x'0102' WHERE version = 2")
    async with SqliteEventStore(path) as store:
        with pytest.raises(CorruptRecordError, match="version 2") as caught:
            [record async for record in store.read("s")]
        assert caught.value.position is not None
        assert [record.version async for record in store.read("s", to_version=1)] == [1]
        assert [record.version async for record in store.read("s", from_version=3)] == [3]


async def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    async with SqliteEventStore(path) as store:
        await store.append("s", [MessageAdded(run_id="r", role="user", content="kept")])
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE kern_schema SET version = 99")
    with pytest.raises(SchemaVersionError, match="99"):
        async with SqliteEventStore(path):
            pass
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM kern_events").fetchone() == (1,)


async def test_custom_table_names_isolate_workloads(tmp_path: Path) -> None:
    path = tmp_path / "two.db"
    async with (
        SqliteDb(path) as first,
        SqliteDb(
            path,
            events_table="b_events",
            session_table="b_sessions",
            snapshot_table="b_snapshots",
            schema_table="b_schema",
        ) as second,
    ):
        await first.store.append("s", [MessageAdded(run_id="r", role="user", content="first")])
        await second.store.append("s", [MessageAdded(run_id="r", role="user", content="second")])
        assert [r.event async for r in first.store.read("s")] == [
            MessageAdded(run_id="r", role="user", content="first")
        ]
        assert [r.event async for r in second.store.read("s")] == [
            MessageAdded(run_id="r", role="user", content="second")
        ]


@pytest.mark.parametrize("name", ["", "1abc", "events; DROP TABLE x", 'a"b', "a" * 64, "naïve"])
def test_a_bad_table_name_is_refused_before_any_sql_runs(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidIdentifierError, match="events_table"):
        TableNames(events=name)
    with pytest.raises(InvalidIdentifierError):
        SqliteDb(tmp_path / "never.db", events_table=name)
    assert not (tmp_path / "never.db").exists()


TURN = textwrap.dedent(
    """
    import asyncio, sys
    from kern_events import Agent, MemoryModel, SqliteDb

    async def main(path, text, history):
        async with SqliteDb(db_file=path) as db:
            agent = Agent(model=MemoryModel(), db=db, session_id="conversation_123", add_history_to_context=history)
            print((await agent.arun(text)).content)

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "yes"))
    """
)


def test_a_second_process_remembers_the_first_through_stored_history(tmp_path: Path) -> None:
    path = str(tmp_path / "agents.db")
    root = Path(__file__).parent.parent

    def turn(text: str, history: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", TURN, path, text, history], capture_output=True, text=True, check=True, cwd=root
        )
        return done.stdout.strip()

    assert turn("My name is Alice", "no") == "Nice to meet you, Alice!"
    assert turn("What's my name?", "yes") == "Your name is Alice."
    assert turn("What's my name?", "no") == "I don't know your name yet."
