"""The OpenAI Agents SDK's own session tests, from its sdist, unchanged, against ``KernEventsSession``.

They run in a pytest of their own (the sdist's test package is also called ``tests``), with the
plugin ``kern_openai_agents_shim`` in place of their ``SQLiteSession``; this test reads the outcome
of each of their 71 items from a JUnit report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.adapters.openai_agents import _sdk

HERE = Path(__file__).parent
_PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "kern_openai_agents_shim")


def _outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """Each test case of a JUnit report: name -> (passed | skipped | failed, message)."""
    outcomes: dict[str, tuple[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in {"skipped", "failure", "error"}:
                outcome = "skipped" if child.tag == "skipped" else "failed"
                message = child.get("message", "")
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = (outcome, message)
    return outcomes


@pytest.mark.timeout(900)  # the first run downloads the sdist
def test_the_sdks_own_session_tests_pass_against_kern_events_session(tmp_path: Path) -> None:
    _sdk.require_sdk()
    from tests.adapters.openai_agents.kern_openai_agents_shim import NOT_APPLICABLE

    sdist = _sdk.unpacked_sdist()
    report = tmp_path / "report.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [*_PYTEST, "-o", "timeout=60", f"--junitxml={report}", *_sdk.SUITE],
        cwd=sdist,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    outcomes = _outcomes(report)
    failed = {name: message for name, (outcome, message) in outcomes.items() if outcome == "failed"}
    assert not failed, done.stdout[-5000:]
    skipped = {name.rsplit("::", 1)[1].split("[")[0] for name, (outcome, _) in outcomes.items() if outcome == "skipped"}
    assert skipped == set(NOT_APPLICABLE)
    assert all(message.startswith("not applicable: ") for outcome, message in outcomes.values() if outcome == "skipped")
    counts = {outcome: sum(1 for o, _ in outcomes.values() if o == outcome) for outcome in ("passed", "skipped")}
    assert len(outcomes) == 71
    assert counts == {"passed": 54, "skipped": 17}, counts  # test_sqlite_session_concurrent_access among the 54
    assert done.returncode == 0, done.stdout[-5000:]
