"""Export and import (#13.2): a file any backend restores with ids, versions, recorded times and
chain hashes kept; bad files refused by line with nothing stored; constant memory; the CLI round
trip SQLite -> PostgreSQL -> SQLite."""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import sqlite3
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from kern_events import (
    BaseDb,
    ExportFileError,
    InMemoryDb,
    PostgresDb,
    SessionAppend,
    SqliteDb,
    export_events,
    import_events,
)
from kern_events.backend import Chain
from kern_events.events import MessageAdded, SessionRenamed
from kern_events.records import Record
from kern_events.testing import feed_settled
from kern_events.testing._samples import conversation, every_event_type
from tests import _pg
from tests.test_cli import cli, json_lines

Opener = Callable[[], BaseDb]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """How to open a fresh empty database of each backend (an async context manager factory)."""
    if request.param == "memory":
        shared = InMemoryDb()

        @asynccontextmanager
        async def memory() -> AsyncIterator[BaseDb]:
            yield shared  # one store for the whole test: closing it would lose the data

        yield memory
        return
    if request.param == "sqlite":
        yield lambda: SqliteDb(tmp_path / "target.db")
        return
    _pg.require_postgres()
    schema = _pg.new_schema()
    try:
        yield lambda: PostgresDb(_pg.PG_URL, schema=schema)
    finally:
        _pg.drop_schema(schema)


async def _fill(db: BaseDb, sessions: int = 3, runs: int = 2) -> None:
    """Sessions of several appends each (so several recorded times), interleaved, one renamed, one
    with every event type."""
    for run in range(runs):
        for number in range(sessions):
            batches = conversation(user_id=f"user{number % 2}", runs=runs)
            if run == 0:
                await db.store.append(f"s{number}", batches[0])
            for batch in batches[1:]:
                await db.store.append(f"s{number}", batch)
    await db.store.append("s0", [SessionRenamed(name="renamed")])
    await db.store.append("every", every_event_type())


async def _export_to(db: BaseDb, path: Path, **filters: Any) -> None:
    with path.open("wb") as file:
        async for line in export_events(db, **filters):
            file.write(line)


async def _records(db: BaseDb) -> dict[str, list[tuple[Any, ...]]]:
    """Every session's records without positions, and its index row."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    for info in await db.store.list_sessions(limit=None):
        rows: list[Record] = [record async for record in db.store.read(info.session_id)]
        found[info.session_id] = [(r.version, r.event_id, r.recorded_at, r.event) for r in rows] + [(info,)]
    return found


async def _views(db: BaseDb) -> dict[str, Any]:
    return {info.session_id: await db.get_session(info.session_id) for info in await db.store.list_sessions()}


def test_a_restored_database_has_the_same_records_index_views_and_chain(
    target: Callable[[], Any], tmp_path: Path
) -> None:
    async def check() -> None:
        path = tmp_path / "all.jsonl"
        async with SqliteDb(tmp_path / "source.db") as source:
            await _fill(source)
            await _export_to(source, path)
            records, views = await _records(source), await _views(source)
            chains = [stored.chain async for stored in source.store.read_stored("s1")]  # type: ignore[attr-defined]
        async with target() as db:
            report = await import_events(db, path)
            assert (report.sessions, report.events) == (4, sum(len(rows) - 1 for rows in records.values()))
            assert await _records(db) == records
            assert await _views(db) == views
            assert (await db.verify()).ok
            assert [stored.chain async for stored in db.store.read_stored("s1")] == chains
            # positions keep each session's order
            positions = [record.position async for record in db.store.read("s1")]
            assert positions == sorted(positions)

    asyncio.run(check())


async def _feed(db: BaseDb) -> list[tuple[str, int]]:
    """The whole global feed, once it holds back none of the store's committed events: on a shared
    PostgreSQL server another client's open transaction holds the fence (and so ``read_all``) back."""
    await feed_settled(db.store)
    return [(record.session_id, record.version) async for record in db.store.read_all()]


def test_a_round_trip_keeps_the_global_order_of_interleaved_sessions(target: Callable[[], Any], tmp_path: Path) -> None:
    """Positions are renumbered by the target, but the global feed gives the events in the source's order."""

    async def check() -> None:
        path = tmp_path / "all.jsonl"
        async with SqliteDb(tmp_path / "source.db") as source:
            for turn in range(5):  # s-b is created first, s-a appends last: neither oldest-first nor by id
                for session in ("s-b", "s-c", "s-a")[: 1 + turn % 3]:
                    await source.store.append(session, [MessageAdded(run_id="r", role="user", content=f"{turn}")])
            await source.store.append_many(
                [
                    SessionAppend("s-c", [MessageAdded(run_id="r", role="user", content="together")]),
                    SessionAppend("s-a", [MessageAdded(run_id="r", role="user", content="together")]),
                ]
            )
            await _export_to(source, path)
            order = await _feed(source)
            await _export_to(source, tmp_path / "some.jsonl", session_ids=["s-a", "s-b"])
        assert len({session for session, _ in order}) == 3 and order != sorted(order)
        async with target() as db:
            await import_events(db, path)
            assert await _feed(db) == order
        async with InMemoryDb() as db:  # a filtered export keeps the order among the chosen sessions
            await import_events(db, tmp_path / "some.jsonl")
            assert await _feed(db) == [(session, version) for session, version in order if session != "s-c"]

    asyncio.run(check())


def test_payloads_stored_out_of_line_export_whole_from_the_global_feed(tmp_path: Path) -> None:
    """The feed gives manifests in place of large payloads: export puts each payload back together."""

    async def check() -> None:
        path = tmp_path / "large.jsonl"
        async with SqliteDb(tmp_path / "source.db") as source:
            source.store.inline_limit = 4096  # type: ignore[attr-defined]
            for turn in range(3):
                for session in ("big-b", "big-a"):
                    content = f"{session} {turn} " * 2000  # about 20 kB: stored in chunks
                    await source.store.append(session, [MessageAdded(run_id="r", role="user", content=content)])
            await _export_to(source, path)
            records, order = await _records(source), await _feed(source)
        async with SqliteDb(tmp_path / "target.db") as target:
            target.store.inline_limit = 4096  # type: ignore[attr-defined]  # the same stored forms, so the same chain
            await import_events(target, path)
            assert await _feed(target) == order
            assert await _records(target) == records
            assert (await target.verify()).ok

    asyncio.run(check())


def test_an_append_mixing_payloads_stored_inline_and_out_of_line_imports_with_its_one_hash(tmp_path: Path) -> None:
    """The import recomputes an append's hash through each event in the form its source stored it
    (inline, or behind a manifest), though the file holds every payload whole; the forms it tries
    grow with the payloads' sizes, not as two to the power of their number (here 2**40)."""

    async def check() -> None:
        path = tmp_path / "mixed.jsonl"
        async with SqliteDb(tmp_path / "source.db") as source:
            source.store.inline_limit = 4096  # type: ignore[attr-defined]
            sizes = [10, 3000, 10, 2500, 3000] + [1000 + 37 * n for n in range(40)]  # "word " * size bytes
            await source.store.append(
                "mixed", [MessageAdded(run_id="r", role="user", content="word " * size) for size in sizes]
            )
            await _export_to(source, path)
            records = await _records(source)
        async with SqliteDb(tmp_path / "target.db") as target:
            target.store.inline_limit = 4096  # type: ignore[attr-defined]  # the same stored forms, so the same chain
            await import_events(target, path)
            assert await _records(target) == records
            assert (await target.verify()).ok

    asyncio.run(check())


def test_an_export_behind_the_postgresql_fence_has_the_held_back_events_in_position_order(tmp_path: Path) -> None:
    """Events committed before the export began but held back from the global feed by another open
    transaction are not left out: they follow the rest, still in position order."""
    _pg.require_postgres()
    schema = _pg.new_schema()

    async def check() -> None:
        holder = await asyncpg.connect(_pg.PG_URL)
        try:
            async with PostgresDb(_pg.PG_URL, schema=schema) as db:
                for session in ("early", "late"):
                    await db.store.append(session, [MessageAdded(run_id="r", role="user", content="seen")])
                transaction = holder.transaction()
                await transaction.start()
                await holder.fetchval("SELECT pg_current_xact_id()")  # an open transaction holds the fence
                for session in ("late", "early", "late", "new"):
                    await db.store.append(session, [MessageAdded(run_id="r", role="user", content="held back")])
                path = tmp_path / "fenced.jsonl"
                await _export_to(db, path)
                await transaction.rollback()
                direct = [record for session in ("early", "late", "new") async for record in db.store.read(session)]
            order = [(record.session_id, record.version) for record in sorted(direct, key=lambda r: r.position)]
            lines = [json.loads(line) for line in path.read_text().splitlines()[1:-1]]
            assert [(line["session_id"], line["version"]) for line in lines] == order
            async with InMemoryDb() as target:
                await import_events(target, path)
                assert await _feed(target) == order
        finally:
            await holder.close()

    try:
        asyncio.run(check())
    finally:
        _pg.drop_schema(schema)


def test_export_filters_by_session_user_and_time(tmp_path: Path) -> None:
    async def check() -> None:
        async with InMemoryDb() as db:
            await _fill(db)
            path = tmp_path / "some.jsonl"

            async def sessions(**filters: Any) -> list[str]:
                await _export_to(db, path, **filters)
                lines = [json.loads(line) for line in path.read_text().splitlines()]
                assert lines[0]["kind"] == "header" and lines[-1]["kind"] == "end"
                return list(dict.fromkeys(line["session_id"] for line in lines[1:-1]))

            assert await sessions() == ["s0", "s1", "s2", "every"]
            assert await sessions(session_ids=["s2", "s0", "s2"]) == ["s0", "s2"], "in global order, not as given"
            assert await sessions(user_id="user1") == ["s1"]
            latest = (await db.store.get_session_info("every")).updated_at  # type: ignore[union-attr]
            assert await sessions(updated_since=latest) == ["every"]

    asyncio.run(check())


def test_an_existing_session_is_refused_unless_skipped(tmp_path: Path) -> None:
    async def check() -> None:
        path = tmp_path / "all.jsonl"
        async with InMemoryDb() as source:
            await _fill(source)
            await _export_to(source, path)
        async with InMemoryDb() as db:
            await db.store.append("s1", [MessageAdded(run_id="r", role="user", content="mine")])
            with pytest.raises(ExportFileError, match=r"session 's1' already exists in the target \(version 1\)"):
                await import_events(db, path)
            assert [info.session_id for info in await db.store.list_sessions()] == ["s1"], "nothing imported"
            report = await import_events(db, path, skip_existing=True)
            assert report.skipped == ("s1",) and report.sessions == 3
            assert await db.store.current_version("s1") == 1

    asyncio.run(check())


def test_an_encrypted_store_exports_sealed_payloads_only_and_restores_with_its_keys(tmp_path: Path) -> None:
    """Crypto-shredding reaches exports: no plaintext in the file; the same keys read the restored copy."""
    from kern_events import Encryption, KeyringFile

    keys = KeyringFile(tmp_path / "keys.json")
    path = tmp_path / "sealed.jsonl"

    async def check() -> None:
        async with SqliteDb(tmp_path / "source.db", encryption=Encryption(keys)) as source:
            await source.store.append("secret", [MessageAdded(run_id="r", role="user", content="my password is x")])
            await _export_to(source, path)
            records = await _records(source)
        assert b"password" not in path.read_bytes()
        assert all(json.loads(line).get("event") is None for line in path.read_text().splitlines())
        async with SqliteDb(tmp_path / "target.db", encryption=Encryption(keys)) as db:
            await import_events(db, path)
            assert await _records(db) == records
            assert (await db.verify()).ok

    asyncio.run(check())


def test_a_failure_while_storing_is_raised_as_itself_not_as_a_group(tmp_path: Path) -> None:
    """Sessions are appended concurrently; a writer that starts a session after the check (here,
    another process's store on the same file) makes that append fail with its own typed error."""
    from kern_events import ConcurrencyError

    path = tmp_path / "all.jsonl"
    target_path = tmp_path / "target.db"

    async def write_elsewhere() -> None:
        async with SqliteDb(target_path) as other:
            await other.store.append("s1", [MessageAdded(run_id="r", role="user", content="first")])

    def progress(stage: str, count: int) -> None:
        if stage == "checked":  # under 1,000 events: called once, when the check pass is done
            _pg.run_sync(write_elsewhere)

    async def check() -> None:
        async with InMemoryDb() as source:
            await _fill(source)
            await _export_to(source, path)
        async with SqliteDb(target_path) as db:
            with pytest.raises(ConcurrencyError, match="'s1'"):
                await import_events(db, path, progress=progress)
            assert [record.event async for record in db.store.read("s1")] == [
                MessageAdded(run_id="r", role="user", content="first")
            ]

    asyncio.run(check())


def test_the_chain_is_checked_under_the_target_chain_key(tmp_path: Path) -> None:
    """A keyed (HMAC) chain imports into a store with the same key; under another key, or none, the
    first event is refused as not matching its hash, and nothing is stored."""
    key = b"k" * 32
    path = tmp_path / "keyed.jsonl"

    async def check() -> None:
        async with InMemoryDb(chain_key=key) as source:
            await _fill(source, sessions=1, runs=1)
            await _export_to(source, path)
        for other in (None, b"x" * 32):
            async with InMemoryDb(chain_key=other) as db:
                with pytest.raises(ExportFileError, match="exported under another chain key") as caught:
                    await import_events(db, path)
                assert caught.value.line == 2
                assert await db.store.list_sessions() == []
        async with InMemoryDb(chain_key=key) as db:
            await import_events(db, path)
            assert (await db.verify()).ok

    asyncio.run(check())


# -- bad input ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_export(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The lines of a good export of four sessions."""
    path = tmp_path_factory.mktemp("export") / "good.jsonl"

    async def write() -> None:
        async with InMemoryDb() as db:
            await _fill(db)
            await _export_to(db, path)

    asyncio.run(write())
    return path.read_bytes().splitlines(keepends=True)


def _import_lines(lines: list[bytes], path: Path) -> tuple[ExportFileError | None, int]:
    """Import these lines into a fresh store: the error, and how many events were stored."""
    path.write_bytes(b"".join(lines))

    async def run() -> tuple[ExportFileError | None, int]:
        async with InMemoryDb() as db:
            try:
                await import_events(db, path)
            except ExportFileError as error:
                return error, len([record async for record in db.store.read_all()])
            return None, len([record async for record in db.store.read_all()])

    return asyncio.run(run())


def _edited(line: bytes, **changes: Any) -> bytes:
    fields = json.loads(line)
    fields.update(changes)
    return json.dumps(fields).encode() + b"\n"


def _payload(line: bytes) -> bytes:
    return base64.b64decode(json.loads(line)["data"])


@pytest.mark.parametrize(
    ("damage", "line", "words"),
    [
        (lambda lines: [b'{"hello": "world"}\n', *lines[1:]], 1, "not a kern-events export"),
        (lambda lines: [b"PK\x03\x04\x00\x00binary\n"], 1, "not a kern-events export"),
        (lambda lines: [], 1, "the file is empty"),
        (lambda lines: [_edited(lines[0], format_version=9), *lines[1:]], 1, "format version 9"),
        (lambda lines: lines[:-1], -1, "ends without its end line: it was cut short"),
        (lambda lines: [*lines[:5], lines[5][:40]], 6, "not an export line"),
        (lambda lines: [*lines[:4], *lines[5:]], 5, "follows version 3 (a line is missing"),
        (lambda lines: [*lines[:4], lines[5], lines[4], *lines[6:]], 5, "follows version 3"),
        (
            lambda lines: [
                *lines[:6],
                _edited(lines[6], data=base64.b64encode(_payload(lines[6]).replace(b"u", b"v")).decode()),
                *lines[7:],
            ],
            7,
            "does not match its chain hash",
        ),
        (lambda lines: [lines[0], _edited(lines[1], recorded_at=1.5), *lines[2:]], 2, "does not match its chain"),
        (  # the middle of an append, which keeps its hash on its last event (line 7): named there
            lambda lines: [*lines[:4], _edited(lines[4], data=json.loads(lines[3])["data"]), *lines[5:]],
            7,
            "one of versions 2-6 does not match its chain hash",
        ),
        (lambda lines: [*lines[:4], _edited(lines[4], recorded_at=1.5), *lines[5:]], 4, "chain hash is missing, yet"),
        (lambda lines: [*lines[:6], _edited(lines[6], chain=None), *lines[7:]], 7, "chain hash is missing"),
        (lambda lines: [*lines[:4], _edited(lines[4], version=-1), *lines[5:]], 5, "not an export line"),
        (lambda lines: [*lines, lines[1]], -1, "a line after the end line"),
        (lambda lines: [*lines[:-1], _edited(lines[-1], events=1), lines[-1]], -2, "the end line counts"),
    ],
)
def test_a_bad_file_is_one_error_naming_its_line_and_stores_nothing(
    good_export: list[bytes],
    tmp_path: Path,
    damage: Callable[[list[bytes]], list[bytes]],
    line: int,
    words: str,
) -> None:
    lines = damage(list(good_export))
    error, stored = _import_lines(lines, tmp_path / "bad.jsonl")
    assert error is not None, "the bad file was accepted"
    assert words in str(error)
    assert error.line == (line if line > 0 else len(lines) + 1 + line)  # negative: counted from the end
    assert str(error).startswith(f"line {error.line}: ") and "\n" not in str(error)
    assert stored == 0


def test_the_good_export_imports(good_export: list[bytes], tmp_path: Path) -> None:
    error, stored = _import_lines(good_export, tmp_path / "good.jsonl")
    assert error is None and stored == len(good_export) - 2


def test_an_export_with_a_hash_on_every_event_still_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What releases before one hash per append exported (format version 1, ``Chain.kept`` keeping
    every hash)."""
    path = tmp_path / "every_hash.jsonl"

    async def write() -> None:
        async with InMemoryDb() as db:
            await _fill(db)
            await _export_to(db, path)

    with monkeypatch.context() as patch:
        patch.setattr(Chain, "kept", staticmethod(list))
        asyncio.run(write())
    lines = path.read_bytes().splitlines(keepends=True)
    assert all(json.loads(line)["chain"] for line in lines[1:-1])
    lines[0] = _edited(lines[0], format_version=1)  # as those releases named it
    error, stored = _import_lines(lines, tmp_path / "imported.jsonl")
    assert error is None and stored == len(lines) - 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_import_whole_or_raise_the_typed_error_storing_nothing(
    good_export: list[bytes], tmp_path: Path, data: st.DataObject
) -> None:
    lines = list(good_export)
    kind = data.draw(st.sampled_from(["drop", "swap", "byte", "cut", "junk", "duplicate"]))
    index = data.draw(st.integers(0, len(lines) - 1))
    if kind == "drop":
        del lines[index]
    elif kind == "swap":
        other = data.draw(st.integers(0, len(lines) - 1))
        lines[index], lines[other] = lines[other], lines[index]
    elif kind == "byte":
        where = data.draw(st.integers(0, len(lines[index]) - 1))
        lines[index] = lines[index][:where] + bytes([data.draw(st.integers(0, 255))]) + lines[index][where + 1 :]
    elif kind == "cut":
        lines = [*lines[:index], lines[index][: data.draw(st.integers(0, len(lines[index])))]]
    elif kind == "junk":
        lines.insert(index, data.draw(st.binary(max_size=200)) + b"\n")
    else:
        lines.insert(index, lines[index])
    path = tmp_path / "fuzzed.jsonl"
    path.write_bytes(b"".join(lines))

    async def run() -> None:
        async with InMemoryDb() as db:
            try:
                await import_events(db, path)
            except ExportFileError:
                assert [record async for record in db.store.read_all()] == [], "a bad file stored something"
                return
            # accepted: only a change that keeps the file meaning the same (a byte that JSON ignores,
            # or a swap of a line with itself); then every session is whole and verifies
            assert (await db.verify()).ok
            assert len([record async for record in db.store.read_all()]) == len(good_export) - 2

    asyncio.run(run())


# -- constant memory ---------------------------------------------------------------------------------


def _peak_bytes(tmp_path: Path, events_per_session: int) -> int:
    """Tracemalloc's peak while exporting, then importing, a session of this many events (SQLite)."""
    source, target = tmp_path / f"s{events_per_session}.db", tmp_path / f"t{events_per_session}.db"
    path = tmp_path / f"{events_per_session}.jsonl"

    async def run() -> int:
        async with SqliteDb(source) as db:
            for number in range(1):
                for start in range(0, events_per_session, 500):
                    batch = [
                        MessageAdded(run_id="r", role="user", content=f"message {start + offset} " + "x" * 200)
                        for offset in range(min(500, events_per_session - start))
                    ]
                    await db.store.append(f"session{number}", batch)
            tracemalloc.start()
            await _export_to(db, path)
        async with SqliteDb(target) as db:
            await import_events(db, path)
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        return peak

    return asyncio.run(run())


def test_export_and_import_run_in_constant_memory(tmp_path: Path) -> None:
    """Pages of a thousand rows are read and appends of at most one original append are written:
    ten times the events (2,000 -> 20,000, all pages full) must not need much more memory."""
    small = _peak_bytes(tmp_path, 2000)
    large = _peak_bytes(tmp_path, 20000)
    assert large < small * 1.3, (small, large)


# -- the command line: SQLite -> PostgreSQL -> SQLite ------------------------------------------------


def test_cli_round_trip_sqlite_postgres_sqlite_is_identical_and_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _pg.require_postgres()
    first, last = tmp_path / "first.db", tmp_path / "last.db"
    for _ in range(5):  # the demo, with its pause and confirmation
        assert cli(capsys, "demo", "--db", str(first))[0] == 0
    asyncio.run(_fill_path(first))
    schema = _pg.new_schema()
    pg = ["--db", _pg.PG_URL, "--schema", schema]
    try:
        code, _, err = cli(capsys, "export", "--db", str(first), "--output", str(tmp_path / "a.jsonl"))
        assert (code, err) == (0, "")
        code, out, err = cli(capsys, "import", str(tmp_path / "a.jsonl"), *pg)
        assert (code, err) == (0, "")
        assert out.startswith("imported ") and "in 5 sessions" in out
        code, out, _ = cli(capsys, "verify", *pg)
        assert code == 0 and out.endswith(": ok\n")
        code, _, _ = cli(capsys, "export", *pg, "--output", str(tmp_path / "b.jsonl"))
        assert code == 0
        code, out, _ = cli(capsys, "import", str(tmp_path / "b.jsonl"), "--db", str(last))
        assert code == 0
        code, again, err = cli(capsys, "import", str(tmp_path / "b.jsonl"), "--db", str(last))
        assert code == 2 and again == "" and "already exists in the target" in err and err.count("\n") == 1
    finally:
        _pg.drop_schema(schema)
    code, out, _ = cli(capsys, "verify", "--db", str(last))
    assert code == 0 and out.endswith(": ok\n")

    def without_positions(name: str) -> list[dict[str, Any]]:
        lines = json_lines((tmp_path / name).read_text())
        for line in lines:
            line.pop("position", None)
            line.pop("exported_at", None)
        return lines

    assert cli(capsys, "export", "--db", str(last), "--output", str(tmp_path / "c.jsonl"))[0] == 0
    assert without_positions("a.jsonl") == without_positions("b.jsonl") == without_positions("c.jsonl")

    async def compare() -> None:
        async with SqliteDb(first) as one, SqliteDb(last) as other:
            assert await _records(one) == await _records(other)
            assert await _views(one) == await _views(other)

    asyncio.run(compare())


async def _fill_path(path: Path) -> None:
    async with SqliteDb(path) as db:
        await _fill(db)


def test_cli_import_of_a_tampered_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "source.db"
    assert cli(capsys, "demo", "--db", str(source))[0] == 0
    export = tmp_path / "x.jsonl"
    assert cli(capsys, "export", "--db", str(source), "-o", str(export))[0] == 0
    lines = export.read_bytes().splitlines(keepends=True)
    lines[3] = _edited(lines[3], event_id="00000000-0000-7000-8000-000000000000")
    export.write_bytes(b"".join(lines))
    code, out, err = cli(capsys, "import", str(export), "--db", str(tmp_path / "new.db"))
    assert code == 2 and out == ""
    assert err == (
        "error: line 5: session 'conversation_123' version 4: one of versions 2-4 does not match its chain hash "
        "(the file was edited, or it was exported under another chain key)\n"  # the append's hash is on line 5
    )
    with sqlite3.connect(tmp_path / "new.db") as connection:
        assert connection.execute("SELECT count(*) FROM kern_events").fetchone() == (0,)
    connection.close()
    code, _, err = cli(capsys, "import", str(tmp_path / "missing.jsonl"), "--db", str(tmp_path / "new.db"))
    assert code == 2 and err.startswith("error: file: cannot read") and err.count("\n") == 1


def test_the_readme_migration_commands_move_the_demo_into_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The two commands under "Moving from the embedded default to PostgreSQL", as printed (the
    server's URL and schema swapped for the test's)."""
    _pg.require_postgres()
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("**Moving from the embedded default to PostgreSQL**", 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines()]
    program = ".venv/bin/kern-events"
    assert [command[:2] for command in commands] == [[program, "export"], [program, "import"]]
    monkeypatch.chdir(tmp_path)
    assert cli(capsys, "demo")[0] == 0
    schema = _pg.new_schema()
    try:
        for command in commands:
            args = [_pg.PG_URL if arg.startswith("postgresql://") else arg for arg in command[1:]]
            args = [schema if arg == "public" else arg for arg in args]
            code, out, err = cli(capsys, *args)
            assert (code, err) == (0, ""), err
        assert "imported " in out and "in 1 session" in out
        code, out, _ = cli(capsys, "show", "conversation_123", "--db", _pg.PG_URL, "--schema", schema)
        assert code == 0 and "Alice" in out
    finally:
        _pg.drop_schema(schema)


def test_cli_export_filters_and_import_reads_standard_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "source.db"
    asyncio.run(_fill_path(source))
    code, out, _ = cli(capsys, "export", "--db", str(source), "--session", "s2", "--session", "every")
    assert code == 0
    assert list(dict.fromkeys(line["session_id"] for line in json_lines(out)[1:-1])) == ["s2", "every"]
    code, out, _ = cli(capsys, "export", "--db", str(source), "--user-id", "user1")
    assert {line["session_id"] for line in json_lines(out)[1:-1]} == {"s1"}
    code, out, _ = cli(capsys, "export", "--db", str(source), "--since", "2999-01-01T00:00:00")
    assert (code, json_lines(out)[-1]) == (0, {"kind": "end", "sessions": 0, "events": 0})
    code, out, err = cli(capsys, "export", "--db", str(source), "--session", "s1", "--session", "nope")
    assert (code, out, err) == (2, "", "error: session 'nope' not found\n")
    code, _, err = cli(capsys, "export", "--db", str(source), "--since", "last tuesday")
    assert code == 2 and "expected an ISO 8601 time or unix seconds" in err
    code, out, _ = cli(capsys, "export", "--db", str(source), "--since", "0")
    assert code == 0 and json_lines(out)[-1]["sessions"] == 4

    piped = run_cli("import", "-", "--db", str(tmp_path / "piped.db"), cwd=tmp_path, stdin=out)
    assert (piped.returncode, piped.stderr) == (0, "")
    assert piped.stdout.startswith("imported ") and "in 4 sessions" in piped.stdout
    piped = run_cli("import", "-", "--db", str(tmp_path / "junk.db"), cwd=tmp_path, stdin="not json\n")
    assert piped.returncode == 2
    assert piped.stderr.startswith("error: line 1: not a kern-events export") and piped.stderr.count("\n") == 1


def run_cli(*args: str, cwd: Path, stdin: str) -> subprocess.CompletedProcess[str]:
    """``python -m kern_events ARGS`` in a new interpreter, with ``stdin`` as its standard input."""
    return subprocess.run(
        [sys.executable, "-m", "kern_events", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
