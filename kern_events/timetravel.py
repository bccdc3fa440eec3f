"""Time travel and forks: the version a session had at a moment, and a new session started from an
earlier version of another (to edit a turn and try again, or replay a run against another model)."""

from __future__ import annotations

from kern_events.errors import ConcurrencyError
from kern_events.events import Event, MetadataUpdated
from kern_events.records import NO_STREAM, ExpectedVersion
from kern_events.store import EventStore

__all__ = ["fork", "version_at"]

_FORK_BATCH = 10_000
"""Events copied per append while forking: a long session is copied in bounded memory."""


async def version_at(store: EventStore, session_id: str, timestamp: float, *, head: int) -> int:
    """The session's version at unix time ``timestamp`` (0 if it had no event yet); reads back from
    version ``head``, so recent times are cheap."""
    async for record in store.read(session_id, to_version=head, backwards=True):
        if record.recorded_at <= timestamp:
            return record.version
    return 0


async def fork(store: EventStore, session_id: str, new_session_id: str, *, until: int) -> None:
    """Copy the session's events up to version ``until`` (with new ids) to ``new_session_id``, which
    must not exist (a deleted one may: the copy goes on from its tombstone's version, as a session
    started again does), and record where it came from; the original is left untouched."""
    copied = await store.current_version(new_session_id)
    if copied and await store.get_session_info(new_session_id) is not None:
        raise ConcurrencyError(new_session_id, ExpectedVersion.NO_STREAM.value, copied)
    batch: list[Event] = []
    async for record in store.read(session_id, to_version=until):
        if isinstance(record.event, Event):
            batch.append(record.event)
        if len(batch) == _FORK_BATCH:
            copied = await _copy(store, new_session_id, batch, copied)
            batch = []
    batch.append(MetadataUpdated(set={"forked_from": session_id, "forked_at_version": until}))
    await _copy(store, new_session_id, batch, copied)


async def _copy(store: EventStore, session_id: str, events: list[Event], version: int) -> int:
    expected = version if version else NO_STREAM  # a fork never lands on a live session
    return (await store.append(session_id, events, expected_version=expected)).to_version
