"""History for a model's context: the messages of the last runs, or the last messages, in order.

Windows are cut so that a tool call is never separated from its result: a model API rejects a tool
result whose call it never saw, and an assistant tool call without its result confuses the next
turn. A window that would start between an assistant message with tool calls and the results of
those calls starts after them instead, so a message limit is never exceeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from kern_events.events import MessageAdded, RunCompleted, RunStarted
from kern_events.records import Record
from projections.runs import MessageView, RunStatus, RunView
from projections.session import fold_runs

__all__ = ["HistoryWindow", "counts_in_history", "history_messages", "last_messages", "runs_for_history"]

DEFAULT_STATUSES: tuple[RunStatus, ...] = ("completed",)


def runs_for_history(
    runs: Iterable[RunView],
    *,
    num_history_runs: int | None = None,
    statuses: Sequence[RunStatus] = DEFAULT_STATUSES,
    exclude_run_id: str | None = None,
) -> list[RunView]:
    """The last ``num_history_runs`` top-level runs with one of ``statuses``, oldest first.

    Member runs of a team (runs with a parent) belong to their parent's turn and are left out.
    """
    chosen = [
        run for run in runs if run.parent_run_id is None and run.status in statuses and run.run_id != exclude_run_id
    ]
    if num_history_runs is not None:
        chosen = chosen[-num_history_runs:] if num_history_runs > 0 else []
    return chosen


def last_messages(
    messages: Sequence[MessageView], limit: int | None, *, include_tool_messages: bool = True
) -> list[MessageView]:
    """At most ``limit`` of the last messages, never splitting a tool call from its results.

    Without tool messages, tool results and content-less tool-calling turns are dropped, and the
    remaining assistant messages lose their tool calls (whose results are gone).
    """
    kept = [
        message
        for message in messages
        if counts_in_history(message.role, message.content, message.tool_calls, include_tool_messages)
    ]
    if not include_tool_messages:
        kept = [msgspec.structs.replace(message, tool_calls=()) if message.tool_calls else message for message in kept]
    if limit is None or limit >= len(kept):
        start = 0
    elif limit <= 0:
        return []
    else:
        start = len(kept) - limit
    return kept[_pair_safe_start(kept, start) :]


def counts_in_history(role: str, content: Any, tool_calls: Sequence[object], include_tool_messages: bool) -> bool:
    """Whether a message belongs in history windows: never system prompts; without tool messages,
    neither tool results nor assistant turns that only call tools."""
    if role == "system":
        return False
    return include_tool_messages or (role != "tool" and not (tool_calls and content in (None, "")))


def _pair_safe_start(messages: Sequence[MessageView], start: int) -> int:
    """The first index at or after ``start`` where no tool result is cut off from its call."""
    called_before: set[str] = set()
    for message in messages[:start]:
        called_before.update(request.tool_call_id for request in message.tool_calls)
    while start < len(messages):
        message = messages[start]
        if message.role == "tool" and message.tool_call_id in called_before:
            start += 1  # a result whose call lies before the window: leave it out too
            continue
        break
    return start


def history_messages(
    runs: Iterable[RunView],
    *,
    num_history_runs: int | None = None,
    num_history_messages: int | None = None,
    include_tool_messages: bool = True,
    statuses: Sequence[RunStatus] = DEFAULT_STATUSES,
    exclude_run_id: str | None = None,
) -> list[MessageView]:
    """The context a runtime adds for the next run: the messages of the chosen runs, in order,
    optionally cut to the last ``num_history_messages`` (system prompts are never repeated)."""
    chosen = runs_for_history(runs, num_history_runs=num_history_runs, statuses=statuses, exclude_run_id=exclude_run_id)
    messages = [message for run in chosen for message in run.messages]
    return last_messages(messages, num_history_messages, include_tool_messages=include_tool_messages)


class HistoryWindow:
    """Chooses how far back a session's tail must be read for a history window, and builds it.

    Feed it the session's records newest first (a backwards read); :meth:`take` says when the window
    is covered, so the read stops there and its cost follows the window, not the session's length.
    Whole runs are taken, and one message more than a message window, so that a tool result cut off
    from its call is seen as such.
    """

    def __init__(
        self,
        *,
        num_history_runs: int | None = None,
        num_history_messages: int | None = None,
        include_tool_messages: bool = True,
    ) -> None:
        self.num_history_runs = num_history_runs
        self.num_history_messages = num_history_messages
        self.include_tool_messages = include_tool_messages
        self._tail: list[Record] = []
        self._completed: set[str] = set()
        self._counted: dict[str, int] = {}
        self._runs = 0
        self._messages = 0
        self._covered = False

    @property
    def covered_by(self) -> int | None:
        """How many records covered the window (``None``: not covered yet)."""
        return len(self._tail) if self._covered else None

    def take(self, record: Record) -> bool:
        """Add the next older record; ``True`` once the records taken cover the window."""
        self._covered = self._take(record)
        return self._covered

    def _take(self, record: Record) -> bool:
        self._tail.append(record)
        event = record.event
        if isinstance(event, RunCompleted):
            self._completed.add(event.run_id)
        elif isinstance(event, MessageAdded) and counts_in_history(
            event.role, event.content, event.tool_calls, self.include_tool_messages
        ):
            self._counted[event.run_id] = self._counted.get(event.run_id, 0) + 1
        elif isinstance(event, RunStarted) and event.parent_run_id is None and event.run_id in self._completed:
            self._runs += 1
            self._messages += self._counted.get(event.run_id, 0)
            if self.num_history_runs is not None:
                return self._runs >= self.num_history_runs
            return self.num_history_messages is not None and self._messages > self.num_history_messages
        return False

    def messages(self) -> list[MessageView]:
        """The window's messages, oldest first, from the records taken."""
        return history_messages(
            fold_runs(reversed(self._tail)),
            num_history_runs=self.num_history_runs,
            num_history_messages=self.num_history_messages,
            include_tool_messages=self.include_tool_messages,
        )
