"""The OpenAI Agents SDK's sdist at the pinned release: fetched with pip, checked, unpacked, cached.

Nothing of the SDK is committed here: its test files are run unchanged from the unpacked sdist.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

VERSION = "0.24.0"
"""The release the adapter is tested against; the ``openai-agents`` extra pins the same."""
SDIST = f"openai_agents-{VERSION}.tar.gz"
SHA256 = "4b4b285f4fed81fdf1b4ac426a9101658d9cd29b4fb1aaeee18f639b77e704e3"
_PIP_DOWNLOAD = (sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:")
SUITE = ("tests/memory/test_session.py", "tests/memory/test_session_limit.py")


def require_sdk() -> None:
    """Skip when the extra is not installed, except under CI, where ``.ci/run`` installs it."""
    if os.environ.get("CI"):
        import agents  # noqa: F401  (CI must have the extra: fail rather than skip)
    else:
        pytest.importorskip("agents", reason="the openai-agents extra is not installed")


def cache_dir() -> Path:
    root = os.environ.get("KERN_EVENTS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kern-events")
    return Path(root)


def unpacked_sdist() -> Path:
    """The unpacked sdist (downloaded and checked against its SHA-256 on first use)."""
    target = cache_dir() / f"openai_agents-{VERSION}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        subprocess.run(
            [*_PIP_DOWNLOAD, "--dest", scratch, f"openai-agents=={VERSION}"],
            check=True,
        )
        archive = Path(scratch) / SDIST
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SHA256:
            raise RuntimeError(f"{SDIST}: sha256 {digest}, expected {SHA256}")
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        unpacked = Path(scratch) / f"openai_agents-{VERSION}"
        (unpacked / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return target
