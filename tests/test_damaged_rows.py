"""Damaged rows: a reader gets every good record, and a ``CorruptRecordError`` for each bad one in order.

Rows are damaged behind the store's back with raw SQL, as a disk, a bug or a manual edit would. A
reader that meets a :class:`CorruptRecordError` resumes right after it (``from_version=error.version
+ 1`` or ``from_position=error.position + 1``) and misses no good record, wherever the bad row sits in
a page.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from kern_events import CorruptRecordError, DecryptionError, Encryption, EventStore, KeyringFile, MessageAdded, Record
from kern_events.testing import feed_reaches
from tests import _pg
from tests._backends import Backend

SIZE = 30
PAGE = 10
DAMAGED = [1, 5, 11, 12, 20, 21, 30]
"""First row, mid-page, two in a row across a page boundary, and the last row."""

_SQLITE_DAMAGE = [
    "UPDATE kern_events SET event_id = randomblob(3) WHERE session_id = ? AND version = ?",
    "UPDATE kern_events SET data = x'c1ff' WHERE session_id = ? AND version = ?",
    "UPDATE kern_events SET data = CAST(x'ff00fe' AS TEXT) WHERE session_id = ? AND version = ?",
    "UPDATE kern_events SET type = CAST(x'6dff' AS TEXT) WHERE session_id = ? AND version = ?",
]
"""Each damaged SQLite row gets one of these in turn: an id of the wrong length, bytes that are not an
event, a payload stored as TEXT that is not UTF-8, and a type name that is not UTF-8."""


async def _damage(backend: Backend, session_id: str, versions: list[int], payload: bytes = b"\xc1\xff") -> None:
    """Damage rows of ``session_id``: SQLite's in turn as :data:`_SQLITE_DAMAGE` says (or, given
    ``payload``, their data set to it), PostgreSQL's data set to ``payload``."""
    if backend.name == "sqlite" and payload != b"\xc1\xff":
        with sqlite3.connect(backend.db_file) as raw:
            for version in versions:
                raw.execute(
                    "UPDATE kern_events SET data = ? WHERE session_id = ? AND version = ?",
                    (payload, session_id, version),
                )
    elif backend.name == "sqlite":
        with sqlite3.connect(backend.db_file) as raw:
            for n, version in enumerate(versions):
                raw.execute(_SQLITE_DAMAGE[n % len(_SQLITE_DAMAGE)], (session_id, version))
    elif backend.name == "postgres":
        connection = await asyncpg.connect(_pg.PG_URL)
        try:
            await connection.execute(
                f'UPDATE "{backend.schema}".kern_events SET data = $3 WHERE session_id = $1 AND version = ANY($2)',
                session_id,
                versions,
                payload,
            )
        finally:
            await connection.close()
    else:
        pytest.skip("the in-memory store has no storage to damage behind its back")


async def _read_past_damage(store: EventStore, session_id: str) -> tuple[list[int], list[int]]:
    good: list[int] = []
    bad: list[int] = []
    start = 1
    while True:
        try:
            async for record in store.read(session_id, from_version=start):
                good.append(record.version)
        except CorruptRecordError as error:
            assert error.session_id == session_id
            bad.append(error.version)
            start = error.version + 1
        else:
            return good, bad


async def _read_all_past_damage(store: EventStore) -> tuple[list[int], list[CorruptRecordError]]:
    good: list[int] = []
    bad: list[CorruptRecordError] = []
    start = 0
    while True:
        try:
            async for record in store.read_all(from_position=start):
                good.append(record.position)
        except CorruptRecordError as error:
            bad.append(error)
            start = error.position + 1
        else:
            return good, bad


def _messages(session_id: str) -> list[MessageAdded]:
    return [MessageAdded(run_id="r", role="user", content=f"{session_id}-{n}") for n in range(1, SIZE + 1)]


async def test_a_reader_gets_every_good_record_and_an_error_for_each_damaged_one(backend: Backend) -> None:
    written: list[int] = []
    async with backend.store() as store:
        for start in range(0, SIZE, 3):  # two sessions interleaved in the global feed
            for session_id in ("a", "b"):
                written += (await store.append(session_id, _messages(session_id)[start : start + 3])).positions
    await _damage(backend, "a", DAMAGED)
    async with backend.store() as store:
        store.read_page_size = PAGE  # type: ignore[attr-defined]
        good, bad = await _read_past_damage(store, "a")
        assert bad == DAMAGED
        assert good == [version for version in range(1, SIZE + 1) if version not in DAMAGED]
        assert await _read_past_damage(store, "b") == (list(range(1, SIZE + 1)), [])

        await feed_reaches(store, written[-1])
        positions, errors = await _read_all_past_damage(store)
        assert [(error.session_id, error.version) for error in errors] == [("a", version) for version in DAMAGED]
        assert len(positions) == 2 * SIZE - len(DAMAGED)
        assert sorted([*positions, *(error.position for error in errors)]) == written


async def test_a_payload_that_does_not_decode_ends_a_read_at_its_row_wherever_it_sits_in_a_page(
    backend: Backend,
) -> None:
    """Bytes of a known type that are no event (not a chunk manifest either: that has a path of its
    own) end a read at their row, after every good row before it: mid-page, as the look-ahead row a
    full page asks for, and in a tail read whose pages grow as it goes back."""
    async with backend.store() as store:
        await store.append("a", _messages("a"))
    await _damage(backend, "a", [PAGE + 1, 25], payload=b"\x92\xc0")  # an array of two with one item
    async with backend.store() as store:
        store.read_page_size = PAGE  # type: ignore[attr-defined]
        assert await _read_past_damage(store, "a") == (
            [version for version in range(1, SIZE + 1) if version not in (PAGE + 1, 25)],
            [PAGE + 1, 25],
        )
        tail: list[int] = []
        with pytest.raises(CorruptRecordError) as caught:
            await _collect(store.read("a", backwards=True, limit=8), tail)
        assert (tail, caught.value.version) == ([30, 29, 28, 27, 26], 25)
        assert [record.version async for record in store.read("a", backwards=True, limit=5)] == [30, 29, 28, 27, 26]
        with pytest.raises(CorruptRecordError) as caught:
            _ = [record async for record in store.read("a", from_version=3, limit=PAGE)]
        assert caught.value.version == PAGE + 1
        # a read limited to the rows before the damaged one asks no look-ahead row: it never meets it
        assert [record.version async for record in store.read("a", limit=PAGE)] == list(range(1, PAGE + 1))


async def test_a_sealed_row_that_does_not_open_ends_a_read_at_its_row_after_every_good_row_before_it(
    backend: Backend, tmp_path: Path
) -> None:
    """A sealed payload moved to another row (its associated data no longer matches) is a
    :class:`DecryptionError` naming that row, met where it sits in the page: every good row before it
    is read first (PostgreSQL opens the rows of a session read as it decodes them straight from the
    driver; SQLite, stored events)."""
    pytest.importorskip("cryptography", reason="needs the crypto extra")
    keys = KeyringFile(tmp_path / "keys.json")
    async with backend.store() as store:
        store.encryption = Encryption(keys)  # type: ignore[attr-defined]
        await store.append("a", _messages("a"))
        (third,) = await store._read_page("a", 3, 3, 1, False, None)  # type: ignore[attr-defined]
    await _damage(backend, "a", [PAGE + 3, 25], payload=third.data)
    async with backend.store() as store:
        store.encryption = Encryption(keys)  # type: ignore[attr-defined]
        store.read_page_size = PAGE  # type: ignore[attr-defined]
        read: list[int] = []
        with pytest.raises(DecryptionError) as caught:
            await _collect(store.read("a", from_version=PAGE + 1), read)
        assert (read, caught.value.session_id, caught.value.version) == ([PAGE + 1, PAGE + 2], "a", PAGE + 3)
        assert await _read_past_damage(store, "a") == (
            [version for version in range(1, SIZE + 1) if version not in (PAGE + 3, 25)],
            [PAGE + 3, 25],
        )
        tail: list[int] = []
        with pytest.raises(DecryptionError) as caught:
            await _collect(store.read("a", backwards=True, limit=8), tail)
        assert (tail, caught.value.version) == ([30, 29, 28, 27, 26], 25)


async def _collect(records: AsyncIterator[Record], into: list[int]) -> None:
    async for record in records:
        into.append(record.version)
