"""Agno's own session db tests, unchanged, against ``KernEventsDb`` on each kern-events backend.

They run in a pytest of their own per backend, with the plugin ``kern_agno_shim`` providing their
``sqlite_db_real`` fixture; this test reads the outcome of each of their 43 items from a JUnit report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests import _pg
from tests.adapters.agno import _upstream

HERE = Path(__file__).parent
ROOT = HERE.parent.parent.parent
_PYTEST = (sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "kern_agno_shim")


TIMED = "test_session::test_upsert_sessions_performance"


def _outcomes(report: Path) -> dict[str, str]:
    """Each test case of a JUnit report: name -> passed | skipped | failed."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in {"skipped", "failure", "error"}:
                outcome = "skipped" if child.tag == "skipped" else "failed"
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgres"])
def test_agnos_own_session_tests_pass_against_kern_events_db(backend: str, tmp_path: Path) -> None:
    _upstream.require_agno()
    if backend == "postgres":
        _pg.require_postgres()
    files = _upstream.test_files()
    path = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "KERN_AGNO_BACKEND": backend}

    def run(report: Path, *tests: str) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
        options = ("-o", "timeout=60", "-o", "asyncio_default_fixture_loop_scope=function")
        done = subprocess.run(
            [*_PYTEST, *options, f"--rootdir={files}", "-c", os.devnull, f"--junitxml={report}", *tests],
            cwd=files,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        return (_outcomes(report) if report.exists() else {}), done

    outcomes, done = run(tmp_path / "report.xml", *(Path(name).name for name in _upstream.FILES))
    assert len(outcomes) == _upstream.COUNT, done.stdout[-6000:] + done.stderr[-2000:]
    failed = sorted(name for name, outcome in outcomes.items() if outcome != "passed")
    if failed == [TIMED]:
        # Their one timing assertion (bulk upsert of 50 sessions at least 2x faster than 50 single
        # upserts) can lose to a busy shared machine: it gets one more try on its own.
        again, done = run(tmp_path / "again.xml", f"test_session.py::{TIMED.rsplit('::', 1)[1]}")
        failed = sorted(name for name, outcome in again.items() if outcome != "passed")
    assert not failed, done.stdout[-6000:]
