"""What every adapter's tests share: the ``db_kind`` fixture over the three databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import _pg


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def db_kind(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Which db to open, and where (a file or a PostgreSQL schema of the test's own); open it with
    :func:`tests.adapters._dbs.open_db`."""
    if request.param != "postgres":
        yield request.param, ""
        return
    _pg.require_postgres()
    schema = _pg.new_schema()
    try:
        yield "postgres", schema
    finally:
        _pg.drop_schema(schema)
