"""A pytest plugin that runs the OpenAI Agents SDK's own session tests against ``KernEventsSession``.

Their files import ``SQLiteSession``; loaded with ``-p`` before they are collected, this plugin puts
a subclass of ``KernEventsSession`` with the same constructor in its place, so the files run
unchanged. The tests of SQLiteSession's internals (its worker-thread connections, raw sqlite3
fault injection on its tables, its process-local file lock) are skipped as not applicable, each
with its reason. The module has a name of its own: the SDK's test package is also called ``tests``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import agents
import agents.memory
import pytest

from kern_events import InMemoryDb, SqliteDb
from kern_events.adapters.openai_agents import KernEventsSession

_THREADS = "SQLiteSession's internals: its per-thread sqlite3 connections"
_RAW_ROW = "SQLiteSession's internals: writes a raw row into its messages table"
_RAW_SQL = "SQLiteSession's internals: probes or drops its tables with raw sqlite3"
_LOCK = "SQLiteSession's internals: its process-local file lock"
_CONNECTION = "SQLiteSession's internals: replaces its sqlite3 connection"
NOT_APPLICABLE = {
    "test_sqlite_session_close_closes_worker_thread_connections": _THREADS,
    "test_sqlite_session_reaps_connections_from_exited_worker_threads": _THREADS,
    "test_sqlite_session_closes_retired_connections_before_the_next_allocation": _THREADS,
    "test_sqlite_session_keeps_connections_of_live_worker_threads": _THREADS,
    "test_sqlite_session_pop_item_skips_corrupt_most_recent": _RAW_ROW,
    "test_sqlite_session_pop_item_returns_none_after_dropping_only_corrupt_rows": _RAW_ROW,
    "test_sqlite_session_get_items_limit_skips_corrupt_newest_rows": _RAW_ROW,
    "test_sqlite_session_get_items_session_settings_limit_skips_corrupt_rows": _RAW_ROW,
    "test_sqlite_session_file_lock_is_shared_across_instances": _LOCK,
    "test_sqlite_session_failed_add_items_releases_write_lock": _RAW_SQL,
    "test_sqlite_session_failed_clear_session_rolls_back": _RAW_SQL,
    "test_sqlite_session_failed_pop_item_releases_write_lock": _RAW_SQL,
    "test_sqlite_session_rollback_failure_evicts_connection": _CONNECTION,
    "test_sqlite_session_close_retries_quarantined_connection": _CONNECTION,
    "test_sqlite_session_post_commit_cancellation_propagates_after_known_outcome": (
        "SQLiteSession's internals: pauses its sqlite3 connection's commit"
    ),
}
"""Test function name -> why it does not apply to a kern-events session."""


class SQLiteSession(KernEventsSession):
    """``KernEventsSession`` behind SQLiteSession's constructor: a SQLite file, or memory by default."""

    def __init__(
        self,
        session_id: str,
        db_path: str | Path = ":memory:",
        sessions_table: str = "agent_sessions",
        messages_table: str = "agent_messages",
        session_settings: Any = None,
    ) -> None:
        self.db_path = db_path
        self.sessions_table = sessions_table
        self.messages_table = messages_table
        self._db = InMemoryDb() if str(db_path) == ":memory:" else SqliteDb(db_file=db_path)
        super().__init__(session_id, self._db, session_settings=session_settings)

    def close(self) -> None:
        """Close the db this session opened, from synchronous code as SQLiteSession.close() is."""
        super().close()
        done = threading.Thread(target=asyncio.run, args=(self._db.aclose(),))
        done.start()
        done.join()


def pytest_configure(config: pytest.Config) -> None:
    """Put the shim where their test files import ``SQLiteSession`` from, before they are collected."""
    agents.SQLiteSession = SQLiteSession  # type: ignore[attr-defined,misc]
    agents.memory.SQLiteSession = SQLiteSession  # type: ignore[attr-defined,misc]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        reason = NOT_APPLICABLE.get(getattr(item, "originalname", item.name))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"not applicable: {reason}"))
