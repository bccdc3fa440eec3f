"""The JetStream backend beyond the conformance suite: the server version it refuses, an R3 stream on
a 3-node cluster, and the typed error a writer sees when no server answers."""

from __future__ import annotations

import asyncio
import socket
import uuid

import msgspec
import pytest

from kern_events.errors import InvalidArgumentError, StorageUnavailableError, UnsupportedError
from kern_events.events import MessageAdded
from kern_events.records import Snapshot
from tests import _agent_process, _nats

pytest.importorskip("nats", reason="the nats extra is not installed")

from kern_events.stores.nats import NatsEventStore

SYSTEM_SERVER = "nats://127.0.0.1:4222"


def _message(content: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=content)


def _answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_a_server_older_than_2_12_is_refused_at_connect_with_a_typed_error() -> None:
    """Debian's nats-server (2.9) stores a "batch" message by message; the store must not run on it.
    Read-only: nothing is created on that server."""
    if not _answers(4222):
        pytest.skip("no system nats-server on 127.0.0.1:4222")
    store = NatsEventStore(SYSTEM_SERVER, prefix="KernVersionProbe", replicas=1)
    with pytest.raises(UnsupportedError, match=r"2\.12 or newer"):
        await store.current_version("s")
    await store.aclose()


async def test_appends_and_reads_on_an_r3_stream_of_a_three_node_cluster(nats_cluster: _nats.Cluster) -> None:
    store = NatsEventStore(nats_cluster.urls, prefix="R3Basics", replicas=3)
    async with store:
        first = await store.append("s", [_message("a"), _message("b")], expected_version=0)
        second = await store.append("s", [_message("c")], expected_version=2)
        assert (first.from_version, first.to_version, second.to_version) == (1, 2, 3)
        assert [record.version async for record in store.read("s")] == [1, 2, 3]
        assert await store.current_version("s") == 3
    _nats.delete_stream(nats_cluster.urls, "R3Basics")


async def test_an_append_that_finds_no_responders_for_a_moment_goes_in_once(nats_server: _nats.Cluster) -> None:
    """A stream just created (or electing) may have no interest on the server a writer talks to:
    "no responders" means nothing was stored, so the append is sent again within the timeout
    instead of failing (seen in CI as a StorageUnavailableError on the first append to a new R3 stream)."""
    prefix = f"NoResponders{uuid.uuid4().hex[:8]}"  # a JetStream publish is a request to the stream
    async with NatsEventStore(nats_server.urls, prefix=prefix, replicas=1, timeout=3.0) as store:
        _nats.delete_stream(nats_server.urls, prefix)  # no stream: every append finds no responders

        async def recreate_soon() -> None:
            await asyncio.sleep(0.5)
            async with NatsEventStore(nats_server.urls, prefix=prefix, replicas=1):
                pass  # opening creates the stream again

        task = asyncio.ensure_future(recreate_soon())
        ack = msgspec.json.decode(await store._request(f"{prefix}.probe", b"once"))
        await task
        assert ack["seq"] == 1  # stored once, by the send that found the stream
        _nats.delete_stream(nats_server.urls, prefix)
        task = asyncio.ensure_future(recreate_soon())
        assert await store._commit([(f"{prefix}.probe", b"once", {})]) == (1, 1)  # a batch is resent whole
        await task
    _nats.delete_stream(nats_server.urls, prefix)


async def test_no_server_is_a_storage_unavailable_error_not_a_raw_nats_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = NatsEventStore(f"nats://127.0.0.1:{port}", prefix="Nowhere", timeout=0.5)
    with pytest.raises(StorageUnavailableError):
        await store.append("s", [_message("a")])
    await store.aclose()


async def test_an_id_left_behind_by_an_interrupted_delete_is_free_again(nats_server: _nats.Cluster) -> None:
    """A delete publishes its tombstone, then purges the session's event ids; if it stops in between,
    an append reusing such an id must not loop or fail: the stale id entry is purged on sight."""
    prefix = f"Stale{uuid.uuid4().hex[:8]}"
    store = NatsEventStore(nats_server.urls, prefix=prefix, replicas=1)
    try:
        async with store:
            event_id = uuid.uuid4()
            # what an interrupted delete leaves: the id's entry, pointing at an event that is gone
            await store._request(f"{prefix}.id.{event_id.hex}", b"gone", {"Kern-Version": "1"})
            result = await asyncio.wait_for(store.append("s", [_message("a")], event_ids=[event_id]), 10)
            assert result.event_ids == (event_id,)
            assert [record.event_id async for record in store.read("s")] == [event_id]
    finally:
        _nats.delete_stream(nats_server.urls, prefix)


async def test_a_snapshot_over_the_servers_message_limit_is_an_invalid_argument(nats_server: _nats.Cluster) -> None:
    prefix = f"Big{uuid.uuid4().hex[:8]}"
    store = NatsEventStore(nats_server.urls, prefix=prefix, replicas=1)
    try:
        async with store:
            await store.append("s", [_message("a")])
            big = Snapshot(session_id="s", name="view", schema_version=1, version=1, data=b"x" * (9 * 2**20))
            with pytest.raises(InvalidArgumentError, match="max_payload"):
                await store.save_snapshot(big)
            await store.save_snapshot(msgspec.structs.replace(big, data=b"small"))
            loaded = await store.load_snapshot("s", "view")
            assert loaded is not None and loaded.data == b"small"
    finally:
        _nats.delete_stream(nats_server.urls, prefix)


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"servers": []}, "servers"),
        ({"servers": [""]}, "servers"),
        ({"prefix": "a.b"}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"replicas": 0}, "replicas"),
        ({"replicas": True}, "replicas"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
    ],
)
def test_bad_options_are_refused_naming_them(options: dict[str, object], argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        NatsEventStore(**options)  # type: ignore[arg-type]
    assert caught.value.argument == argument


def test_the_reference_agent_pauses_in_one_process_and_continues_in_another_on_natsdb(
    nats_server: _nats.Cluster,
) -> None:
    """The reference Agent's demo path on JetStream: a run pauses for a confirmation and is stored; a
    new process confirms and finishes it, and answers from the history the first process wrote."""
    prefix = f"Agent{uuid.uuid4().hex[:8]}"
    try:
        paused = _agent_process.run("pause", "nats", nats_server.urls[0], prefix)
        assert paused["status"] == "paused" and paused["booked"] == []
        finished = _agent_process.run("continue", "nats", nats_server.urls[0], prefix)
        assert finished["run_id"] == paused["run_id"]
        assert finished["content"] == "Flight to Oslo: booked Oslo."
        assert finished["booked"] == ["Oslo"]  # the confirmed tool ran in the second process
        assert finished["name"] == "Your name is Alice."  # from runs the first process stored
        assert finished["statuses"] == ["completed", "completed", "completed"]
    finally:
        _nats.delete_stream(nats_server.urls, prefix)


def test_concurrent_first_requests_of_an_event_loop_share_one_connection(nats_server: _nats.Cluster) -> None:
    """Each event loop gets its own connection; requests that start together on a new loop used to
    connect once each, and a reply could go to a connection nobody waited on (a 'timed out' error)."""
    prefix = f"Loops{uuid.uuid4().hex[:8]}"
    store = NatsEventStore(nats_server.urls, prefix=prefix, replicas=1, timeout=2.0)

    async def together() -> list[int]:
        return list(await asyncio.gather(*(store.current_version(f"s{n}") for n in range(8))))

    try:
        for _ in range(3):
            assert asyncio.run(together()) == [0] * 8
    finally:
        asyncio.run(store.aclose())
        _nats.delete_stream(nats_server.urls, prefix)
