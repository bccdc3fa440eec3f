"""Encryption at rest against tampering with the stored rows themselves (SQLite, edited with the
sqlite3 module), and crypto-shredding reaching a backup copy of the database."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from kern_events import (
    DecryptionError,
    Encryption,
    ErasedError,
    KeyringFile,
    MessageAdded,
    SessionStarted,
    SqliteDb,
)
from kern_events.encryption import user_key_id

pytest.importorskip("cryptography", reason="needs the crypto extra")


async def _write(path: Path, keys: KeyringFile) -> None:
    async with SqliteDb(path, encryption=Encryption(keys)) as db:
        for session_id, user in (("a", "alice"), ("b", "bob")):
            await db.store.append(session_id, [SessionStarted(session_type="agent", user_id=user)])
            await db.store.append(
                session_id, [MessageAdded(run_id="r", role="user", content=f"{user} {n}") for n in range(2)]
            )


def _edit(path: Path, statement: str) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute(statement)
        connection.commit()
    finally:
        connection.close()


async def _read(path: Path, keys: KeyringFile, session_id: str) -> list[object]:
    async with SqliteDb(path, encryption=Encryption(keys)) as db:
        return [record.event async for record in db.store.read(session_id)]


@pytest.mark.parametrize(
    ("statement", "version"),
    [
        # one byte of the ciphertext changed
        (
            "UPDATE kern_events SET data = CAST(substr(data, 1, length(data) - 1) || x'00' AS BLOB) "
            "WHERE session_id = 'a' AND version = 2",
            2,
        ),
        # two rows of one session swap payloads
        (
            "UPDATE kern_events SET data = (SELECT data FROM kern_events WHERE session_id = 'a' AND version = 3) "
            "WHERE session_id = 'a' AND version = 2",
            2,
        ),
        # a row takes the payload of the same version of another user's session (another key too)
        (
            "UPDATE kern_events SET data = (SELECT data FROM kern_events WHERE session_id = 'b' AND version = 3) "
            "WHERE session_id = 'a' AND version = 3",
            3,
        ),
        # the envelope's type changed under the payload
        ("UPDATE kern_events SET type = 'message_added' WHERE session_id = 'a' AND version = 1", 1),
    ],
    ids=["flipped byte", "swapped rows", "other users row", "changed type"],
)
async def test_a_modified_or_moved_ciphertext_is_a_typed_error_naming_session_and_version(
    tmp_path: Path, statement: str, version: int
) -> None:
    keys = KeyringFile(tmp_path / "keys.json")
    await _write(tmp_path / "s.db", keys)
    _edit(tmp_path / "s.db", statement)
    with pytest.raises(DecryptionError) as raised:
        await _read(tmp_path / "s.db", keys, "a")
    assert (raised.value.session_id, raised.value.version) == ("a", version)
    assert len(await _read(tmp_path / "s.db", keys, "b")) == 3


async def test_a_deleted_key_shreds_the_users_events_in_a_backup_too(tmp_path: Path) -> None:
    keys = KeyringFile(tmp_path / "keys.json")
    await _write(tmp_path / "s.db", keys)
    shutil.copy(tmp_path / "s.db", tmp_path / "backup.db")
    async with SqliteDb(tmp_path / "s.db", encryption=Encryption(keys)) as db:
        report = await db.erase_user("alice")
        assert (report.session_ids, report.keys_deleted) == (("a",), 1)
    async with SqliteDb(tmp_path / "backup.db", encryption=Encryption(KeyringFile(tmp_path / "keys.json"))) as backup:
        assert {info.session_id for info in await backup.get_sessions()} == {"a", "b"}
        with pytest.raises(ErasedError) as raised:
            await backup.get_session("a")
        assert raised.value.session_id == "a"
        assert len((await backup.get_session("b")).runs) == 0
        assert [record.version async for record in backup.store.read("b")] == [1, 2, 3]


async def test_the_keyring_file_keeps_keys_across_instances_and_forgets_deleted_ones(tmp_path: Path) -> None:
    first = KeyringFile(tmp_path / "keys.json")
    key = await first.create_key(user_key_id("u"))
    assert await first.create_key(user_key_id("u")) == key
    again = KeyringFile(tmp_path / "keys.json")
    assert await again.get_key(user_key_id("u")) == key
    assert await again.delete_key(user_key_id("u"))
    assert not await again.delete_key(user_key_id("u"))
    assert await KeyringFile(tmp_path / "keys.json").get_key(user_key_id("u")) is None
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "statement",
    [
        # the sealed payload cut short inside its nonce
        "UPDATE kern_events SET data = CAST(substr(data, 1, 50) AS BLOB) WHERE session_id = 'a' AND version = 2",
        # the format byte changed to one this release does not know
        "UPDATE kern_events SET data = CAST(substr(data, 1, 1) || x'09' || substr(data, 3) AS BLOB) "
        "WHERE session_id = 'a' AND version = 2",
    ],
    ids=["truncated", "unknown format"],
)
async def test_a_damaged_sealed_header_is_a_typed_error_naming_session_and_version(
    tmp_path: Path, statement: str
) -> None:
    keys = KeyringFile(tmp_path / "keys.json")
    await _write(tmp_path / "s.db", keys)
    _edit(tmp_path / "s.db", statement)
    with pytest.raises(DecryptionError) as raised:
        await _read(tmp_path / "s.db", keys, "a")
    assert (raised.value.session_id, raised.value.version) == ("a", 2)


async def test_rows_written_before_encryption_was_on_read_beside_sealed_ones(tmp_path: Path) -> None:
    """A log that had encryption turned on half way: one page holds clear rows, then sealed rows of
    two keys (the session's user, and another user's session in the global feed)."""
    async with SqliteDb(tmp_path / "s.db") as db:
        await db.store.append("a", [SessionStarted(session_type="agent", user_id="alice")])
        await db.store.append("a", [MessageAdded(run_id="r", role="user", content="clear")])
    keys = KeyringFile(tmp_path / "keys.json")
    async with SqliteDb(tmp_path / "s.db", encryption=Encryption(keys)) as db:
        await db.store.append("b", [SessionStarted(session_type="agent", user_id="bob")])
        for n in range(3):
            await db.store.append("a", [MessageAdded(run_id="r", role="user", content=f"sealed {n}")])
            await db.store.append("b", [MessageAdded(run_id="r", role="user", content=f"bob {n}")])
    connection = sqlite3.connect(tmp_path / "s.db")
    try:
        first_bytes = [row[0] for row in connection.execute("SELECT substr(data, 1, 1) FROM kern_events")]
    finally:
        connection.close()
    assert first_bytes.count(b"\xc7") == 7
    async with SqliteDb(tmp_path / "s.db", encryption=Encryption(keys)) as db:
        contents = [getattr(record.event, "content", None) async for record in db.store.read("a")]
        assert contents == [None, "clear", "sealed 0", "sealed 1", "sealed 2"]
        feed = [(record.session_id, getattr(record.event, "content", None)) async for record in db.store.read_all()]
        assert feed == [
            ("a", None),
            ("a", "clear"),
            ("b", None),
            *[pair for n in range(3) for pair in (("a", f"sealed {n}"), ("b", f"bob {n}"))],
        ]
