"""Checkpoints: snapshots of a session's view, its state and a paused run's view, kept beside the log
so that a read folds only the events after the newest one.

A checkpoint only saves reading work. Every read starts from the newest usable checkpoint at or
below the version it wants and replays the events after it, so a missing checkpoint (a crash between
a pause and its checkpoint) or one that no longer decodes (an older release's shape) costs time,
never correctness.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import msgspec

from kern_events._compress import CHECKPOINT_COMPRESS_ABOVE, compress, decompress
from kern_events.errors import TruncatedError
from kern_events.events import Event, RunStarted
from kern_events.records import Record, Snapshot
from kern_events.store import EventStore
from kern_events.stores._base import SessionContext
from kern_events.timetravel import first_version
from projections.runs import RUN_SCHEMA_VERSION, RunView, apply_to_run, decode_run, encode_run, new_run
from projections.session import (
    SESSION_PROJECTION,
    SESSION_SCHEMA_VERSION,
    STATE_EVENT_TYPES,
    SessionFold,
    decode_view,
    encode_view,
    fold_state,
)

__all__ = ["Checkpoints"]

T = TypeVar("T")

STATE_CHECKPOINT = "state"
"""The snapshot name of the session state's own checkpoint, written with every session checkpoint."""
STATE_SCHEMA_VERSION = 1
_state_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def encode_state(state: dict[str, Any]) -> bytes:
    """The state checkpoint's bytes (compressed above :data:`~kern_events._compress.CHECKPOINT_COMPRESS_ABOVE`)."""
    return compress(msgspec.msgpack.encode(state), CHECKPOINT_COMPRESS_ABOVE)


def decode_state(data: bytes) -> dict[str, Any]:
    """A state from checkpoint bytes, compressed or not; raises ``msgspec.DecodeError``/``ValidationError``
    if they do not fit."""
    return _state_decoder.decode(decompress(data))


def _holds_version_one(context: SessionContext | None) -> bool:
    """Whether ``context`` read the session's version 1, which shows its log untruncated: its tail
    reached down to it, or (no state checkpoint) its state events start there, as ``SessionStarted`` does."""
    if context is None:
        return False
    return (bool(context.tail) and context.tail[-1].version == 1) or (
        context.snapshot is None and bool(context.after) and context.after[0].version == 1
    )


def _decoded(snapshot: Snapshot | None, decode: Callable[[bytes], T]) -> tuple[T, int] | None:
    """A checkpoint's content, decoded, with its version; ``None`` for a missing one or one that no
    longer decodes (an older release's shape)."""
    if snapshot is None:
        return None
    try:
        return decode(snapshot.data), snapshot.version
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def run_checkpoint(run_id: str) -> str:
    """The snapshot name of one run's own checkpoint."""
    return f"run:{run_id}"


class Checkpoints:
    """Writes and reads the checkpoints of one store's sessions."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def load(
        self, session_id: str, name: str, schema_version: int, max_version: int, decode: Callable[[bytes], T]
    ) -> tuple[T, int] | None:
        """The newest checkpoint ``name`` at or below ``max_version``, decoded, with its version; a
        missing one, or one that no longer decodes, is ``None``."""
        snapshot = await self._store.load_snapshot(
            session_id, name, schema_version=schema_version, max_version=max_version
        )
        return _decoded(snapshot, decode)

    async def fold_to(self, session_id: str, target: int, start: SessionFold | None = None) -> SessionFold:
        """The session fold at ``target``: from ``start`` (or the newest usable checkpoint) plus the tail."""
        if start is None:
            checkpoint = await self.load(session_id, SESSION_PROJECTION, SESSION_SCHEMA_VERSION, target, decode_view)
            start = SessionFold() if checkpoint is None else SessionFold(checkpoint[0], version=checkpoint[1])
        async for record in self._from(session_id, start.version + 1, target):
            start.apply(record)
        return start

    async def _from(self, session_id: str, low: int, target: int) -> AsyncIterator[Record]:
        """The records ``low`` to ``target``; if the log does not start at ``low`` (nothing read
        where something should be, or a first version above it), a truncation may have removed what
        the fold needs: then that is a :class:`TruncatedError`, never a silently partial view. (A
        session started again after its deletion also starts above 1, and is no error.)"""
        expected: int | None = low
        async for record in self._store.read(session_id, from_version=low, to_version=target):
            if expected is not None and record.version != expected:
                await self._check_readable(session_id, low, target)
            expected = None
            yield record
        if expected is not None and target >= low:
            await self._check_readable(session_id, low, target)

    async def _check_readable(self, session_id: str, low: int, target: int) -> None:
        first = await first_version(self._store, session_id)
        if low < first:
            raise TruncatedError(session_id, first, f"version {target}")

    async def state(self, session_id: str, target: int, context: SessionContext | None = None) -> dict[str, Any]:
        """The session's key/value state at ``target``: the state's own checkpoint plus the state
        events after it (the database skips the rest), so its cost does not grow with the session.

        With ``context`` (what :meth:`~kern_events.backend.BaseEventStore.load_context` read at
        ``target`` for :data:`STATE_CHECKPOINT` and :data:`STATE_EVENT_TYPES`), its checkpoint and
        records are used, and only what they leave out is read.
        """
        if context is None:
            checkpoint = await self.load(session_id, STATE_CHECKPOINT, STATE_SCHEMA_VERSION, target, decode_state)
            records: list[Record] = []
            more = True
        else:
            checkpoint = _decoded(context.snapshot, decode_state)
            if checkpoint is None and context.snapshot is not None:
                return await self.state(session_id, target)  # it no longer decodes: its records are no use
            records, more = context.after, context.after_more
        if checkpoint is None and not _holds_version_one(context):
            await self._check_readable(session_id, 1, target)
        state, at = checkpoint if checkpoint is not None else ({}, 0)
        for record in records:
            state, at = fold_state(state, record.event), record.version
        if more:
            async for record in self._store.read(
                session_id, from_version=at + 1, to_version=target, types=STATE_EVENT_TYPES
            ):
                state = fold_state(state, record.event)
        return state

    async def run(self, session_id: str, run_id: str, target: int) -> RunView | None:
        """The run's view at ``target`` from its own checkpoint plus the events after it; ``None`` when
        it has no usable checkpoint (the caller folds the session instead)."""
        checkpoint = await self.load(session_id, run_checkpoint(run_id), RUN_SCHEMA_VERSION, target, decode_run)
        if checkpoint is None:
            return None
        run, at = checkpoint
        async for record in self._from(session_id, at + 1, target):
            event = record.event
            if isinstance(event, RunStarted) and event.run_id == run_id:
                run = new_run(event, int(record.recorded_at))
            elif getattr(event, "run_id", None) == run_id and isinstance(event, Event):
                run = apply_to_run(run, event, int(record.recorded_at))
        return run

    async def save(self, session_id: str, fold: SessionFold, *, paused_run_id: str | None = None) -> Snapshot | None:
        """Checkpoint the folded session (view and state), and the paused run's view on its own;
        the session view's snapshot, or ``None`` if the fold holds no session."""
        view = fold.view()
        if view is None:
            return None
        snapshot = Snapshot(
            session_id=session_id,
            name=SESSION_PROJECTION,
            schema_version=SESSION_SCHEMA_VERSION,
            version=fold.version,
            data=encode_view(view),
        )
        await self._store.save_snapshot(snapshot)
        await self._store.save_snapshot(
            Snapshot(
                session_id=session_id,
                name=STATE_CHECKPOINT,
                schema_version=STATE_SCHEMA_VERSION,
                version=fold.version,
                data=encode_state(view.session_state),
            )
        )
        run = view.get_run(paused_run_id) if paused_run_id is not None else None
        if run is not None:
            await self._store.save_snapshot(
                Snapshot(
                    session_id=session_id,
                    name=run_checkpoint(run.run_id),
                    schema_version=RUN_SCHEMA_VERSION,
                    version=fold.version,
                    data=encode_run(run),
                )
            )
        return snapshot
