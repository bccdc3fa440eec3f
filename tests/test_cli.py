"""The ``kern-events`` command, run for real: in fresh processes where persistence is the point, else in-process."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from kern_events.backend import Chain
from kern_events.cli import main
from kern_events.db import SqliteDb
from kern_events.events import SessionStarted, ToolConfirmation
from tests import _pg, _pgcluster

ROOT = Path(__file__).parent.parent


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
    exported = exported_events(out)
    envelope = ("session_id", "version", "position", "event_id", "recorded_at", "type")
    assert [[line[key] for key in envelope] for line in exported] == [[r[key] for key in envelope] for r in records]
    assert [line["event"] for line in exported] == [record["event"] for record in records]
    positions = [record["position"] for record in exported]
    assert positions == sorted(set(positions))


def exported_events(text: str) -> list[dict[str, Any]]:
    """The event lines of an export (between its header and end lines)."""
    lines = json_lines(text)
    assert lines[0]["kind"] == "header" and lines[-1]["kind"] == "end"
    return lines[1:-1]


def _rechain(connection: sqlite3.Connection, session_id: str) -> None:
    """Recompute a session's hash chain after the test changed its rows (the kit's rule)."""
    chain, previous = Chain(), Chain().genesis(session_id)
    rows = connection.execute(
        "SELECT version, event_id, type, schema_version, data, recorded_at FROM kern_events "
        "WHERE session_id = ? ORDER BY version",
        (session_id,),
    ).fetchall()
    for version, event_id, event_type, schema_version, data, recorded_at in rows:
        previous = chain.link(previous, version, event_id, event_type, schema_version, data, recorded_at)
        connection.execute(
            "UPDATE kern_events SET chain = ? WHERE session_id = ? AND version = ?", (previous, session_id, version)
        )
    connection.execute("UPDATE kern_sessions SET chain_head = ? WHERE session_id = ?", (previous, session_id))


def test_events_of_an_unknown_type_are_dumped_with_their_raw_bytes(
    demo_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(demo_db) as connection:
        connection.execute("UPDATE kern_events SET type = 'from_a_newer_release' WHERE version = 3")
        _rechain(connection, "conversation_123")  # as the newer release would have written it
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
    total = len(exported_events(cli(capsys, "export", "--db", str(demo_db))[1]))
    code, out, _ = cli(capsys, "verify", "--db", str(demo_db))
    assert code == 0
    assert out == f"verified {total} events in 1 session: ok\n"


def test_verify_reports_a_corrupt_row_and_checks_the_rest(demo_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    total = len(exported_events(cli(capsys, "export", "--db", str(demo_db))[1]))
    with sqlite3.connect(demo_db) as connection:
        (version,) = connection.execute("SELECT min(version) FROM kern_events WHERE type = 'run_started'").fetchone()
        connection.execute("UPDATE kern_events SET data = x'c1c1c1' WHERE version = ?", (version,))
    connection.close()

    code, out, err = cli(capsys, "verify", "--db", str(demo_db))
    assert code == 1
    assert f"problem: session 'conversation_123' version {version}: stored 'run_started' event cannot be decoded" in out
    # the run's first append (versions 2-4) keeps its hash on its last event: the edit is named by the append
    assert f"problem: session 'conversation_123' version {version}: edited: one of versions {version}-" in out
    assert "does not match its hash" in out
    assert out.endswith(f"verified {total} events in 1 session: 2 problems\n")
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


def test_verify_accepts_a_session_deleted_and_started_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def write() -> None:
        async with SqliteDb(tmp_path / "kern.db") as db:
            session = await db.open_session("s1")
            await session.update_state({"k": 1})
            await db.delete_session("s1")
            again = await db.open_session("s1")  # its versions go on from the tombstone's
            await again.update_state({"k": 2})

    asyncio.run(write())
    code, out, _ = cli(capsys, "verify", "--db", str(tmp_path / "kern.db"))
    assert (code, out) == (0, "verified 2 events in 1 session: ok\n")


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
    assert cli(capsys, "sessions", "--limit", "many")[0] == 2
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
    header, row = out.splitlines()
    assert header.split()[:2] == ["SESSION_ID", "RUN_ID"]
    assert row.split()[:2] == ["trip", "r1"]
    assert row.split(maxsplit=6)[5:] == [
        "q1",
        'tool_confirmation {"tool_call_id":"c1","tool_name":"book","arguments":{"to":"Oslo"}}',
    ]
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


# -- read-only commands, and one clear line for every database that cannot be used (#12.2, #12.3) ---

READ_COMMANDS = [
    ["sessions"],
    ["show", "conversation_123"],
    ["events", "conversation_123"],
    ["export"],
    ["paused"],
    ["verify"],
]
WRITE_COMMANDS = [["demo"], ["migrate"]]


def _one_error_line(code: int, out: str, err: str) -> str:
    assert (code, out) == (2, ""), err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda args: args[0])
@pytest.mark.parametrize("content", [b"", None], ids=["empty file", "another application's database"])
def test_read_commands_never_write_to_a_file_without_kern_events_tables(
    args: list[str], content: bytes | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "app.db"
    if content is None:
        with sqlite3.connect(path) as other:
            other.execute("CREATE TABLE notes (body TEXT)")
        other.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    err = _one_error_line(*cli(capsys, *args, "--db", str(path)))
    assert "has no kern-events tables" in err and "app.db" in err
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["app.db"]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=lambda args: args[0])
def test_read_commands_never_create_a_postgres_schema(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _pg.require_postgres()
    schema = _pg.new_schema()
    try:
        err = _one_error_line(*cli(capsys, *args, "--db", _pg.PG_URL, "--schema", schema))

        async def exists() -> bool:
            connection = await asyncpg.connect(_pg.PG_URL)
            try:
                return bool(await connection.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema))
            finally:
                await connection.close()

        assert not _pg.run_sync(exists)
    finally:
        _pg.drop_schema(schema)
    assert f"PostgreSQL schema {schema!r} has no kern-events tables" in err


def _bad_database(kind: str, directory: Path) -> str:
    """A --db value of this kind of trouble."""
    if kind == "directory":
        (directory / "a_directory").mkdir()
        return str(directory / "a_directory")
    if kind == "missing file":
        return str(directory / "missing.db")
    if kind == "not sqlite":
        (directory / "notes.txt").write_text("not a database\n" * 200)
        return str(directory / "notes.txt")
    if kind == "truncated sqlite":
        good = directory / "good.db"
        assert main(["demo", "--db", str(good)]) == 0
        (directory / "truncated.db").write_bytes(good.read_bytes()[:3000])
        return str(directory / "truncated.db")
    if kind == "unreachable postgres":
        return "postgresql://postgres@127.0.0.1:1/test"
    if kind == "misspelled postgres database":
        return _pg.PG_URL.rsplit("/", 1)[0] + "/no_such_database_kern"
    if kind == "misspelled postgres host":
        return "postgresql://postgres@no-such-host.invalid/test"
    if kind == "malformed postgres url":
        return "postgresql://postgres@127.0.0.1:notaport/test"
    if kind == "postgres port out of range":
        return "postgresql://postgres@127.0.0.1:99999/test"
    if kind == "malformed postgres host":
        return "postgresql://[bad/test"
    raise AssertionError(kind)


BAD_KINDS = [
    "directory",
    "missing file",
    "not sqlite",
    "truncated sqlite",
    "unreachable postgres",
    "misspelled postgres database",
    "misspelled postgres host",
    "malformed postgres url",
    "postgres port out of range",
    "malformed postgres host",
]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_command_gets_one_clear_line_and_exit_code_2_for_a_bad_database(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = _bad_database(kind, tmp_path)
    capsys.readouterr()
    for args in READ_COMMANDS + WRITE_COMMANDS:
        if kind == "missing file" and args in WRITE_COMMANDS:
            continue  # demo and migrate create a missing file: that is what they are for
        err = _one_error_line(*cli(capsys, *args, "--db", where))
        assert "Traceback" not in err
        if not where.startswith("postgresql://"):
            assert os.path.basename(where) in err, err
    if kind == "missing file":
        assert not Path(where).exists()


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[_pgcluster.Cluster]:
    with _pgcluster.throwaway_cluster() as made:
        yield made


def test_a_wrong_postgres_password_is_one_clear_line(
    password_cluster: _pgcluster.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = password_cluster.url.replace(_pgcluster.PASSWORD, "not-the-password")
    for args in READ_COMMANDS + WRITE_COMMANDS:
        err = _one_error_line(*cli(capsys, *args, "--db", wrong))
        assert "password authentication failed" in err
        assert "not-the-password" not in err


def test_a_file_without_read_permission_is_one_clear_line(tmp_path: Path) -> None:
    """Run as an unprivileged user when we are root (root reads any file)."""
    directory = Path(tempfile.mkdtemp(prefix="kern-perm-"))
    try:
        os.chmod(directory, 0o755)
        assert main(["demo", "--db", str(directory / "locked.db")]) == 0
        os.chmod(directory / "locked.db", 0)
        prefix: list[str] = []
        if os.geteuid() == 0:  # root keeps its uid but loses the capabilities that bypass permissions
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv to drop the permission-bypassing capabilities")
            prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
        for args in READ_COMMANDS + WRITE_COMMANDS:
            done = subprocess.run(
                [*prefix, sys.executable, "-m", "kern_events", *args, "--db", str(directory / "locked.db")],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            err = _one_error_line(done.returncode, done.stdout, done.stderr)
            assert "locked.db" in err and "permission denied" in err, err
    finally:
        os.chmod(directory / "locked.db", stat.S_IRUSR | stat.S_IWUSR)
        shutil.rmtree(directory)


# -- silent wrong answers (#12.4) -------------------------------------------------------------------


def test_show_a_version_past_the_head_is_an_error_naming_the_head(
    demo_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = json_lines(cli(capsys, "sessions", "--db", str(demo_db), "--json")[1])[0]["version"]
    err = _one_error_line(*cli(capsys, "show", "conversation_123", "--db", str(demo_db), "--version", "9999"))
    assert f"is at version {head}" in err and "9999" in err
    assert cli(capsys, "show", "conversation_123", "--db", str(demo_db), "--version", str(head))[0] == 0


# -- a CLI that looks like today's tools (#12.6) ----------------------------------------------------


def test_version_prints_the_installed_release(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    code, out, _ = cli(capsys, "--version")
    assert (code, out) == (0, f"kern-events {importlib.metadata.version('kern-events')}\n")


def _on_a_terminal(*args: str, cwd: Path) -> str:
    """``kern-events ARGS`` with stdout and stderr on a pseudo-terminal: everything it drew."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("NO_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"
    process = subprocess.Popen(
        [sys.executable, "-m", "kern_events", *args], cwd=cwd, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the pty closes when the process exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def test_tables_have_colour_on_a_terminal_and_none_when_piped(demo_db: Path) -> None:
    drawn = _on_a_terminal("sessions", "--db", str(demo_db), cwd=demo_db.parent)
    assert "\x1b[" in drawn and "conversation_123" in drawn
    piped = run_cli("sessions", "--db", str(demo_db), cwd=demo_db.parent)
    assert "\x1b[" not in piped.stdout
    assert piped.stdout.splitlines()[0].split()[:2] == ["SESSION_ID", "TYPE"]


@pytest.mark.parametrize("command", ["export", "verify", "import"])
def test_export_import_and_verify_draw_a_progress_bar_on_a_terminal_only(command: str, demo_db: Path) -> None:
    args = [command, "--db", str(demo_db)]
    if command == "import":
        export = demo_db.parent / "export.jsonl"
        assert run_cli("export", "--db", str(demo_db), "-o", str(export), cwd=demo_db.parent).returncode == 0
        args = [command, str(export), "--db", str(demo_db.parent / "imported.db")]
    drawn = _on_a_terminal(*args, cwd=demo_db.parent)
    assert {"export": "exporting", "verify": "verifying", "import": "checking"}[command] in drawn
    assert "/s" in drawn  # the rate
    if command == "import":
        args[-1] = str(demo_db.parent / "piped.db")
    piped = run_cli(*args, cwd=demo_db.parent)
    assert piped.stderr == ""
    assert "\x1b[" not in piped.stdout


def test_the_weather_answer_is_a_sentence_and_one_run_is_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "demo.db")
    outs = [cli(capsys, "demo", "--db", path)[1] for _ in range(3)]
    weather = next(line for line in outs[1].splitlines() if line.startswith("agent: "))
    assert weather == "agent: The weather in Paris: sunny and 18 °C."
    assert "(1 run so far)" in outs[1]
    assert "summary:      3 runs; the user said:" in outs[2]
    assert "1 runs" not in "".join(outs)


# -- the demo ends instead of looping (#12.7) --------------------------------------------------------


def test_after_the_booking_the_demo_says_it_is_complete_and_reset_starts_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "demo.db")
    for _ in range(5):  # four turns; the fourth pauses and the fifth confirms the booking
        assert cli(capsys, "demo", "--db", path)[0] == 0
    version = json_lines(cli(capsys, "sessions", "--db", path, "--json")[1])[0]["version"]
    code, out, _ = cli(capsys, "demo", "--db", path)
    assert code == 0
    assert "the conversation is complete" in out and "kern-events demo --reset" in out
    assert "user: Hi! My name is Alice." not in out
    assert json_lines(cli(capsys, "sessions", "--db", path, "--json")[1])[0]["version"] == version, "nothing written"

    code, out, _ = cli(capsys, "demo", "--db", path, "--reset")
    assert code == 0
    assert "user: Hi! My name is Alice." in out
    assert "now has 1 run " in out


# -- audit tools read each session, not the fenced feed (hardening #15, #16) -------------------------


def test_verify_and_export_on_postgres_see_past_an_open_transaction_and_report_corruption(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _pg.require_postgres()
    schema = _pg.new_schema()
    where = ["--db", _pg.PG_URL, "--schema", schema]
    try:
        for _ in range(2):
            assert cli(capsys, "demo", *where)[0] == 0

        async def check() -> None:
            holder = await asyncpg.connect(_pg.PG_URL)
            try:
                await holder.execute("BEGIN")
                pid = await holder.fetchval("SELECT pg_current_xact_id()::text::bigint, pg_backend_pid()", column=1)
                code, _, _ = await asyncio.to_thread(cli, capsys, "demo", *where)  # committed behind the fence
                assert code == 0
                total = len(json_lines((await asyncio.to_thread(cli, capsys, "events", "conversation_123", *where))[1]))
                code, out, _ = await asyncio.to_thread(cli, capsys, "verify", *where)
                note, summary = out.splitlines()
                assert (code, summary) == (0, f"verified {total} events in 1 session: ok")
                assert note.startswith("note: the global feed (read_all, subscriptions) is holding back ")
                assert f"server process {pid} in database 'test'" in note
                code, out, err = await asyncio.to_thread(cli, capsys, "export", *where)
                assert code == 0 and len(exported_events(out)) == total
                assert err.startswith("note: the global feed")
                corrupter = await asyncpg.connect(_pg.PG_URL)  # commits at once, unlike the holder
                try:
                    await corrupter.execute(
                        f'UPDATE "{schema}".kern_events SET data = $1 WHERE version = 3', b"\xc1\xc1\xc1"
                    )
                finally:
                    await corrupter.close()
                code, out, _ = await asyncio.to_thread(cli, capsys, "verify", *where)
                assert code == 1
                assert "version 3: stored" in out and "cannot be decoded" in out
                assert "version 2: edited: one of versions 2-4 does not match its hash" in out  # its append's
                assert out.endswith(f"verified {total} events in 1 session: 2 problems\n")
            finally:
                await holder.close()

        _pg.run_sync(check)
    finally:
        _pg.drop_schema(schema)


def test_migrate_says_what_it_made_up_to_date_in_the_backends_words_and_never_echoes_a_password(
    tmp_path: Path, schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(tmp_path / "new.db")
    assert cli(capsys, "migrate", "--db", path)[:2] == (0, f"the tables of {path} are up to date\n")
    url = _pg.PG_URL.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    assert "hunter2" in url
    code, out, err = cli(capsys, "migrate", "--db", url, "--schema", schema)
    assert code == 0, err
    assert out.startswith(f"the tables in schema {schema!r} of postgresql://") and out.endswith(" are up to date\n")
    assert "hunter2" not in out and "@" not in out
