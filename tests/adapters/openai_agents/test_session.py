"""``KernEventsSession`` beyond the SDK's own tests: concurrent pops, pops against a model of a list,
user scoping, clearing, one atomic append for a paused run, and runs continued in other processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kern_events import ConcurrencyError, InMemoryDb, SessionNotFoundError, SqliteDb
from tests.adapters._dbs import open_db as _open
from tests.adapters.openai_agents import _sdk

_sdk.require_sdk()

from kern_events.adapters.openai_agents import (  # noqa: E402  (after the extra is known to be there)
    SESSION_TYPE,
    KernEventsSession,
    SessionClosedError,
)

HERE = Path(__file__).parent
ROOT = HERE.parent.parent.parent


def _item(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


async def test_concurrent_pops_never_return_the_same_item(db_kind: tuple[str, str], tmp_path: Path) -> None:
    async with _open(db_kind, tmp_path) as db:
        await KernEventsSession("s", db).add_items([_item(str(i)) for i in range(12)])
        popped: list[Any] = []

        async def pop() -> None:
            popped.append(await KernEventsSession("s", db).pop_item())

        async with anyio.create_task_group() as group:
            for _ in range(16):
                group.start_soon(pop)
        contents = sorted(item["content"] for item in popped if item is not None)
        assert contents == sorted(str(i) for i in range(12))  # each item once, none twice
        assert popped.count(None) == 4
        assert await KernEventsSession("s", db).get_items() == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(0, 3)),
            st.tuples(st.just("pop"), st.just(0)),
            st.tuples(st.just("get"), st.one_of(st.none(), st.integers(0, 6))),
            st.tuples(st.just("clear"), st.just(0)),
        ),
        max_size=30,
    )
)
async def test_items_behave_as_a_list_under_adds_pops_limits_and_clears(program: list[tuple[str, Any]]) -> None:
    model: list[dict[str, Any]] = []
    async with InMemoryDb() as db:
        session = KernEventsSession("s", db, user_id="u")
        for step, (operation, argument) in enumerate(program):
            if operation == "add":
                items = [_item(f"{step}.{index}") for index in range(argument)]
                await session.add_items(items)
                model += items
            elif operation == "pop":
                assert await session.pop_item() == (model.pop() if model else None)
            elif operation == "clear":
                await session.clear_session()
                model.clear()
            else:
                expected = model if argument is None else model[len(model) - min(argument, len(model)) :]
                assert await session.get_items(argument) == expected
        assert await session.get_items() == model


async def test_get_items_with_a_limit_reads_only_the_tail_of_the_log(tmp_path: Path) -> None:
    """One backward read that stops at the window: a long session costs the same as a short one."""
    async with SqliteDb(db_file=tmp_path / "s.db") as db:
        session = KernEventsSession("s", db)
        await session.add_items([_item(str(i)) for i in range(500)])
        await session.pop_item()
        read = db.store.read
        seen: list[int] = []

        def counting_read(*args: Any, **kwargs: Any) -> Any:
            async def records() -> AsyncIterator[Any]:
                async for record in read(*args, **kwargs):
                    seen.append(record.version)
                    yield record

            return records()

        db.store.read = counting_read  # type: ignore[method-assign]
        assert [item["content"] for item in await session.get_items(3)] == ["496", "497", "498"]
        assert len(seen) <= 64  # the store's first backward page, not the session


async def test_another_users_session_is_not_found_and_left_untouched(tmp_path: Path) -> None:
    async with SqliteDb(db_file=tmp_path / "s.db") as db:
        alice = KernEventsSession("chat", db, user_id="alice")
        await alice.add_items([_item("secret")])
        bob = KernEventsSession("chat", db, user_id="bob")
        for call in (bob.get_items, bob.pop_item, bob.clear_session, lambda: bob.add_items([_item("x")])):
            with pytest.raises(SessionNotFoundError):
                await call()
        assert await alice.get_items() == [_item("secret")]
        info = await db.store.get_session_info("chat")
        assert info is not None and info.user_id == "alice" and info.session_type == SESSION_TYPE
        assert await KernEventsSession("chat", db).get_items() == [_item("secret")]  # the application's own


async def test_a_cleared_session_starts_anew_for_whoever_adds_next(tmp_path: Path) -> None:
    async with SqliteDb(db_file=tmp_path / "s.db") as db:
        alice = KernEventsSession("chat", db, user_id="alice")
        await alice.add_items([_item("old")])
        await alice.clear_session()
        assert await alice.get_items() == []
        assert await alice.pop_item() is None
        bob = KernEventsSession("chat", db, user_id="bob")
        await bob.add_items([_item("new")])
        assert await bob.get_items() == [_item("new")]
        with pytest.raises(SessionNotFoundError):
            await alice.get_items()


async def test_a_closed_session_refuses_use_as_the_sdks_own_do() -> None:
    session = KernEventsSession("s", InMemoryDb())
    session.close()
    with pytest.raises(SessionClosedError, match="KernEventsSession is closed") as raised:
        await session.add_items([])
    assert isinstance(raised.value, RuntimeError)


async def test_an_atomic_block_appends_everything_at_once_or_nothing(tmp_path: Path) -> None:
    async with SqliteDb(db_file=tmp_path / "s.db") as db:
        session = KernEventsSession("s", db)
        await session.add_items([_item("a"), _item("b")])

        async def fail_inside() -> None:
            async with session.atomic():
                await session.add_items([_item("c")])
                assert await session.pop_item() == _item("c")
                assert await session.pop_item() == _item("b")
                assert await session.get_items() == [_item("a")]  # the block sees its own writes
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await fail_inside()
        assert await session.get_items() == [_item("a"), _item("b")]
        head = await db.store.current_version("s")
        async with session.atomic():
            assert await session.pop_item() == _item("b")
            await session.add_items([_item("c"), _item("d")])
            assert await session.get_items(2) == [_item("c"), _item("d")]
            assert await db.store.current_version("s") == head  # nothing written yet
        assert await db.store.current_version("s") == head + 3  # one removal, two items
        assert await session.get_items() == [_item("a"), _item("c"), _item("d")]


def _agent(*args: str) -> dict[str, Any]:
    """Run ``_agent_process.py`` in a new interpreter and return what it printed."""
    env = {**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(HERE / "_agent_process.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_conversation_goes_on_in_another_process_through_run_run_streamed_and_run_sync(tmp_path: Path) -> None:
    db_file = str(tmp_path / "agents.db")
    first = _agent("turn", db_file, "chat", "My name is Alice", "Hello Alice")
    second = _agent("turn", db_file, "chat", "What is my name?", "Alice")
    assert set(first) == set(second) == {"run", "run_streamed", "run_sync"}
    for method, result in second.items():
        assert first[method]["final_output"] == "Hello Alice" and result["final_output"] == "Alice", method
        history = result["model_input"]
        assert [item.get("content") for item in history[:1] + history[2:]] == ["My name is Alice", "What is my name?"]
        assert history[1]["content"][0]["text"] == "Hello Alice", method


def test_a_paused_run_is_stored_with_its_items_in_one_append_and_resumed_in_another_process(tmp_path: Path) -> None:
    db_file = str(tmp_path / "agents.db")
    paused = _agent("pause", db_file, "trip")
    assert paused["interruptions"] == 1 and paused["final_output"] is None

    async def records() -> list[Any]:
        async with SqliteDb(db_file=db_file) as db:
            return [record async for record in db.store.read("trip")]

    stored = anyio.run(records)
    assert [record.type for record in stored] == [
        "session_started",
        "openai_agents.item",  # the user's message
        "openai_agents.item",  # the tool call waiting for approval
        "openai_agents.run_state",
    ]
    assert len({record.recorded_at for record in stored}) == 1  # one append

    resumed = _agent("resume", db_file, "trip")
    assert resumed["final_output"] == "Your flight to Paris is booked."
    outputs = [item for item in resumed["model_input"] if item.get("type") == "function_call_output"]
    assert [item["output"] for item in outputs] == ["booked a flight to Paris"]
    after = anyio.run(records)[len(stored) :]
    assert [record.type for record in after][-1] == "openai_agents.run_state"
    assert after[-1].event.state is None  # no run is paused any more


def test_the_readme_example_runs_and_a_second_process_continues_the_conversation(tmp_path: Path) -> None:
    from tests.test_readme import _block_after, _run_python

    env = {**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"}
    code = _block_after("Use it from your framework", index=2)
    assert _run_python(code, tmp_path, env) == "Hello Alice! 2 items\n"
    assert _run_python(code, tmp_path, env) == "Hello Alice! 4 items\n"


async def test_of_two_processes_claiming_one_paused_run_exactly_one_gets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from agents import Agent, RunConfig, Runner, function_tool
    from agents.run_state import RunState
    from agents.testing import ModelStep, ScriptedModel, function_call

    @function_tool(needs_approval=True)
    def book_flight(destination: str) -> str:
        return destination

    model = ScriptedModel([ModelStep(output=[function_call("book_flight", {"destination": "Rome"}, call_id="c1")])])
    agent = Agent(name="helper", model=model, tools=[book_flight])
    async with InMemoryDb() as db:
        session = KernEventsSession("trip", db)
        async with session.atomic():
            result = await Runner.run(agent, "Book Rome", session=session, run_config=RunConfig(tracing_disabled=True))
            await session.save_run_state(result.to_state())

        both_read = anyio.Event()
        readers = 0
        from_json = RunState.from_json

        async def from_json_after_both_read(*args: Any, **kwargs: Any) -> Any:
            nonlocal readers
            readers += 1
            if readers == 2:
                both_read.set()
            await both_read.wait()  # both have read the paused state before either claims it
            return await from_json(*args, **kwargs)

        monkeypatch.setattr(RunState, "from_json", staticmethod(from_json_after_both_read))
        outcomes: list[object] = []

        async def claim() -> None:
            try:
                outcomes.append(await KernEventsSession("trip", db).load_run_state(agent, claim=True))
            except ConcurrencyError as error:
                outcomes.append(error)

        async with anyio.create_task_group() as group:
            group.start_soon(claim)
            group.start_soon(claim)
        assert sorted(type(outcome).__name__ for outcome in outcomes) == ["ConcurrencyError", "RunState"]
        assert await session.load_run_state(agent) is None  # claimed: no run is paused any more


async def test_a_limit_never_hands_the_model_a_tool_output_without_its_call() -> None:
    """``get_items(limit)`` keeps the SDK's exact count (their own test pins it); the runner then
    drops outputs whose calls fell outside the window, here two parallel ones (#4322)."""
    from agents import Agent, RunConfig, Runner, SessionSettings
    from agents.testing import ModelStep, ScriptedModel, assistant_message

    calls = [{"type": "function_call", "call_id": f"c{i}", "name": "f", "arguments": "{}"} for i in (1, 2)]
    outputs = [{"type": "function_call_output", "call_id": f"c{i}", "output": "ok"} for i in (1, 2)]
    answer = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "ok", "annotations": []}],
    }
    history = [_item("go"), *calls, *outputs, answer]
    async with InMemoryDb() as db:
        session = KernEventsSession("s", db)
        await session.add_items(history)  # type: ignore[arg-type]
        assert await session.get_items(3) == history[-3:]
        model = ScriptedModel([ModelStep(output=[assistant_message("done")])])
        config = RunConfig(session_settings=SessionSettings(limit=3), tracing_disabled=True)
        await Runner.run(Agent(name="a", model=model), "next", session=session, run_config=config)
        assert model.calls[-1].input == [answer, _item("next")]


async def test_an_item_of_five_megabytes_round_trips(db_kind: tuple[str, str], tmp_path: Path) -> None:
    """A pasted document or a large tool output is one item; the store keeps it out of line."""
    big = _item("x" * 5_000_000)
    async with _open(db_kind, tmp_path) as db:
        session = KernEventsSession("s", db)
        await session.add_items([_item("before"), big])
        assert await session.get_items(1) == [big]
        assert await session.pop_item() == big
        assert await session.get_items() == [_item("before")]
