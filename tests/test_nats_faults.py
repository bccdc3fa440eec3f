"""The JetStream backend under server faults, on a 3-node cluster of its own: ``kill -9`` of the
stream leader during appends and subscriptions, a follower killed and restarted, the leader cut off
(SIGSTOP: ``iptables``/``tc`` need root, which tests here do not have). Heavy: a small
default size (``KERN_HEAVY_SCALE`` raises it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kern_events.errors import StorageUnavailableError
from kern_events.events import MessageAdded
from kern_events.records import Record
from kern_events.testing import heavy_scale
from tests import _nats

pytest.importorskip("nats", reason="the nats extra is not installed")

from kern_events.stores.nats import NatsEventStore

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def cluster() -> Iterator[_nats.Cluster]:
    """A 3-node cluster these tests may kill nodes of (every node runs again after each test)."""
    with _nats.running(3) as cluster:
        yield cluster


def _message(content: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=content)


async def _info(store: NatsEventStore, stream: str) -> dict[str, Any]:
    reply = json.loads(await store._request(f"$JS.API.STREAM.INFO.{stream}", b""))
    return reply  # type: ignore[no-any-return]


async def _leader(store: NatsEventStore, stream: str) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            leader = (await _info(store, stream)).get("cluster", {}).get("leader")
        except StorageUnavailableError:
            leader = None
        if leader:
            return str(leader)
        await asyncio.sleep(0.2)
    raise AssertionError("the stream has no leader")


async def _read(store: NatsEventStore, session: str | None, unavailable: list[str]) -> list[Record]:
    """A whole read (of a session, or of the feed), retried while the cluster is unavailable."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if session is None:
                return [record async for record in store.read_all()]
            return [record async for record in store.read(session)]
        except StorageUnavailableError as error:
            unavailable.append(str(error))
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _append_until_acknowledged(
    store: NatsEventStore, session: str, events: list[MessageAdded], expected: int, unavailable: list[str]
) -> None:
    """One append, retried with the same event ids while the cluster is unavailable (a retry of an
    append that landed comes back as that append)."""
    ids = [uuid.uuid4() for _ in events]
    deadline = time.monotonic() + 60
    while True:
        try:
            result = await store.append(session, events, expected_version=expected, event_ids=ids)
        except StorageUnavailableError as error:
            unavailable.append(str(error))
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        assert (result.from_version, result.to_version) == (expected + 1, expected + len(events))
        assert list(result.event_ids) == ids
        return


async def _make_leader(store: NatsEventStore, stream: str, name: str) -> None:
    """Move the stream's leadership to the node ``name`` (a step-down with it preferred, until it holds)."""
    deadline = time.monotonic() + 30
    while await _leader(store, stream) != name:
        assert time.monotonic() < deadline, f"{name} did not become the leader"
        with contextlib.suppress(StorageUnavailableError):
            await store._request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", json.dumps({"placement": {"preferred": name}}).encode()
            )
        await asyncio.sleep(0.5)


async def test_killing_the_stream_leader_during_appends_loses_nothing_acknowledged(cluster: _nats.Cluster) -> None:
    """Four writers append while the leader is killed: every acknowledged append is stored once, the
    versions have no gap, and a subscription delivers the feed without gaps or repeats."""
    stream = f"F{uuid.uuid4().hex[:10]}"
    appends = 20 * heavy_scale()
    writers = 4
    unavailable: list[str] = []
    store = NatsEventStore(cluster.urls, prefix=stream, replicas=3, timeout=2.0)
    delivered: list[Record] = []
    try:
        async with store:
            await store.append("warm-up", [_message("w")])

            acknowledged = 0
            quarter = asyncio.Event()

            async def writer(number: int) -> None:
                nonlocal acknowledged
                for n in range(appends):
                    await _append_until_acknowledged(
                        store, f"w{number}", [_message(f"{number}:{n}"), _message(f"{number}:{n}b")], 2 * n, unavailable
                    )
                    acknowledged += 1
                    if acknowledged >= writers * appends // 4:
                        quarter.set()

            async def follow() -> None:
                async with store.subscribe(poll_interval=0.2) as subscription:
                    async for record in subscription:
                        delivered.append(record)
                        if len(delivered) == 1 + writers * appends * 2:
                            return

            following = asyncio.create_task(follow())
            writing = [asyncio.create_task(writer(number)) for number in range(writers)]
            name = await _leader(store, stream)
            leader = next(node for node in cluster.nodes if node.name == name)
            await quarter.wait()
            leader.kill()
            at_kill = acknowledged
            await asyncio.gather(*writing)
            await asyncio.wait_for(following, 60)
            assert at_kill < writers * appends, "the writers were done before the kill"
            cluster.restart(leader)
            for number in range(writers):
                records = await _read(store, f"w{number}", unavailable)
                assert [record.version for record in records] == list(range(1, 2 * appends + 1))
                contents = [record.event.content for record in records]  # type: ignore[attr-defined]
                assert contents == [f"{number}:{n}{tail}" for n in range(appends) for tail in ("", "b")]
            feed = await _read(store, None, unavailable)
        assert len({record.event_id for record in feed}) == len(feed) == 1 + writers * appends * 2
        assert [record.position for record in delivered] == [record.position for record in feed]
    finally:
        for node in cluster.nodes:
            if node.process is None:
                cluster.restart(node)
        _nats.delete_stream(cluster.urls, stream)
    print(f"leader kill: {len(unavailable)} unavailable errors, e.g. {unavailable[:1]}")


async def test_a_killed_follower_restarts_and_catches_up(cluster: _nats.Cluster) -> None:
    """Writes go on without a follower; restarted, it catches up, and as leader it serves every event."""
    stream = f"F{uuid.uuid4().hex[:10]}"
    store = NatsEventStore(cluster.urls, prefix=stream, replicas=3, timeout=2.0)
    try:
        async with store:
            await store.append("s", [_message("0")])
            leader = await _leader(store, stream)
            follower = next(node for node in cluster.nodes if node.name != leader)
            follower.kill()
            for n in range(1, 10 * heavy_scale()):
                await _append_until_acknowledged(store, "s", [_message(str(n))], n, [])
            cluster.restart(follower)
            deadline = time.monotonic() + 30
            while True:
                try:
                    replicas = (await _info(store, stream)).get("cluster", {}).get("replicas", [])
                except StorageUnavailableError:
                    replicas = []
                mine = [peer for peer in replicas if peer.get("name") == follower.name]
                if mine and mine[0].get("current") and not mine[0].get("lag"):
                    break
                assert time.monotonic() < deadline, replicas
                await asyncio.sleep(0.2)
            await store._request(
                f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                json.dumps({"placement": {"preferred": follower.name}}).encode(),
            )
            deadline = time.monotonic() + 30
            while await _leader(store, stream) != follower.name:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            contents = [record.event.content for record in await _read(store, "s", [])]  # type: ignore[attr-defined]
            assert contents == [str(n) for n in range(10 * heavy_scale())]
    finally:
        for node in cluster.nodes:
            if node.process is None:
                cluster.restart(node)
        _nats.delete_stream(cluster.urls, stream)


async def test_a_leader_cut_off_from_the_cluster_is_replaced_and_catches_up_after(cluster: _nats.Cluster) -> None:
    """A partition of the stream leader (SIGSTOP: it keeps its sockets but answers nothing): a writer on
    the majority's side sees only 'unavailable, retry' until the two others elect a leader, then goes
    on; every acknowledged append is stored once with gapless versions, and once the cut-off node is
    back it catches up and, made leader, serves every event (it kept no write of its own)."""
    stream = f"P{uuid.uuid4().hex[:10]}"
    appends = 30 * heavy_scale()
    unavailable: list[str] = []
    probe = NatsEventStore(cluster.urls, prefix=stream, replicas=3, timeout=2.0)
    paused: _nats.Node | None = None
    try:
        async with probe:
            await probe.append("s", [_message("0")])
            await _make_leader(probe, stream, cluster.nodes[2].name)  # the leader settles before the cut
        majority = [node.url for node in cluster.nodes[:2]]
        async with NatsEventStore(majority, prefix=stream, replicas=3, timeout=1.0) as store:
            await _append_until_acknowledged(store, "s", [_message("1")], 1, unavailable)
            assert await _leader(store, stream) == cluster.nodes[2].name
            paused = cluster.nodes[2]
            paused.pause()
            cut_at = time.monotonic()
            for n in range(2, appends):
                await _append_until_acknowledged(store, "s", [_message(str(n))], n, unavailable)
            assert unavailable, "the writer never saw the cut-off leader"
            assert time.monotonic() - cut_at < 60
            new_leader = await _leader(store, stream)
            assert new_leader != paused.name
            paused.resume()
            paused_name = paused.name
            paused = None
            deadline = time.monotonic() + 30
            while True:
                try:
                    replicas = (await _info(store, stream)).get("cluster", {}).get("replicas", [])
                except StorageUnavailableError:
                    replicas = []
                back = [peer for peer in replicas if peer.get("name") == paused_name]
                if back and back[0].get("current") and not back[0].get("lag"):
                    break
                assert time.monotonic() < deadline, replicas
                await asyncio.sleep(0.2)
        async with NatsEventStore(cluster.urls, prefix=stream, replicas=3, timeout=2.0) as store:
            await _make_leader(store, stream, paused_name)
            records = await _read(store, "s", [])
        assert [record.version for record in records] == list(range(1, appends + 1))
        assert [record.event.content for record in records] == [str(n) for n in range(appends)]  # type: ignore[attr-defined]
    finally:
        if paused is not None:
            paused.resume()
        _nats.delete_stream(cluster.urls, stream)
    print(f"partition: {len(unavailable)} unavailable errors, e.g. {unavailable[:1]}")
