"""Opening a database that is not what it should be: typed errors naming it, and nothing written.

A read-only SQLite store (``read_only=True``) and a PostgreSQL store without DDL
(``create_schema=False``) never create a file, a table or a schema; a file or schema without
kern-events tables is :class:`SchemaMissingError`. A path that cannot be opened at all is
:class:`DatabaseOpenError`, and a failed open leaves no thread and no late "Event loop is closed".
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import asyncpg
import pytest

from kern_events import (
    DatabaseOpenError,
    MessageAdded,
    PostgresEventStore,
    SchemaMissingError,
    SqliteEventStore,
    StorageError,
    StorageUnavailableError,
)
from tests import _pg

ROOT = Path(__file__).parent.parent


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def _aiosqlite_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if "_connection_worker_thread" in thread.name]


def _unopenable(tmp_path: Path, kind: str) -> Path:
    if kind == "directory":
        (tmp_path / "a_directory").mkdir()
        return tmp_path / "a_directory"
    return tmp_path / "no_such_directory" / "kern.db"


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("kind", ["directory", "missing directory"])
async def test_a_path_that_cannot_be_opened_is_a_typed_error_and_leaves_no_thread(
    tmp_path: Path, kind: str, read_only: bool
) -> None:
    path = _unopenable(tmp_path, kind)
    store = SqliteEventStore(path, read_only=read_only)
    with pytest.raises(DatabaseOpenError) as caught:
        await store.append("s", [_message("x")]) if not read_only else await store.current_version("s")
    await store.aclose()
    assert isinstance(caught.value, StorageUnavailableError)
    assert caught.value.database == f"SQLite database {os.fspath(path)!r}"
    assert str(path) in str(caught.value)
    assert _aiosqlite_threads() == [], "the failed connection's thread is gone"
    assert not (tmp_path / "no_such_directory").exists()


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_a_failed_open_prints_nothing_after_the_event_loop_closes(tmp_path: Path) -> None:
    script = """
        import asyncio, sys
        from kern_events import SqliteEventStore, DatabaseOpenError

        async def main():
            try:
                async with SqliteEventStore(sys.argv[1]):
                    pass
            except DatabaseOpenError as exc:
                print(type(exc).__name__)

        asyncio.run(main())
    """
    done = _run(script, str(_unopenable(tmp_path, "directory")))
    assert (done.returncode, done.stdout, done.stderr) == (0, "DatabaseOpenError\n", "")


def test_running_out_of_file_descriptors_is_a_typed_error(tmp_path: Path) -> None:
    script = """
        import asyncio, resource, sys
        from kern_events import SqliteEventStore, StorageUnavailableError

        async def main():
            stores = []
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
            try:
                for n in range(200):
                    store = SqliteEventStore(f"{sys.argv[1]}/{n}.db")
                    stores.append(store)
                    await store.current_version("s")
            except StorageUnavailableError as exc:
                print(type(exc).__name__, "after", n)
            finally:
                for store in stores:
                    await store.aclose()

        asyncio.run(main())
    """
    done = _run(script, str(tmp_path))
    assert done.stderr == ""
    assert done.returncode == 0
    assert done.stdout.startswith("DatabaseOpenError after ")


@pytest.mark.parametrize("content", [b"", None], ids=["empty file", "another application's database"])
async def test_read_only_refuses_a_file_without_kern_events_tables_and_changes_nothing(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "other.db"
    if content is None:
        with sqlite3.connect(path) as other:
            other.execute("CREATE TABLE notes (body TEXT)")
            other.execute("INSERT INTO notes VALUES ('mine')")
        other.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    store = SqliteEventStore(path, read_only=True)
    with pytest.raises(SchemaMissingError) as caught:
        await store.current_version("s")
    await store.aclose()
    assert caught.value.database == f"SQLite database {os.fspath(path)!r}"
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["other.db"]


async def test_read_only_never_creates_a_missing_file(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "missing.db", read_only=True)
    with pytest.raises(DatabaseOpenError, match="does not exist"):
        await store.list_sessions()
    await store.aclose()
    assert _names(tmp_path) == []


async def test_read_only_reads_what_a_writer_wrote_and_refuses_to_write(tmp_path: Path) -> None:
    path = tmp_path / "kern.db"
    async with SqliteEventStore(path) as writer:
        await writer.append("s", [_message("hello")])
    async with SqliteEventStore(path, read_only=True) as reader:
        assert [record.event async for record in reader.read("s")] == [_message("hello")]
        with pytest.raises(StorageError, match="read-only"):
            await reader.append("s", [_message("refused")])
        assert await reader.current_version("s") == 1


@pytest.mark.parametrize("content", [b"this is not a database" * 100, None], ids=["not sqlite", "truncated"])
async def test_a_file_that_is_not_a_good_sqlite_database_is_a_typed_error(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "bad.db"
    if content is None:
        good = tmp_path / "good.db"
        async with SqliteEventStore(good) as store:
            await store.append("s", [_message("x" * 5000)])
        content = good.read_bytes()[:3000]
    path.write_bytes(content)
    for read_only in (True, False):
        store = SqliteEventStore(path, read_only=read_only)
        with pytest.raises(StorageError, match=r"bad\.db"):
            await store.current_version("s")
        await store.aclose()
    assert path.read_bytes() == content


async def test_postgres_without_ddl_refuses_a_missing_schema_and_creates_nothing() -> None:
    _pg.require_postgres()
    schema = _pg.new_schema()
    store = PostgresEventStore(_pg.PG_URL, schema=schema, create_schema=False, pool_size=1)
    try:
        with pytest.raises(SchemaMissingError) as caught:
            await store.current_version("s")
    finally:
        await store.aclose()
        _pg.drop_schema(schema)
    assert caught.value.database == f"PostgreSQL schema {schema!r}"
    assert "kern-events migrate" in str(caught.value)
    connection = await asyncpg.connect(_pg.PG_URL)
    try:
        assert await connection.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema) == 0
    finally:
        await connection.close()
