"""The real PostgreSQL server the tests use, and how a test gets (and gives back) its own schema.

``KERN_TEST_PG_URL`` points at the server (default: the project machines' local server). When it
cannot be reached, PostgreSQL tests are skipped with the reason, except under ``CI``, where that is
a failure: CI must never pass without having run them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest

from kern_events.stores.postgres import PostgresEventStore

PG_URL = os.environ.get("KERN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
T = TypeVar("T")


def run_sync(function: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop is already running."""

    async def main() -> T:
        return await function()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


@functools.cache
def unavailable_reason() -> str | None:
    """Why PostgreSQL cannot be used, or ``None`` if it can."""

    async def probe() -> None:
        connection = await asyncpg.connect(PG_URL, timeout=5)
        await connection.close()

    try:
        run_sync(probe)
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is unreachable ({type(exc).__name__}: {exc})"
    return None


def require_postgres() -> None:
    """Skip (or, under CI, fail) the calling test when PostgreSQL is unreachable."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the PostgreSQL tests", pytrace=False)
    pytest.skip(f"{reason}; set KERN_TEST_PG_URL or start the server")


def new_schema() -> str:
    """A schema name no other test uses."""
    return f"kt_{uuid.uuid4().hex[:16]}"


def drop_schema(schema: str) -> None:
    """Drop a test's schema and everything in it."""

    async def drop() -> None:
        connection = await asyncpg.connect(PG_URL)
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()

    run_sync(drop)


def store(schema: str, **options: Any) -> PostgresEventStore:
    """A new, unopened store on the test server, in ``schema``."""
    return PostgresEventStore(PG_URL, schema=schema, **options)
