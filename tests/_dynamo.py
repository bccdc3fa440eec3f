"""A throwaway DynamoDB emulator for tests and benchmarks: moto in server mode on 127.0.0.1, on a free
port, in a subprocess, started and stopped by the caller (a session fixture).

The server runs single-threaded (``python -m tests._dynamo PORT``, not ``moto_server``, which serves
each request on its own thread): moto's threaded server lost a write under 64 concurrent writers,
while a real DynamoDB serialises conflicting transactions. One cost of moto's is cut (see
:class:`_TableCopiedOnce`), none of its behaviour. Each test uses a table of its own
(:func:`new_table`). Under ``CI=true`` a server that cannot start fails the test, elsewhere it skips.
"""

from __future__ import annotations

import contextlib
import copy
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


def delete_table(emulator: Emulator, table: str) -> None:
    """Drop a test's table (moto keeps every table in its memory until it stops), if it was created."""
    import boto3

    client = boto3.client("dynamodb", endpoint_url=emulator.url, **CREDENTIALS)
    with contextlib.suppress(client.exceptions.ResourceNotFoundException):
        client.delete_table(TableName=table)


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


class _TableCopiedOnce:
    """moto's ``copy`` module as its DynamoDB models see it, except that within one transaction a
    table is deep-copied once. moto copies the whole table for every item of a ``TransactWriteItems``
    (to roll back to if one fails): the same state, 99 times over for a 49-event append, which made
    filling a session grow with the square of its size (the 12th append of 49 events took 2-4 s). The
    rollback keeps the one copy, so what the transaction does is unchanged."""

    def __init__(self, table_type: type) -> None:
        self._table_type = table_type
        self.copies: dict[int, Any] | None = None

    def deepcopy(self, value: Any) -> Any:
        if self.copies is None or not isinstance(value, self._table_type):
            return copy.deepcopy(value)
        if id(value) not in self.copies:
            self.copies[id(value)] = copy.deepcopy(value)
        return self.copies[id(value)]


def _serve(port: int) -> None:
    """moto's server app, served by werkzeug on one thread (see the module docstring)."""
    import moto.dynamodb.models as models
    from moto.dynamodb.models.table import Table
    from moto.moto_server.threaded_moto_server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    once = _TableCopiedOnce(Table)
    models.copy = once  # type: ignore[assignment]
    transact = models.DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        once.copies = {}
        try:
            transact(self, transact_items)
        finally:
            once.copies = None

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    run_simple("127.0.0.1", port, DomainDispatcherApplication(create_backend_app), threaded=False)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
