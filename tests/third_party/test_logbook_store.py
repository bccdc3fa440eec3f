"""A backend built outside the package on the public kit alone passes the whole conformance suite,
as a third party would run it: one ``backend`` fixture, the suite inherited."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from kern_events.backend import BaseEventStore
from kern_events.codec import Codec
from kern_events.testing import Backend, ConformanceSuite, MultiAppendTests, TruncationTests
from tests.third_party.logbook_store import Logbook, LogbookStore

PUBLIC_MODULES = {
    "kern_events.backend",
    "kern_events.codec",
    "kern_events.records",
    "kern_events.events",
    "kern_events.errors",
}


class LogbookBackend(Backend):
    """Stores on one shared :class:`Logbook`: they see each other's appends, but hold all in memory."""

    name = "logbook"
    streams_from_storage = False
    thread_safe = False  # its appends are atomic on one event loop only (no lock across threads)
    fences_erasure_across_stores = False  # the kit's erasure fence only: it keeps no mark in the logbook

    def __init__(self) -> None:
        self.logbook = Logbook()

    def store(self, *, codec: Codec | None = None) -> LogbookStore:
        return LogbookStore(self.logbook, codec=codec)


class TestLogbookStore(ConformanceSuite):
    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        backend = LogbookBackend()
        yield backend
        backend.cleanup()


class _EarlierLogbookStore(LogbookStore):
    """The logbook store as shipped before it could append to several sessions or truncate: the
    kit's hooks, which refuse rather than fake atomicity."""

    _append_many = BaseEventStore._append_many
    _truncate_before = BaseEventStore._truncate_before


class EarlierLogbookBackend(LogbookBackend):
    """Declares the two capabilities missing, as a third party's backend would."""

    name = "earlier logbook"
    appends_many = False
    truncates = False

    def store(self, *, codec: Codec | None = None) -> LogbookStore:
        return _EarlierLogbookStore(self.logbook, codec=codec)


class TestEarlierLogbookStore(MultiAppendTests, TruncationTests):
    """A backend without the capabilities: their tests are skipped naming them, and the calls raise
    a typed error instead of appending part by part."""

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        backend = EarlierLogbookBackend()
        yield backend
        backend.cleanup()


def test_the_logbook_store_imports_only_public_modules() -> None:
    tree = ast.parse((Path(__file__).parent / "logbook_store.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kern_events")
    }
    assert imported and imported <= PUBLIC_MODULES, imported - PUBLIC_MODULES
