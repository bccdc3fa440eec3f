"""ADK's own ``Runner`` on ``KernEventsSessionService``: a scripted model, one turn per process, and
the README's one-line switch as printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.adapters.adk import _adk

_adk.require_adk()

ROOT = Path(__file__).parent.parent.parent.parent


def _turn(db_file: Path, text: str, *mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.adapters.adk._runner_process", str(db_file), text, *mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_second_process_runs_the_next_turn_on_what_the_first_stored(tmp_path: Path) -> None:
    """The first turn is ``Runner.run_async``; the second ``Runner.run``, the synchronous entry point,
    which runs the service on an event loop of its own in another thread."""
    db_file = tmp_path / "adk.db"
    first = _turn(db_file, "Alice")
    assert first == {
        "answer": "I know Alice",
        "events": 4,  # the user's message, the tool call, its response, the answer
        "state": {"last_answer": "I know Alice", "user:names": ["Alice"]},
    }
    second = _turn(db_file, "Bob", "sync")
    assert second == {
        "answer": "I know Alice, Bob",
        "events": 8,
        "state": {"last_answer": "I know Alice, Bob", "user:names": ["Alice", "Bob"]},
    }


def test_the_readme_switch_runs_as_written(tmp_path: Path) -> None:
    from tests.test_readme import _block_after, _run_python

    code = _block_after("Use it from your framework", index=3)
    assert _run_python(code, tmp_path) == "1 {'turns': 1}\n"
    assert _run_python(code, tmp_path) == "2 {'turns': 2}\n"
