from __future__ import annotations

from pathlib import Path

import pytest

from tests._backends import BACKENDS, Backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each conformance test runs once per backend."""
    return Backend(request.param, tmp_path)
