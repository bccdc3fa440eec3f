"""What Agent, Team and Workflow share: where sessions live, run outputs, and the sync entry points."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from kern_events._loops import home_loop
from kern_events.events import Requirement, RunMetrics, SessionStateChanged
from kern_events.sessions import Run, StoragePolicy
from projections.runs import RunStatus

if TYPE_CHECKING:
    from kern_events.db import BaseDb

__all__ = ["RunOutput", "Runtime", "run_sync", "stage_state_change"]

T = TypeVar("T")


class RunOutput(msgspec.Struct, frozen=True, kw_only=True):
    """What a run produced."""

    run_id: str
    session_id: str
    content: str
    metrics: RunMetrics
    session_state: dict[str, Any] = {}
    status: RunStatus = "completed"
    """``paused`` when the run waits for ``requirements`` (see ``Agent.acontinue_run``)."""
    requirements: tuple[Requirement, ...] = ()


def stage_state_change(run: Run, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """Stage the keys a run set (new or changed) and removed, if it changed the state at all."""
    changed = {key: value for key, value in after.items() if key not in before or before[key] != value}
    removed = tuple(key for key in before if key not in after)
    if changed or removed:
        run.stage(SessionStateChanged(set=changed, removed=removed))


class Runtime:
    """The common half of Agent, Team and Workflow."""

    def __init__(
        self,
        *,
        db: BaseDb | None,
        session_id: str | None,
        user_id: str | None,
        session_state: Mapping[str, Any] | None,
        storage_policy: StoragePolicy | None,
    ) -> None:
        self.db = db
        self.session_id = session_id
        self.user_id = user_id
        self.session_state = dict(session_state or {})
        self.storage_policy = storage_policy
        self._fallback_db: BaseDb | None = None

    def _database(self) -> BaseDb:
        """The configured db, or one in memory for this runtime (nothing survives the process)."""
        if self.db is not None:
            return self.db
        if self._fallback_db is None:
            from kern_events.db import InMemoryDb  # the runtime is importable before the storage objects

            self._fallback_db = InMemoryDb()
        return self._fallback_db

    def _session_id(self, session_id: str | None) -> str:
        if session_id is not None:
            return session_id
        if self.session_id is None:
            self.session_id = f"session_{uuid.uuid4().hex[:12]}"
        return self.session_id

    async def arun(self, input: str, *, session_id: str | None = None, user_id: str | None = None) -> RunOutput:
        """Run one turn; overridden by Agent, Team and Workflow."""
        raise NotImplementedError

    def run(self, input: str, *, session_id: str | None = None, user_id: str | None = None) -> RunOutput:
        """:meth:`arun` for synchronous code (not from inside an event loop: await ``arun`` there)."""
        return run_sync(self.arun(input, session_id=session_id, user_id=user_id))

    async def aprint_response(
        self,
        input: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
    ) -> RunOutput:
        """Run one turn and print the answer."""
        output = await self.arun(input, session_id=session_id, user_id=user_id)
        print(output.content)
        return output

    def print_response(self, input: str, *, session_id: str | None = None, user_id: str | None = None) -> RunOutput:
        """:meth:`aprint_response` for synchronous code."""
        return run_sync(self.aprint_response(input, session_id=session_id, user_id=user_id))


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code, on kern-events' home loop (see
    :func:`kern_events.run_blocking`), also from inside async code, whose own loop cannot be
    re-entered (close a db used this way with ``run_sync(db.aclose())``)."""
    return asyncio.run_coroutine_threadsafe(coroutine, home_loop()).result()
