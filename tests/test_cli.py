"""The ``kern-events`` command, run for real: in fresh processes where persistence is the point, else in-process."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kern_events.cli import main
from kern_events.db import SqliteDb
from kern_events.events import SessionStarted, ToolConfirmation


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m kern_events ARGS`` in a new interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "kern_events", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``main(ARGS)`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def demo_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A database holding the demo session after two turns."""
    path = tmp_path / "demo.db"
    for _ in range(2):
        assert cli(capsys, "demo", "--db", str(path))[0] == 0
    return path


def test_demo_continues_the_same_session_in_a_new_process(tmp_path: Path) -> None:
    first = run_cli("demo", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "starting session conversation_123" in first.stdout
    assert "now has 1 run " in first.stdout

    second = run_cli("demo", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "continuing session conversation_123" in second.stdout
    assert "now has 2 runs" in second.stdout
    assert "get_weather" in second.stdout

    shown = run_cli("show", "conversation_123", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["user_id"] == "alice@example.com"
    assert [run["status"] for run in view["runs"]] == ["completed", "completed"]
    first_message = view["runs"][0]["messages"][0]
    assert (first_message["role"], first_message["content"]) == ("user", "Hi! My name is Alice.")
    tool_call = view["runs"][1]["tool_calls"][0]
    assert (tool_call["tool_name"], tool_call["status"]) == ("get_weather", "completed")
    assert view["runs"][1]["metrics"]["total_tokens"] > 0


def test_demo_third_turn_answers_from_runs_written_by_earlier_processes(
    demo_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "demo", "--db", str(demo_db))
    assert code == 0
    assert "agent: Your name is Alice." in out
    assert "summary:" in out
    assert "topics: introductions" in out
    assert "now has 3 runs" in out


def test_show_as_of_an_earlier_version_shows_the_earlier_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "demo.db")
    cli(capsys, "demo", "--db", path)
    version_after_first_turn = json_lines(cli(capsys, "sessions", "--db", path, "--json")[1])[0]["version"]
    cli(capsys, "demo", "--db", path)

    code, out, _ = cli(
        capsys, "show", "conversation_123", "--db", path, "--version", str(version_after_first_turn), "--json"
    )
    assert code == 0
    then = json.loads(out)
    assert len(then["runs"]) == 1
    assert then["session_data"]["session_state"] == {"user_name": "Alice"}

    now = json.loads(cli(capsys, "show", "conversation_123", "--db", path, "--json")[1])
    assert len(now["runs"]) == 2
    assert now["session_data"]["session_state"] == {"user_name": "Alice", "last_city": "Paris"}

    code, out, _ = cli(capsys, "show", "conversation_123", "--db", path, "--version", str(version_after_first_turn))
    assert code == 0
    assert f"as of version {version_after_first_turn}" in out
    assert "run 1:" in out
    assert "run 2:" not in out


def test_sessions_lists_the_index_and_filters_by_user(demo_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def add_bobs_team_session() -> None:
        async with SqliteDb(demo_db) as db:
            await db.store.append("bob_team", [SessionStarted(session_type="team", team_id="t1", user_id="bob")])

    asyncio.run(add_bobs_team_session())

    code, out, _ = cli(capsys, "sessions", "--db", str(demo_db))
    assert code == 0
    assert out.splitlines()[0].split()[:2] == ["SESSION_ID", "TYPE"]
    assert "conversation_123" in out
    assert "bob_team" in out

    alice = json_lines(cli(capsys, "sessions", "--db", str(demo_db), "--user-id", "alice@example.com", "--json")[1])
    assert [(row["session_id"], row["run_count"]) for row in alice] == [("conversation_123", 2)]
    teams = json_lines(cli(capsys, "sessions", "--db", str(demo_db), "--type", "team", "--json")[1])
    assert [row["session_id"] for row in teams] == ["bob_team"]
    assert cli(capsys, "sessions", "--db", str(demo_db), "--user-id", "nobody")[1] == "no sessions\n"


def test_events_and_export_emit_json_lines_with_gapless_versions(
    demo_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "events", "conversation_123", "--db", str(demo_db))
    assert code == 0
    records = json_lines(out)
    assert [record["version"] for record in records] == list(range(1, len(records) + 1))
    assert records[0]["type"] == "session_started" == records[0]["event"]["type"]
    assert set(records[0]) == {"session_id", "version", "position", "event_id", "recorded_at", "type", "known", "event"}
    assert any(record["type"] == "tool_call_completed" for record in records)

    window = json_lines(
        cli(capsys, "events", "conversation_123", "--db", str(demo_db), "--from-version", "3", "--to-version", "5")[1]
    )
    assert [record["version"] for record in window] == [3, 4, 5]

    code, out, _ = cli(capsys, "export", "--db", str(demo_db))
    assert code == 0
    exported = json_lines(out)
    assert exported == records
    positions = [record["position"] for record in exported]
    assert positions == sorted(set(positions))
    tail = json_lines(cli(capsys, "export", "--db", str(demo_db), "--from-position", str(positions[-2]))[1])
    assert tail == exported[-2:]


def test_events_of_an_unknown_type_are_dumped_with_their_raw_bytes(
    demo_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(demo_db) as connection:
        connection.execute("UPDATE kern_events SET type = 'from_a_newer_release' WHERE version = 3")
    connection.close()

    records = json_lines(cli(capsys, "events", "conversation_123", "--db", str(demo_db))[1])
    unknown = records[2]
    assert (unknown["type"], unknown["known"]) == ("from_a_newer_release", False)
    assert unknown["event"]["type"] == "from_a_newer_release"
    assert unknown["event"]["data_base64"]

    code, out, _ = cli(capsys, "verify", "--db", str(demo_db))
    assert code == 0
    assert "1 event of types this release does not know" in out
    assert out.endswith(": ok\n")


def test_verify_passes_a_good_log(demo_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    total = len(json_lines(cli(capsys, "export", "--db", str(demo_db))[1]))
    code, out, _ = cli(capsys, "verify", "--db", str(demo_db))
    assert code == 0
    assert out == f"verified {total} events in 1 session: ok\n"


def test_verify_reports_a_corrupt_row_and_checks_the_rest(demo_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    total = len(json_lines(cli(capsys, "export", "--db", str(demo_db))[1]))
    with sqlite3.connect(demo_db) as connection:
        (version,) = connection.execute("SELECT min(version) FROM kern_events WHERE type = 'run_started'").fetchone()
        connection.execute("UPDATE kern_events SET data = x'c1c1c1' WHERE version = ?", (version,))
    connection.close()

    code, out, err = cli(capsys, "verify", "--db", str(demo_db))
    assert code == 1
    assert f"problem: session 'conversation_123' version {version}: stored 'run_started' event cannot be decoded" in out
    assert out.endswith(f"verified {total} events in 1 session: 1 problem\n")
    assert err == ""

    code, _, err = cli(capsys, "show", "conversation_123", "--db", str(demo_db))
    assert code == 2
    assert err.startswith("error: session 'conversation_123' version")


def test_verify_reports_a_missing_version(demo_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with sqlite3.connect(demo_db) as connection:
        connection.execute("DELETE FROM kern_events WHERE version = 4")
    connection.close()

    code, out, _ = cli(capsys, "verify", "--db", str(demo_db))
    assert code == 1
    assert "problem: session 'conversation_123': version 5 follows version 3 (a gap)" in out


def test_a_missing_session_is_exit_code_2_with_a_clear_message(tmp_path: Path) -> None:
    assert run_cli("demo", cwd=tmp_path).returncode == 0
    for args in (["show", "no_such_session"], ["events", "no_such_session"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr == "error: session 'no_such_session' not found\n"
        assert result.stdout == ""
    other_user = run_cli("show", "conversation_123", "--user-id", "mallory", cwd=tmp_path)
    assert (other_user.returncode, other_user.stderr) == (2, "error: session 'conversation_123' not found\n")


@pytest.mark.parametrize(
    "args", [["sessions"], ["show", "conversation_123"], ["events", "conversation_123"], ["export"], ["verify"]]
)
def test_read_commands_never_create_a_missing_database(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert "kern_events_demo.db" in err
    assert "does not exist" in err
    assert out == ""
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_and_help_return_exit_codes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli(capsys, "--help")[0] == 0
    assert cli(capsys)[0] == 2
    assert cli(capsys, "sessions", "--type", "robot")[0] == 2
    assert run_cli("--help", cwd=tmp_path).returncode == 0


def test_paused_lists_what_each_paused_run_waits_for(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "paused.db"

    async def pause() -> None:
        async with SqliteDb(path) as db:
            session = await db.open_session("trip", user_id="alice")
            run = await session.start_run("r1")
            await run.pause(
                [ToolConfirmation(requirement_id="q1", tool_call_id="c1", tool_name="book", arguments={"to": "Oslo"})]
            )

    asyncio.run(pause())
    code, out, _ = cli(capsys, "paused", "--db", str(path), "--user-id", "alice")
    assert code == 0
    assert "session trip run r1" in out
    assert 'q1: tool_confirmation {"tool_call_id":"c1","tool_name":"book","arguments":{"to":"Oslo"}}' in out
    listed = json_lines(cli(capsys, "paused", "--db", str(path), "--json")[1])
    assert listed[0]["run"]["requirements"][0]["status"] == "open"
    assert cli(capsys, "paused", "--db", str(path), "--user-id", "bob")[1] == "no paused runs\n"


def test_demo_pauses_for_a_confirmation_and_a_new_process_finishes_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "kern_events_demo.db"
    for _ in range(3):
        assert cli(capsys, "demo", "--db", str(path))[0] == 0
    pausing = run_cli("demo", cwd=tmp_path)
    assert pausing.returncode == 0, pausing.stderr
    assert 'waiting for: confirmation of book_flight({"city":"Oslo"})' in pausing.stdout
    listed = run_cli("paused", cwd=tmp_path)
    assert "book_flight" in listed.stdout
    finishing = run_cli("demo", cwd=tmp_path)
    assert finishing.returncode == 0, finishing.stderr
    assert "the user confirms it" in finishing.stdout
    assert "agent: Flight to Oslo: booked, seat 12A to Oslo." in finishing.stdout
    view = json.loads(run_cli("show", "conversation_123", "--json", cwd=tmp_path).stdout)
    assert view["runs"][-1]["status"] == "completed"
    assert view["session_data"]["session_state"]["booked"] == "Oslo"
    assert run_cli("paused", cwd=tmp_path).stdout == "no paused runs\n"
