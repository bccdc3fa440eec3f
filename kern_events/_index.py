"""The session index: one row per session, kept by the store in the same transaction as each append.

It is the only view the write side knows: listing sessions must never fold logs, so every backend
advances the row with :func:`advance_index` while it appends, from the events it is about to store.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from kern_events.events import Event, RunStarted, SessionRenamed, SessionStarted, SessionType

__all__ = ["IndexDelta", "SessionInfo", "advance_index", "apply_delta", "index_delta"]


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A session as listings show it, without folding its log."""

    session_id: str
    session_type: SessionType | None = None
    agent_id: str | None = None
    team_id: str | None = None
    workflow_id: str | None = None
    user_id: str | None = None
    name: str | None = None
    created_at: float
    updated_at: float
    run_count: int = 0
    """Top-level runs (a team member's run, which has a parent run, is not counted)."""
    version: int
    """The session's version: the number of its last event."""


class IndexDelta(msgspec.Struct, frozen=True, kw_only=True):
    """What a batch of events changes in a session's index row, computed from the events alone.

    SQL backends that upsert the row in the append's own statement apply this delta in SQL;
    :func:`apply_delta` is the same rule in Python, and the conformance suite holds both to it.
    """

    started: SessionStarted | None = None
    """The batch's last ``SessionStarted``: its type, ids and user replace the row's."""
    name: str | None = None
    """The batch's last name (from ``SessionStarted.name`` or ``SessionRenamed``); ``None`` keeps the row's."""
    runs_started: int = 0
    """Top-level runs started in the batch."""


def index_delta(events: Sequence[Event]) -> IndexDelta:
    """The index change a batch of events makes."""
    started: SessionStarted | None = None
    name: str | None = None
    runs = 0
    for event in events:
        if isinstance(event, SessionStarted):
            started = event
            if event.name is not None:
                name = event.name
        elif isinstance(event, RunStarted):
            if event.parent_run_id is None:
                runs += 1
        elif isinstance(event, SessionRenamed):
            name = event.name
    return IndexDelta(started=started, name=name, runs_started=runs)


def apply_delta(
    info: SessionInfo | None, session_id: str, delta: IndexDelta, version: int, recorded_at: float
) -> SessionInfo:
    """The index row after a batch with ``delta`` was appended, ending at ``version``."""
    if info is None:
        info = SessionInfo(session_id=session_id, created_at=recorded_at, updated_at=recorded_at, version=0)
    changes: dict[str, object] = {}
    if delta.started is not None:
        started = delta.started
        changes.update(
            session_type=started.session_type,
            agent_id=started.agent_id,
            team_id=started.team_id,
            workflow_id=started.workflow_id,
            user_id=started.user_id,
        )
    if delta.name is not None:
        changes["name"] = delta.name
    return msgspec.structs.replace(
        info, **changes, run_count=info.run_count + delta.runs_started, updated_at=recorded_at, version=version
    )


def advance_index(
    info: SessionInfo | None, session_id: str, events: Sequence[Event], version: int, recorded_at: float
) -> SessionInfo:
    """The index row after ``events`` were appended, ending at ``version``."""
    return apply_delta(info, session_id, index_delta(events), version, recorded_at)
