"""Replay: a session's log told as the conversation happened, one step per event, for audits and
``kern-events replay``.

It reads the raw log in version order (never the folded view), so it shows what the view forgets:
when each message, tool call and result arrived, the state before and after each change (as a
diff), how each pause was resolved and when the run went on. Steps are plain structs, so the same
stream is drawn for a person (:func:`render`, with rich) or written as JSON lines for tools.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from rich.console import Console
from rich.text import Text

from kern_events._references import Remembered, resolve
from kern_events.events import (
    ExternalExecution,
    MediaAdded,
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
    ToolCallStarted,
    ToolConfirmation,
    UserInput,
)
from kern_events.records import UnknownEvent
from kern_events.store import EventStore
from kern_events.timetravel import first_version
from projections.session import fold_state

__all__ = ["ReplayStep", "StateChange", "TokenTotals", "describe", "render", "replay"]

_json = msgspec.json.Encoder()


class StateChange(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One key of the session state: added, changed or removed, with its value before and after."""

    key: str
    change: Literal["added", "changed", "removed"]
    before: Any = None
    after: Any = None


class TokenTotals(msgspec.Struct, kw_only=True):
    """Tokens of every run that reported metrics, added up."""

    runs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0

    def add(self, metrics: RunMetrics) -> None:
        """Count one run's metrics."""
        self.runs += 1
        self.input_tokens += metrics.input_tokens
        self.output_tokens += metrics.output_tokens
        self.total_tokens += metrics.total_tokens


class ReplayStep(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event of the log as a step of the conversation.

    ``kind`` is the event's type (``"unknown"`` for one this release cannot decode, ``"truncated"``
    for the note that the log's start was removed); ``text`` says it in a line; ``detail`` is the
    event itself as builtins; ``state`` the diff a state change made; ``totals`` the token totals so
    far, on run outcomes.
    """

    version: int
    recorded_at: float
    kind: str
    text: str
    run_id: str | None = None
    detail: dict[str, Any] = {}
    state: tuple[StateChange, ...] = ()
    totals: TokenTotals | None = None


def _line(value: Any) -> str:
    return value if isinstance(value, str) else _json.encode(value).decode()


def _state_diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[StateChange, ...]:
    changes: list[StateChange] = []
    for key, value in after.items():
        if key not in before:
            changes.append(StateChange(key=key, change="added", after=value))
        elif before[key] != value:
            changes.append(StateChange(key=key, change="changed", before=before[key], after=value))
    changes += [
        StateChange(key=key, change="removed", before=value) for key, value in before.items() if key not in after
    ]
    return tuple(changes)


def _requirement_text(requirement: ToolConfirmation | UserInput | ExternalExecution) -> str:
    if isinstance(requirement, UserInput):
        return f"input of {', '.join(field.name for field in requirement.fields)}"
    kind = "confirmation of" if isinstance(requirement, ToolConfirmation) else "an outside result for"
    return f"{kind} {requirement.tool_name}({_line(requirement.arguments)})"


def _resolution_text(event: RequirementResolved) -> str:
    if event.confirmed is not None:
        outcome = "confirmed" if event.confirmed else "rejected"
    elif event.values is not None:
        outcome = f"given {_line(event.values)}"
    else:
        outcome = f"answered with {_line(event.result)}"
    return f"requirement {event.requirement_id} {outcome}" + (f" ({event.note})" if event.note else "")


def _metrics_text(metrics: RunMetrics) -> str:
    took = "" if metrics.duration is None else f", {metrics.duration:.2f} s"
    return f"{metrics.input_tokens} in + {metrics.output_tokens} out = {metrics.total_tokens} tokens{took}"


def _text(event: Any, state: tuple[StateChange, ...]) -> str:
    if isinstance(event, SessionStarted):
        owner = event.agent_id or event.team_id or event.workflow_id
        return (
            f"{event.session_type} session started"
            + (f" by {owner}" if owner else "")
            + (f" for {event.user_id}" if event.user_id else "")
        )
    if isinstance(event, RunStarted):
        return f"run started with input {_line(event.input)}" if event.input is not None else "run started"
    if isinstance(event, MessageAdded):
        who = event.role if event.name is None else f"{event.role} ({event.name})"
        parts = [] if event.content is None else [_line(event.content)]
        if event.content_from_input:  # its RunStarted is not in the replay (truncated)
            parts.append("(the run's input)")
        if event.content_from_tool_result:  # its ToolCallCompleted is not in the replay (truncated)
            parts.append("(the tool call's result)")
        parts += [f"calls {call.tool_name}({_line(call.arguments)})" for call in event.tool_calls]
        parts += [f"[{media.kind} {media.name or media.url or media.media_id}]" for media in event.media]
        return f"{who}: {'; '.join(parts)}"
    if isinstance(event, ToolCallStarted):
        return f"tool {event.tool_name}({_line(event.arguments)}) started"
    if isinstance(event, ToolCallCompleted):
        took = "" if event.duration is None else f" in {event.duration:.2f} s"
        called = event.tool_name if event.arguments is None else f"{event.tool_name}({_line(event.arguments)})"
        if event.error is not None:
            return f"tool {called} failed{took}: {event.error}"
        return f"tool {called} returned{took}: {_line(event.result)}"
    if isinstance(event, SessionStateChanged):
        return "state: " + (", ".join(f"{change.change} {change.key}" for change in state) or "unchanged")
    if isinstance(event, RunPaused):
        return "paused, waiting for " + "; ".join(_requirement_text(item) for item in event.requirements)
    if isinstance(event, RequirementResolved):
        return _resolution_text(event)
    if isinstance(event, RunResumed):
        return "resumed"
    if isinstance(event, RunCompleted):
        output = "" if event.output is None else f": {_line(event.output)}"
        if event.output_from_message:  # the message is not in the replay (truncated)
            output = ": the run's last message"
        return f"completed ({_metrics_text(event.metrics)}){output}"
    if isinstance(event, RunFailed):
        return f"failed: {event.error}" + ("" if event.metrics is None else f" ({_metrics_text(event.metrics)})")
    if isinstance(event, RunCancelled):
        return "cancelled" + ("" if event.reason is None else f": {event.reason}")
    if isinstance(event, SummaryUpdated):
        return f"summary: {event.summary}" + (f" (topics: {', '.join(event.topics)})" if event.topics else "")
    if isinstance(event, SessionRenamed):
        return f"renamed to {event.name}"
    if isinstance(event, MetadataUpdated):
        return f"metadata: set {_line(event.set)}" + (f", removed {', '.join(event.removed)}" if event.removed else "")
    if isinstance(event, MediaAdded):
        return "media: " + ", ".join(f"{m.kind} {m.name or m.url or m.media_id}" for m in event.media)
    return str(getattr(event, "type", type(event).__name__))


def describe(event: object) -> str:
    """One event in a line, as a replay step says it (a state change names its keys)."""
    if isinstance(event, UnknownEvent):
        return f"an event of type {event.type!r} this release does not know"
    if isinstance(event, SessionStateChanged):
        keys = [f"set {key}" for key in event.set] + [f"removed {key}" for key in event.removed]
        return "state: " + ", ".join(keys)
    return _text(event, ())


async def replay(store: EventStore, session_id: str, *, to_version: int | None = None) -> AsyncIterator[ReplayStep]:
    """The session's steps in version order, up to ``to_version`` (default: its head).

    The caller checks that the session exists. A log truncated before version N starts with a
    ``"truncated"`` step; state diffs after it start from an empty state (the removed events held it).
    """
    first = await first_version(store, session_id)
    if first > 1:
        yield ReplayStep(
            version=first - 1,
            recorded_at=0.0,
            kind="truncated",
            text=f"versions 1 to {first - 1} were removed (truncate_before); the replay starts at {first}",
        )
    state: dict[str, Any] = {}
    totals = TokenTotals()
    said = Remembered()
    async for record in store.read(session_id, to_version=to_version):
        event = resolve(record.event, said)
        said.note(event)
        if isinstance(event, UnknownEvent):
            yield ReplayStep(
                version=record.version,
                recorded_at=record.recorded_at,
                kind="unknown",
                text=f"an event of type {record.type!r} this release does not know",
            )
            continue
        changes: tuple[StateChange, ...] = ()
        if isinstance(event, SessionStarted | SessionStateChanged):
            after = fold_state(state, event)
            changes, state = _state_diff(state, after), after
        metrics = event.metrics if isinstance(event, RunCompleted | RunFailed) else None
        if metrics is not None:
            totals.add(metrics)
        yield ReplayStep(
            version=record.version,
            recorded_at=record.recorded_at,
            kind=record.type,
            text=_text(event, changes),
            run_id=getattr(event, "run_id", None),
            detail=msgspec.to_builtins(event),
            state=changes,
            totals=msgspec.structs.replace(totals) if metrics is not None else None,
        )


_RUN_STYLE = {"run_completed": "green", "run_failed": "red", "run_cancelled": "yellow", "run_paused": "magenta"}


async def render(steps: AsyncIterator[ReplayStep], console: Console) -> TokenTotals:
    """Draw the steps for a person: a heading per run, who said what, tool calls and results,
    state diffs, pauses and resolutions; stored text is never read as rich markup. Returns the
    token totals."""
    totals = TokenTotals()
    current_run: str | None = None
    async for step in steps:
        if step.run_id is not None and step.run_id != current_run:  # session-level steps stay under the run
            current_run = step.run_id
            console.rule(Text(f"run {current_run}", style="bold"), align="left")
        when = datetime.fromtimestamp(step.recorded_at, tz=UTC).strftime("%H:%M:%S")
        line = Text.assemble((f"v{step.version:<5}", "dim"), (f"{when} ", "dim"))
        if step.kind == "message_added":
            role = str(step.detail.get("role"))
            who, _, said = step.text.partition(": ")
            line.append(f"{who}: ", style={"user": "bold cyan", "assistant": "bold green"}.get(role, "bold"))
            line.append(said)
        else:
            line.append(step.text, style=_RUN_STYLE.get(step.kind, "yellow" if step.kind.startswith("tool") else ""))
        console.print(line)
        for change in step.state:
            mark, style = {"added": ("+", "green"), "changed": ("~", "yellow"), "removed": ("-", "red")}[change.change]
            diff = Text(f"        {mark} {change.key}: ", style=style)
            if change.change == "changed":
                diff.append(f"{_line(change.before)} -> {_line(change.after)}")
            else:
                diff.append(_line(change.after if change.change == "added" else change.before))
            console.print(diff)
        if step.totals is not None:
            totals = step.totals
    console.rule()
    console.print(
        Text(
            f"tokens: {totals.input_tokens} in + {totals.output_tokens} out = {totals.total_tokens} "
            f"over {totals.runs} run{'' if totals.runs == 1 else 's'} with metrics",
            style="bold",
        )
    )
    return totals
