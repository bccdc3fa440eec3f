"""The runtime-facing session API: sessions, runs, steps, state, policy, summaries, names, history, cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from kern_events import (
    AppendResult,
    BaseDb,
    ConcurrencyError,
    InvalidArgumentError,
    MediaReference,
    MessageAdded,
    RunMetrics,
    Session,
    SessionNotFoundError,
    SessionRenamed,
    Snapshot,
    StoragePolicy,
    StorageUnavailableError,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
    retry_on_conflict,
)
from kern_events.checkpoints import STATE_CHECKPOINT, STATE_SCHEMA_VERSION
from kern_events.testing._backend import Backend
from projections import SessionView, history_messages

IMAGE = MediaReference(media_id="m1", kind="image", url="https://example.com/a.png")


async def _turn(session: Session, number: int, *, with_tool: bool = False) -> None:
    """One run the way a runtime records it: the user's step, a tool round, the answer and the outcome."""
    run = await session.start_run(f"run-{number}", input=f"question {number}", model_id="m", model_provider="p")
    run.message("user", f"question {number}", media=(IMAGE,))
    await run.flush()
    if with_tool:
        call = ToolCallRequest(tool_call_id=f"c{number}", tool_name="weather", arguments={"city": "Paris"})
        async with run.step():
            run.message("assistant", None, tool_calls=(call,))
            run.tool_call(f"c{number}", "weather", {"city": "Paris"}, result={"temp": 21}, duration=0.1)
            run.message("tool", "21 degrees", tool_call_id=f"c{number}")
    run.message("assistant", f"answer {number}")
    await run.complete(metrics=RunMetrics(input_tokens=10, output_tokens=5, total_tokens=15, model_id="m"))


async def test_a_session_is_started_once_and_continued_by_later_writers(backend: Backend) -> None:
    async with backend.db() as db:
        first = await db.open_session("s", agent_id="a1", user_id="alice", agent_data={"model": "m"}, name="Trip")
        assert first.version == 1
        await _turn(first, 1)
        again = await db.open_session("s", user_id="alice")
        assert again.version == first.version
        await _turn(again, 2)
        with pytest.raises(SessionNotFoundError):
            await db.open_session("s", user_id="mallory")
        view = await db.get_session("s")
    assert (view.agent_id, view.user_id, view.agent_data, view.session_name) == ("a1", "alice", {"model": "m"}, "Trip")
    assert [run.run_id for run in view.runs] == ["run-1", "run-2"]
    assert view.runs[0].user_id == "alice"


async def test_a_run_records_messages_tool_calls_and_metrics_one_step_per_append(backend: Backend) -> None:
    async with backend.db() as db:
        session = await db.open_session("s", user_id="u")
        await _turn(session, 1, with_tool=True)
        view = await db.get_session("s")
        versions = [record.version async for record in db.store.read("s")]
    run = view.runs[0]
    assert run.status == "completed"
    assert [m.role for m in run.messages] == ["user", "assistant", "tool", "assistant"]
    assert run.tool_calls[0].result == {"temp": 21}
    assert run.tool_calls[0].status == "completed"
    assert run.metrics is not None and run.metrics.total_tokens == 15
    # SessionStarted; RunStarted+user message(+auto name); the tool round (the assistant's call, the
    # call recorded whole as one event, the tool message); the answer+outcome.
    assert session.version == versions[-1] == 1 + 3 + 3 + 2


async def test_a_second_writer_on_the_same_session_gets_a_concurrency_error(backend: Backend) -> None:
    async with backend.db() as db:
        one = await db.open_session("s")
        two = await db.open_session("s")
        await one.update_state({"k": 1})
        with pytest.raises(ConcurrencyError) as caught:
            await two.update_state({"k": 2})
        assert caught.value.actual_version == one.version
        for value in range(3, 8):  # one writer appending in a row never conflicts with itself
            await one.update_state({"k": value})
        assert await db.get_session_state("s") == {"k": 7}


async def test_a_failed_step_stores_nothing_and_can_be_retried(backend: Backend) -> None:
    async with backend.db() as db:
        session = await db.open_session("s")
        run = await session.start_run("r1")
        await run.flush()
        before = session.version

        async def crashing_step() -> None:
            async with run.step():
                run.message("assistant", "half an answer")
                raise RuntimeError("model crashed")

        with pytest.raises(RuntimeError, match="model crashed"):
            await crashing_step()
        assert await db.store.current_version("s") == before
        await run.fail("model crashed")
        view = await db.get_session("s")
    assert view.runs[0].status == "failed"
    assert [m.content for m in view.runs[0].messages] == []


async def test_the_storage_policy_keeps_what_is_left_out_away_from_the_log(backend: Backend) -> None:
    policy = StoragePolicy(store_tool_calls=False, store_media=False)
    async with backend.db() as db:
        session = await db.open_session("s", policy=policy)
        run = await session.start_run("r1")
        run.message("user", "earlier question", from_history=True)
        run.message("user", "now", media=(IMAGE,))
        await run.flush()
        await _turn(session, 2, with_tool=True)
        await session.add_media([IMAGE])
        events = [record.event async for record in db.store.read("s")]
    assert not any(isinstance(event, ToolCallStarted | ToolCallCompleted) for event in events)
    messages = [event for event in events if isinstance(event, MessageAdded)]
    # The run's user message repeats its input: stored once, in RunStarted, and referred to.
    assert [(m.content, m.content_from_input) for m in messages] == [("now", False), (None, True), ("answer 2", False)]
    assert all(not m.media and not m.tool_calls and m.role != "tool" for m in messages)


async def test_state_summary_and_names(backend: Backend) -> None:
    async def summarizer(view: SessionView) -> tuple[str, Sequence[str]]:
        return f"{len(view.runs)} runs so far", ("testing",)

    async with backend.db() as db:
        session = await db.open_session("s", session_state={"city": "Paris"})
        await session.update_state({"days": 3}, remove=["city"])
        await _turn(session, 1)
        await session.summarize(summarizer)
        await session.update_metadata({"tier": "gold"})
        assert await db.get_session_state("s") == {"days": 3}
        summary = await db.get_session_summary("s")
        assert summary is not None and (summary.summary, summary.topics) == ("1 runs so far", ("testing",))
        view = await db.get_session("s")
        assert view.session_name == "question 1", "named after the first user message"
        assert view.metadata == {"tier": "gold"}
        info = (await db.get_sessions())[0]
        assert info.name == "question 1"
        await session.rename("Chosen name")
        await _turn(session, 2)
        assert (await db.get_session("s")).session_name == "Chosen name"


async def test_history_reads_only_the_tail_it_needs_and_equals_the_full_fold(backend: Backend) -> None:
    async with backend.db() as db:
        session = await db.open_session("s")
        for number in range(1, 7):
            await _turn(session, number, with_tool=number % 2 == 0)
        failed = await session.start_run("failed-run")
        await failed.fail("boom")
        full = await db.get_session("s")
        for runs in (None, 0, 1, 2, 5, 10):
            for messages in (None, 0, 1, 2, 3, 5, 8, 100):
                for tools in (True, False):
                    expected = history_messages(
                        full.runs, num_history_runs=runs, num_history_messages=messages, include_tool_messages=tools
                    )
                    got = await db.get_history(
                        "s", num_history_runs=runs, num_history_messages=messages, include_tool_messages=tools
                    )
                    assert got == expected, (runs, messages, tools)
                    context = await db.get_context(
                        "s", num_history_runs=runs, num_history_messages=messages, include_tool_messages=tools
                    )
                    assert context == (expected, full.session_state), (runs, messages, tools)
        window = await db.get_history("s", num_history_runs=2)
        assert [m.content for m in window if m.role == "user"] == ["question 5", "question 6"]


async def test_the_view_cache_is_never_stale(backend: Backend) -> None:
    async with backend.db(cache_size=8) as db:
        session = await db.open_session("s")
        await _turn(session, 1)
        first = await db.get_session("s")
        assert await db.get_session("s") is first, "unchanged: served from the cache"
        await _turn(session, 2)
        second = await db.get_session("s")
        assert len(second.runs) == 2
        assert second == await db.get_session("s", version=session.version), "equal to an uncached read"
        await db.delete_session("s")
        with pytest.raises(SessionNotFoundError):
            await db.get_session("s")


async def test_state_read_from_its_checkpoint_equals_the_state_in_the_view(backend: Backend) -> None:
    async with backend.db(checkpoint_every=3) as db:
        session = await db.open_session("s", session_state={"a": 1})
        for step in range(8):
            if step % 3 == 0:
                await session.update_state({f"k{step}": step}, remove=["a"] if step == 3 else ())
            else:
                await _turn(session, step)
            assert await db.get_session_state("s") == (await db.get_session("s")).session_state
            assert (await db.get_context("s"))[1] == (await db.get_session("s")).session_state
        assert await db.store.load_snapshot("s", STATE_CHECKPOINT) is not None
        stale = Snapshot(
            session_id="s",
            name=STATE_CHECKPOINT,
            schema_version=STATE_SCHEMA_VERSION,
            version=session.version,
            data=b"\xc1",
        )
        await db.store.save_snapshot(stale)
        assert await db.get_session_state("s") == {"k0": 0, "k3": 3, "k6": 6}
        assert (await db.get_context("s"))[1] == {"k0": 0, "k3": 3, "k6": 6}


async def test_the_context_for_the_next_run_equals_history_and_state_read_apart(backend: Backend) -> None:
    """``get_context`` reads the window and the state together; past the tail it reads in one round
    trip it reads on, so that a long window and the state after many state changes come out whole."""
    async with backend.db(checkpoint_every=7) as db:
        session = await db.open_session("s", user_id="u", session_state={"a": 0})
        for number in range(1, 31):
            await _turn(session, number, with_tool=number % 3 == 0)
            if number % 4 == 0:
                await session.update_state({f"k{number}": number})
        full = await db.get_session("s")
        for runs, messages in ((None, None), (1, None), (3, None), (25, None), (None, 3), (None, 70), (0, None)):
            history = await db.get_history("s", num_history_runs=runs, num_history_messages=messages)
            context = await db.get_context("s", user_id="u", num_history_runs=runs, num_history_messages=messages)
            assert context == (history, full.session_state), (runs, messages)
        with pytest.raises(SessionNotFoundError):
            await db.get_context("s", user_id="someone else")
        with pytest.raises(SessionNotFoundError):
            await db.get_context("missing")
        with pytest.raises(InvalidArgumentError):
            await db.get_context("s", num_history_runs=-1)
        await db.delete_session("s")
        with pytest.raises(SessionNotFoundError):
            await db.get_context("s")


async def _records_of_run(db: BaseDb, run_id: str) -> list[str]:
    return [
        record.type
        async for record in db.store.read("s")
        if getattr(record.event, "run_id", None) == run_id or isinstance(record.event, SessionRenamed)
    ]


async def test_a_step_whose_answer_was_lost_after_commit_is_stored_once_when_flushed_again(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with backend.db() as db:
        session = await db.open_session("s")
        run = await session.start_run("r1")
        run.message("user", "what is the weather?")  # the step also names the session
        committed = db.store.append

        async def answer_lost(*args: Any, **options: Any) -> AppendResult:
            await committed(*args, **options)  # stored for real; only the answer never arrives
            raise StorageUnavailableError("PostgreSQL connection lost: after the commit")

        monkeypatch.setattr(db.store, "append", answer_lost)
        with pytest.raises(StorageUnavailableError):
            await run.flush()
        monkeypatch.undo()
        stored = await db.store.current_version("s")
        again = await run.flush()
        assert again is not None and again.to_version == stored, "the first call's result, nothing new"
        assert session.version == stored
        run.message("assistant", "sunny")
        await run.complete()
        types = await _records_of_run(db, "r1")
        assert session.version == await db.store.current_version("s")
    assert types == ["run_started", "message_added", "session_renamed", "message_added", "run_completed"]


async def test_a_flush_cancelled_after_the_commit_is_stored_once_when_flushed_again(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with backend.db() as db:
        session = await db.open_session("s", name="named")
        run = await session.start_run("r1")
        await run.flush()
        run.message("assistant", "part one")
        committed = db.store.append
        with anyio.CancelScope() as scope:

            async def cancelled_after_commit(*args: Any, **options: Any) -> AppendResult:
                result = await committed(*args, **options)
                scope.cancel()
                await anyio.lowlevel.checkpoint()  # the cancellation lands here, after the commit
                return result

            monkeypatch.setattr(db.store, "append", cancelled_after_commit)
            await run.flush()
        assert scope.cancelled_caught
        monkeypatch.undo()
        run.message("assistant", "part two")
        await run.flush()  # the cancelled step first (same ids: nothing new), then this one
        await run.complete()
        types = await _records_of_run(db, "r1")
    assert types == ["run_started", "message_added", "message_added", "run_completed"]


async def test_a_session_is_opened_and_read_by_the_same_callers(backend: Backend) -> None:
    """One rule for writers and readers: a caller with a user id reaches only that user's sessions; a
    caller without one (the application itself) reaches every session."""
    async with backend.db() as db:
        await db.open_session("alices", user_id="alice")
        await db.open_session("nobodys")
        versions = {name: await db.store.current_version(name) for name in ("alices", "nobodys")}
        for session_id in ("alices", "nobodys"):
            for caller in (None, "alice", "bob"):
                try:
                    await db.get_session(session_id, user_id=caller)
                    readable = True
                except SessionNotFoundError:
                    readable = False
                try:
                    writer = await db.open_session(session_id, user_id=caller)
                    await writer.update_state({"by": caller})
                    writable = True
                except SessionNotFoundError:
                    writable = False
                assert readable == writable, (session_id, caller)
                assert readable == (caller is None or (session_id, caller) == ("alices", "alice")), (session_id, caller)
        assert await db.store.current_version("alices") == versions["alices"] + 2, "alice and the application"
        assert await db.store.current_version("nobodys") == versions["nobodys"] + 1, "the application only"


async def test_a_refused_session_looks_like_an_unknown_one(backend: Backend) -> None:
    async with backend.db() as db:
        await db.open_session("alices", user_id="alice")
        await db.open_session("nobodys")
        refused: list[str] = []
        for session_id in ("alices", "nobodys", "unknown"):
            with pytest.raises(SessionNotFoundError) as caught:
                await db.open_session(session_id, user_id="bob", create=False)
            assert caught.value.session_id == session_id
            refused.append(str(caught.value).replace(session_id, "<id>"))
        assert len(set(refused)) == 1, refused
        assert await db.store.get_session_info("unknown") is None, "create=False starts nothing"
        own = await db.open_session("alices", user_id="alice", create=False)
        assert own.user_id == "alice"
        with pytest.raises(SessionNotFoundError):  # creating reveals no more: the id is taken
            await db.open_session("alices", user_id="bob")
        created = await db.open_session("bobs", user_id="bob")
        assert (await db.get_session("bobs", user_id="bob")).user_id == created.user_id == "bob"


async def test_a_step_refused_as_invalid_is_dropped_and_the_run_can_still_end(backend: Backend) -> None:
    async with backend.db() as db:
        session = await db.open_session("s", name="named")
        run = await session.start_run("r1")
        await run.flush()
        run.message("assistant", object())  # msgpack cannot encode it: never storable
        with pytest.raises(InvalidArgumentError):
            await run.flush()
        await run.fail("the model returned something unstorable")
        types = await _records_of_run(db, "r1")
    assert types == ["run_started", "run_failed"]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("agent_data", 5),
        ("team_data", "text"),
        ("workflow_data", [1]),
        ("metadata", 3.5),
        ("session_state", [1]),
        ("policy", 5),
        ("create", "yes"),
    ],
)
async def test_open_session_refuses_an_argument_of_the_wrong_type_and_stores_nothing(
    backend: Backend, argument: str, value: object
) -> None:
    async with backend.db() as db:
        with pytest.raises(InvalidArgumentError) as caught:
            await db.open_session("s", **{argument: value})
        assert caught.value.argument == argument
        assert await db.store.current_version("s") == 0


async def test_a_run_ending_retried_after_conflicts_is_stored_once(backend: Backend) -> None:
    async with backend.db() as db:
        mine = await db.open_session("s", name="named")
        other = await db.open_session("s")
        run = await mine.start_run("r1")
        run.message("user", "question")
        await other.update_state({"k": 1})
        with pytest.raises(ConcurrencyError):
            await run.flush()  # the step stays unsettled
        await other.update_state({"k": 2})
        await retry_on_conflict(mine, run.complete)  # the first attempt fails again, then it lands
        types = await _records_of_run(db, "r1")
    assert types == ["run_started", "message_added", "run_completed"]
