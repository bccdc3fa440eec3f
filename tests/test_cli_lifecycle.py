"""``kern-events retain`` (dry run, then --apply) and ``kern-events export`` after ``erase_user``, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kern_events.db import BaseDb, PostgresDb, SqliteDb
from kern_events.testing._samples import conversation
from tests import _pg
from tests.test_cli import cli, exported_events, json_lines


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[list[str], Callable[[], BaseDb]]]:
    """The ``--db``/``--schema`` arguments of a fresh database, and how to open a db on it."""
    if request.param == "sqlite":
        path = tmp_path / "cli.db"
        yield ["--db", str(path)], lambda: SqliteDb(path)
        return
    _pg.require_postgres()
    schema = _pg.new_schema()
    try:
        yield ["--db", _pg.PG_URL, "--schema", schema], lambda: PostgresDb(_pg.PG_URL, schema=schema)
    finally:
        _pg.drop_schema(schema)


def _write(open_db: Callable[[], BaseDb], sessions: dict[str, str], runs: int = 3) -> None:
    async def write() -> None:
        async with open_db() as db:
            for session_id, user in sessions.items():
                for batch in conversation(user_id=user, runs=runs):
                    await db.store.append(session_id, batch)

    asyncio.run(write())


def test_retain_lists_first_and_applies_only_when_asked(
    database: tuple[list[str], Callable[[], BaseDb]], capsys: pytest.CaptureFixture[str]
) -> None:
    where, db = database
    _write(db, {"old": "u", "long": "u"})
    code, out, _ = cli(capsys, "retain", *where, "--keep-runs", "1")
    assert code == 0 and "compact  long  (11 events before version 12)" in out and "--apply" in out
    code, out, _ = cli(capsys, "events", "long", *where)
    assert len(json_lines(out)) == 16
    code, out, _ = cli(capsys, "retain", *where, "--keep-runs", "1", "--apply")
    assert code == 0 and "compacted  long" in out
    code, out, _ = cli(capsys, "events", "long", *where)
    assert [line["version"] for line in json_lines(out)] == list(range(12, 17))
    code, out, _ = cli(capsys, "verify", *where)
    assert code == 0
    time.sleep(0.01)
    code, out, _ = cli(capsys, "retain", *where, "--max-age", "30d")
    assert code == 0 and "0 sessions would be deleted" in out
    code, out, err = cli(capsys, "retain", *where, "--max-age", "0")
    assert code == 2 and "force=True" in err
    code, out, _ = cli(capsys, "retain", *where, "--max-age", "0", "--force", "--apply")
    assert code == 0 and "2 sessions deleted" in out
    code, out, _ = cli(capsys, "sessions", *where, "--json")
    assert out.strip() == ""


def test_export_after_erase_user_has_nothing_of_that_user(
    database: tuple[list[str], Callable[[], BaseDb]], capsys: pytest.CaptureFixture[str]
) -> None:
    where, db = database
    _write(db, {"a1": "alice", "a2": "alice", "b1": "bob"}, runs=1)

    async def erase() -> int:
        async with db() as again:
            return len((await again.erase_user("alice")).session_ids)

    assert asyncio.run(erase()) == 2
    code, out, _ = cli(capsys, "export", *where)
    assert code == 0 and {line["session_id"] for line in exported_events(out)} == {"b1"}
    assert "alice" not in out
    code, out, _ = cli(capsys, "sessions", *where, "--json", "--user-id", "alice")
    assert out.strip() == ""


def test_erase_user_lists_first_and_erases_only_with_yes(
    database: tuple[list[str], Callable[[], BaseDb]], capsys: pytest.CaptureFixture[str]
) -> None:
    where, db = database
    _write(db, {"a1": "alice", "a2": "alice", "b1": "bob"}, runs=1)
    events = sum(map(len, conversation(runs=1)))
    code, out, _ = cli(capsys, "erase-user", "alice", *where)
    assert code == 0
    assert "erase  a1" in out and "erase  a2" in out and "b1" not in out
    assert f"2 sessions ({events * 2} events) of user 'alice' would be erased" in out and "--yes" in out
    code, out, _ = cli(capsys, "sessions", *where, "--json", "--user-id", "alice")
    assert len(json_lines(out)) == 2  # the dry run changed nothing
    code, out, _ = cli(capsys, "erase-user", "alice", *where, "--yes")
    assert code == 0 and "erased  a1" in out and "erased  a2" in out
    assert f"2 sessions ({events * 2} events) of user 'alice' erased" in out
    code, out, _ = cli(capsys, "export", *where)
    assert {line["session_id"] for line in exported_events(out)} == {"b1"}
    code, out, _ = cli(capsys, "erase-user", "nobody", *where, "--yes")
    assert code == 0 and "0 sessions (0 events) of user 'nobody' erased" in out
    code, _, err = cli(capsys, "erase-user", "", *where, "--yes")
    assert code == 2 and "user_id" in err


def test_erase_user_with_a_keyring_deletes_the_users_data_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("cryptography", reason="needs kern-events[crypto]")
    from kern_events import Encryption, KeyringFile

    path, keys = tmp_path / "cli.db", tmp_path / "keys.json"

    async def write() -> None:
        async with SqliteDb(path, encryption=Encryption(KeyringFile(keys))) as db:
            for batch in conversation(user_id="alice", runs=1):
                await db.store.append("a1", batch)

    asyncio.run(write())
    assert len(KeyringFile(keys)._load()) == 1
    code, out, _ = cli(capsys, "erase-user", "alice", "--db", str(path), "--keyring", str(keys), "--yes")
    assert code == 0 and "1 data key deleted" in out
    assert KeyringFile(keys)._load() == {}
