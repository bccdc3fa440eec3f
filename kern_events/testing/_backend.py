"""The one thing a backend under test provides: how to open stores (and dbs) on one database."""

from __future__ import annotations

import abc

import pytest

from kern_events.codec import Codec
from kern_events.db import BaseDb
from kern_events.sessions import StoragePolicy
from kern_events.stores._base import MAX_EVENTS_PER_APPEND, BaseEventStore

__all__ = ["Backend"]


class Backend(abc.ABC):
    """One database of the backend under test; the conformance suite's ``backend`` fixture returns one.

    Every store :meth:`store` opens is on this same database. Subclass it, implement :meth:`store`,
    set the capability flags that differ, and put whatever must be dropped afterwards in :meth:`cleanup`.
    """

    name: str = "backend"
    """Shown in failure messages."""
    persistent: bool = True
    """Whether a second store opened by :meth:`store` sees what the first one wrote, as a store in
    another process would (the tests for two writers, reopening and cross-store delivery need it)."""
    streams_from_storage: bool = True
    """Whether reads hold a page, not the whole session, in memory (false for in-memory stores)."""
    inline_limit: int | None = 4096
    """The :attr:`~kern_events.backend.BaseEventStore.inline_limit` the large-payload tests set on the
    stores they open: small, so that chunking is exercised cheaply. ``None`` leaves the backend's own,
    for a backend that stores every payload inline (it does not implement ``_read_chunks``)."""
    notifies: bool = False
    """Whether a store wakes its subscriptions when another store on the database appends (through
    :meth:`~kern_events.store.EventStore.listen`), instead of only by polling."""
    thread_safe: bool = True
    """Whether one store may be used from several threads, each running its own event loop, at once
    (the base class makes opening, closing and change signals safe for that; the backend's own
    writes must be too)."""

    appends_many: bool = True
    """Whether the store implements :meth:`~kern_events.store.EventStore.append_many` (the kit's
    ``_append_many`` hook). If not, the suite skips the tests of that capability, naming it, and
    checks only that the call raises :class:`~kern_events.errors.UnsupportedError`."""
    truncates: bool = True
    """Whether the store implements :meth:`~kern_events.store.EventStore.truncate_before` (the kit's
    ``_truncate_before`` hook); skipped and checked the same way if not."""

    erases_users: bool = True
    """Whether :meth:`~kern_events.store.EventStore.erase_user` works on the store (it does on any
    backend through the kit's default, which lists the user's sessions and deletes each; a backend
    whose listing cannot filter by user, or that overrides ``_erase_sessions`` with less, sets it
    false and the erasure tests skip, naming it)."""

    fences_erasure_across_stores: bool = True
    """Whether an erasure by one store refuses appends from another store on the same database (another
    process) to the erased sessions, through a mark in the database that the append checks in its own
    atomic step (the kit's default fences appends through the erasing store object only)."""

    global_feed: bool = True
    """Whether the store has a global feed (``read_all``, subscriptions; the kit's ``_read_all_page``
    hook). A store whose storage orders nothing across sessions (DynamoDB) leaves it out: the feed's
    tests skip, naming it, and the rest of the suite checks what it can without reading the feed."""

    max_events_per_append: int = MAX_EVENTS_PER_APPEND
    """Most events the store takes in one append (it refuses more with a typed error, as DynamoDB's
    transaction limit makes it): the suite's large batches are cut to this size."""

    large_event_size: int = 5_000_000
    """The size of the suite's "big" events and snapshots (5 MB: what a big channel value reaches);
    a backend whose appends hold less (DynamoDB: 4 MB a transaction) sets what it takes."""

    long_session_events: int = 20_000
    """The events of the "long session" that reads must stream in flat memory, against a short one of a
    tenth of it (read in pages of half the short one, at most the store's page size); a backend that is
    slow to fill (an emulator) sets fewer."""

    chains: bool = True
    """Whether the store keeps the tamper-evidence hash chain (``StoredEvent.chain``, computed with the
    kit's :class:`~kern_events.backend.Chain` in its atomic append); the chain tests skip if not."""

    def require(self, capability: str) -> None:
        """Skip the calling test, naming the capability, if this backend lacks it."""
        if not getattr(self, capability):
            pytest.skip(f"{self.name} lacks the capability {capability!r}")

    @abc.abstractmethod
    def store(self, *, codec: Codec | None = None) -> BaseEventStore:
        """A new, unopened store on this backend's database, with ``codec`` if one is given (the suite
        also sets :attr:`~kern_events.backend.BaseEventStore.read_page_size` to force paging)."""

    def db(
        self,
        *,
        cache_size: int = 0,
        storage_policy: StoragePolicy | None = None,
        checkpoint_every: int | None = 1000,
    ) -> BaseDb:
        """A new, unopened db on a new store of this database (override to test your own db class)."""
        return BaseDb(
            self.store(), cache_size=cache_size, storage_policy=storage_policy, checkpoint_every=checkpoint_every
        )

    def cleanup(self) -> None:  # noqa: B027 - optional hook
        """Drop what this database left outside the test's temporary directory."""
