"""Values an event refers to instead of storing them again, and the one rule that writes them out.

A step would often store a value twice: a user message repeating its run's input, a tool call's
arguments repeating the assistant's request, a tool message repeating the call's result, a run's
output repeating its last message. The session API stores the later copy as a flag (:func:`shorten`);
every reader writes it out again with :func:`resolve`, looking the value up in what the run said
before: :class:`Remembered` as the events go by (the writer's step, the replay), :class:`InRun` in a
run's view (the run fold, the sessions page). Both answer the same four questions the same way, so a
reader gets back the bytes the writer left out.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Final, Protocol, TypeVar

import msgspec

from kern_events.events import MessageAdded, RunCompleted, RunStarted, ToolCallCompleted, ToolCallStarted

T = TypeVar("T")


class _Unknown(enum.Enum):
    UNKNOWN = "unknown"


UNKNOWN: Final = _Unknown.UNKNOWN
"""What a lookup answers when the reader has not seen the value (a log truncated before it)."""


class Said(Protocol):
    """What a run said before the event being read; each answer is :data:`UNKNOWN` if not seen."""

    def input(self, run_id: str) -> Any:
        """The run's ``RunStarted.input``."""

    def result(self, run_id: str, tool_call_id: str) -> Any:
        """The result of the call's latest event: ``None`` while it runs again or after it failed."""

    def arguments(self, run_id: str, tool_call_id: str) -> Any:
        """The arguments of the call's latest request in the run's messages."""

    def last_content(self, run_id: str) -> Any:
        """The content of the run's last message, as it was read."""


def content(event: MessageAdded, said: Said) -> Any:
    """The message's content, its own or the value it refers to (:data:`UNKNOWN` if ``said`` lacks it)."""
    if event.content_from_input:
        return said.input(event.run_id)
    if event.content_from_tool_result:
        return UNKNOWN if event.tool_call_id is None else said.result(event.run_id, event.tool_call_id)
    return event.content


def arguments(event: ToolCallCompleted, said: Said) -> Any:
    """The call's arguments, its own or those it refers to (:data:`UNKNOWN` if ``said`` lacks them)."""
    return said.arguments(event.run_id, event.tool_call_id) if event.arguments_from_message else event.arguments


def output(event: RunCompleted, said: Said) -> Any:
    """The run's output, its own or the one it refers to (:data:`UNKNOWN` if ``said`` lacks it)."""
    return said.last_content(event.run_id) if event.output_from_message else event.output


def resolve(event: T, said: Said) -> T:
    """``event`` with each value it refers to written out from ``said`` (its flag cleared); a flag
    whose value ``said`` lacks stays."""
    replace = msgspec.structs.replace
    if isinstance(event, MessageAdded) and (event.content_from_input or event.content_from_tool_result):
        value = content(event, said)
        if value is not UNKNOWN:
            return replace(event, content=value, content_from_input=False, content_from_tool_result=False)
    elif isinstance(event, ToolCallCompleted) and event.arguments_from_message:
        value = arguments(event, said)
        if value is not UNKNOWN:
            return replace(event, arguments=value, arguments_from_message=False)
    elif isinstance(event, RunCompleted) and event.output_from_message:
        value = output(event, said)
        if value is not UNKNOWN:
            return replace(event, output=value, output_from_message=False)
    return event


def shorten(event: T, said: Said) -> T:
    """``event`` with a value it repeats from ``said`` left out and flagged, where :func:`resolve`
    gets the same bytes back; text only for an input or an output."""
    replace = msgspec.structs.replace
    if isinstance(event, MessageAdded):
        if event.role == "user" and _same_text(said.input(event.run_id), event.content):
            return replace(event, content=None, content_from_input=True)
        if (
            event.role == "tool"
            and event.tool_call_id is not None
            and _same_value(said.result(event.run_id, event.tool_call_id), event.content)
        ):
            return replace(event, content=None, content_from_tool_result=True)
    elif isinstance(event, ToolCallCompleted):
        if event.arguments and _same_value(said.arguments(event.run_id, event.tool_call_id), event.arguments):
            return replace(event, arguments=None, arguments_from_message=True)
    elif isinstance(event, RunCompleted) and _same_text(said.last_content(event.run_id), event.output):
        return replace(event, output=None, output_from_message=True)
    return event


def _same_text(one: Any, other: Any) -> bool:
    return isinstance(one, str) and isinstance(other, str) and one == other


def _same_value(one: Any, other: Any) -> bool:
    """Whether two values are stored as the same bytes (so either reads back as the other would)."""
    if one is None or other is None or one is UNKNOWN or other is UNKNOWN:
        return False
    if isinstance(one, str) or isinstance(other, str):
        return type(one) is type(other) and one == other
    try:
        return bool(msgspec.msgpack.encode(one) == msgspec.msgpack.encode(other))
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.MsgspecError):
        return False


class Remembered:
    """What runs said, remembered from the events :meth:`note` is given in log order."""

    __slots__ = ("_arguments", "_inputs", "_last", "_results")

    def __init__(self) -> None:
        self._inputs: dict[str, Any] = {}
        self._results: dict[tuple[str, str], Any] = {}
        self._arguments: dict[tuple[str, str], Any] = {}
        self._last: dict[str, Any] = {}

    def note(self, event: object) -> None:
        """Remember what ``event`` (as it was read) says that a later event may refer to."""
        if isinstance(event, RunStarted):
            self._inputs[event.run_id] = event.input
        elif isinstance(event, ToolCallStarted | ToolCallCompleted):
            result = event.result if isinstance(event, ToolCallCompleted) else None
            self._results[(event.run_id, event.tool_call_id)] = result
        elif isinstance(event, MessageAdded):
            for request in event.tool_calls:
                self._arguments[(event.run_id, request.tool_call_id)] = request.arguments
            self._last[event.run_id] = event.content

    def input(self, run_id: str) -> Any:
        return self._inputs.get(run_id, UNKNOWN)

    def result(self, run_id: str, tool_call_id: str) -> Any:
        return self._results.get((run_id, tool_call_id), UNKNOWN)

    def arguments(self, run_id: str, tool_call_id: str) -> Any:
        return self._arguments.get((run_id, tool_call_id), UNKNOWN)

    def last_content(self, run_id: str) -> Any:
        return self._last.get(run_id, UNKNOWN)


class _Call(Protocol):
    @property
    def tool_call_id(self) -> str: ...
    @property
    def result(self) -> Any: ...


class _Message(Protocol):
    @property
    def content(self) -> Any: ...
    @property
    def tool_calls(self) -> Sequence[Any]: ...


class _Run(Protocol):
    @property
    def input(self) -> Any: ...
    @property
    def messages(self) -> Sequence[_Message]: ...
    @property
    def tool_calls(self) -> Sequence[_Call]: ...


class InRun:
    """What one run said, read from its view (``projections.runs.RunView``) before the event or just
    after it: no event changes what it refers to itself."""

    __slots__ = ("run",)

    def __init__(self, run: _Run) -> None:
        self.run = run

    def input(self, run_id: str) -> Any:
        return self.run.input

    def result(self, run_id: str, tool_call_id: str) -> Any:
        for call in reversed(self.run.tool_calls):
            if call.tool_call_id == tool_call_id:
                return call.result
        return UNKNOWN

    def arguments(self, run_id: str, tool_call_id: str) -> Any:
        for message in reversed(self.run.messages):
            for request in reversed(message.tool_calls):
                if request.tool_call_id == tool_call_id:
                    return request.arguments
        return UNKNOWN

    def last_content(self, run_id: str) -> Any:
        return self.run.messages[-1].content if self.run.messages else UNKNOWN
