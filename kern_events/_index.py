"""The session index: one row per session, kept by the store in the same transaction as each append.

It is the only view the write side knows: listing sessions must never fold logs, so every backend
advances the row with :func:`advance_index` while it appends, from the events it is about to store.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from kern_events.events import Event, RunStarted, SessionRenamed, SessionStarted, SessionType

__all__ = ["SessionInfo", "advance_index"]


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


def advance_index(
    info: SessionInfo | None, session_id: str, events: Sequence[Event], version: int, recorded_at: float
) -> SessionInfo:
    """The index row after ``events`` were appended, ending at ``version``."""
    if info is None:
        info = SessionInfo(session_id=session_id, created_at=recorded_at, updated_at=recorded_at, version=0)
    changes: dict[str, object] = {}
    runs = info.run_count
    for event in events:
        if isinstance(event, SessionStarted):
            changes.update(
                session_type=event.session_type,
                agent_id=event.agent_id,
                team_id=event.team_id,
                workflow_id=event.workflow_id,
                user_id=event.user_id,
            )
            if event.name is not None:
                changes["name"] = event.name
        elif isinstance(event, RunStarted):
            if event.parent_run_id is None:
                runs += 1
        elif isinstance(event, SessionRenamed):
            changes["name"] = event.name
    return msgspec.structs.replace(info, **changes, run_count=runs, updated_at=recorded_at, version=version)
