"""The runtime-facing session API: open a session, run turns, record messages, tool calls and state.

Agent runtimes should not hand-assemble events. A :class:`Session` is one writer's handle on one
session: it knows the session's version and passes it as ``expected_version`` on every append, so a
second writer on the same session surfaces as :class:`~kern_events.errors.ConcurrencyError`, never as
a silent overwrite. A :class:`Run` stages the events of one run step and appends them together
(atomic), so a crash never leaves half a step in the log. Each step's events get their ids when it
is first flushed; a flush that fails without a clear answer (the connection dropped, the caller was
cancelled) keeps the step with those ids and its expected version, so flushing again stores it
exactly once, whether or not the first attempt reached the log. A :class:`StoragePolicy` decides what
is stored at all: what it leaves out never reaches the log.
"""

from __future__ import annotations

import random
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
import msgspec

from kern_events import _telemetry
from kern_events._loops import AnyLoopLock
from kern_events._references import Remembered, shorten
from kern_events._validate import check_flag, check_identifier, check_name, check_optional_identifier
from kern_events.errors import (
    ConcurrencyError,
    InvalidArgumentError,
    RequirementNotFoundError,
    RunStateError,
    SessionNotFoundError,
)
from kern_events.events import (
    Event,
    MediaAdded,
    MediaReference,
    MessageAdded,
    MetadataUpdated,
    Requirement,
    RequirementResolved,
    Role,
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
    SessionType,
    SummaryUpdated,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
)
from kern_events.records import NO_STREAM, AppendResult
from kern_events.stores._base import new_event_id

if TYPE_CHECKING:
    from kern_events._index import SessionInfo
    from kern_events.db import BaseDb
    from projections.runs import RunView
    from projections.session import SessionView

__all__ = ["Run", "Session", "StoragePolicy", "Summarizer", "retry_on_conflict"]

T = TypeVar("T")

AUTO_NAME_LENGTH = 60
"""Characters of the first user message that name a session that was given no name."""

Summarizer = Callable[["SessionView"], Awaitable[tuple[str, Sequence[str]]]]
"""An async callable given the session view, returning the summary text and its topics."""


class StoragePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What a session stores; what is left out never reaches the log."""

    store_tool_calls: bool = True
    """Tool call events, tool-result messages and the tool calls inside assistant messages."""
    store_media: bool = True
    """Media events and the media references inside messages."""
    store_history_messages: bool = False
    """Messages a runtime copied into a run's context from earlier runs (they are stored already)."""

    def admit(self, event: Event, *, from_history: bool = False) -> Event | None:
        """The event as this policy stores it, or ``None`` if it is not stored at all."""
        if from_history and not self.store_history_messages:
            return None
        if not self.store_tool_calls:
            if isinstance(event, ToolCallStarted | ToolCallCompleted):
                return None
            if isinstance(event, MessageAdded):
                if event.role == "tool" or (event.tool_calls and event.content in (None, "")):
                    return None  # a tool result, or a turn that only called tools
                if event.tool_calls:
                    event = msgspec.structs.replace(event, tool_calls=())
        if not self.store_media:
            if isinstance(event, MediaAdded):
                return None
            if isinstance(event, MessageAdded) and event.media:
                event = msgspec.structs.replace(event, media=())
        return event


_RUN_ENDINGS = (RunCompleted, RunFailed, RunCancelled, RunPaused)


def _stored_once(events: list[Event]) -> list[Event]:
    """``events`` with what a step would store twice stored once, the later copy referring to the
    earlier (both in this step): see :mod:`kern_events._references`."""
    said = Remembered()
    out: list[Event] = []
    for event in events:
        out.append(shorten(event, said))
        said.note(event)
    return out


class _Step:
    """A step as it is appended: the events the policy admitted (an automatic name included) and their
    ids, fixed at the first attempt so that every retry is the same append."""

    __slots__ = ("auto_named", "event_ids", "events", "expected_version")

    def __init__(self, events: list[Event], *, auto_named: bool) -> None:
        self.events = events
        self.event_ids = [new_event_id() for _ in events]
        self.auto_named = auto_named
        self.expected_version: int | None = None
        """The version the last attempt expected, while its outcome is unknown; ``None`` when no
        attempt can have stored it (never tried, or refused as a conflict): then the writer's version."""

    def ends_run(self) -> bool:
        return any(isinstance(event, _RUN_ENDINGS) for event in self.events)


class Session:
    """One writer's handle on one session; get one with :meth:`open`."""

    def __init__(
        self, db: BaseDb, session_id: str, *, version: int, user_id: str | None, named: bool, policy: StoragePolicy
    ) -> None:
        self.db = db
        self.session_id = session_id
        self.user_id = user_id
        self.version = version
        """The version this writer last saw; the next append expects it."""
        self.policy = policy
        self._named = named

    @classmethod
    async def open(
        cls,
        db: BaseDb,
        session_id: str,
        *,
        session_type: SessionType = "agent",
        agent_id: str | None = None,
        team_id: str | None = None,
        workflow_id: str | None = None,
        user_id: str | None = None,
        name: str | None = None,
        agent_data: Mapping[str, Any] | None = None,
        team_data: Mapping[str, Any] | None = None,
        workflow_data: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_state: Mapping[str, Any] | None = None,
        policy: StoragePolicy | None = None,
        create: bool = True,
    ) -> Self:
        """Continue the session if it exists, else start it with these ids and data (``create=False``:
        raise :class:`SessionNotFoundError` instead).

        Who may open a session is the rule the reads follow too (``db.get_session(..., user_id=)``):
        a caller that gives a ``user_id`` reaches only the sessions started with that same user id;
        a session of another user, or one started without a user, raises
        :class:`SessionNotFoundError`, exactly as an unknown id does with ``create=False``. A caller
        that gives no ``user_id`` is the application itself and reaches every session. Creating can
        only tell that an id is taken (ids are one namespace); give new sessions unguessable ids, and
        open existing ones with ``create=False`` so that a foreign id and an unknown one look the same.
        """
        check_identifier("session_id", session_id)
        check_optional_identifier("user_id", user_id)
        check_flag("create", create)
        if policy is not None and not isinstance(policy, StoragePolicy):
            raise InvalidArgumentError("policy", f"expected a StoragePolicy, got {policy!r}")
        policy = policy if policy is not None else StoragePolicy()
        data = {
            argument: _optional_dict(argument, value)
            for argument, value in (
                ("agent_data", agent_data),
                ("team_data", team_data),
                ("workflow_data", workflow_data),
                ("metadata", metadata),
                ("session_state", session_state),
            )
        }
        info = await db.store.get_session_info(session_id)
        if info is not None:
            if not _visible_to(info, user_id):
                raise SessionNotFoundError(session_id)
            named = info.name is not None
            return cls(db, session_id, version=info.version, user_id=info.user_id, named=named, policy=policy)
        if not create:
            raise SessionNotFoundError(session_id)
        started = SessionStarted(
            session_type=session_type,
            agent_id=agent_id,
            team_id=team_id,
            workflow_id=workflow_id,
            user_id=user_id,
            name=name,
            agent_data=data["agent_data"],
            team_data=data["team_data"],
            workflow_data=data["workflow_data"],
            metadata=data["metadata"],
            session_data={"session_state": data["session_state"]} if data["session_state"] else None,
        )
        head = await db.store.current_version(session_id)  # a deleted session keeps its versions
        try:
            result = await db.store.append(session_id, [started], expected_version=head if head else NO_STREAM)
        except ConcurrencyError:  # another process started it at the same moment: continue it
            return await cls.open(db, session_id, user_id=user_id, policy=policy)
        return cls(db, session_id, version=result.to_version, user_id=user_id, named=name is not None, policy=policy)

    async def append(self, events: Sequence[Event], *, from_history: bool = False) -> AppendResult | None:
        """Append ``events`` (as the policy admits them) at this writer's version; ``None`` if none is kept."""
        return await self._append_admitted(
            [admitted for event in events if (admitted := self.policy.admit(event, from_history=from_history))]
        )

    async def _append_admitted(self, kept: list[Event]) -> AppendResult | None:
        step = self._step(kept)
        return None if step is None else await self._append_step(step)

    def _step(self, kept: list[Event]) -> _Step | None:
        """The admitted events as one step, with the session's automatic name if this step gives it."""
        auto_named = False
        if not self._named:
            first = next((e for e in kept if isinstance(e, MessageAdded) and e.role == "user"), None)
            if first is not None and isinstance(first.content, str) and first.content.strip():
                kept.append(SessionRenamed(name=_auto_name(first.content)))
                self._named = auto_named = True
        return _Step(_stored_once(kept), auto_named=auto_named) if kept else None

    async def _append_step(self, step: _Step) -> AppendResult:
        """Append ``step`` with its own ids. A retry expects the version its unanswered attempt
        expected: if that attempt was stored, the store recognizes the ids and answers with the first
        result, where a later version would have made it look like someone else's write."""
        expected = self.version if step.expected_version is None else step.expected_version
        step.expected_version = expected
        try:
            result = await self.db.store.append(
                self.session_id, step.events, expected_version=expected, event_ids=step.event_ids
            )
        except ConcurrencyError:
            step.expected_version = None  # the store found none of its ids: it is not stored
            if expected == self.version:
                raise
            return await self._append_step(step)  # this writer moved on since that attempt: at its version
        except InvalidArgumentError:
            step.expected_version = None
            if step.auto_named:
                self._named = False
            raise
        self.version = max(self.version, result.to_version)
        every = self.db.checkpoint_every
        if every and result.to_version // every > (result.from_version - 1) // every:
            await self.db.save_checkpoint(self.session_id)  # crossed a multiple of checkpoint_every
        return result

    # -- runs ------------------------------------------------------------------------------------

    async def start_run(
        self,
        run_id: str | None = None,
        *,
        input: Any = None,
        parent_run_id: str | None = None,
        agent_id: str | None = None,
        team_id: str | None = None,
        workflow_id: str | None = None,
        model_id: str | None = None,
        model_provider: str | None = None,
    ) -> Run:
        """Start a run; its first step (``RunStarted`` and whatever is staged next) appends on flush."""
        run = Run(self, run_id or f"run_{uuid.uuid4().hex[:12]}")
        run.stage(
            RunStarted(
                run_id=run.run_id,
                parent_run_id=parent_run_id,
                agent_id=agent_id,
                team_id=team_id,
                workflow_id=workflow_id,
                user_id=self.user_id,
                input=input,
                model_id=model_id,
                model_provider=model_provider,
            )
        )
        return run

    # -- session-level changes -------------------------------------------------------------------

    async def update_state(
        self, values: Mapping[str, Any] | None = None, *, remove: Sequence[str] = ()
    ) -> AppendResult | None:
        """Set and remove session-state keys (kept across runs)."""
        if not values and not remove:
            return None
        return await self.append([SessionStateChanged(set=dict(values or {}), removed=tuple(remove))])

    async def update_metadata(
        self, values: Mapping[str, Any] | None = None, *, remove: Sequence[str] = ()
    ) -> AppendResult | None:
        """Set and remove metadata keys."""
        if not values and not remove:
            return None
        return await self.append([MetadataUpdated(set=dict(values or {}), removed=tuple(remove))])

    async def rename(self, name: str) -> AppendResult | None:
        """Give the session a display name."""
        check_name("name", name)
        self._named = True
        return await self.append([SessionRenamed(name=name)])

    async def add_media(self, media: Sequence[MediaReference], *, run_id: str | None = None) -> AppendResult | None:
        """Attach media references to the session or to one of its runs."""
        return await self.append([MediaAdded(media=tuple(media), run_id=run_id)])

    async def summarize(self, summarizer: Summarizer) -> AppendResult | None:
        """Ask ``summarizer`` for a summary of the session as it is now, and record it."""
        view = await self.view()
        summary, topics = await summarizer(view)
        return await self.append([SummaryUpdated(summary=summary, topics=tuple(topics))])

    # -- paused runs -------------------------------------------------------------------------------

    async def _paused_run(self, run_id: str) -> RunView:
        """The run as it stands now, which must exist and be paused; also catches this writer up.

        The view is read as of the version taken first, so the next append expects exactly the
        state that was checked: a change in between is a conflict, never a silent double resume.
        """
        self.version = await self.db.store.current_version(self.session_id)
        run = await self.db.get_run(self.session_id, run_id, version=self.version)
        if run.status != "paused":
            raise RunStateError(self.session_id, run_id, run.status, "the run is not paused")
        return run

    async def resolve(
        self,
        run_id: str,
        requirement_id: str,
        *,
        confirmed: bool | None = None,
        values: Mapping[str, Any] | None = None,
        result: Any = None,
        note: str | None = None,
    ) -> AppendResult | None:
        """Resolve one requirement of a paused run: confirm or reject a tool call, give the input
        values, or hand back an external tool's result. Resolving twice is an error."""
        run = await self._paused_run(run_id)
        requirement = next((r for r in run.requirements if r.requirement_id == requirement_id), None)
        if requirement is None:
            raise RequirementNotFoundError(self.session_id, run_id, requirement_id)
        if requirement.status != "open":
            raise RunStateError(self.session_id, run_id, run.status, f"requirement {requirement_id!r} is resolved")
        resolved = RequirementResolved(
            run_id=run_id,
            requirement_id=requirement_id,
            confirmed=confirmed,
            values=dict(values) if values is not None else None,
            result=result,
            note=note,
        )
        return await self.append([resolved])

    async def continue_run(self, run_id: str) -> Run:
        """Continue a paused run whose requirements are all resolved; of two writers racing to
        continue it, one gets :class:`~kern_events.errors.ConcurrencyError`."""
        run = await self._paused_run(run_id)
        open_ids = [requirement.requirement_id for requirement in run.open_requirements]
        if open_ids:
            raise RunStateError(self.session_id, run_id, run.status, f"requirements still open: {open_ids}")
        await self.append([RunResumed(run_id=run_id)])
        return Run(self, run_id)

    async def view(self) -> SessionView:
        """The session view, as of the latest version (another writer's appends included)."""
        return await self.db.get_session(self.session_id)


class Run:
    """One run of a session. Stage events with :meth:`message`, :meth:`tool_call` …, then
    :meth:`flush` them as one atomic step; :meth:`complete`, :meth:`fail` and :meth:`cancel` flush too."""

    def __init__(self, session: Session, run_id: str) -> None:
        check_identifier("run_id", run_id)
        self.session = session
        self.run_id = run_id
        self._staged: list[tuple[Event, bool]] = []
        self._unsettled: _Step | None = None
        """A flushed step whose append failed; the next flush appends it first, with the same ids."""

    def stage(self, event: Event, *, from_history: bool = False) -> None:
        """Add an event to the current step."""
        self._staged.append((event, from_history))

    def message(
        self,
        role: Role,
        content: Any,
        *,
        name: str | None = None,
        tool_call_id: str | None = None,
        tool_calls: Sequence[ToolCallRequest] = (),
        media: Sequence[MediaReference] = (),
        from_history: bool = False,
    ) -> None:
        """Stage a message (``from_history`` marks a copy of an earlier run's message)."""
        if role not in ("system", "user", "assistant", "tool"):
            raise InvalidArgumentError("role", f"expected system, user, assistant or tool, got {role!r}")
        self.stage(
            MessageAdded(
                run_id=self.run_id,
                role=role,
                content=content,
                name=name,
                tool_call_id=tool_call_id,
                tool_calls=tuple(tool_calls),
                media=tuple(media),
            ),
            from_history=from_history,
        )

    def tool_call(
        self,
        tool_call_id: str,
        tool_name: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        result: Any = None,
        error: str | None = None,
        duration: float | None = None,
    ) -> None:
        """Stage a finished tool call: one ``ToolCallCompleted`` with its arguments, its result (or
        error) and duration (its start is the same step's, so no ``ToolCallStarted`` is stored for it)."""
        self.stage(
            ToolCallCompleted(
                run_id=self.run_id,
                tool_call_id=tool_call_id,
                tool_name=tool_name,
                result=result,
                error=error,
                duration=duration,
                arguments=dict(arguments or {}),
            )
        )

    async def flush(self) -> AppendResult | None:
        """Append the staged events as one step; nothing staged (or nothing kept) appends nothing.

        A step whose flush raised (a lost connection, a cancellation, a conflict) is kept as it was,
        event ids included, and the next flush appends it first, then what was staged since as a
        step of its own: a step that did reach the log is not stored twice. It returns the last
        append's result. A step the store refuses as invalid (:class:`InvalidArgumentError`) is
        dropped: it could never be stored.
        """
        probe = _telemetry.probe
        return await (self._flush() if probe is None else probe.flush(self, self._flush))

    async def _flush(self) -> AppendResult | None:
        """The flush itself, behind :meth:`flush`'s telemetry check."""
        session = self.session
        result = None
        if self._unsettled is not None:
            result = await self._settle(self._unsettled)
        staged, self._staged = self._staged, []
        kept = [
            admitted for event, history in staged if (admitted := session.policy.admit(event, from_history=history))
        ]
        step = self._unsettled = session._step(kept)
        if step is not None:
            result = await self._settle(step)
        return result

    async def _settle(self, step: _Step) -> AppendResult:
        """Append ``step``; it stays unsettled if that raises, unless the store refused it as invalid."""
        try:
            result = await self.session._append_step(step)
        except InvalidArgumentError:
            self._unsettled = None
            raise
        self._unsettled = None
        return result

    async def _end(self, ending: Event) -> AppendResult | None:
        """Stage the event that ends the run and flush; if an earlier ending is still waiting (its
        step unsettled, or staged behind an unsettled step whose retry raised), flush that instead:
        a run ends once."""
        pending = (self._unsettled is not None and self._unsettled.ends_run()) or any(
            isinstance(event, _RUN_ENDINGS) for event, _ in self._staged
        )
        if not pending:
            self.stage(ending)
        return await self.flush()

    @asynccontextmanager
    async def step(self) -> AsyncIterator[Self]:
        """Stage inside the block; the whole step is appended when it ends without an error, and
        what the block staged is dropped when it raises (the step did not happen)."""
        mark = len(self._staged)
        try:
            yield self
        except BaseException:
            del self._staged[mark:]
            raise
        await self.flush()

    async def complete(self, output: Any = None, *, metrics: RunMetrics | None = None) -> AppendResult | None:
        """Finish the run successfully (with what is still staged, in one append)."""
        return await self._end(RunCompleted(run_id=self.run_id, output=output, metrics=metrics or RunMetrics()))

    async def fail(self, error: str, *, metrics: RunMetrics | None = None) -> AppendResult | None:
        """End the run with an error (with what is still staged, in one append)."""
        return await self._end(RunFailed(run_id=self.run_id, error=error, metrics=metrics))

    async def pause(self, requirements: Sequence[Requirement]) -> AppendResult | None:
        """Stop the run until ``requirements`` are resolved (with what is still staged, in one append),
        then checkpoint the session at that version, so a resume folds only what follows."""
        if not requirements:
            raise InvalidArgumentError("requirements", "a paused run needs at least one requirement")
        ids = [requirement.requirement_id for requirement in requirements]
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("requirements", f"requirement ids must be unique, got {ids}")
        result = await self._end(RunPaused(run_id=self.run_id, requirements=tuple(requirements)))
        await self.session.db.save_checkpoint(self.session.session_id, paused_run_id=self.run_id)
        return result

    async def cancel(self, reason: str | None = None) -> AppendResult | None:
        """End the run as cancelled (with what is still staged, in one append)."""
        return await self._end(RunCancelled(run_id=self.run_id, reason=reason))


class _Turns:
    """Writers of one db on one session take turns through :func:`retry_on_conflict`: they queue in
    this process instead of colliding in the database, and each turn starts from the version the
    last one left, so only writers in other processes are met by conflicts."""

    __slots__ = ("lock", "users", "version")

    def __init__(self) -> None:
        self.lock = AnyLoopLock()  # writers may run on several threads' event loops
        self.users = 0
        self.version = 0


_turns: weakref.WeakKeyDictionary[BaseDb, dict[str, _Turns]] = weakref.WeakKeyDictionary()
_turns_mutex = threading.Lock()


@asynccontextmanager
async def _turn(session: Session) -> AsyncIterator[_Turns]:
    with _turns_mutex:
        turns = _turns.setdefault(session.db, {})
        turn = turns.setdefault(session.session_id, _Turns())
        turn.users += 1
    try:
        async with turn.lock:
            yield turn
    finally:
        with _turns_mutex:
            turn.users -= 1
            if not turn.users:
                del turns[session.session_id]


async def retry_on_conflict(
    session: Session,
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = 32,
    base_delay: float = 0.005,
    max_delay: float = 1.0,
) -> T:
    """Await ``operation`` (a write through ``session``), again each time another writer got there first.

    Writers of the same db in this process that write to one session through this helper take turns
    (first come, first served), each starting from the version the previous turn left: they do not
    collide at all. Against writers elsewhere, a :class:`~kern_events.errors.ConcurrencyError` for
    this session carries the session's version (``actual_version``): the writer takes it and calls
    ``operation`` again at once. When that call conflicts too, the session is hot: before each
    further call the writer sleeps a random time between 0 and ``min(max_delay, base_delay * 2**n)``
    seconds (full jitter, ``n`` the sleeps so far, so colliding writers spread out) and reads the
    version afresh (one taken before the sleep is stale after it, and a stale append costs more than
    a read). After ``attempts`` calls the last conflict is raised.

    For writes that do not depend on what the others wrote, as a run's steps: pass ``run.flush`` (a
    failed flush keeps its step, so calling it again retries that very step), ``run.complete`` and
    the other endings (a run ends once), or a function that builds its events anew on each call. A
    write decided on the session's state must re-read it inside ``operation``.
    """
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
        raise InvalidArgumentError("attempts", f"expected an integer >= 1, got {attempts!r}")
    for argument, value in (("base_delay", base_delay), ("max_delay", max_delay)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
            raise InvalidArgumentError(argument, f"expected seconds >= 0, got {value!r}")
    async with _turn(session) as turn:
        session.version = max(session.version, turn.version)
        for attempt in range(attempts):
            try:
                result = await operation()
            except ConcurrencyError as error:
                if error.session_id != session.session_id or attempt == attempts - 1:
                    raise
                session.version = error.actual_version
            else:
                turn.version = max(turn.version, session.version)
                return result
            if attempt > 0:
                await anyio.sleep(random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1))))
                session.version = await session.db.store.current_version(session.session_id)
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises


def _visible_to(info: SessionInfo, user_id: str | None) -> bool:
    """Whether a caller passing ``user_id`` may open or read the session (see :meth:`Session.open`)."""
    return user_id is None or info.user_id == user_id


def _optional_dict(argument: str, value: object) -> dict[str, Any] | None:
    """A caller's mapping copied into a dict (``None`` stays ``None``); anything else is refused."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(argument, f"expected a mapping, got {type(value).__name__}")
    return dict(value)


def _auto_name(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= AUTO_NAME_LENGTH else line[: AUTO_NAME_LENGTH - 1].rstrip() + "…"
