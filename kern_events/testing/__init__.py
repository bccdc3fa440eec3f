"""The conformance suite: the store's behaviour written once, for our backends and for yours.

A backend is done when it passes all of it. In a test module of your own (pytest, with
pytest-asyncio in ``asyncio_mode = "auto"``), describe how to open stores on one database and
inherit the suite::

    import pytest
    from kern_events.testing import Backend, ConformanceSuite

    class MyBackend(Backend):
        name = "mine"

        def store(self, *, codec=None):
            return MyEventStore(codec=codec)  # a kern_events.backend.BaseEventStore subclass

    class TestMyStore(ConformanceSuite):
        @pytest.fixture
        def backend(self, tmp_path):
            backend = MyBackend()
            yield backend
            backend.cleanup()

Every test of the suite then runs against your store. The suite is also split by area
(:class:`AppendTests`, :class:`ReadTests`, ...) for a backend that builds one area at a time.
Heavy scenarios run small by default; ``KERN_HEAVY_SCALE=n`` makes them ``n`` times larger.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest

pytest.register_assert_rewrite("kern_events.testing.conformance")

from kern_events.testing._backend import Backend  # noqa: E402 - after the assert-rewrite registration
from kern_events.testing._feed import feed_reaches, feed_settled  # noqa: E402
from kern_events.testing.conformance import (  # noqa: E402
    append,
    append_atomicity,
    chain,
    contention,
    db,
    extensions,
    index,
    large,
    lifecycle,
    loops,
    multi_append,
    pause,
    property,
    read,
    runtime,
    runtime_pause,
    sessions,
    skip_existing,
    streaming,
    subscribe,
    truncation,
    validation,
)

__all__ = [
    "AppendTests",
    "Backend",
    "ChainTests",
    "ConformanceSuite",
    "DbTests",
    "ExtensionTests",
    "LifecycleTests",
    "MultiAppendTests",
    "PauseTests",
    "ReadTests",
    "RuntimeTests",
    "SessionTests",
    "SubscriptionTests",
    "TruncationTests",
    "feed_reaches",
    "feed_settled",
    "heavy_scale",
]


def heavy_scale() -> int:
    """How many times larger heavy scenarios run: ``KERN_HEAVY_SCALE`` (default 1)."""
    return max(1, int(os.environ.get("KERN_HEAVY_SCALE", "1")))


class _Suite:
    """What every part of the suite needs besides the ``backend`` fixture the user provides."""

    @pytest.fixture
    def heavy_scale(self) -> int:
        """Multiplier for heavy scenarios (see :func:`heavy_scale`)."""
        return heavy_scale()


def _adopt(suite: type, *modules: ModuleType) -> None:
    """Make the modules' test functions tests of ``suite`` (as static methods: pytest collects them
    with their marks and fixtures, and the module stays plain test code)."""
    for module in modules:
        for name, value in vars(module).items():
            if name.startswith("test_") and callable(value):
                if hasattr(suite, name):
                    raise RuntimeError(f"two conformance tests are named {name}")
                setattr(suite, name, staticmethod(value))


class AppendTests(_Suite):
    """Appends: atomic, ordered, idempotent on retry, guarded by optimistic concurrency; bad input
    refused with a typed error before anything is stored."""


class MultiAppendTests(_Suite):
    """``append_many``: several sessions' appends all or nothing, whole on the global feed (the
    capability ``appends_many`` of :class:`Backend`)."""


class ReadTests(_Suite):
    """Reads of one session and of the global feed, streaming in bounded memory."""


class SubscriptionTests(_Suite):
    """Subscriptions: catch up, then follow live appends without gaps or duplicates."""


class TruncationTests(_Suite):
    """``truncate_before``: a session's prefix removed behind a snapshot, atomically, with reads,
    the feed, views and time travel agreeing (the capability ``truncates`` of :class:`Backend`)."""


class ChainTests(_Suite):
    """Tamper evidence: the hash chain every append leaves verifies intact (the capability ``chains``
    of :class:`Backend`)."""


class LifecycleTests(_Suite):
    """Opening, closing, cancellation, deletion and snapshots; one store used from several event loops."""


class DbTests(_Suite):
    """The storage objects on the store: session views, the index, checkpoints, time travel."""


class SessionTests(_Suite):
    """The session API: writers, retries, ownership, contention."""


class PauseTests(_Suite):
    """Paused runs: pause with requirements, resolve, continue in any process."""


class ExtensionTests(_Suite):
    """Extension event types (``vendor.name`` tags) and session types of an integration's own."""


class RuntimeTests(_Suite):
    """The reference runtimes (Agent, Team, Workflow) recording their turns on the store."""


_adopt(AppendTests, append, append_atomicity, validation, skip_existing)
_adopt(MultiAppendTests, multi_append)
_adopt(ReadTests, read, streaming, large)
_adopt(SubscriptionTests, subscribe)
_adopt(LifecycleTests, lifecycle, loops)
_adopt(TruncationTests, truncation)
_adopt(DbTests, db, index, property)
_adopt(SessionTests, sessions, contention)
_adopt(PauseTests, pause)
_adopt(RuntimeTests, runtime, runtime_pause)
_adopt(ExtensionTests, extensions)
_adopt(ChainTests, chain)


class ConformanceSuite(
    AppendTests,
    MultiAppendTests,
    ReadTests,
    SubscriptionTests,
    LifecycleTests,
    TruncationTests,
    DbTests,
    SessionTests,
    PauseTests,
    RuntimeTests,
    ExtensionTests,
    ChainTests,
):
    """The whole conformance suite; subclass it and provide a ``backend`` fixture (see the module)."""
