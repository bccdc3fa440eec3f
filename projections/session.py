"""The session view (the fifteen fields agent runtimes read) and the fold that builds it from records.

``fold(view, record) -> view`` is pure: no I/O, no clock (times come from the records), and an event
type it does not know (including :class:`~kern_events.records.UnknownEvent`) leaves the view as it
was. :class:`SessionFold` is the same fold with a mutable accumulator, for folding long logs without
copying the run list per event; it is what snapshots resume from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from kern_events._compress import CHECKPOINT_COMPRESS_ABOVE, compress, decompress
from kern_events.events import (
    Event,
    MediaAdded,
    MetadataUpdated,
    RunStarted,
    SessionRenamed,
    SessionStarted,
    SessionStateChanged,
    SessionType,
    SummaryUpdated,
)
from kern_events.records import Record
from projections.runs import RunView, apply_to_run, new_run

__all__ = [
    "SESSION_PROJECTION",
    "SESSION_SCHEMA_VERSION",
    "STATE_EVENT_TYPES",
    "SessionFold",
    "SessionSummary",
    "SessionView",
    "decode_view",
    "encode_view",
    "fold",
    "fold_records",
    "fold_runs",
    "fold_state",
]

SESSION_PROJECTION = "session"
"""The snapshot name of the session view."""
SESSION_SCHEMA_VERSION = 1
"""Bumped whenever :class:`SessionView`'s shape changes, so older snapshots are rebuilt, not misread."""


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The session's latest summary and its topics."""

    summary: str
    topics: tuple[str, ...] = ()
    updated_at: int


class SessionView(msgspec.Struct, frozen=True, kw_only=True):
    """A session as agent runtimes read it.

    ``session_data`` holds the session state under ``"session_state"``, the display name under
    ``"session_name"`` and session-level media under ``"media"``. Times are unix seconds.
    """

    session_id: str
    session_type: SessionType | None = None
    agent_id: str | None = None
    team_id: str | None = None
    workflow_id: str | None = None
    user_id: str | None = None
    session_data: dict[str, Any] = {}
    agent_data: dict[str, Any] | None = None
    team_data: dict[str, Any] | None = None
    workflow_data: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    runs: tuple[RunView, ...] = ()
    summary: SessionSummary | None = None
    created_at: int
    updated_at: int

    @property
    def session_state(self) -> dict[str, Any]:
        """The key/value state that persists across runs."""
        state = self.session_data.get("session_state")
        return dict(state) if isinstance(state, dict) else {}

    @property
    def session_name(self) -> str | None:
        """The session's display name, if it has one."""
        name = self.session_data.get("session_name")
        return name if isinstance(name, str) else None

    def get_run(self, run_id: str) -> RunView | None:
        """The run with this id, or ``None``."""
        for run in self.runs:
            if run.run_id == run_id:
                return run
        return None


class SessionFold:
    """The session fold with a mutable accumulator: ``apply`` records, then read ``view()``.

    ``version`` is the version of the last applied record (what a snapshot of ``view()`` is "at").
    """

    __slots__ = ("_header", "_runs", "version")

    def __init__(self, view: SessionView | None = None, *, version: int = 0) -> None:
        self._header = None if view is None else msgspec.structs.replace(view, runs=())
        self._runs: dict[str, RunView] = {} if view is None else {run.run_id: run for run in view.runs}
        self.version = version

    def apply(self, record: Record) -> None:
        """Fold one record in; records must come in version order."""
        self.version = record.version
        event = record.event
        if not isinstance(event, Event):
            return
        at = int(record.recorded_at)
        if isinstance(event, SessionStarted):
            self._header = _started(record.session_id, event, at)
            self._runs = {}
            return
        header = self._header
        if header is None:
            header = self._header = SessionView(session_id=record.session_id, created_at=at, updated_at=at)
        _apply_to_runs(self._runs, event, at)
        changes = _session_changes(header, event, at)
        self._header = msgspec.structs.replace(header, **changes, updated_at=at)

    def extend(self, records: Iterable[Record]) -> None:
        """Fold many records in, in order."""
        for record in records:
            self.apply(record)

    def view(self) -> SessionView | None:
        """The session view so far, or ``None`` if no event has been folded."""
        if self._header is None:
            return None
        return msgspec.structs.replace(self._header, runs=tuple(self._runs.values()))


def _apply_to_runs(runs: dict[str, RunView], event: Event, at: int) -> None:
    """The session's runs after one event other than a session start (in place)."""
    if isinstance(event, RunStarted):
        runs[event.run_id] = new_run(event, at)
    elif (run_id := getattr(event, "run_id", None)) is not None:
        run = runs.get(run_id)
        if run is not None:
            runs[run_id] = apply_to_run(run, event, at)


def fold_runs(records: Iterable[Record]) -> tuple[RunView, ...]:
    """The runs :class:`SessionFold` builds from ``records`` (in version order), without the rest of
    the session view: what a history window needs, at about half the cost of the whole fold."""
    runs: dict[str, RunView] = {}
    for record in records:
        event = record.event
        if isinstance(event, SessionStarted):
            runs = {}
        elif isinstance(event, Event):
            _apply_to_runs(runs, event, int(record.recorded_at))
    return tuple(runs.values())


def fold(view: SessionView | None, record: Record) -> SessionView | None:
    """The session view after one more record (pure; for long logs use :class:`SessionFold`)."""
    accumulator = SessionFold(view)
    accumulator.apply(record)
    return accumulator.view()


def fold_records(records: Iterable[Record], view: SessionView | None = None) -> SessionView | None:
    """The session view after folding ``records`` in order onto ``view``."""
    accumulator = SessionFold(view)
    accumulator.extend(records)
    return accumulator.view()


STATE_EVENT_TYPES: tuple[str, ...] = tuple(
    str(kind.__struct_config__.tag) for kind in (SessionStarted, SessionStateChanged)
)
"""The event types :func:`fold_state` reacts to; a state-only read asks the store for these alone."""


def fold_state(state: dict[str, Any], event: object) -> dict[str, Any]:
    """The session state after one event: a start sets it, a state change edits a copy of it, and
    every other event leaves it as it is. The session fold and state-only reads share this rule."""
    if isinstance(event, SessionStarted):
        started = (event.session_data or {}).get("session_state")
        return dict(started) if isinstance(started, dict) else {}
    if isinstance(event, SessionStateChanged):
        changed = {**state, **event.set}
        for key in event.removed:
            changed.pop(key, None)
        return changed
    return state


def _started(session_id: str, event: SessionStarted, at: int) -> SessionView:
    session_data = dict(event.session_data or {})
    if event.name is not None:
        session_data["session_name"] = event.name
    return SessionView(
        session_id=session_id,
        session_type=event.session_type,
        agent_id=event.agent_id,
        team_id=event.team_id,
        workflow_id=event.workflow_id,
        user_id=event.user_id,
        session_data=session_data,
        agent_data=event.agent_data,
        team_data=event.team_data,
        workflow_data=event.workflow_data,
        metadata=event.metadata,
        created_at=at,
        updated_at=at,
    )


def _session_changes(view: SessionView, event: Event, at: int) -> dict[str, Any]:
    if isinstance(event, SessionStateChanged):
        return {"session_data": {**view.session_data, "session_state": fold_state(view.session_state, event)}}
    if isinstance(event, SessionRenamed):
        return {"session_data": {**view.session_data, "session_name": event.name}}
    if isinstance(event, MetadataUpdated):
        metadata = {**(view.metadata or {}), **event.set}
        for key in event.removed:
            metadata.pop(key, None)
        return {"metadata": metadata}
    if isinstance(event, SummaryUpdated):
        return {"summary": SessionSummary(summary=event.summary, topics=event.topics, updated_at=at)}
    if isinstance(event, MediaAdded) and event.run_id is None:
        media = [*view.session_data.get("media", ()), *(msgspec.to_builtins(item) for item in event.media)]
        return {"session_data": {**view.session_data, "media": media}}
    return {}


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SessionView)


def encode_view(view: SessionView) -> bytes:
    """The view's snapshot bytes (compressed above :data:`~kern_events._compress.CHECKPOINT_COMPRESS_ABOVE`:
    a whole-session view grows with the session, and three are kept)."""
    return compress(_encoder.encode(view), CHECKPOINT_COMPRESS_ABOVE)


def decode_view(data: bytes) -> SessionView:
    """A view from snapshot bytes, compressed or not; raises ``msgspec.DecodeError``/``ValidationError`` if
    they do not fit."""
    return _decoder.decode(decompress(data))
