"""SQLite-specific behaviour: files shared between processes, positions never reused, the schema row."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from kern_events import (
    ConcurrencyError,
    CorruptRecordError,
    ErasedError,
    MessageAdded,
    RunStarted,
    SchemaVersionError,
    SessionRenamed,
    SessionStarted,
    SqliteDb,
    SqliteEventStore,
    TableNames,
)
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


# -- the lean append path: a guess about the head, checked by the index row's UPDATE ---------------


def _said(text: str) -> MessageAdded:
    return MessageAdded(run_id="r1", role="user", content=text)


async def test_an_append_behind_another_writers_is_a_conflict_and_the_chain_holds(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SqliteEventStore(path) as ours, SqliteEventStore(path) as theirs:
        await ours.append("s", [SessionStarted(session_type="agent", name="trip"), _said("a")], expected_version=0)
        await ours.append("s", [_said("b")], expected_version=2)  # ours now remembers head 3
        await theirs.append("s", [RunStarted(run_id="r2"), _said("c")], expected_version=3)
        with pytest.raises(ConcurrencyError) as caught:
            await ours.append("s", [_said("d")], expected_version=3)
        assert caught.value.actual_version == 5
        with pytest.raises(ConcurrencyError):
            await ours.append("s", [_said("d")], expected_version=4)
        result = await ours.append("s", [_said("d")], expected_version=5)
        assert (result.from_version, result.to_version) == (6, 6)
        await ours.append("s", [RunStarted(run_id="r3"), SessionRenamed(name="holiday")], expected_version=6)
        await theirs.append("s", [_said("e")])  # at any version: after ours, from its own row
        info = await ours.get_session_info("s")
        assert info is not None
        assert (info.version, info.run_count, info.name) == (9, 2, "holiday")
        assert [stored.version async for stored in ours.read("s")] == list(range(1, 10))
        assert (await ours.verify("s")).ok


async def test_an_append_to_a_session_deleted_meanwhile_starts_it_afresh(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SqliteEventStore(path) as ours, SqliteEventStore(path) as theirs:
        started = SessionStarted(session_type="agent", name="old", user_id="u")
        await ours.append("s", [started, RunStarted(run_id="r1")], expected_version=0)
        await ours.append("s", [_said("a")], expected_version=2)
        assert await theirs.delete_session("s")
        await ours.append("s", [_said("b")], expected_version=3)  # versions are never reused
        info = await ours.get_session_info("s")
        assert info is not None
        assert (info.version, info.run_count, info.name, info.user_id) == (4, 0, None, None)
        assert [stored.version async for stored in ours.read("s")] == [4]
        assert (await ours.verify("s")).ok


async def test_an_append_to_a_session_erased_meanwhile_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SqliteEventStore(path) as ours, SqliteEventStore(path) as theirs:
        await ours.append("s", [SessionStarted(session_type="agent", user_id="u")], expected_version=0)
        await ours.append("s", [_said("a")], expected_version=1)
        await theirs.erase_user("u")
        with pytest.raises(ErasedError):
            await ours.append("s", [_said("b")], expected_version=2)
        with pytest.raises(ErasedError):
            await ours.append("s", [_said("b")])
        assert [stored async for stored in ours.read("s")] == []
        assert await ours.get_session_info("s") is None


async def test_a_retry_of_the_last_append_answers_it_again_and_leaves_the_row_as_it_was(tmp_path: Path) -> None:
    async with SqliteEventStore(tmp_path / "one.db") as store:
        await store.append("s", [SessionStarted(session_type="agent")], expected_version=0)
        ids = [uuid.uuid4()]
        first = await store.append("s", [_said("a")], event_ids=ids)
        before = await store.get_session_info("s")
        again = await store.append("s", [_said("a")], event_ids=ids)  # at any version: the head it wrote
        assert again == first
        assert await store.get_session_info("s") == before
        assert (await store.verify("s")).ok
        assert (await store.append("s", [_said("b")], expected_version=2)).to_version == 3


async def test_a_retry_committed_with_other_appends_answers_it_again_and_leaves_the_row_as_it_was(
    tmp_path: Path,
) -> None:
    async with SqliteEventStore(tmp_path / "one.db") as store:
        await store.append("s", [SessionStarted(session_type="agent")], expected_version=0)
        ids = [uuid.uuid4()]
        first = await store.append("s", [_said("a")], event_ids=ids)
        before = await store.get_session_info("s")
        # The first commits alone; the two queued behind it share a transaction, each in a savepoint.
        _, again, other = await asyncio.gather(
            store.append("t", [_said("x")]),
            store.append("s", [_said("a")], event_ids=ids),
            store.append("t", [_said("y")]),
        )
        assert again == first
        assert other.to_version == 2
        assert await store.get_session_info("s") == before
        assert (await store.verify("s")).ok
        assert (await store.append("s", [_said("b")], expected_version=2)).to_version == 3


async def test_an_append_after_the_file_was_restored_from_a_backup_chains_from_the_restored_head(
    tmp_path: Path,
) -> None:
    path, copy = tmp_path / "live.db", tmp_path / "backup.db"
    async with SqliteEventStore(path) as ours:
        await ours.append("s", [SessionStarted(session_type="agent")], expected_version=0)
        with sqlite3.connect(path) as live, sqlite3.connect(copy) as backup:
            live.backup(backup)
        await ours.append("s", [_said("lost")], expected_version=1)  # ours remembers head 2 and its hash
        with sqlite3.connect(copy) as backup, sqlite3.connect(path) as live:
            backup.backup(live)  # the file goes back to head 1, online
        async with SqliteEventStore(path) as theirs:
            await theirs.append("s", [_said("kept")], expected_version=1)  # head 2 again, another hash
        await ours.append("s", [_said("after")], expected_version=2)
        assert [stored.version async for stored in ours.read("s")] == [1, 2, 3]
        assert (await ours.verify("s")).ok
