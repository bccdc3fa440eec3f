"""Time travel and forks: the version a session had at a moment, and a new session started from an
earlier version of another (to edit a turn and try again, or replay a run against another model)."""

from __future__ import annotations

from kern_events.errors import ConcurrencyError, TruncatedError
from kern_events.events import Event, MetadataUpdated
from kern_events.records import NO_STREAM, TRUNCATION_SNAPSHOT, ExpectedVersion
from kern_events.store import EventStore

__all__ = ["first_version", "fork", "version_at"]

_FORK_BATCH = 10_000
"""Events copied per append while forking: a long session is copied in bounded memory."""


async def version_at(store: EventStore, session_id: str, timestamp: float, *, head: int) -> int:
    """The session's version at unix time ``timestamp`` (0 if it had no event yet); reads back from
    version ``head``, so recent times are cheap."""
    async for record in store.read(session_id, to_version=head, backwards=True):
        if record.recorded_at <= timestamp:
            return record.version
    first = await first_version(store, session_id)
    if first > 1:  # the answer, if any, lies among the removed events
        raise TruncatedError(session_id, first, f"the time {timestamp}")
    return 0


async def first_version(store: EventStore, session_id: str) -> int:
    """The first version the session's log still holds after ``truncate_before`` (1 if it was never
    truncated); a read from an earlier version starts there."""
    marker = await store.load_snapshot(session_id, TRUNCATION_SNAPSHOT)
    return 1 if marker is None else marker.version + 1


async def fork(store: EventStore, session_id: str, new_session_id: str, *, until: int) -> None:
    """Copy the session's events up to version ``until`` (with new ids) to ``new_session_id``, which
    must not exist (a deleted one may: the copy goes on from its tombstone's version, as a session
    started again does), and record where it came from; the original is left untouched."""
    first = await first_version(store, session_id)
    if first > 1:
        raise TruncatedError(session_id, first, "a fork (it copies every event from version 1)")
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
