"""Run, message, tool-call and requirement views, and the fold steps that build a run from its events.

Each step is a pure function ``(run, event, recorded_at) -> run`` on frozen views. A run holds tens
of messages, so rebuilding its small tuples per event is cheap; the session fold keeps runs in a dict
so a long session never copies its whole run list per event.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from kern_events._compress import CHECKPOINT_COMPRESS_ABOVE, compress, decompress
from kern_events._references import UNKNOWN, InRun, arguments, content, output
from kern_events.events import (
    Event,
    MediaAdded,
    MediaReference,
    MessageAdded,
    Requirement,
    RequirementResolved,
    Role,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunMetrics,
    RunPaused,
    RunResumed,
    RunStarted,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
)

__all__ = [
    "RUN_SCHEMA_VERSION",
    "MessageView",
    "RequirementStatus",
    "RequirementView",
    "RunStatus",
    "RunView",
    "ToolCallStatus",
    "ToolCallView",
    "apply_to_run",
    "decode_run",
    "encode_run",
    "new_run",
]

RUN_SCHEMA_VERSION = 1
"""Bumped whenever :class:`RunView`'s shape changes, so older run checkpoints are rebuilt, not misread."""

RunStatus = Literal["running", "paused", "completed", "failed", "cancelled"]
ToolCallStatus = Literal["running", "completed", "failed"]
RequirementStatus = Literal["open", "resolved"]


class MessageView(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a run, in the order it was recorded."""

    role: Role
    content: Any = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    media: tuple[MediaReference, ...] = ()
    message_id: str | None = None
    created_at: int


class ToolCallView(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call: what was called with which arguments, and how it ended."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = {}
    status: ToolCallStatus = "running"
    result: Any = None
    error: str | None = None
    duration: float | None = None
    started_at: int
    completed_at: int | None = None


class RequirementView(msgspec.Struct, frozen=True, kw_only=True):
    """A requirement of a paused run, and its resolution once it has one."""

    requirement: Requirement
    status: RequirementStatus = "open"
    confirmed: bool | None = None
    values: dict[str, Any] | None = None
    result: Any = None
    note: str | None = None
    resolved_at: int | None = None

    @property
    def requirement_id(self) -> str:
        """The requirement's id, unique within its run."""
        return self.requirement.requirement_id


class RunView(msgspec.Struct, frozen=True, kw_only=True):
    """One run of the session: its status, messages, tool calls, requirements, metrics and times."""

    run_id: str
    parent_run_id: str | None = None
    agent_id: str | None = None
    team_id: str | None = None
    workflow_id: str | None = None
    user_id: str | None = None
    status: RunStatus = "running"
    input: Any = None
    model_id: str | None = None
    model_provider: str | None = None
    messages: tuple[MessageView, ...] = ()
    tool_calls: tuple[ToolCallView, ...] = ()
    requirements: tuple[RequirementView, ...] = ()
    media: tuple[MediaReference, ...] = ()
    output: Any = None
    error: str | None = None
    metrics: RunMetrics | None = None
    created_at: int
    updated_at: int

    @property
    def open_requirements(self) -> tuple[RequirementView, ...]:
        """Requirements still waiting for a resolution."""
        return tuple(item for item in self.requirements if item.status == "open")


def new_run(event: RunStarted, at: int) -> RunView:
    """The view of a run that has just started."""
    return RunView(
        run_id=event.run_id,
        parent_run_id=event.parent_run_id,
        agent_id=event.agent_id,
        team_id=event.team_id,
        workflow_id=event.workflow_id,
        user_id=event.user_id,
        input=event.input,
        model_id=event.model_id,
        model_provider=event.model_provider,
        created_at=at,
        updated_at=at,
    )


def apply_to_run(run: RunView, event: Event, at: int) -> RunView:
    """The run after one of its events; an event that does not concern runs leaves it unchanged."""
    replace = msgspec.structs.replace
    if isinstance(event, MessageAdded):
        message = MessageView(
            role=event.role,
            content=_known(content(event, InRun(run))),
            name=event.name,
            tool_call_id=event.tool_call_id,
            tool_calls=event.tool_calls,
            media=event.media,
            message_id=event.message_id,
            created_at=at,
        )
        return replace(run, messages=(*run.messages, message), updated_at=at)
    if isinstance(event, ToolCallStarted):
        call = ToolCallView(
            tool_call_id=event.tool_call_id,
            tool_name=event.tool_name,
            arguments=event.arguments,
            started_at=at,
        )
        return replace(run, tool_calls=(*run.tool_calls, call), updated_at=at)
    if isinstance(event, ToolCallCompleted):
        if event.arguments_from_message:
            event = replace(event, arguments=_known(arguments(event, InRun(run))))
        return replace(run, tool_calls=_complete_tool_call(run.tool_calls, event, at), updated_at=at)
    if isinstance(event, RunPaused):
        added = tuple(RequirementView(requirement=item) for item in event.requirements)
        return replace(run, status="paused", requirements=(*run.requirements, *added), updated_at=at)
    if isinstance(event, RequirementResolved):
        requirements = tuple(
            replace(
                item,
                status="resolved",
                confirmed=event.confirmed,
                values=event.values,
                result=event.result,
                note=event.note,
                resolved_at=at,
            )
            if item.requirement_id == event.requirement_id and item.status == "open"
            else item
            for item in run.requirements
        )
        return replace(run, requirements=requirements, updated_at=at)
    if isinstance(event, RunResumed):
        return replace(run, status="running", updated_at=at)
    if isinstance(event, RunCompleted):
        said = _known(output(event, InRun(run)))
        return replace(run, status="completed", output=said, metrics=event.metrics, updated_at=at)
    if isinstance(event, RunFailed):
        return replace(run, status="failed", error=event.error, metrics=event.metrics, updated_at=at)
    if isinstance(event, RunCancelled):
        return replace(run, status="cancelled", error=event.reason, updated_at=at)
    if isinstance(event, MediaAdded):
        return replace(run, media=(*run.media, *event.media), updated_at=at)
    return run


def _known(value: Any) -> Any:
    """A value a run's event refers to, ``None`` if the run does not hold it."""
    return None if value is UNKNOWN else value


def _complete_tool_call(calls: tuple[ToolCallView, ...], event: ToolCallCompleted, at: int) -> tuple[ToolCallView, ...]:
    """The calls after a completion: it finishes the newest call of its id if that one is still
    running; otherwise (a call recorded whole, or an id used again once its call finished, as models
    that number calls per turn do) it is a call of its own, so no finished call's result is replaced."""
    status: ToolCallStatus = "failed" if event.error is not None else "completed"
    done = {
        "status": status,
        "result": event.result,
        "error": event.error,
        "duration": event.duration,
        "completed_at": at,
    }
    for index in range(len(calls) - 1, -1, -1):
        if calls[index].tool_call_id == event.tool_call_id:
            if calls[index].status != "running":
                break
            updated = msgspec.structs.replace(calls[index], **done)
            return (*calls[:index], updated, *calls[index + 1 :])
    started = ToolCallView(
        tool_call_id=event.tool_call_id, tool_name=event.tool_name, arguments=event.arguments or {}, started_at=at
    )
    return (*calls, msgspec.structs.replace(started, **done))


_run_encoder = msgspec.msgpack.Encoder()
_run_decoder = msgspec.msgpack.Decoder(RunView)


def encode_run(run: RunView) -> bytes:
    """A run's checkpoint bytes (compressed above :data:`~kern_events._compress.CHECKPOINT_COMPRESS_ABOVE`)."""
    return compress(_run_encoder.encode(run), CHECKPOINT_COMPRESS_ABOVE)


def decode_run(data: bytes) -> RunView:
    """A run from checkpoint bytes, compressed or not; raises ``msgspec.DecodeError``/``ValidationError`` if
    they do not fit."""
    return _run_decoder.decode(decompress(data))
