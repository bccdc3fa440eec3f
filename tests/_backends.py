"""The backends every conformance test runs against, behind one small factory.

A :class:`Backend` opens stores and dbs on one database; for persistent backends a second store
opened on it sees what the first one wrote (a reopen, as a new process would).
"""

from __future__ import annotations

import os
from pathlib import Path

from kern_events.codec import Codec
from kern_events.db import BaseDb, InMemoryDb, PostgresDb, SqliteDb
from kern_events.sessions import StoragePolicy
from kern_events.stores._base import BaseEventStore
from kern_events.stores.memory import InMemoryEventStore
from kern_events.stores.postgres import PostgresEventStore
from kern_events.stores.sqlite import SqliteEventStore
from kern_events.testing import _backend as kit
from tests import _pg

BACKENDS = ["memory", "sqlite", "postgres"]


class Backend(kit.Backend):
    """Opens stores of one of our backends on one database."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.persistent = self.streams_from_storage = name != "memory"
        self.notifies = name == "postgres"
        self.schema = _pg.new_schema() if name == "postgres" else None
        if name == "postgres":
            _pg.require_postgres()

    def cleanup(self) -> None:
        """Drop what this backend created outside ``directory`` (the PostgreSQL schema)."""
        if self.schema is not None:
            _pg.drop_schema(self.schema)

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
        raise AssertionError(self.name)
