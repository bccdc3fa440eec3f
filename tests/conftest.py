from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._backends import BACKENDS, Backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each conformance test runs once per backend."""
    return Backend(request.param, tmp_path)


@pytest.fixture
def heavy_scale() -> int:
    """Multiplier for heavy scenarios: 1 by default (and in CI), larger with KERN_HEAVY_SCALE=n."""
    return max(1, int(os.environ.get("KERN_HEAVY_SCALE", "1")))
