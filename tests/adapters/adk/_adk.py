"""Whether Google ADK (the ``adk`` extra) is installed: skip without it, except under CI."""

from __future__ import annotations

import os

import pytest

VERSION = "2.13.0"
"""The google-adk release the adapter is tested against; the ``adk`` extra pins the same."""


def require_adk() -> None:
    """Skip when the extra is not installed, except under CI, where ``.ci/run`` installs it."""
    if os.environ.get("CI"):
        import google.adk  # noqa: F401  (CI must have the extra: fail rather than skip)
    else:
        pytest.importorskip("google.adk", reason="the adk extra is not installed")
