"""``kern-events replay``: a session made by the reference Agent (the demo, with a paused and resumed
run), told step by step for a person and as JSON lines for tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kern_events.cli import main
from kern_events.db import SqliteDb
from kern_events.events import MessageAdded, RunStarted, SessionStarted, SessionStateChanged


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def demo_db(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The demo conversation played to its end: four runs, the last paused for a confirmation and
    resumed by a fifth process."""
    path = tmp_path / "demo.db"
    for _ in range(5):
        assert cli(capsys, "demo", "--db", str(path))[0] == 0
    return path


def test_replay_json_tells_every_step_with_diffs_pauses_and_token_totals(
    demo_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "replay", "conversation_123", "--db", str(demo_db), "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    steps, totals = lines[:-1], lines[-1]
    assert [step["version"] for step in steps] == list(range(1, len(steps) + 1))
    kinds = [step["kind"] for step in steps]
    assert kinds.count("run_started") == 4 and kinds.count("run_completed") == 4
    # The pause, its resolution and the resumption, in that order, in the booking run.
    paused = kinds.index("run_paused")
    assert kinds[paused + 1 : paused + 3] == ["requirement_resolved", "run_resumed"]
    assert "confirmation of book_flight" in steps[paused]["text"]
    assert "confirmed" in steps[paused + 1]["text"]
    assert steps[paused]["run_id"] == steps[paused + 2]["run_id"]
    # Tool calls with their arguments and results.
    weather = next(step for step in steps if step["kind"] == "tool_call_completed" and "get_weather" in step["text"])
    assert weather["detail"]["result"] == "sunny and 18 °C"
    assert weather["detail"]["arguments"] == {"city": "Paris"}  # a call recorded whole: one event
    # State changes as diffs.
    diffs = [change for step in steps for change in step.get("state", [])]
    assert {"key": "user_name", "change": "added", "after": "Alice"} in diffs
    assert {"key": "booked", "change": "added", "after": "Oslo"} in diffs
    # Token totals: the last line adds up every run's metrics.
    completed = [step["detail"]["metrics"] for step in steps if step["kind"] == "run_completed"]
    assert totals["kind"] == "totals" and totals["runs"] == 4
    assert totals["total_tokens"] == sum(metrics["total_tokens"] for metrics in completed) > 0


def test_replay_for_a_person_shows_runs_tool_calls_diffs_and_totals(
    demo_db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "replay", "conversation_123", "--db", str(demo_db))
    assert code == 0
    assert out.count("run run_") == 4
    assert "user: What's the weather in Paris?" in out
    assert 'tool get_weather({"city":"Paris"}) returned' in out
    assert "+ user_name: Alice" in out
    assert "paused, waiting for confirmation of book_flight" in out
    assert "requirement call_book_flight_oslo confirmed" in out
    assert "resumed" in out
    assert "tokens: " in out.splitlines()[-1] and "over 4 runs" in out


def test_replay_to_a_version_stops_there(demo_db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "replay", "conversation_123", "--db", str(demo_db), "--json", "--to-version", "12")
    assert code == 0
    assert [json.loads(line)["version"] for line in out.splitlines()[:-1]] == list(range(1, 13))
    code, _, err = cli(capsys, "replay", "conversation_123", "--db", str(demo_db), "--to-version", "999")
    assert code == 2 and err.count("\n") == 1 and "--to-version" in err and "version 34" in err


def test_replay_of_a_missing_session_or_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "replay", "nope", "--db", str(tmp_path / "missing.db"))
    assert code == 2 and err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    code, _, err = cli(capsys, "replay", "nope", "--db", str(tmp_path / "junk.db"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err


async def test_state_diffs_show_changed_and_removed_keys_and_stored_markup_stays_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.db"
    async with SqliteDb(path) as db:
        await db.store.append(
            "s",
            [
                SessionStarted(session_type="agent", session_data={"session_state": {"a": 1, "b": 2}}),
                RunStarted(run_id="r"),
                MessageAdded(run_id="r", role="user", content="[bold red]not markup[/] <script>x</script>"),
                SessionStateChanged(set={"a": 3}, removed=("b",)),
            ],
        )
    code, out, _ = await _in_thread(capsys, "replay", "s", "--db", str(path))
    assert code == 0
    assert "[bold red]not markup[/] <script>x</script>" in out
    assert "~ a: 1 -> 3" in out and "- b: 2" in out and "+ a: 1" in out


async def _in_thread(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    import anyio.to_thread

    return await anyio.to_thread.run_sync(lambda: cli(capsys, *args))
