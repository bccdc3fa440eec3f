"""The ``Model`` protocol the reference runtime talks to, and a deterministic model for tests and demos.

A model takes the conversation so far and the tools it may call, and answers with a message, tool
calls, or both, plus its token usage. :class:`MemoryModel` needs no network: it follows a few plain
rules and, above all, answers "what's my name?" only from the context it is given, so a test can
prove that stored history reaches the model (and that without history it cannot know).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from kern_events.events import Role, ToolCallRequest
from projections.runs import MessageView

__all__ = ["MemoryModel", "Model", "ModelMessage", "ModelResponse", "ToolSpec", "context_messages"]


class ModelMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a model's input."""

    role: Role
    content: Any = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCallRequest, ...] = ()


def context_messages(instructions: str | None, history: Sequence[MessageView]) -> list[ModelMessage]:
    """A model's input before the new turn: the instructions as a system message, then the history."""
    messages = [ModelMessage(role="system", content=instructions)] if instructions else []
    messages += [
        ModelMessage(role=m.role, content=m.content, name=m.name, tool_call_id=m.tool_call_id, tool_calls=m.tool_calls)
        for m in history
    ]
    return messages


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool as a model sees it: its name, what it does, and its parameters' names."""

    name: str
    description: str = ""
    parameters: tuple[str, ...] = ()


class ModelResponse(msgspec.Struct, frozen=True, kw_only=True):
    """A model's answer: content, tool calls to make, and the tokens it used."""

    content: str | None = None
    tool_calls: tuple[ToolCallRequest, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0


class Model(Protocol):
    """What the reference runtime needs from a model."""

    id: str
    provider: str

    async def respond(self, messages: Sequence[ModelMessage], tools: Sequence[ToolSpec]) -> ModelResponse:
        """Answer the conversation ``messages``, possibly by asking for tool calls."""
        ...


_NAME = re.compile(r"\bmy name is ([A-Z][\w-]*)", re.IGNORECASE)
_ASKS_NAME = re.compile(r"\bwhat'?s my name\b|\bwhat is my name\b|\bwho am i\b", re.IGNORECASE)
_CITY_TOOLS = (
    (re.compile(r"\bweather in ([A-Z][\w-]*)", re.IGNORECASE), "get_weather", "The weather in {city}: {result}."),
    (
        re.compile(r"\bbook (?:a |me a )?flight to ([A-Z][\w-]*)", re.IGNORECASE),
        "book_flight",
        "Flight to {city}: {result}.",
    ),
)
"""Requests about a city that a tool answers: (pattern, tool, how the answer reports the result)."""


def _city_tool(text: str, tools: Sequence[ToolSpec]) -> tuple[str, str, str] | None:
    """The offered tool a request about a city asks for: (tool name, city, answer template)."""
    offered = {tool.name for tool in tools}
    for pattern, tool_name, answer in _CITY_TOOLS:
        if tool_name in offered and (match := pattern.search(text)) is not None:
            return tool_name, match.group(1), answer
    return None


def _words(messages: Sequence[ModelMessage]) -> int:
    return sum(len(str(message.content or "").split()) for message in messages)


class MemoryModel:
    """A deterministic model that answers only from the messages it is given.

    - "my name is X" is acknowledged (after calling a ``remember_name`` tool, when one is offered);
      "what's my name?" is answered from earlier messages in the context, or with "I don't know
      your name" when they are not there;
    - "weather in X" calls a ``get_weather`` tool when one is offered, then reports its result, and
      "book a flight to X" likewise calls ``book_flight``;
    - anything else is acknowledged by repeating it.
    Token usage counts words, so metrics are deterministic too.
    """

    def __init__(self, id: str = "memory-model-1", provider: str = "kern-events") -> None:
        self.id = id
        self.provider = provider

    async def respond(self, messages: Sequence[ModelMessage], tools: Sequence[ToolSpec]) -> ModelResponse:
        """Answer by the rules in the class docstring."""
        at = next((index for index in range(len(messages) - 1, -1, -1) if messages[index].role == "user"), None)
        text = str(messages[at].content or "") if at is not None else ""
        content: str | None
        calls: tuple[ToolCallRequest, ...] = ()
        tool_results = [m for m in messages[at + 1 :] if m.role == "tool"] if at is not None else []
        if _ASKS_NAME.search(text):
            earlier = [m for m in messages[:at] if m.role == "user"]
            names = [match.group(1) for m in earlier if (match := _NAME.search(str(m.content or "")))]
            content = f"Your name is {names[-1]}." if names else "I don't know your name yet."
        elif (named := _NAME.search(text)) is not None:
            name = named.group(1)
            if any(t.name == "remember_name" for t in tools) and not tool_results:
                content = None
                calls = (
                    ToolCallRequest(tool_call_id="call_name", tool_name="remember_name", arguments={"name": name}),
                )
            else:
                content = f"Nice to meet you, {name}!"
        elif (city_tool := _city_tool(text, tools)) is not None:
            tool_name, city, answer = city_tool
            if tool_results:
                content = answer.format(city=city, result=tool_results[-1].content)
            else:
                content = None
                request = ToolCallRequest(
                    tool_call_id=f"call_{tool_name}_{city.lower()}", tool_name=tool_name, arguments={"city": city}
                )
                calls = (request,)
        else:
            content = f"You said: {text}" if text else "Hello!"
        output_words = len((content or "").split()) + len(calls)
        return ModelResponse(
            content=content, tool_calls=calls, input_tokens=_words(messages), output_tokens=output_words
        )
