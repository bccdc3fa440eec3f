"""The backends every conformance test runs against, behind one small factory.

A :class:`Backend` opens stores and dbs on one database; for persistent backends a second store
opened on it sees what the first one wrote (a reopen, as a new process would).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from kern_events.codec import Codec
from kern_events.db import BaseDb, InMemoryDb, PostgresDb, SqliteDb
from kern_events.sessions import StoragePolicy
from kern_events.stores._base import BaseEventStore
from kern_events.stores.memory import InMemoryEventStore
from kern_events.stores.postgres import PostgresEventStore
from kern_events.stores.sqlite import SqliteEventStore
from kern_events.testing import _backend as kit
from tests import _dynamo, _nats, _pg

BACKENDS = ["memory", "sqlite", "postgres", "nats", "nats-sharded", "dynamodb"]
"""``nats-sharded`` is the JetStream store with ``shards=3``: sessions over three streams, a merged feed.
``dynamodb`` is the DynamoDB store on moto's server (tests/_dynamo.py), a table per test."""


class Backend(kit.Backend):
    """Opens stores of one of our backends on one database."""

    def __init__(
        self,
        name: str,
        directory: Path,
        nats_urls: list[str] | None = None,
        dynamo: _dynamo.Emulator | None = None,
    ) -> None:
        self.name = name
        self.nats_urls = nats_urls or []
        self.dynamo = dynamo
        self.table = _dynamo.new_table()
        self.prefix = f"T{uuid.uuid4().hex[:12]}"
        self.directory = directory
        self.persistent = self.streams_from_storage = name != "memory"
        self.notifies = name == "postgres"
        if name.startswith("nats"):
            self.notifies = True
            self.truncates = False
            self.fences_erasure_across_stores = False
        self.shards = 3 if name == "nats-sharded" else 1
        if self.shards > 1:
            self.appends_many = False  # an atomic batch is within one stream
        if name == "dynamodb":
            # What DynamoDB lacks (tests/_dynamo.py, kern_events/stores/dynamodb.py): a global feed,
            # append_many, truncate_before, a cross-process erasure mark; what it caps: 49 events and
            # 4 MB per append (one transaction). The long session is smaller: moto copies the table
            # for each transaction (once, with tests/_dynamo.py's patch), so filling it grows with its square.
            self.global_feed = self.appends_many = self.truncates = self.fences_erasure_across_stores = False
            self.max_events_per_append = 49
            self.inline_limit = 64 * 1024  # a big event's chunks must fit the transaction's 100 items
            self.large_event_size = 3_000_000
            self.long_session_events = 2_000
        self.schema = _pg.new_schema() if name == "postgres" else None
        if name == "postgres":
            _pg.require_postgres()

    def cleanup(self) -> None:
        """Drop what this backend created outside ``directory`` (the PostgreSQL schema)."""
        if self.schema is not None:
            _pg.drop_schema(self.schema)
        if self.dynamo is not None:
            _dynamo.delete_table(self.dynamo, self.table)
        if self.name.startswith("nats"):
            for shard in range(self.shards):
                _nats.delete_stream(self.nats_urls, self.prefix if shard == 0 else f"{self.prefix}~{shard}")

    @property
    def db_file(self) -> str:
        return os.fspath(self.directory / "kern.db")

    def store(self, *, codec: Codec | None = None) -> BaseEventStore:
        """A new, unopened store on this backend's database."""
        if self.name == "memory":
            return InMemoryEventStore(codec=codec)
        if self.name == "sqlite":
            return SqliteEventStore(self.db_file, codec=codec)
        if self.name == "postgres":
            return PostgresEventStore(_pg.PG_URL, schema=self.schema or "", pool_size=4, codec=codec)
        if self.name == "dynamodb":
            from kern_events.stores.dynamodb import DynamoEventStore

            assert self.dynamo is not None
            return DynamoEventStore(self.table, **self.dynamo.options(), codec=codec)
        if self.name.startswith("nats"):
            from kern_events.stores.nats import NatsEventStore

            return NatsEventStore(self.nats_urls, prefix=self.prefix, replicas=1, shards=self.shards, codec=codec)
        raise AssertionError(self.name)

    def db(
        self, *, cache_size: int = 0, storage_policy: StoragePolicy | None = None, checkpoint_every: int | None = 1000
    ) -> BaseDb:
        """A new, unopened db on this backend's database."""
        options = {"cache_size": cache_size, "storage_policy": storage_policy, "checkpoint_every": checkpoint_every}
        if self.name == "memory":
            return InMemoryDb(**options)  # type: ignore[arg-type]
        if self.name == "sqlite":
            return SqliteDb(self.db_file, **options)  # type: ignore[arg-type]
        if self.name == "postgres":
            return PostgresDb(_pg.PG_URL, schema=self.schema or "", pool_size=4, **options)  # type: ignore[arg-type]
        if self.name.startswith("nats") or self.name == "dynamodb":
            return BaseDb(self.store(), **options)  # type: ignore[arg-type]
        raise AssertionError(self.name)
