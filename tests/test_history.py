"""History windows: the last runs or messages, never splitting a tool call from its results."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kern_events import (
    MessageAdded,
    RunCompleted,
    RunStarted,
    SessionStarted,
    SessionStateChanged,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
    event_id_for,
)
from kern_events.events import Event
from kern_events.records import Record
from projections import MessageView, RunView, fold_records, history_messages, last_messages, runs_for_history
from projections.session import fold_runs


def _message(role: str, content: object = "text", **fields: object) -> MessageView:
    return MessageView(role=role, content=content, created_at=0, **fields)  # type: ignore[arg-type]


@st.composite
def transcripts(draw: st.DrawFn) -> list[MessageView]:
    """Turns of: a user message, then assistant tool-call rounds (each followed by all its results),
    then a final answer; now and then a system prompt."""
    messages: list[MessageView] = []
    call = 0
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            messages.append(_message("system", "be brief"))
        messages.append(_message("user", "question"))
        for _ in range(draw(st.integers(0, 3))):
            ids = [f"call-{call + n}" for n in range(draw(st.integers(1, 3)))]
            call += len(ids)
            content = draw(st.sampled_from([None, "", "let me check"]))
            requests = tuple(ToolCallRequest(tool_call_id=i, tool_name="tool") for i in ids)
            messages.append(_message("assistant", content, tool_calls=requests))
            messages += [_message("tool", "result", tool_call_id=i) for i in draw(st.permutations(ids))]
        messages.append(_message("assistant", "answer"))
    return messages


def _pairs_whole(window: list[MessageView]) -> bool:
    """Every tool result's call is in the window before it, and every call's results are there."""
    called: set[str] = set()
    answered = {message.tool_call_id for message in window if message.role == "tool"}
    for message in window:
        if message.role == "tool" and message.tool_call_id not in called:
            return False
        called.update(request.tool_call_id for request in message.tool_calls)
    return called <= answered


@settings(max_examples=200, deadline=None)
@given(transcripts())
def test_no_window_size_splits_a_tool_call_from_its_result(messages: list[MessageView]) -> None:
    kept = [message for message in messages if message.role != "system"]
    for limit in range(len(kept) + 2):
        window = last_messages(messages, limit)
        assert len(window) <= limit
        assert window == kept[len(kept) - len(window) :], "a suffix, in order"
        assert _pairs_whole(window)
        longer = [kept[start:] for start in range(len(kept) - len(window)) if len(kept) - start <= limit]
        assert not any(_pairs_whole(candidate) for candidate in longer), "the longest whole window"


@settings(max_examples=100, deadline=None)
@given(transcripts(), st.integers(0, 40))
def test_without_tool_messages_no_tool_traffic_remains(messages: list[MessageView], limit: int) -> None:
    window = last_messages(messages, limit, include_tool_messages=False)
    assert len(window) <= limit
    assert all(message.role in ("user", "assistant") and not message.tool_calls for message in window)
    assert all(message.content not in (None, "") for message in window)


def _run(run_id: str, status: str = "completed", parent: str | None = None) -> RunView:
    messages = (_message("user", f"{run_id}?"), _message("assistant", f"{run_id}!"))
    return RunView(
        run_id=run_id,
        status=status,
        parent_run_id=parent,
        messages=messages,
        created_at=0,
        updated_at=0,  # type: ignore[arg-type]
    )


def test_history_takes_the_last_completed_top_level_runs_in_order() -> None:
    runs = [
        _run("r1"),
        _run("r2"),
        _run("member", parent="r2"),
        _run("r3", status="failed"),
        _run("r4"),
        _run("r5", status="running"),
    ]
    assert [run.run_id for run in runs_for_history(runs, num_history_runs=2)] == ["r2", "r4"]
    assert [run.run_id for run in runs_for_history(runs)] == ["r1", "r2", "r4"]
    assert runs_for_history(runs, num_history_runs=0) == []
    assert [m.content for m in history_messages(runs, num_history_runs=2)] == ["r2?", "r2!", "r4?", "r4!"]
    assert [m.content for m in history_messages(runs, num_history_messages=3)] == ["r2!", "r4?", "r4!"]
    assert [run.run_id for run in runs_for_history(runs, exclude_run_id="r4")] == ["r1", "r2"]


def test_the_runs_of_a_window_fold_as_the_whole_session_fold_builds_them() -> None:
    """``fold_runs`` (what a history window folds) gives the runs the session fold gives: run events
    applied to their run, others ignored, a session start again dropping the runs before it."""
    events: list[Event] = [SessionStarted(session_type="agent"), MessageAdded(run_id="stray", role="user", content="x")]
    for number in range(3):
        run_id = f"run-{number}"
        events += [
            RunStarted(run_id=run_id, input="q"),
            MessageAdded(run_id=run_id, role="user", content=f"question {number}"),
            SessionStateChanged(set={"turn": number}),
            ToolCallStarted(run_id=run_id, tool_call_id=f"c{number}", tool_name="tool"),
            ToolCallCompleted(run_id=run_id, tool_call_id=f"c{number}", tool_name="tool", result="ok"),
            RunCompleted(run_id=run_id, output=f"answer {number}"),
        ]
        if number == 0:
            events.append(SessionStarted(session_type="agent"))  # restarted: run-0 is gone
    records = [
        Record(session_id="s", version=n, position=n, event_id=event_id_for("s", n), recorded_at=1_000.0, event=event)
        for n, event in enumerate(events, start=1)
    ]
    view = fold_records(records)
    assert view is not None
    assert [run.run_id for run in view.runs] == ["run-1", "run-2"]
    assert fold_runs(records) == view.runs
    assert fold_runs(records[9:]) == fold_records(records[9:]).runs  # type: ignore[union-attr]
