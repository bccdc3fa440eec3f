"""Tools for the reference runtime: plain sync or async Python callables, described to the model by
their name, docstring and parameters, and called with the arguments the model chose."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import anyio.to_thread

from kern_events.runtime.model import ToolSpec

__all__ = ["Tool", "ToolOutcome"]

STATE_PARAMETER = "session_state"
"""A tool with a parameter of this name is given the session state (a dict it may change)."""


class ToolOutcome:
    """What one call returned (or raised), and how long it took."""

    __slots__ = ("duration", "error", "result")

    def __init__(self, result: Any, error: str | None, duration: float) -> None:
        self.result = result
        self.error = error
        self.duration = duration


class Tool:
    """A callable the model may ask for by name."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.name = function.__name__
        signature = inspect.signature(function)
        self.wants_state = STATE_PARAMETER in signature.parameters
        self.spec = ToolSpec(
            name=self.name,
            description=inspect.getdoc(function) or "",
            parameters=tuple(name for name in signature.parameters if name != STATE_PARAMETER),
        )

    async def call(self, arguments: dict[str, Any], session_state: MutableMapping[str, Any]) -> ToolOutcome:
        """Run the tool; an exception becomes the outcome's error (the model is told, the run goes on).

        A sync tool runs in a worker thread so that it cannot block the event loop.
        """
        kwargs = dict(arguments)
        if self.wants_state:
            kwargs[STATE_PARAMETER] = session_state
        started = time.perf_counter()
        try:
            if inspect.iscoroutinefunction(self.function):
                result = await self.function(**kwargs)
            else:
                result = await anyio.to_thread.run_sync(lambda: self.function(**kwargs))
        except Exception as exc:
            return ToolOutcome(None, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
        return ToolOutcome(result, None, time.perf_counter() - started)
