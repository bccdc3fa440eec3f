"""Tamper evidence on the SQL backends: each kind of tampering, done behind the store's back with raw
SQL, is reported by ``verify`` at the session and version where it happened; a key makes the chain
unforgeable; rows of a schema-2 database verify as unchained; a large untouched log verifies clean."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from kern_events import MessageAdded, PostgresDb, SqliteDb
from kern_events.backend import BaseEventStore, Chain, ChainProblem
from kern_events.cli import main
from kern_events.stores.memory import InMemoryEventStore
from kern_events.stores.sqlite import SqliteEventStore
from kern_events.testing import heavy_scale
from tests import _pg

Tamper = Callable[[str], Awaitable[None]]
"""Runs raw SQL (with ``{t}`` for the events table, ``{s}`` for the session table)."""

KEY = b"k" * 32


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


@asynccontextmanager
async def _sqlite(tmp_path: Path, key: bytes | None = None) -> AsyncIterator[tuple[SqliteDb, Tamper]]:
    path = tmp_path / "chain.db"

    async def tamper(sql: str) -> None:
        with sqlite3.connect(path) as db:
            db.executescript(sql.format(t="kern_events", s="kern_sessions"))

    async with SqliteDb(path, chain_key=key) as db:
        yield db, tamper


@asynccontextmanager
async def _postgres(schema: str, key: bytes | None = None) -> AsyncIterator[tuple[PostgresDb, Tamper]]:
    async def tamper(sql: str) -> None:
        connection = await asyncpg.connect(_pg.PG_URL)
        try:
            await connection.execute(sql.format(t=f'"{schema}".kern_events', s=f'"{schema}".kern_sessions'))
        finally:
            await connection.close()

    async with PostgresDb(_pg.PG_URL, schema=schema, pool_size=2, chain_key=key) as db:
        yield db, tamper


async def _five(db: SqliteDb | PostgresDb) -> None:
    await db.store.append("s", [_message("one"), _message("two")])
    for n in range(3, 6):
        await db.store.append("s", [_message(f"m{n}")], expected_version=n - 1)
    await db.store.append("other", [_message("untouched")])
    assert (await db.verify()).ok


def _found(problems: list[ChainProblem]) -> list[tuple[str, int, str]]:
    return [(problem.session_id, problem.version, problem.kind) for problem in problems]


TAMPERING: dict[str, tuple[str, list[tuple[str, int, str]]]] = {
    "edited payload": (
        "UPDATE {t} SET data = data || X'00' WHERE session_id = 's' AND version = 3",
        [("s", 3, "edited")],
    ),
    "deleted event": ("DELETE FROM {t} WHERE session_id = 's' AND version = 3", [("s", 3, "missing")]),
    "reordered events": (
        "UPDATE {t} SET version = -1 WHERE session_id = 's' AND version = 2; "
        "UPDATE {t} SET version = 2 WHERE session_id = 's' AND version = 3; "
        "UPDATE {t} SET version = 3 WHERE session_id = 's' AND version = -1",
        [("s", 2, "moved"), ("s", 3, "moved")],
    ),
    "re-inserted event": (  # taken out at version 2 and put back as version 6, index moved to match
        "UPDATE {t} SET version = 6 WHERE session_id = 's' AND version = 2; "
        "UPDATE {s} SET version = 6 WHERE session_id = 's'",
        [("s", 2, "missing"), ("s", 6, "moved")],
    ),
    "truncated tail": ("DELETE FROM {t} WHERE session_id = 's' AND version >= 4", [("s", 4, "truncated")]),
    "removed hash": ("UPDATE {t} SET chain = NULL WHERE session_id = 's' AND version = 4", [("s", 4, "unchained")]),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
async def test_tampering_with_a_sqlite_file_is_reported_where_it_happened(tmp_path: Path, kind: str) -> None:
    sql, expected = TAMPERING[kind]
    async with _sqlite(tmp_path) as (db, tamper):
        await _five(db)
        await tamper(sql)
        assert _found((await db.verify()).problems) == expected


@pytest.mark.parametrize("kind", list(TAMPERING))
async def test_tampering_with_a_postgres_schema_is_reported_where_it_happened(schema: str, kind: str) -> None:
    sql, expected = TAMPERING[kind]
    async with _postgres(schema) as (db, tamper):
        await _five(db)
        await tamper(sql.replace("X'00'", "'\\x00'::bytea"))
        assert _found((await db.verify()).problems) == expected


async def test_without_the_key_a_rewritten_chain_is_caught(tmp_path: Path) -> None:
    """Whoever can write the database can recompute plain SHA-256 hashes after an edit; not HMACs."""
    async with _sqlite(tmp_path, key=KEY) as (db, tamper):
        await _five(db)
        forger = InMemoryEventStore()  # recomputes the chain as someone without the key would
        events = [stored async for stored in _stored(db.store, "s")]
        edited = [events[0], events[1].__class__(**{**_fields(events[1]), "data": events[1].data + b"\x00"})]
        previous = forger.chain.genesis("s")
        hashes = []
        for stored in [*edited, *events[2:]]:
            previous = forger.chain.of(previous, stored)
            hashes.append(previous)
        statements = [f"UPDATE {{t}} SET data = X'{edited[1].data.hex()}' WHERE session_id = 's' AND version = 2"]
        statements += [
            f"UPDATE {{t}} SET chain = X'{hash_.hex()}' WHERE session_id = 's' AND version = {version}"
            for version, hash_ in enumerate(hashes, start=1)
        ]
        await tamper("; ".join(statements))
        assert ("s", 1, "edited") in _found((await db.verify()).problems)
    async with SqliteDb(tmp_path / "chain.db") as unkeyed:  # and without the key the db says so too
        assert not (await unkeyed.verify()).ok


async def _stored(store: object, session_id: str) -> AsyncIterator[object]:
    assert isinstance(store, BaseEventStore)
    for stored in await store._read_page(session_id, 1, None, 1000, False, None):
        yield stored


def _fields(stored: object) -> dict[str, object]:
    return {name: getattr(stored, name) for name in stored.__struct_fields__}  # type: ignore[attr-defined]


async def test_rows_of_a_schema_2_database_verify_as_unchained_and_the_chain_starts_after(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as raw:
        raw.executescript((Path(__file__).parent / "fixtures" / "schema_v2_sqlite.sql").read_text())
    async with SqliteDb(path) as db:
        await db.store.append("session-0", [_message("chained")], expected_version=14)
        report = await db.verify()
    assert report.ok and report.unchained == 40 and report.events == 41
    with sqlite3.connect(path) as raw:  # a hash removed where the chain had begun is not "legacy"
        raw.execute("UPDATE kern_events SET chain = NULL WHERE session_id = 'session-0' AND version = 15")
    async with SqliteDb(path) as db:
        assert (await db.verify()).unchained == 41


def test_kern_events_verify_reports_a_tampered_sqlite_file_by_session_and_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cli.db"

    async def write() -> None:
        async with SqliteDb(path) as db:
            await _five(db)

    _pg.run_sync(write)
    assert main(["verify", "--db", str(path)]) == 0
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE kern_events SET data = data || X'00' WHERE session_id = 's' AND version = 3")
    assert main(["verify", "--db", str(path)]) == 1
    out = capsys.readouterr().out
    assert "session 's' version 3: edited" in out


@pytest.mark.heavy
async def test_an_untouched_log_of_100k_events_verifies_clean(tmp_path: Path) -> None:
    """100,000 events with ``KERN_HEAVY_SCALE=10``; 10,000 by default."""
    total = 10_000 * heavy_scale()
    store = SqliteEventStore(tmp_path / "big.db", synchronous="NORMAL")
    async with store:
        for session in range(total // 1000):
            for start in range(0, 1000, 250):
                await store.append(f"s{session}", [_message(f"m{start + n}") for n in range(250)])
        counted: list[int] = []
        report = await store.verify(progress=counted.append)
    assert report.ok and report.events == total and sum(counted) == total


def test_kern_events_verify_takes_the_chain_key_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keyed.db"

    async def write() -> None:
        async with SqliteDb(path, chain_key=KEY) as db:
            await _five(db)

    _pg.run_sync(write)
    assert main(["verify", "--db", str(path)]) == 1  # without the key nothing checks out
    monkeypatch.setenv("KERN_EVENTS_CHAIN_KEY", KEY.hex())
    capsys.readouterr()
    assert main(["verify", "--db", str(path)]) == 0
    assert capsys.readouterr().out.endswith(": ok\n")
    monkeypatch.setenv("KERN_EVENTS_CHAIN_KEY", "not hex")
    assert main(["verify", "--db", str(path)]) == 2
    assert "KERN_EVENTS_CHAIN_KEY" in capsys.readouterr().err


# -- each append keeps one hash, on its last event ----------------------------------------------------


async def _appends(db: SqliteDb | PostgresDb) -> None:
    """Two appends of three events and one of one: versions 1-3, 4-6 and 7."""
    await db.store.append("s", [_message(f"m{n}") for n in range(1, 4)])
    await db.store.append("s", [_message(f"m{n}") for n in range(4, 7)], expected_version=3)
    await db.store.append("s", [_message("m7")], expected_version=6)


Opener = Callable[[], AbstractAsyncContextManager[tuple[SqliteDb | PostgresDb, Tamper]]]


@pytest.fixture(params=["sqlite", "postgres"])
def sql_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Opener]]:
    """The backend's name and a way to open a fresh database of it (and tamper with it)."""
    if request.param == "sqlite":
        yield "sqlite", lambda: _sqlite(tmp_path)
        return
    _pg.require_postgres()
    schema = _pg.new_schema()
    try:
        yield "postgres", lambda: _postgres(schema)
    finally:
        _pg.drop_schema(schema)


def _appended_zero(backend: str) -> str:
    return "X'00'" if backend == "sqlite" else "'\\x00'::bytea"


async def test_an_append_keeps_its_last_hash_only_and_the_log_verifies(
    sql_db: tuple[str, Opener],
) -> None:
    async with sql_db[1]() as (db, _):
        await _appends(db)
        kept = [stored.chain is not None async for stored in _stored(db.store, "s")]
        assert kept == [False, False, True, False, False, True, True]
        report = await db.verify()
        assert report.ok and report.events == 7 and report.unchained == 0


async def test_an_edit_in_the_middle_of_an_append_is_named_by_its_appends_versions(
    sql_db: tuple[str, Opener],
) -> None:
    async with sql_db[1]() as (db, tamper):
        await _appends(db)
        await tamper(
            f"UPDATE {{t}} SET data = data || {_appended_zero(sql_db[0])} WHERE session_id = 's' AND version = 5"
        )
        problems = (await db.verify()).problems
        assert _found(problems) == [("s", 4, "edited")]
        assert "one of versions 4-6 does not match its hash" in problems[0].detail


async def test_a_log_with_a_hash_on_every_event_still_verifies_truncates_and_names_edits_exactly(
    sql_db: tuple[str, Opener], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What releases before one hash per append wrote (``Chain.kept`` keeping every hash)."""
    async with sql_db[1]() as (db, tamper):
        with monkeypatch.context() as patch:
            patch.setattr(Chain, "kept", staticmethod(list))
            await _appends(db)
        assert [stored.chain is not None async for stored in _stored(db.store, "s")] == [True] * 7
        await db.store.append("s", [_message("m8"), _message("m9")], expected_version=7)  # then this release
        assert (await db.verify()).ok
        await db.store.truncate_before("s", 3)
        assert (await db.verify()).ok
        await tamper(
            f"UPDATE {{t}} SET data = data || {_appended_zero(sql_db[0])} WHERE session_id = 's' AND version = 5"
        )
        assert _found((await db.verify()).problems) == [("s", 5, "edited")]


@pytest.mark.parametrize("cut", [2, 3, 5, 6])
async def test_a_cut_in_the_middle_of_an_append_keeps_the_chain_verifiable(tmp_path: Path, cut: int) -> None:
    """The truncation marker keeps the hash of the last event removed, recomputed if it kept none
    (the first or a middle event of an append, at the log's start or after another append)."""
    async with _sqlite(tmp_path) as (db, _):
        await _appends(db)
        await db.store.truncate_before("s", cut)
        await db.store.append("s", [_message("after the cut"), _message("and more")], expected_version=7)
        report = await db.verify()
        assert report.problems == [] and report.events == 9 - (cut - 1)
