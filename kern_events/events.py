"""Every event type a session's log can hold, and the ``Event`` union of them.

Events are immutable msgspec Structs in one tagged union: the tag (``type``) names the event in the
log, so it must never change once released. Events carry facts only; when they were recorded is the
store's business (each record carries ``recorded_at``), which keeps folds free of clocks.
Integrations add event types of their own (tags ``"vendor.name"``) with
:func:`kern_events.register_event_type`; ``EVENT_TYPES`` and ``AnyEvent`` are the built-in ones only.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import msgspec

__all__ = [
    "EVENT_TYPES",
    "AnyEvent",
    "Event",
    "ExternalExecution",
    "InputField",
    "MediaAdded",
    "MediaKind",
    "MediaReference",
    "MessageAdded",
    "MetadataUpdated",
    "Requirement",
    "RequirementResolved",
    "Role",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunMetrics",
    "RunPaused",
    "RunResumed",
    "RunStarted",
    "SessionRenamed",
    "SessionStarted",
    "SessionStateChanged",
    "SessionType",
    "SummaryUpdated",
    "ToolCallCompleted",
    "ToolCallRequest",
    "ToolCallStarted",
    "ToolConfirmation",
    "UserInput",
]

SessionType = str
"""What kind of session this is: ``"agent"``, ``"team"`` or ``"workflow"`` for the reference runtimes, or
any identifier an integration chooses (``"langgraph"``, ``"openai-agents"``): a non-blank string without
control characters, 255 characters at most, checked when the session is started and when listing."""
Role = Literal["system", "user", "assistant", "tool"]
MediaKind = Literal["image", "audio", "video", "file"]


class _Part(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A value nested inside an event (not an event itself)."""


class MediaReference(_Part, frozen=True):
    """A pointer to media stored elsewhere (kern-events stores references, not the bytes)."""

    media_id: str
    kind: MediaKind
    url: str | None = None
    mime_type: str | None = None
    name: str | None = None
    size: int | None = None


class ToolCallRequest(_Part, frozen=True):
    """A tool call as the model asked for it inside an assistant message."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = {}


class RunMetrics(_Part, frozen=True):
    """Token usage and timing of a run."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    duration: float | None = None
    model_id: str | None = None
    model_provider: str | None = None


class InputField(_Part, frozen=True):
    """One named, typed field a paused run asks the user to fill in."""

    name: str
    field_type: str = "str"
    description: str | None = None


class _RequirementBase(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="kind"):
    """What a paused run waits for; ``requirement_id`` is unique within the run."""

    requirement_id: str


class ToolConfirmation(_RequirementBase, tag="tool_confirmation", frozen=True):
    """A tool call waiting for a person to confirm or reject it."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = {}


class UserInput(_RequirementBase, tag="user_input", frozen=True):
    """Named fields the user must fill in before the run continues."""

    fields: tuple[InputField, ...]
    prompt: str | None = None


class ExternalExecution(_RequirementBase, tag="external_execution", frozen=True):
    """A tool call to be executed outside the process; its result is handed back."""

    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = {}


Requirement = ToolConfirmation | UserInput | ExternalExecution


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="type"):
    """Base of every event; ``schema_version`` is bumped when a released event's shape changes."""

    schema_version: ClassVar[int] = 1


class SessionStarted(Event, tag="session_started", frozen=True):
    """A session came into being, with its owner and the configuration of its agent, team or workflow."""

    session_type: SessionType
    agent_id: str | None = None
    team_id: str | None = None
    workflow_id: str | None = None
    user_id: str | None = None
    name: str | None = None
    agent_data: dict[str, Any] | None = None
    team_data: dict[str, Any] | None = None
    workflow_data: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    session_data: dict[str, Any] | None = None


class RunStarted(Event, tag="run_started", frozen=True):
    """A run (one turn of an agent, team or workflow) began."""

    run_id: str
    parent_run_id: str | None = None
    agent_id: str | None = None
    team_id: str | None = None
    workflow_id: str | None = None
    user_id: str | None = None
    input: Any = None
    model_id: str | None = None
    model_provider: str | None = None


class MessageAdded(Event, tag="message_added", frozen=True):
    """A message of a run: user input, model output, a system prompt or a tool result."""

    run_id: str
    role: Role
    content: Any = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    media: tuple[MediaReference, ...] = ()
    message_id: str | None = None
    content_from_input: bool = False
    """The content is the run's ``RunStarted.input``, stored once there (``content`` is left ``None``)."""
    content_from_tool_result: bool = False
    """The content is the result of the run's tool call ``tool_call_id``, stored once in its
    ``ToolCallCompleted`` (``content`` is left ``None``)."""


class ToolCallStarted(Event, tag="tool_call_started", frozen=True):
    """A tool began executing."""

    run_id: str
    tool_call_id: str
    tool_name: str
    arguments: dict[str, Any] = {}


class ToolCallCompleted(Event, tag="tool_call_completed", frozen=True):
    """A tool finished, with its result or its error, and how long it took (seconds).

    A call recorded whole, started and finished in one step, is this event alone, with its
    ``arguments`` (``{}`` for none); one whose start was recorded before leaves them ``None``, to its
    :class:`ToolCallStarted`.
    """

    run_id: str
    tool_call_id: str
    tool_name: str
    result: Any = None
    error: str | None = None
    duration: float | None = None
    arguments: dict[str, Any] | None = None
    arguments_from_message: bool = False
    """A call recorded whole whose arguments are those of the request ``tool_call_id`` in one of the
    run's assistant messages, stored once there (``arguments`` is left ``None``)."""


class SessionStateChanged(Event, tag="session_state_changed", frozen=True):
    """Keys of the session state were set or removed (removal applies after setting)."""

    set: dict[str, Any] = {}
    removed: tuple[str, ...] = ()


class RunPaused(Event, tag="run_paused", frozen=True):
    """A run stopped half way, waiting for its requirements to be resolved."""

    run_id: str
    requirements: tuple[Requirement, ...]


class RequirementResolved(Event, tag="requirement_resolved", frozen=True):
    """A requirement of a paused run was resolved: confirmed or rejected, inputs given, or a result."""

    run_id: str
    requirement_id: str
    confirmed: bool | None = None
    values: dict[str, Any] | None = None
    result: Any = None
    note: str | None = None


class RunResumed(Event, tag="run_resumed", frozen=True):
    """A paused run continued."""

    run_id: str


class RunCompleted(Event, tag="run_completed", frozen=True):
    """A run finished successfully."""

    run_id: str
    output: Any = None
    metrics: RunMetrics = RunMetrics()
    output_from_message: bool = False
    """The output is the content of the run's last message, stored once there (``output`` is left ``None``)."""


class RunFailed(Event, tag="run_failed", frozen=True):
    """A run ended with an error."""

    run_id: str
    error: str
    metrics: RunMetrics | None = None


class RunCancelled(Event, tag="run_cancelled", frozen=True):
    """A run was cancelled before it finished."""

    run_id: str
    reason: str | None = None


class SummaryUpdated(Event, tag="summary_updated", frozen=True):
    """The session's summary was (re)written."""

    summary: str
    topics: tuple[str, ...] = ()


class SessionRenamed(Event, tag="session_renamed", frozen=True):
    """The session got a new display name."""

    name: str


class MetadataUpdated(Event, tag="metadata_updated", frozen=True):
    """Keys of the session's metadata were set or removed."""

    set: dict[str, Any] = {}
    removed: tuple[str, ...] = ()


class MediaAdded(Event, tag="media_added", frozen=True):
    """Media were attached to the session, or to one of its runs."""

    media: tuple[MediaReference, ...]
    run_id: str | None = None


AnyEvent = (
    SessionStarted
    | RunStarted
    | MessageAdded
    | ToolCallStarted
    | ToolCallCompleted
    | SessionStateChanged
    | RunPaused
    | RequirementResolved
    | RunResumed
    | RunCompleted
    | RunFailed
    | RunCancelled
    | SummaryUpdated
    | SessionRenamed
    | MetadataUpdated
    | MediaAdded
)
"""The tagged union of every event type; decoding picks the type from the ``type`` tag."""

EVENT_TYPES: dict[str, type[Event]] = {str(cls.__struct_config__.tag): cls for cls in AnyEvent.__args__}
"""Every event class by its tag."""
