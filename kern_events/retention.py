"""Retention: how long sessions live, and how much of a long session's log is kept.

A :class:`RetentionPolicy` says it; :meth:`kern_events.BaseDb.apply_retention` (and
``kern-events retain``) applies it. Sessions not updated for ``max_age`` seconds are deleted
(events, checkpoints, index row). With ``keep_runs``, a session with more top-level runs keeps only
its last ``keep_runs``: the prefix before them is compacted behind checkpoints (session view, state,
paused runs) saved before ``truncate_before`` removes it in one atomic step, so every view reads as
before and versions keep counting. Appends racing a compaction land after its cut and are never lost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import msgspec

from kern_events._index import SessionInfo
from kern_events._validate import check_flag, check_non_negative, check_seconds
from kern_events.checkpoints import STATE_CHECKPOINT, STATE_SCHEMA_VERSION, encode_state, run_checkpoint
from kern_events.errors import InvalidArgumentError, SessionNotFoundError, TruncatedError, UnsupportedError
from kern_events.events import RunStarted
from kern_events.records import Snapshot
from kern_events.store import EventStore
from kern_events.stores._base import BaseEventStore
from kern_events.timetravel import first_version
from projections.runs import RUN_SCHEMA_VERSION, encode_run
from projections.session import SESSION_PROJECTION, SESSION_SCHEMA_VERSION, encode_view

__all__ = ["Compaction", "RetentionPolicy", "RetentionReport"]

if TYPE_CHECKING:
    from kern_events.db import BaseDb as _Db

Progress = Callable[[int, int], None]
"""Called with (sessions done, sessions in all) as a retention run goes."""


class RetentionPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How long sessions live and how many runs a session keeps; ``None`` leaves that unlimited.

    A policy that would delete every session (``max_age`` 0) or every run (``keep_runs`` 0) is
    refused with :class:`~kern_events.InvalidArgumentError` unless ``force=True``.
    """

    max_age: float | timedelta | None = None
    """Delete sessions whose last update is older than this (seconds, or a ``timedelta``)."""
    keep_runs: int | None = None
    """Keep only each session's last this many top-level runs; the log before them is compacted."""
    force: bool = False

    def __post_init__(self) -> None:
        age = self.max_age.total_seconds() if isinstance(self.max_age, timedelta) else self.max_age
        if age is not None and check_seconds("max_age", age) < 0:
            raise InvalidArgumentError("max_age", f"expected seconds >= 0, got {self.max_age!r}")
        check_non_negative("keep_runs", self.keep_runs, allow_none=True)
        check_flag("force", self.force)
        if not self.force and (age == 0 or self.keep_runs == 0):
            argument = "max_age" if age == 0 else "keep_runs"
            raise InvalidArgumentError(
                argument, "a policy of 0 deletes everything; pass force=True if that is what you want"
            )

    @property
    def max_age_seconds(self) -> float | None:
        """``max_age`` in seconds."""
        if isinstance(self.max_age, timedelta):
            return self.max_age.total_seconds()
        return None if self.max_age is None else float(self.max_age)


class Compaction(msgspec.Struct, frozen=True, kw_only=True):
    """A session whose log before ``before_version`` was (or would be) removed behind checkpoints."""

    session_id: str
    before_version: int
    events_removed: int


class RetentionReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a retention run deleted and compacted (or, with ``dry_run``, would have)."""

    dry_run: bool
    deleted: tuple[SessionInfo, ...] = ()
    compacted: tuple[Compaction, ...] = ()


_PAGE = 1000
"""Index rows a retention run lists at a time: it never holds the whole index in memory."""


async def _oldest_first(store: EventStore) -> AsyncIterator[SessionInfo]:
    """Every session's index row, least recently updated first, a keyset page at a time (a session
    deleted meanwhile does not shift the pages; one updated meanwhile may come again, later)."""
    after: tuple[float, str] | None = None
    while True:
        page = await store.list_sessions(sort_by="updated_at", descending=False, limit=_PAGE, after=after)
        for info in page:
            yield info
        if len(page) < _PAGE:
            return
        after = (page[-1].updated_at, page[-1].session_id)


async def apply(
    db: _Db, policy: RetentionPolicy, *, dry_run: bool, now: float | None = None, progress: Progress | None = None
) -> RetentionReport:
    """Apply ``policy`` to every session of ``db``'s store (see the module docstring). Compacting
    needs ``truncate_before``: a store without it is an :class:`UnsupportedError` before anything is
    listed or written, in a dry run too, which must not report compactions that could not be done."""
    store = db.store
    if policy.keep_runs is not None and isinstance(store, BaseEventStore) and not store.truncates:
        raise UnsupportedError("keep_runs (compaction needs truncate_before)", type(store).__name__)
    now = time.time() if now is None else now
    age = policy.max_age_seconds
    total = 0
    if progress is not None:  # a first pass that only counts, so that the bar knows its length
        async for _ in _oldest_first(store):
            total += 1
    deleted: list[SessionInfo] = []
    compacted: list[Compaction] = []
    done = 0
    async for info in _oldest_first(store):
        too_old = age is not None and info.updated_at < now - age
        if not too_old and policy.keep_runs is None:
            break  # oldest first: every session after this one is younger still
        if too_old:
            if dry_run:
                deleted.append(info)
            else:
                current = await store.get_session_info(info.session_id)
                # Updated since it was listed: it is no longer old; let the next run judge it.
                if current is not None and current.updated_at == info.updated_at:
                    await db.delete_session(info.session_id)
                    deleted.append(current)
        elif policy.keep_runs is not None and info.run_count > policy.keep_runs:
            compaction = await compact(db, info.session_id, policy.keep_runs, dry_run=dry_run)
            if compaction is not None:
                compacted.append(compaction)
        done += 1
        if progress is not None:
            progress(done, max(done, total))
    if progress is not None:
        progress(max(done, total), max(done, total))
    return RetentionReport(dry_run=dry_run, deleted=tuple(deleted), compacted=tuple(compacted))


async def _cut(store: EventStore, session_id: str, keep_runs: int, head: int) -> int | None:
    """The version the session's ``keep_runs``-th last top-level run starts at (``head + 1`` for
    none kept), or ``None`` when it has no more runs than that."""
    if keep_runs == 0:
        return head + 1
    seen = 0
    async for record in store.read(session_id, to_version=head, backwards=True, types=["run_started"]):
        event = record.event
        if isinstance(event, RunStarted) and event.parent_run_id is None:
            seen += 1
            if seen == keep_runs:
                return record.version
    return None


async def compact(db: _Db, session_id: str, keep_runs: int, *, dry_run: bool = False) -> Compaction | None:
    """Remove the session's log before its last ``keep_runs`` top-level runs behind checkpoints of
    its view, its state and each paused run; ``None`` if there is nothing to remove."""
    store = db.store
    info = await store.get_session_info(session_id)
    if info is None:
        return None
    cut = await _cut(store, session_id, keep_runs, info.version)
    first = await first_version(store, session_id)
    if cut is None or cut <= first:
        return None
    if dry_run:
        return Compaction(session_id=session_id, before_version=cut, events_removed=cut - first)
    try:
        fold = await db._checkpoints.fold_to(session_id, cut - 1)
    except TruncatedError:  # compacted meanwhile by another process: nothing left to do here
        return None
    view = fold.view()
    if view is None:
        raise SessionNotFoundError(session_id)
    at = cut - 1
    # State and paused-run checkpoints first: they must be in place before the events they replace
    # go. The session view's checkpoint is saved by the truncation itself, atomically with it.
    await store.save_snapshot(
        Snapshot(
            session_id=session_id,
            name=STATE_CHECKPOINT,
            schema_version=STATE_SCHEMA_VERSION,
            version=at,
            data=encode_state(view.session_state),
        )
    )
    for run in view.runs:
        if run.status == "paused":
            await store.save_snapshot(
                Snapshot(
                    session_id=session_id,
                    name=run_checkpoint(run.run_id),
                    schema_version=RUN_SCHEMA_VERSION,
                    version=at,
                    data=encode_run(run),
                )
            )
    snapshot = Snapshot(
        session_id=session_id,
        name=SESSION_PROJECTION,
        schema_version=SESSION_SCHEMA_VERSION,
        version=at,
        data=encode_view(view),
    )
    removed = await store.truncate_before(session_id, cut, snapshot=snapshot)
    return Compaction(session_id=session_id, before_version=cut, events_removed=removed)
