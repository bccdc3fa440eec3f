from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kern_events.testing import heavy_scale
from tests import _dynamo, _nats, _pg
from tests._backends import BACKENDS, Backend


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each conformance test runs once per backend, on a database (or schema) of its own."""
    urls = request.getfixturevalue("nats_server").urls if request.param.startswith("nats") else None
    dynamo = request.getfixturevalue("dynamo_server") if request.param == "dynamodb" else None
    backend = Backend(request.param, tmp_path, urls, dynamo)
    try:
        yield backend
    finally:
        backend.cleanup()


@pytest.fixture(name="heavy_scale")
def heavy_scale_fixture() -> int:
    """Multiplier for heavy scenarios: 1 by default (and in CI), larger with KERN_HEAVY_SCALE=n."""
    return heavy_scale()


@pytest.fixture
def schema() -> Iterator[str]:
    """A PostgreSQL schema of the test's own on the test server, dropped afterwards."""
    _pg.require_postgres()
    name = _pg.new_schema()
    try:
        yield name
    finally:
        _pg.drop_schema(name)


@pytest.fixture(scope="session")
def nats_server() -> Iterator[_nats.Cluster]:
    """One JetStream server for the whole run (each test uses a stream of its own)."""
    pytest.importorskip("nats", reason="the nats extra is not installed")
    with _nats.running(1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[_nats.Cluster]:
    """A 3-node JetStream cluster on loopback for the whole run."""
    pytest.importorskip("nats", reason="the nats extra is not installed")
    with _nats.running(3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def dynamo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_dynamo.Emulator]:
    """One moto server (the DynamoDB emulator) for the whole run (each test uses a table of its own)."""
    pytest.importorskip("aioboto3", reason="the dynamodb extra is not installed")
    with _dynamo.running(tmp_path_factory.mktemp("moto")) as emulator:
        yield emulator
