"""PostgreSQL server crashes, on a throwaway cluster of the test's own (``tests/_pgcluster.py``).

The machine's shared server is never stopped or restarted by the suite: a test that needs a server
to crash makes its own. A guard below keeps it that way.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from kern_events import MessageAdded, PostgresEventStore, StorageUnavailableError
from tests import _pgcluster

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def cluster() -> Iterator[_pgcluster.Cluster]:
    with _pgcluster.throwaway_cluster() as made:
        yield made


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


async def test_the_throwaway_cluster_is_not_the_shared_server(cluster: _pgcluster.Cluster) -> None:
    connection = await asyncpg.connect(cluster.url)
    try:
        directory = await connection.fetchval("SHOW data_directory")
        port = await connection.fetchval("SHOW port")
    finally:
        await connection.close()
    assert Path(directory) == cluster.data
    assert int(port) == cluster.port != 5432


@pytest.mark.heavy
async def test_a_server_crash_and_restart_loses_no_acknowledged_append(
    cluster: _pgcluster.Cluster, heavy_scale: int
) -> None:
    acknowledged: list[uuid.UUID] = []
    retries = 0
    warmed_up = asyncio.Event()
    restarted = asyncio.Event()
    async with PostgresEventStore(cluster.url, schema=f"crash_{uuid.uuid4().hex[:8]}", pool_size=2) as store:

        async def append_until_acknowledged(n: int) -> None:
            nonlocal retries
            event_id = uuid.uuid4()
            while True:
                try:
                    await store.append("s", [_message(f"{n}")], event_ids=[event_id])
                except StorageUnavailableError:
                    retries += 1
                    await asyncio.sleep(0.1)
                    continue
                acknowledged.append(event_id)
                return

        async def writer() -> None:
            n = 0
            after_restart = 0
            while after_restart < 50 * heavy_scale:  # keep writing through the restart, and past it
                await append_until_acknowledged(n)
                n += 1
                if n == 50:
                    warmed_up.set()
                if restarted.is_set():
                    after_restart += 1

        writing = asyncio.create_task(writer())
        await warmed_up.wait()
        await asyncio.to_thread(cluster.crash_and_restart)
        restarted.set()
        await asyncio.wait_for(writing, 120)
        stored = [record.event_id async for record in store.read("s")]
    assert retries > 0, "the restart did interrupt the appends"
    assert stored == acknowledged, "every acknowledged append is there once, in order"


def test_no_test_stops_or_restarts_the_shared_server() -> None:
    """Only the throwaway cluster's module may run server commands; nothing calls pg_ctlcluster."""
    forbidden = re.compile(r"pg_ctlcluster|pg_ctl\b|systemctl|service postgresql")
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(TESTS.rglob("*.py"))
        if path.name not in ("_pgcluster.py", Path(__file__).name)
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if forbidden.search(line)
    ]
    assert offenders == []
    own = (TESTS / "_pgcluster.py").read_text()
    assert "pg_ctlcluster" not in own
