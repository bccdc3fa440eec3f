"""``KernEventsDb`` beyond Agno's own tests: what an upsert appends, owner checks that raise, errors
that propagate, history windows, filters and paging, delegation, and concurrent runs on one session."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest

from kern_events import InMemoryDb, PostgresDb, SessionNotFoundError, SqliteDb, StoreClosedError
from kern_events.db import BaseDb
from tests import _pg
from tests.adapters.agno import _upstream

_upstream.require_agno()

from agno.db.base import AsyncBaseDb, SessionType  # noqa: E402  (after the extra is known to be there)
from agno.db.schemas.evals import EvalRunRecord, EvalType  # noqa: E402
from agno.db.schemas.memory import UserMemory  # noqa: E402
from agno.db.sqlite import AsyncSqliteDb as AgnoAsyncSqliteDb  # noqa: E402
from agno.db.sqlite import SqliteDb as AgnoSqliteDb  # noqa: E402
from agno.run.agent import RunOutput  # noqa: E402
from agno.run.base import RunStatus  # noqa: E402
from agno.session import AgentSession  # noqa: E402

import kern_events.adapters.agno as agno_adapter  # noqa: E402
from kern_events.adapters.agno import _HEADER_TYPES, AsyncKernEventsDb, KernEventsDb, SessionOwnerError  # noqa: E402


def _kern_db(kind: str, tmp_path: Path, schema: str) -> BaseDb:
    if kind == "memory":
        return InMemoryDb()
    if kind == "sqlite":
        return SqliteDb(db_file=tmp_path / "kern.db")
    return PostgresDb(db_url=_pg.PG_URL, schema=schema, pool_size=2)


@pytest.fixture
def db(db_kind: tuple[str, str], tmp_path: Path) -> Iterator[KernEventsDb]:
    agno_db = AgnoSqliteDb(db_file=str(tmp_path / "agno.db"))
    adapter = KernEventsDb(_kern_db(db_kind[0], tmp_path, db_kind[1]), agno_db)
    try:
        yield adapter
    finally:
        adapter.close()


def _run(run_id: str, content: str = "", status: RunStatus = RunStatus.completed, **extra: Any) -> RunOutput:
    return RunOutput(run_id=run_id, agent_id="a1", session_id="s1", content=content, status=status, **extra)


def _session(*runs: RunOutput, user_id: str | None = "alice", **fields: Any) -> AgentSession:
    return AgentSession(
        session_id="s1", agent_id="a1", user_id=user_id, runs=list(runs), created_at=int(time.time()), **fields
    )


def _version(db: KernEventsDb, session_id: str = "s1") -> int:
    async def version() -> int:
        return await db.kern_db.store.current_version(session_id)

    return db._loop.run(version)


def _types(db: KernEventsDb, session_id: str = "s1") -> list[str]:
    async def types() -> list[str]:
        return [record.type async for record in db.kern_db.store.read(session_id)]

    return db._loop.run(types)


def test_an_upsert_appends_only_what_changed(db: KernEventsDb) -> None:
    session = _session(_run("r1", "one"), session_data={"session_state": {"n": 1}})
    db.upsert_session(session)
    assert _types(db) == ["session_started", "agno.run", "agno.session"]
    db.upsert_session(session)  # nothing changed: nothing appended
    assert _version(db) == 3
    session.runs = [*(session.runs or []), _run("r2", "two")]
    db.upsert_session(session)
    assert _types(db)[3:] == ["agno.run"]  # the new run alone
    session.session_data = {"session_state": {"n": 2}, "session_name": "Trip"}
    db.upsert_session(session)
    assert _types(db)[4:] == ["session_renamed", "agno.session"]
    stored = db.get_session("s1", SessionType.AGENT)
    assert isinstance(stored, AgentSession)
    assert [run.run_id for run in stored.runs or []] == ["r1", "r2"]
    assert stored.session_data == {"session_state": {"n": 2}, "session_name": "Trip"}


def test_writes_to_another_users_session_raise_and_store_nothing(db: KernEventsDb) -> None:
    db.upsert_session(_session(_run("r1")))
    before = _version(db)
    with pytest.raises(SessionOwnerError) as caught:
        db.upsert_session(_session(_run("r1", "stolen"), user_id="bob"))
    assert caught.value.session_id == "s1" and caught.value.argument == "user_id"
    with pytest.raises(SessionOwnerError):
        db.upsert_session(_session(user_id=None))
    with pytest.raises(SessionOwnerError):
        db.upsert_run(_run("r2"), session_id="s1", user_id="bob")
    with pytest.raises(SessionOwnerError):
        db.upsert_sessions([_session(user_id="bob")])
    assert _version(db) == before
    assert db.get_session("s1", user_id="bob") is None  # reads keep Agno's contract
    assert db.rename_session("s1", SessionType.AGENT, "x", user_id="bob") is None
    assert db.delete_session("s1", user_id="bob") is False


def test_upsert_run_needs_the_session_and_stores_a_change_once(db: KernEventsDb) -> None:
    with pytest.raises(SessionNotFoundError):
        db.upsert_run(_run("r1"), session_id="s1")
    db.upsert_session(_session())
    paused = _run("r1", status=RunStatus.paused)  # one object: RunOutput stamps created_at in seconds
    db.upsert_run(paused, session_id="s1", user_id="alice")
    db.upsert_run(paused, session_id="s1", user_id="alice")  # unchanged
    db.upsert_run(_run("r1", "done"), session_id="s1", user_id="alice")
    assert _types(db).count("agno.run") == 2
    run = db.get_run("r1")
    assert isinstance(run, RunOutput) and run.content == "done" and run.status == RunStatus.completed
    assert [r.run_id for r in db.get_runs(session_id="s1")] == ["r1"]
    assert db.delete_run("r1") is True
    assert db.get_run("r1") is None
    assert db.delete_run("r1") is False


def test_write_errors_propagate(db: KernEventsDb) -> None:
    db.upsert_session(_session())
    with pytest.raises(ValueError, match="session_id"):  # an id the store refuses
        db.upsert_session(AgentSession(session_id="", agent_id="a1", created_at=1))
    db._loop.run(db.kern_db.aclose)
    with pytest.raises(StoreClosedError):
        db.upsert_session(_session(_run("r9")))


def test_runs_limit_returns_the_last_runs_history_uses(db: KernEventsDb) -> None:
    runs = [_run(f"r{i}") for i in range(5)]
    runs.insert(3, _run("child", parent_run_id="r2"))
    runs.append(_run("cancelled", status=RunStatus.cancelled))
    db.upsert_session(_session(*runs))
    limited = db.get_session("s1", SessionType.AGENT, runs_limit=2)
    assert isinstance(limited, AgentSession)
    assert [run.run_id for run in limited.runs or []] == ["r3", "r4"]
    whole = db.get_session("s1", SessionType.AGENT)
    assert isinstance(whole, AgentSession) and len(whole.runs or []) == 7


def test_get_sessions_filters_and_pages(db: KernEventsDb) -> None:
    now = int(time.time())
    for i in range(5):
        db.upsert_session(
            AgentSession(
                session_id=f"s{i}",
                agent_id="a1" if i % 2 else "a2",
                user_id="alice" if i < 3 else "bob",
                session_data={"session_name": f"Trip {i}"},
                created_at=now + i,
            )
        )
    listed, total = db.get_sessions(SessionType.AGENT, user_id="alice", deserialize=False)  # type: ignore[misc]
    assert total == 3 and {raw["session_id"] for raw in listed} == {"s0", "s1", "s2"}
    assert [s.session_id for s in db.get_sessions(component_id="a1", sort_by="created_at", sort_order="asc")] == [
        "s1",
        "s3",
    ]
    pages = [
        [s.session_id for s in db.get_sessions(sort_by="created_at", sort_order="desc", limit=2, page=page)]
        for page in (1, 2, 3)
    ]
    assert pages == [["s4", "s3"], ["s2", "s1"], ["s0"]]
    assert [s.session_id for s in db.get_sessions(session_name="trip 2")] == ["s2"]
    assert [s.session_id for s in db.get_sessions(start_timestamp=now + 3)] == ["s4", "s3"]
    assert db.get_sessions(SessionType.TEAM) == []


def test_everything_else_is_the_wrapped_agno_dbs(db: KernEventsDb) -> None:
    db.upsert_user_memory(UserMemory(memory="likes tea", memory_id="m1", user_id="alice"))
    assert [m.memory for m in db.agno_db.get_user_memories(user_id="alice")] == ["likes tea"]  # type: ignore[union-attr]
    assert db.get_user_memory("m1").memory == "likes tea"  # type: ignore[union-attr]
    assert db.agno_db.get_sessions() == []  # sessions never reach the wrapped db


def test_concurrent_runs_on_one_session_are_both_stored(db_kind: tuple[str, str], tmp_path: Path) -> None:
    """Two writers (two dbs, as two processes would have) add a run each to the same session from a
    stale copy of it, then eight at once: every run is stored, none overwrites another."""
    if db_kind[0] == "memory":
        pytest.skip("two writers of one store need a shared database")
    dbs = [KernEventsDb(_kern_db(db_kind[0], tmp_path, db_kind[1]), AgnoSqliteDb(db_file=str(tmp_path / "a.db")))]
    dbs.append(KernEventsDb(_kern_db(db_kind[0], tmp_path, db_kind[1]), AgnoSqliteDb(db_file=str(tmp_path / "a.db"))))
    try:
        dbs[0].upsert_session(_session(_run("r0")))
        first, second = (db.get_session("s1", SessionType.AGENT) for db in dbs)
        assert isinstance(first, AgentSession) and isinstance(second, AgentSession)
        first.upsert_run(_run("r1"))
        second.upsert_run(_run("r2"))
        dbs[0].upsert_session(first)
        dbs[1].upsert_session(second)  # stale: it has not seen r1
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def add(index: int) -> None:
            try:
                session = dbs[index % 2].get_session("s1", SessionType.AGENT)
                assert isinstance(session, AgentSession)
                session.upsert_run(_run(f"t{index}"))
                barrier.wait()
                dbs[index % 2].upsert_session(session)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=add, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        stored = dbs[1].get_session("s1", SessionType.AGENT)
        assert isinstance(stored, AgentSession)
        assert sorted(run.run_id for run in stored.runs or []) == sorted(
            ["r0", "r1", "r2", *(f"t{i}" for i in range(8))]
        )
    finally:
        for db in dbs:
            db.close()


async def test_an_async_caller_can_use_it(tmp_path: Path) -> None:
    """Agno calls a sync db from inside its async runs; the calls do not need this loop."""
    db = KernEventsDb(SqliteDb(db_file=tmp_path / "k.db"), AgnoSqliteDb(db_file=str(tmp_path / "a.db")))
    try:
        db.upsert_session(_session(_run("r1")))
        await anyio.lowlevel.checkpoint()
        assert db.get_session("s1") is not None
    finally:
        db.close()


def test_a_read_decodes_a_run_again_only_when_it_changed(db: KernEventsDb) -> None:
    db.upsert_session(_session(_run("r1", "one"), _run("r2", "two")))
    first = db.get_session("s1", SessionType.AGENT)
    db.upsert_run(_run("r2", "two, edited"), session_id="s1")
    second = db.get_session("s1", SessionType.AGENT)
    assert isinstance(first, AgentSession) and isinstance(second, AgentSession)
    assert first.runs is not None and second.runs is not None
    assert second.runs[0] is first.runs[0]  # unchanged: the same object, as Agno's own dbs share it
    assert second.runs[1].content == "two, edited"
    assert db.get_session("s1", deserialize=False)["runs"][1]["content"] == "two, edited"  # type: ignore[index]


def test_reassign_session_owner_moves_only_an_idle_session_of_the_expected_owner(db: KernEventsDb) -> None:
    db.upsert_session(_session(_run("r1", "done")))
    assert db.reassign_session_owner("s1", previous_user_id="bob", user_id="carol") is False
    assert db.reassign_session_owner("nope", previous_user_id="alice", user_id="carol") is False
    assert db.reassign_session_owner("s1", previous_user_id="alice", user_id="carol") is True
    assert db.get_session("s1", user_id="alice") is None
    moved = db.get_session("s1", SessionType.AGENT, user_id="carol")
    assert isinstance(moved, AgentSession) and [run.run_id for run in moved.runs or []] == ["r1"]
    assert [s.session_id for s in db.get_sessions(user_id="carol")] == ["s1"]  # the index moved too
    assert db.get_sessions(user_id="alice") == []
    db.upsert_run(_run("r2", status=RunStatus.paused), session_id="s1", user_id="carol")
    assert db.reassign_session_owner("s1", previous_user_id="carol", user_id="alice") is False  # a paused run
    assert db.get_session("s1", user_id="carol") is not None


def test_cancel_pending_run_cancels_only_the_status_it_observed(db: KernEventsDb) -> None:
    db.upsert_session(_session(_run("r1", status=RunStatus.pending), _run("r2", "half", status=RunStatus.running)))
    assert (
        db.cancel_pending_run("r1", session_id="s1", reason="gone", user_id="alice", expected_status="RUNNING") is False
    )
    assert db.cancel_pending_run("r1", session_id="s1", reason="gone", user_id="bob") is False  # another user's run
    assert db.cancel_pending_run("r9", session_id="s1", reason="gone", user_id="alice") is False
    assert db.cancel_pending_run("r1", session_id="s1", reason="gone", user_id="alice") is True
    assert db.cancel_pending_run("r1", session_id="s1", reason="gone", user_id="alice") is False  # not pending now
    assert db.cancel_pending_run("r2", session_id="s1", reason="gone", user_id="alice", expected_status="RUNNING")
    first, second = (db.get_run(run_id) for run_id in ("r1", "r2"))
    assert isinstance(first, RunOutput) and first.status == RunStatus.cancelled and first.content == "gone"
    assert isinstance(second, RunOutput) and second.status == RunStatus.cancelled and second.content == "half"
    with pytest.raises(ValueError, match="expected_status"):
        db.cancel_pending_run("r1", session_id="s1", reason="x", expected_status="COMPLETED")


def test_lookups_by_run_id_and_listings_read_only_what_they_need(db: KernEventsDb) -> None:
    """``get_run``/``delete_run`` read the run's locator and its session, not every session;
    ``get_sessions`` reads the runs of the page's sessions only (the others' fields alone)."""
    for i in range(12):
        db.upsert_session(
            AgentSession(
                session_id=f"s{i}",
                agent_id="a1",
                user_id="alice",
                runs=[_run(f"s{i}-r{j}") for j in range(3)],
                created_at=1000 + i,
            )
        )
    store = db.kern_db.store
    reads: list[tuple[str, Any]] = []
    real = store.read

    def counted(session_id: str, **options: Any) -> Any:
        reads.append((session_id, options.get("types")))
        return real(session_id, **options)

    store.read = counted  # type: ignore[method-assign]

    def sessions_read() -> dict[str, set[Any]]:
        db._sessions._cache.clear()
        db._sessions._headers.clear()
        read: dict[str, set[Any]] = {}
        for session_id, types in reads:
            read.setdefault(session_id, set()).add(types)
        reads.clear()
        return read

    sessions_read()
    run = db.get_run("s7-r1")
    assert isinstance(run, RunOutput) and run.run_id == "s7-r1"
    assert sessions_read() == {"agno-run:s7-r1": {None}, "s7": {None}}
    assert db.delete_run("s7-r1") is True
    assert sessions_read() == {"agno-run:s7-r1": {None}, "s7": {None}}
    assert db.get_run("s7-r1") is None and db.delete_run("s7-r1") is False
    sessions_read()
    page = db.get_sessions(sort_by="created_at", limit=2, page=2)
    assert [s.session_id for s in page] == ["s9", "s8"] and len(page[0].runs or []) == 3  # type: ignore[union-attr]
    read = sessions_read()
    assert {session_id for session_id, types in read.items() if None in types} == {"s9", "s8"}
    assert all(types == {_HEADER_TYPES} for session_id, types in read.items() if session_id not in {"s9", "s8"})
    assert len(read) == 12
    db.get_sessions(include_runs=False)
    assert all(None not in types for types in sessions_read().values())


async def test_the_async_db_is_the_same_db_awaited(tmp_path: Path) -> None:
    """``AsyncKernEventsDb`` is an Agno ``AsyncBaseDb``: the same sessions and runs on the caller's
    loop, and the other tables on the wrapped async Agno db."""
    db = AsyncKernEventsDb(SqliteDb(db_file=tmp_path / "k.db"), AgnoAsyncSqliteDb(db_file=str(tmp_path / "a.db")))
    try:
        assert isinstance(db, AsyncBaseDb)
        await db.upsert_session(_session(_run("r1", "one")))
        await db.upsert_run(_run("r2", status=RunStatus.pending), session_id="s1", user_id="alice")
        stored = await db.get_session("s1", SessionType.AGENT, user_id="alice")
        assert isinstance(stored, AgentSession) and [run.run_id for run in stored.runs or []] == ["r1", "r2"]
        assert await db.get_session("s1", user_id="bob") is None
        with pytest.raises(SessionOwnerError):
            await db.upsert_session(_session(user_id="bob"))
        assert await db.cancel_pending_run("r2", session_id="s1", reason="stop", user_id="alice")
        assert [s.session_id for s in await db.get_sessions(user_id="alice")] == ["s1"]  # type: ignore[union-attr]
        await db.create_eval_run(EvalRunRecord(run_id="e1", eval_type=EvalType.ACCURACY, eval_data={}))
        assert (await db.agno_db.get_eval_run("e1")) is not None  # the other tables: the wrapped db's
        assert await db.delete_session("s1") is True
        assert await db.get_run("r1") is None
    finally:
        await db.close()


async def test_an_agent_with_the_async_db_stores_its_runs(tmp_path: Path) -> None:
    from agno.agent import Agent
    from agno.models.response import ModelResponse

    from tests.adapters.agno._agent_process import ScriptedModel

    db = AsyncKernEventsDb(SqliteDb(db_file=tmp_path / "k.db"), AgnoAsyncSqliteDb(db_file=str(tmp_path / "a.db")))
    try:
        answers = [ModelResponse(role="assistant", content=text) for text in ("one", "two")]
        agent = Agent(model=ScriptedModel(answers), db=db, telemetry=False)
        for text in ("first", "second"):
            await agent.arun(text, session_id="trip", user_id="alice")
        stored = await db.get_session("trip", SessionType.AGENT, user_id="alice")
        assert isinstance(stored, AgentSession)
        assert [run.content for run in stored.runs or []] == ["one", "two"]
    finally:
        await db.close()


def test_a_run_stored_before_locators_existed_is_still_found(db: KernEventsDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs written by the release before run locators have none: ``get_run`` and ``delete_run``
    still find them (by looking in every session, as that release did)."""
    with monkeypatch.context() as old_release:
        old_release.setattr(agno_adapter, "_locators", lambda pairs: [])
        db.upsert_session(_session(_run("r1", "kept")))
    run = db.get_run("r1")
    assert isinstance(run, RunOutput) and run.content == "kept"
    assert db.delete_run("r1") is True and db.get_run("r1") is None
