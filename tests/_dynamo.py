"""A throwaway DynamoDB emulator for tests and benchmarks: moto in server mode on 127.0.0.1, on a free
port, in a subprocess, started and stopped by the caller (a session fixture).

The server runs single-threaded (``python -m tests._dynamo PORT``, not ``moto_server``, which serves
each request on its own thread): moto's threaded server lost a write under 64 concurrent writers,
while a real DynamoDB serialises conflicting transactions. Each test uses a table of its own
(:func:`new_table`). Under ``CI=true`` a server that cannot start fails the test, elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
"""What a store passes to reach the emulator (moto accepts any credentials)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def new_table() -> str:
    """A table name of the test's own (tables are created on a store's first use)."""
    return f"kern_{uuid.uuid4().hex[:12]}"


class Emulator:
    """A running moto server: its endpoint url and the options a store needs to reach it."""

    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``DynamoEventStore`` / ``DynamoDb``."""
        return {"endpoint_url": self.url, **CREDENTIALS}


def _fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def running(directory: Path | None = None) -> Iterator[Emulator]:
    """Start moto's server, wait until it answers, and stop it when the block ends."""
    try:
        import moto.server  # noqa: F401 - only to learn whether the extra is installed
    except ImportError:
        _fail("moto[server] is not installed (the dynamodb-test extra)")
    port = _free_port()
    root = Path(__file__).resolve().parent.parent
    log_path = (directory or Path(os.environ.get("TMPDIR", "/tmp"))) / f"moto-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests._dynamo", str(port)], cwd=root, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    _fail(f"moto's server did not start (see {log_path})")
                time.sleep(0.1)
        yield Emulator(port, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _serve(port: int) -> None:
    """moto's server app, served by werkzeug on one thread (see the module docstring)."""
    from moto.moto_server.threaded_moto_server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", port, DomainDispatcherApplication(create_backend_app), threaded=False)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
