"""The ``kern-events`` command on NATS JetStream: ``--db nats://HOST:PORT,...?prefix=...&shards=...``
against the 3-node cluster the tests start, the demo run as a user runs it (a process per turn),
export to SQLite and back to a clean ``verify``, and one clear line for every bad ``nats://`` URL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _nats
from tests.test_cli import READ_COMMANDS, WRITE_COMMANDS, cli, exported_events, json_lines, run_cli

pytest.importorskip("nats", reason="the nats extra is not installed")


def _url(cluster: _nats.Cluster, query: str) -> str:
    """The cluster as one ``--db`` value: every server, then the query."""
    return "nats://" + ",".join(url.removeprefix("nats://") for url in cluster.urls) + f"?{query}"


@pytest.fixture
def prefix(nats_cluster: _nats.Cluster) -> Iterator[str]:
    """A stream prefix of the test's own; its streams (up to 3 shards, and `<prefix>-back`) are deleted afterwards."""
    name = f"Cli{uuid.uuid4().hex[:10]}"
    yield name
    for stream in (name, f"{name}~1", f"{name}~2", f"{name}-back"):
        _nats.delete_stream(nats_cluster.urls, stream)


def test_the_demo_runs_on_jetstream_as_a_user_runs_it_through_the_paused_booking(
    nats_cluster: _nats.Cluster, prefix: str, tmp_path: Path
) -> None:
    """The README's demo, one process per turn, with ``--db nats://...``: the fourth turn pauses for the
    booking's confirmation, the fifth confirms it, the sixth says the conversation is complete."""
    db = _url(nats_cluster, f"prefix={prefix}")
    outs = []
    for _ in range(6):
        done = run_cli("demo", "--db", db, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        outs.append(done.stdout)
    assert "starting session conversation_123" in outs[0] and "agent: Nice to meet you, Alice!" in outs[0]
    assert "continuing session conversation_123" in outs[1] and "now has 2 runs" in outs[1]
    assert "agent: The weather in Paris: sunny and 18 °C." in outs[1]
    assert "agent: Your name is Alice." in outs[2]  # answered from runs other processes wrote
    assert 'waiting for: confirmation of book_flight({"city":"Oslo"})' in outs[3]
    assert "the user confirms it" in outs[4]
    assert "agent: Flight to Oslo: booked, seat 12A to Oslo." in outs[4]
    assert "the conversation is complete" in outs[5]
    assert list(tmp_path.iterdir()) == [], "no SQLite file beside it: the demo ran on NATS"

    shown = run_cli("show", "conversation_123", "--json", "--db", db, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert view["user_id"] == "alice@example.com"
    assert [run["status"] for run in view["runs"]] == ["completed"] * 4
    assert view["session_data"]["session_state"] == {"user_name": "Alice", "last_city": "Paris", "booked": "Oslo"}
    assert run_cli("paused", "--db", db, cwd=tmp_path).stdout == "no paused runs\n"


def test_export_from_sharded_jetstream_imports_into_sqlite_verifies_clean_and_replays_the_same(
    nats_cluster: _nats.Cluster, prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _url(nats_cluster, f"prefix={prefix}&shards=3&timeout=10")
    for _ in range(5):
        assert cli(capsys, "demo", "--db", db)[0] == 0
    assert cli(capsys, "demo", "--db", db, "--session-id", "second_conversation")[0] == 0
    listed = json_lines(cli(capsys, "sessions", "--db", db, "--json")[1])
    assert sorted((row["session_id"], row["run_count"]) for row in listed) == [
        ("conversation_123", 4),
        ("second_conversation", 1),
    ]

    export = tmp_path / "nats.jsonl"
    assert cli(capsys, "export", "--db", db, "-o", str(export)) == (0, "", "")
    events = exported_events(export.read_text())
    assert {line["session_id"] for line in events} == {"conversation_123", "second_conversation"}
    copy = str(tmp_path / "copy.db")
    code, out, _ = cli(capsys, "import", str(export), "--db", copy)
    assert (code, out.splitlines()[-1]) == (0, f"imported {len(events)} events in 2 sessions into {copy}")

    expected = f"verified {len(events)} events in 2 sessions: ok\n"
    assert cli(capsys, "verify", "--db", db)[:2] == (0, expected)
    assert cli(capsys, "verify", "--db", copy)[:2] == (0, expected)

    back = _url(nats_cluster, f"prefix={prefix}-back")  # the way back: SQLite's export into a new stream
    assert cli(capsys, "export", "--db", copy, "-o", str(tmp_path / "copy.jsonl"))[0] == 0
    assert cli(capsys, "import", str(tmp_path / "copy.jsonl"), "--db", back)[0] == 0
    assert cli(capsys, "verify", "--db", back)[:2] == (0, expected)

    code, replayed, _ = cli(capsys, "replay", "conversation_123", "--json", "--db", db)
    assert code == 0
    assert cli(capsys, "replay", "conversation_123", "--json", "--db", copy)[1] == replayed
    steps = json_lines(replayed)
    assert steps[-1]["kind"] == "totals" and steps[-1]["runs"] == 4, steps[-1]

    code, out, _ = cli(capsys, "erase-user", "alice@example.com", "--db", db)  # a dry run: lists, erases nothing
    assert code == 0 and "2 sessions" in out and "would be erased" in out
    code, out, _ = cli(capsys, "retain", "--max-age", "365d", "--db", db)
    assert (code, out.splitlines()[-1].split(",")[0]) == (0, "0 sessions would be deleted")
    for apply in ([], ["--apply"]):  # compaction needs truncate_before: refused, never listed as to be done
        code, out, err = cli(capsys, "retain", "--keep-runs", "1", *apply, "--db", db)
        assert (code, out) == (2, ""), out
        assert err == "error: NatsEventStore does not support keep_runs (compaction needs truncate_before)\n"
    assert cli(capsys, "verify", "--db", db)[:2] == (0, expected), "nothing was written"

    wrong = _url(nats_cluster, f"prefix={prefix}")  # the data has 3 shards: no silent empty answer
    code, out, err = cli(capsys, "sessions", "--db", wrong)
    assert (code, out) == (2, "") and err.startswith("error: shards: ") and "open it with shards=3" in err, err


@pytest.mark.parametrize("args", [*READ_COMMANDS, ["replay", "conversation_123"]], ids=lambda args: args[0])
def test_read_commands_never_create_a_stream(
    args: list[str], nats_cluster: _nats.Cluster, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _url(nats_cluster, f"prefix={prefix}&replicas=1")
    for _ in range(2):  # had the first created the stream, the second would find it, empty
        code, out, err = cli(capsys, *args, "--db", db)
        assert (code, out) == (2, ""), err
        assert err == (
            f"error: NATS at {', '.join(nats_cluster.urls)} has no kern-events stream {prefix!r} "
            "(`kern-events migrate` creates what is missing, if it is the right one)\n"
        )
    hosts = ",".join(url.removeprefix("nats://") for url in nats_cluster.urls)
    made = f"the JetStream streams {prefix!r} on nats://{hosts} are up to date\n"
    assert cli(capsys, "migrate", "--db", db)[:2] == (0, made)
    assert cli(capsys, "sessions", "--db", db)[:2] == (0, "no sessions\n")


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("mysql://root@127.0.0.1/agents", "--db: unknown scheme 'mysql': expected a SQLite file, a postgresql:// or"),
        ("nats://127.0.0.1:4222?prefix=A&shard=3", "--db: unknown query parameter 'shard' in the nats:// URL"),
        ("nats://127.0.0.1:4222?shards=three", "shards: expected a number, got 'three'"),
        ("nats://127.0.0.1:4222?shards=0", "shards: expected 1 to 64, got 0"),
        ("nats://127.0.0.1:4222?shards=2&shards=3", "shards: given twice in the nats:// URL"),
        ("nats://127.0.0.1:4222?prefix=a.b", "prefix: expected letters, digits, '-' or '_', got 'a.b'"),
        ("nats://127.0.0.1:4222?timeout=soon", "timeout: expected a number, got 'soon'"),
        ("nats://127.0.0.1:4222,127.0.0.1:notaport", "--db: bad NATS server '127.0.0.1:notaport'"),
        ("nats://user:secret@:4222", "--db: bad NATS server ':4222'"),
        ("nats://127.0.0.1:1?timeout=1", "cannot connect to NATS at nats://127.0.0.1:1"),
    ],
)
def test_a_bad_nats_url_is_one_clear_line_naming_what_is_wrong(
    db: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in READ_COMMANDS + WRITE_COMMANDS:
        code, out, err = cli(capsys, *args, "--db", db)
        assert (code, out) == (2, ""), err
        assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
        assert "secret" not in err


def test_the_default_three_replicas_on_a_lone_server_is_one_line_saying_replicas_1(
    nats_server: _nats.Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"Lone{uuid.uuid4().hex[:10]}"
    code, out, err = cli(capsys, "demo", "--db", f"{nats_server.urls[0]}?prefix={prefix}")
    assert (code, out) == (2, "")
    assert err.startswith("error: replicas: 3 replicas need a cluster; a lone server holds replicas=1 ("), err
    assert cli(capsys, "demo", "--db", f"{nats_server.urls[0]}?prefix={prefix}&replicas=1")[0] == 0
    _nats.delete_stream(nats_server.urls, prefix)


def test_schema_is_refused_with_a_nats_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "sessions", "--db", "nats://127.0.0.1:4222", "--schema", "agents")
    assert code == 2
    assert err == "error: --schema: is PostgreSQL's; name a NATS stream with ?prefix= on the nats:// URL\n"


def test_ui_serves_the_demo_from_jetstream_and_refuses_a_missing_stream_in_one_line(
    nats_cluster: _nats.Cluster, prefix: str, tmp_path: Path
) -> None:
    pytest.importorskip("starlette", reason="the ui extra is not installed: pip install -e '.[ui]'")
    from tests.test_ui import assert_ui_serves_the_demo

    db = _url(nats_cluster, f"prefix={prefix}")
    missing = run_cli("ui", "--db", db, "--port", "0", cwd=tmp_path)
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr.startswith("error: NATS at ") and f"no kern-events stream {prefix!r}" in missing.stderr

    assert run_cli("demo", "--db", db, cwd=tmp_path).returncode == 0
    assert_ui_serves_the_demo(["--db", db], tmp_path)
