"""Agno's ``Agent`` (with a scripted model) on ``KernEventsDb`` across two processes: a run that
pauses for confirmation in one process is continued and finished in another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.adapters.agno import _upstream

HERE = Path(__file__).parent
ROOT = HERE.parent.parent.parent


def _agent(command: str, directory: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(HERE / "_agent_process.py"), command, str(directory)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_paused_run_is_continued_in_another_process(tmp_path: Path) -> None:
    _upstream.require_agno()
    paused = _agent("pause", tmp_path)
    assert paused["paused"] is True and paused["status"] == "PAUSED"
    finished = _agent("continue", tmp_path)
    assert finished["run_id"] == paused["run_id"]
    assert finished["content"] == "Your flight to Paris is booked."
    assert finished["booked"] == ["Paris"]  # the confirmed tool ran in the second process
    assert finished["stored_status"] == ["COMPLETED"]  # and the run's end is stored, in the same run
