"""A connection lost between PostgreSQL's commit and its answer: the session API's retry stores the
step exactly once. A real server, behind a proxy that drops the answer (see ``tests/_proxy.py``)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pytest

from kern_events import PostgresDb, RunStarted, StorageUnavailableError
from tests import _pg
from tests._proxy import CuttingProxy


def _through(port: int) -> str:
    """The test server's URL, pointed at the proxy on ``port`` (plain TCP: the proxy reads the protocol)."""
    parts = urlsplit(_pg.PG_URL)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}127.0.0.1:{port}", parts.path, "sslmode=disable", ""))


async def test_a_step_committed_but_unanswered_is_stored_exactly_once_when_flushed_again(schema: str) -> None:
    target = urlsplit(_pg.PG_URL)
    proxy = CuttingProxy(target.hostname or "127.0.0.1", target.port or 5432)
    async with proxy, PostgresDb(_through(proxy.port), schema=schema, pool_size=2) as db:
        session = await db.open_session("fault-session", name="faults")
        warm = await session.start_run("warm-up")
        await warm.complete()
        run = await session.start_run("r1")
        run.message("assistant", "an answer the client never hears acknowledged")
        proxy.arm(b"fault-session")
        with pytest.raises(StorageUnavailableError):
            await run.flush()
        assert proxy.cut.is_set(), "cut after the server's ReadyForQuery: committed, unanswered"
        committed = await db.store.current_version("fault-session")
        assert committed == session.version + 2, "the step is in the log although the flush failed"
        retried = await run.flush()
        assert retried is not None and retried.to_version == committed
        assert session.version == committed
        await run.complete()
        started = [r.event.run_id async for r in db.store.read("fault-session") if isinstance(r.event, RunStarted)]
        messages = [r async for r in db.store.read("fault-session") if r.type == "message_added"]
    assert started == ["warm-up", "r1"]
    assert len(messages) == 1
