"""Sample events: one of every type with every field set, a small scripted conversation, and
extension event types (tags ``conformance.*``, registered when the kit is imported)."""

from __future__ import annotations

from kern_events._registry import register_event_type
from kern_events.events import (
    Event,
    ExternalExecution,
    InputField,
    MediaAdded,
    MediaReference,
    MessageAdded,
    MetadataUpdated,
    RequirementResolved,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunMetrics,
    RunPaused,
    RunResumed,
    RunStarted,
    SessionRenamed,
    SessionStarted,
    SessionStateChanged,
    SummaryUpdated,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
    ToolConfirmation,
    UserInput,
)

IMAGE = MediaReference(
    media_id="m1", kind="image", url="https://example.com/cat.png", mime_type="image/png", name="cat", size=1234
)


def every_event_type() -> list[Event]:
    """One event of every type, with non-default values in every field."""
    return [
        SessionStarted(
            session_type="team",
            agent_id="agent-1",
            team_id="team-1",
            workflow_id="wf-1",
            user_id="alice@example.com",
            name="Trip planning",
            agent_data={"model": "gpt-x"},
            team_data={"members": ["a", "b"]},
            workflow_data={"steps": 3},
            metadata={"source": "test"},
            session_data={"session_state": {"city": "Paris"}},
        ),
        RunStarted(
            run_id="r1",
            parent_run_id="r0",
            agent_id="agent-1",
            team_id="team-1",
            workflow_id="wf-1",
            user_id="alice@example.com",
            input={"text": "hello"},
            model_id="gpt-x",
            model_provider="openai",
        ),
        MessageAdded(
            run_id="r1",
            role="assistant",
            content="calling a tool",
            name="planner",
            tool_call_id="c0",
            tool_calls=(ToolCallRequest(tool_call_id="c1", tool_name="weather", arguments={"city": "Paris"}),),
            media=(IMAGE,),
            message_id="msg-1",
        ),
        ToolCallStarted(run_id="r1", tool_call_id="c1", tool_name="weather", arguments={"city": "Paris"}),
        ToolCallCompleted(
            run_id="r1", tool_call_id="c1", tool_name="weather", result={"temp": 21}, error="none", duration=0.25
        ),
        SessionStateChanged(set={"city": "Lyon", "n": 2}, removed=("old",)),
        RunPaused(
            run_id="r1",
            requirements=(
                ToolConfirmation(requirement_id="q1", tool_call_id="c2", tool_name="book", arguments={"x": 1}),
                UserInput(
                    requirement_id="q2",
                    fields=(InputField(name="date", field_type="date", description="when"),),
                    prompt="When?",
                ),
                ExternalExecution(requirement_id="q3", tool_call_id="c3", tool_name="pay", arguments={"eur": 5}),
            ),
        ),
        RequirementResolved(
            run_id="r1", requirement_id="q1", confirmed=True, values={"date": "2026-12-01"}, result=[1], note="ok"
        ),
        RunResumed(run_id="r1"),
        RunCompleted(
            run_id="r1",
            output="done",
            metrics=RunMetrics(
                input_tokens=10, output_tokens=20, total_tokens=30, duration=1.5, model_id="gpt-x", model_provider="o"
            ),
        ),
        RunFailed(run_id="r2", error="boom", metrics=RunMetrics(input_tokens=1, total_tokens=1)),
        RunCancelled(run_id="r3", reason="user left"),
        SummaryUpdated(summary="Alice plans a trip", topics=("travel", "paris")),
        SessionRenamed(name="Paris trip"),
        MetadataUpdated(set={"tier": "gold"}, removed=("source",)),
        MediaAdded(media=(IMAGE,), run_id="r1"),
    ]


def stored_once() -> list[Event]:
    """The shapes the session writer stores for values said once elsewhere in the run: a user
    message repeating the run's input, a tool message repeating its call's result, a call recorded
    whole with its message's arguments, an output repeating the last message (each field flagged)."""
    return [
        MessageAdded(run_id="r1", role="user", content_from_input=True),
        MessageAdded(run_id="r1", role="tool", tool_call_id="c1", content_from_tool_result=True),
        ToolCallCompleted(run_id="r1", tool_call_id="c1", tool_name="weather", arguments_from_message=True),
        RunCompleted(run_id="r1", output_from_message=True),
    ]


def conversation(user_id: str = "alice@example.com", runs: int = 2) -> list[list[Event]]:
    """A short agent conversation as the batches a runtime would append, one per run step."""
    batches: list[list[Event]] = [
        [SessionStarted(session_type="agent", agent_id="agent-1", user_id=user_id, agent_data={"model": "m"})]
    ]
    for number in range(1, runs + 1):
        run_id = f"run-{number}"
        batches.append(
            [
                RunStarted(run_id=run_id, input=f"question {number}", model_id="m", model_provider="p"),
                MessageAdded(run_id=run_id, role="user", content=f"question {number}"),
                MessageAdded(run_id=run_id, role="assistant", content=f"answer {number}"),
                SessionStateChanged(set={"turns": number}),
                RunCompleted(run_id=run_id, metrics=RunMetrics(input_tokens=3, output_tokens=5, total_tokens=8)),
            ]
        )
    return batches


@register_event_type
class ConformanceNote(Event, tag="conformance.note", frozen=True):
    """An extension event as a third party declares one: namespaced tag, nested values, a run id."""

    text: str
    tags: tuple[str, ...] = ()
    detail: dict[str, int] = {}  # noqa: RUF012 - msgspec copies mutable defaults
    run_id: str | None = None


@register_event_type
class ConformanceCounter(Event, tag="conformance.counter", frozen=True):
    """A second extension event type, to filter reads by one of two."""

    by: int = 1
