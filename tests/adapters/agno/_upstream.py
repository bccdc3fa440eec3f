"""Agno's own session db tests at the pinned release's commit: fetched, checked, cached.

They are in no Agno package (only in its GitHub repository), so they are fetched file by file from
the pinned commit (or, offline, read with ``git show`` from a clone named by ``KERN_AGNO_REPO``),
checked against their SHA-256 and cached; nothing of Agno's is committed here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

VERSION = "3.1.10"
"""The release the adapter is tested against; the ``agno`` extra pins the same."""
COMMIT = "56d45aa4a829fcf3add06186c878e4b57240fea8"
"""The newest commit of Agno's 3.x line whose session tests could be read here; the two files are
the same at 2.9.0's main, so the 3.1.10 tag holds them unchanged unless they moved since."""
FILES = {
    "libs/agno/tests/integration/db/sqlite/test_session.py": (
        "14add8584d17ffe0c203f7351a9ca2e35b940a446f36a6d9ca7990a4c76fb3bd"
    ),
    "libs/agno/tests/integration/db/sqlite/test_session_isolation.py": (
        "9b0565cae1f7a60909a56b0312ce6f4c1fcf2c14d3b2cf5cc090e598287cbbae"
    ),
}
COUNT = 43
"""Their tests: 33 in test_session.py, 10 in test_session_isolation.py."""
_RAW = "https://raw.githubusercontent.com/agno-agi/agno/{commit}/{path}"


def require_agno() -> None:
    """Skip when the extra is not installed, except under CI, where ``.ci/run`` installs it."""
    if os.environ.get("CI"):
        import agno  # noqa: F401  (CI must have the extra: fail rather than skip)
    else:
        pytest.importorskip("agno", reason="the agno extra is not installed")


def cache_dir() -> Path:
    root = os.environ.get("KERN_EVENTS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kern-events")
    return Path(root) / f"agno-tests-{COMMIT[:12]}"


def _fetch(path: str) -> bytes:
    repo = os.environ.get("KERN_AGNO_REPO")
    if repo:
        return subprocess.run(
            ["git", f"--git-dir={repo}", "show", f"{COMMIT}:{path}"], check=True, capture_output=True
        ).stdout
    with urllib.request.urlopen(_RAW.format(commit=COMMIT, path=path), timeout=60) as response:
        data: bytes = response.read()
        return data


def test_files() -> Path:
    """The directory holding the two test files (fetched and checked on first use)."""
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    for path, sha256 in FILES.items():
        local = target / Path(path).name
        if local.exists() and hashlib.sha256(local.read_bytes()).hexdigest() == sha256:
            continue
        try:
            data = _fetch(path)
        except (OSError, subprocess.CalledProcessError) as exc:
            # In no package, so CI (which reaches package registries only) may not get them; our own
            # tests of the same behaviours (test_db.py) run everywhere.
            pytest.skip(f"Agno's tests at {COMMIT[:12]} cannot be fetched ({exc}); set KERN_AGNO_REPO to a clone")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise RuntimeError(f"{path} at {COMMIT}: sha256 {digest}, expected {sha256}")
        local.write_bytes(data)
    return target
