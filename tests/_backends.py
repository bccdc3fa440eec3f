"""The backends every conformance test runs against, behind one small factory.

A :class:`Backend` opens stores and dbs on one database; for persistent backends a second store
opened on it sees what the first one wrote (a reopen, as a new process would).
"""

from __future__ import annotations

import os
from pathlib import Path

from kern_events.codec import Codec
from kern_events.db import BaseDb, InMemoryDb, SqliteDb
from kern_events.stores._base import BaseEventStore
from kern_events.stores.memory import InMemoryEventStore
from kern_events.stores.sqlite import SqliteEventStore

BACKENDS = ["memory", "sqlite"]


class Backend:
    """Opens stores of one backend on one database."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.persistent = name != "memory"
        self._memory: InMemoryEventStore | None = None

    @property
    def db_file(self) -> str:
        return os.fspath(self.directory / "kern.db")

    def store(self, *, codec: Codec | None = None) -> BaseEventStore:
        """A new, unopened store on this backend's database."""
        if self.name == "memory":
            return InMemoryEventStore(codec=codec)
        if self.name == "sqlite":
            return SqliteEventStore(self.db_file, codec=codec)
        raise AssertionError(self.name)

    def db(self) -> BaseDb:
        """A new, unopened db on this backend's database."""
        if self.name == "memory":
            return InMemoryDb()
        if self.name == "sqlite":
            return SqliteDb(self.db_file)
        raise AssertionError(self.name)
