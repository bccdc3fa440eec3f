"""The ``kern-events`` command: a demo conversation that persists across processes, and read tools.

``demo`` writes the way a runtime would (one atomic ``store.append`` per run, guarded by the
session's version); every other command only reads, through the session index (``sessions``), the
session view (``show``) or the raw log (``events``, ``export``, ``verify``). All work on one SQLite
file, and only ``demo`` may create it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from kern_events.db import BaseDb, PostgresDb, SqliteDb
from kern_events.errors import CorruptRecordError, InvalidArgumentError, KernEventsError, SessionNotFoundError
from kern_events.events import ExternalExecution, Requirement, ToolConfirmation
from kern_events.records import Record, UnknownEvent
from kern_events.runtime import Agent, MemoryModel
from projections.runs import RunView
from projections.session import SessionView

__all__ = ["main"]

DEFAULT_DB = "kern_events_demo.db"
DEFAULT_SESSION_ID = "conversation_123"

_Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
_json = msgspec.json.Encoder()


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse has already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    handler: _Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except KernEventsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`kern-events export | head`); keep the interpreter's final flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kern-events", description="Inspect kern-events SQLite databases, or run a demo conversation."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH_OR_URL",
        help=f"SQLite file or postgresql:// URL (default: {DEFAULT_DB})",
    )
    database.add_argument("--schema", default="public", help="PostgreSQL schema (default: public)")

    def command(name: str, handler: _Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[database], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo", _demo, "Append the next turn of a scripted agent conversation and show the session.")
    demo.add_argument("--session-id", default=DEFAULT_SESSION_ID, help=f"default: {DEFAULT_SESSION_ID}")

    sessions = command("sessions", _sessions, "List sessions from the session index, newest first.")
    sessions.add_argument("--user-id")
    sessions.add_argument("--type", dest="session_type", choices=["agent", "team", "workflow"])
    sessions.add_argument("--limit", type=int, default=100, help="default: 100")
    sessions.add_argument("--json", action="store_true", help="one JSON object per line")

    show = command("show", _show, "Show a session view, now or as of a version.")
    show.add_argument("session_id", metavar="SESSION_ID")
    show.add_argument("--version", type=int, help="show the session as it was at this version")
    show.add_argument("--user-id", help="report sessions of other users as not found")
    show.add_argument("--json", action="store_true", help="the view as JSON")

    events = command("events", _events, "Dump one session's records as JSON lines, in version order.")
    events.add_argument("session_id", metavar="SESSION_ID")
    events.add_argument("--from-version", type=int, default=1)
    events.add_argument("--to-version", type=int)

    export = command("export", _export, "Dump every session's records as JSON lines, in global order.")
    export.add_argument("--from-position", type=int, default=0)

    paused = command("paused", _paused, "List paused runs and what each is waiting for.")
    paused.add_argument("--session-id")
    paused.add_argument("--user-id")
    paused.add_argument("--json", action="store_true", help="one JSON object per line")

    command("verify", _verify, "Check the whole log: gapless versions, ordered positions, decodable records.")
    command("migrate", _migrate, "Create or upgrade the tables (for deployments that forbid DDL at run time).")
    return parser


def _open(path: str, *, create: bool = False, schema: str = "public") -> BaseDb:
    """The database at ``path`` (a file or a PostgreSQL URL); a missing file is an error unless ``create``."""
    if path.startswith(("postgres://", "postgresql://", "postgresql+")):
        return PostgresDb(path, schema=schema, pool_size=2)
    if not create and not Path(path).exists():
        raise InvalidArgumentError(
            "--db", f"database file {path!r} does not exist (only `kern-events demo` creates one)"
        )
    return SqliteDb(path)


# -- demo --------------------------------------------------------------------------------------------

_USER_ID = "alice@example.com"
_TURNS = (
    "Hi! My name is Alice.",
    "What's the weather in Paris?",
    "What's my name?",
    "Book me a flight to Oslo",
)


def remember_name(name: str, session_state: dict[str, Any]) -> str:
    """Remember the user's name for later runs."""
    session_state["user_name"] = name
    return f"I will remember that your name is {name}."


def book_flight(city: str, session_state: dict[str, Any]) -> str:
    """Book a flight (the demo asks the user to confirm it first)."""
    session_state["booked"] = city
    return f"booked, seat 12A to {city}"


def get_weather(city: str, session_state: dict[str, Any]) -> dict[str, Any]:
    """The current weather in a city (a fixed answer: this is a demo)."""
    session_state["last_city"] = city
    return {"city": city, "temperature_c": 18, "conditions": "sunny"}


async def _summarize(view: SessionView) -> tuple[str, list[str]]:
    """A summary of the session from its own messages (a model would write this in a real runtime)."""
    asked = [m.content for run in view.runs for m in run.messages if m.role == "user" and isinstance(m.content, str)]
    return f"{len(view.runs)} runs; the user said: " + " / ".join(asked), ["introductions", "weather", "memory"]


async def _demo(args: argparse.Namespace) -> int:
    session_id: str = args.session_id
    async with _open(args.db, create=True, schema=args.schema) as db:
        info = await db.store.get_session_info(session_id)
        runs = 0 if info is None else info.run_count
        print(
            f"{'continuing' if info else 'starting'} session {session_id} in {args.db} ({_count(runs, 'run')} so far)"
        )
        agent = Agent(
            model=MemoryModel(),
            db=db,
            session_id=session_id,
            user_id=_USER_ID,
            name="Demo agent",
            instructions="You are a friendly assistant that remembers what the user tells you.",
            tools=[remember_name, get_weather, book_flight],
            requires_confirmation=["book_flight"],
            add_history_to_context=True,
        )
        paused = await db.get_paused_runs(session_id=session_id) if info is not None else []
        if paused:
            _, run = paused[0]
            session = await db.open_session(session_id)
            for item in run.open_requirements:
                print(f"paused run {run.run_id} waits for: {_requirement_text(item.requirement)}")
                print("  the user confirms it")
                await session.resolve(run.run_id, item.requirement_id, confirmed=True)
            output = await agent.acontinue_run(run.run_id)
            print(f"agent: {output.content}")
        else:
            question = _TURNS[runs % len(_TURNS)]
            print(f"user: {question}")
            output = await agent.arun(question)
            if output.status == "paused":
                waits = "; ".join(_requirement_text(requirement) for requirement in output.requirements)
                print(f"agent paused run {output.run_id}, waiting for: {waits}")
                print("this process exits now; run the command again to confirm it in a new process")
            else:
                print(f"agent: {output.content}")
            if runs % len(_TURNS) == 2:
                await (await db.open_session(session_id)).summarize(_summarize)
        view = await db.get_session(session_id)
        print()
        _print_view(view)
        print()
        print(
            f"session {session_id} now has {_count(len(view.runs), 'run')} "
            f"(version {await db.store.current_version(session_id)}); "
            "run the command again to continue it in a new process"
        )
    return 0


# -- readable output ---------------------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _text(value: Any) -> str:
    """A message's content or a tool's result as one line: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    return _json.encode(value).decode()


def _summary(summary: str, topics: Sequence[str]) -> str:
    return f"{summary} (topics: {', '.join(topics)})" if topics else summary


def _print_view(view: SessionView, *, version: int | None = None) -> None:
    """Print the session header, then every run with its messages, tool calls and metrics."""
    header: list[tuple[str, Any]] = [
        ("session_type", view.session_type),
        ("agent_id", view.agent_id),
        ("team_id", view.team_id),
        ("workflow_id", view.workflow_id),
        ("user_id", view.user_id),
        ("name", view.session_name),
        ("state", _text(view.session_state) if view.session_state else None),
        ("summary", None if view.summary is None else _summary(view.summary.summary, view.summary.topics)),
        ("created_at", _when(view.created_at)),
        ("updated_at", _when(view.updated_at)),
    ]
    print(f"session {view.session_id}" + (f" as of version {version}" if version is not None else ""))
    for label, value in header:
        if value is not None or label in ("session_type", "user_id", "name", "state", "summary"):
            print(f"  {label + ':':<13} {'-' if value is None else value}")
    if not view.runs:
        print("  (no runs yet)")
    for number, run in enumerate(view.runs, start=1):
        _print_run(number, run)


def _print_run(number: int, run: RunView) -> None:
    print(f"run {number}: {run.run_id} [{run.status}] started {_when(run.created_at)}")
    calls = {call.tool_call_id: call for call in run.tool_calls}
    for message in run.messages:
        if message.content is not None:
            who = message.role if message.name is None else f"{message.role} ({message.name})"
            print(f"  {who}: {_text(message.content)}")
        for request in message.tool_calls:
            print(f"  {message.role} calls {request.tool_name}({_text(request.arguments)}) [{request.tool_call_id}]")
            call = calls.get(request.tool_call_id)
            if call is not None:
                took = "" if call.duration is None else f" in {call.duration:.2f} s"
                outcome = call.error if call.error is not None else _text(call.result)
                print(f"    -> {call.status}{took}: {outcome}")
    for item in run.requirements:
        print(f"  requirement {item.requirement_id} ({item.requirement.__struct_config__.tag}): {item.status}")
    if run.error is not None:
        print(f"  error: {run.error}")
    if run.metrics is not None:
        metrics = run.metrics
        took = "" if metrics.duration is None else f", {metrics.duration:.2f} s"
        model = "/".join(part for part in (metrics.model_provider, metrics.model_id) if part)
        print(
            f"  metrics: {metrics.input_tokens} input + {metrics.output_tokens} output = "
            f"{metrics.total_tokens} tokens{took}" + (f", {model}" if model else "")
        )


# -- read commands -----------------------------------------------------------------------------------


async def _sessions(args: argparse.Namespace) -> int:
    async with _open(args.db, schema=args.schema) as db:
        rows = await db.get_sessions(user_id=args.user_id, session_type=args.session_type, limit=args.limit)
    if args.json:
        for row in rows:
            print(_json.encode(row).decode())
        return 0
    if not rows:
        print("no sessions")
        return 0
    table = [("SESSION_ID", "TYPE", "OWNER", "USER_ID", "NAME", "RUNS", "VERSION", "UPDATED_AT")]
    for row in rows:
        owner = row.agent_id or row.team_id or row.workflow_id
        table.append(
            (
                row.session_id,
                row.session_type or "-",
                owner or "-",
                row.user_id or "-",
                row.name or "-",
                str(row.run_count),
                str(row.version),
                _when(row.updated_at),
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with _open(args.db, schema=args.schema) as db:
        view = await db.get_session(args.session_id, user_id=args.user_id, version=args.version)
    if args.json:
        print(_json.encode(view).decode())
    else:
        _print_view(view, version=args.version)
    return 0


def _record_line(record: Record) -> str:
    """One record as a JSON line: the envelope, and the event as builtins (unknown types as base64 bytes)."""
    event: dict[str, Any]
    if isinstance(record.event, UnknownEvent):
        event = {
            "type": record.event.type,
            "schema_version": record.event.schema_version,
            "data_base64": base64.b64encode(record.event.data).decode(),
        }
    else:
        event = msgspec.to_builtins(record.event)
    line = {
        "session_id": record.session_id,
        "version": record.version,
        "position": record.position,
        "event_id": str(record.event_id),
        "recorded_at": record.recorded_at,
        "type": record.type,
        "known": not isinstance(record.event, UnknownEvent),
        "event": event,
    }
    return _json.encode(line).decode()


async def _events(args: argparse.Namespace) -> int:
    async with _open(args.db, schema=args.schema) as db:
        if await db.store.get_session_info(args.session_id) is None:
            raise SessionNotFoundError(args.session_id)
        async for record in db.store.read(args.session_id, from_version=args.from_version, to_version=args.to_version):
            print(_record_line(record))
    return 0


async def _export(args: argparse.Namespace) -> int:
    async with _open(args.db, schema=args.schema) as db:
        async for record in db.store.read_all(from_position=args.from_position):
            print(_record_line(record))
    return 0


# -- verify ------------------------------------------------------------------------------------------


class _Checker:
    """Checks records in global order: positions increase, and each session's versions follow without gaps."""

    def __init__(self) -> None:
        self.events = 0
        self.unknown: dict[str, int] = {}
        self.problems: list[str] = []
        self._last_position = -1
        self._last_version: dict[str, int] = {}

    @property
    def sessions(self) -> int:
        return len(self._last_version)

    def check(self, session_id: str, version: int, position: int) -> None:
        """Check one record's envelope (also of a record whose payload did not decode)."""
        self.events += 1
        if position <= self._last_position:
            self.problems.append(
                f"session {session_id!r} version {version}: position {position} does not follow "
                f"position {self._last_position}"
            )
        self._last_position = max(self._last_position, position)
        last = self._last_version.get(session_id)
        if last is not None and version != last + 1:
            kind = "a gap" if version > last + 1 else "out of order"
            self.problems.append(f"session {session_id!r}: version {version} follows version {last} ({kind})")
        self._last_version[session_id] = version if last is None else max(last, version)


async def _verify(args: argparse.Namespace) -> int:
    checker = _Checker()
    async with _open(args.db, schema=args.schema) as db:
        store = db.store
        position = 0
        while True:
            try:
                async for record in store.read_all(from_position=position):
                    checker.check(record.session_id, record.version, record.position)
                    if isinstance(record.event, UnknownEvent):
                        checker.unknown[record.type] = checker.unknown.get(record.type, 0) + 1
                    position = record.position + 1
                break
            except CorruptRecordError as exc:
                checker.problems.append(str(exc))
                checker.check(exc.session_id, exc.version, exc.position)
                position = exc.position + 1
    for problem in checker.problems:
        print(f"problem: {problem}")
    unknown = sum(checker.unknown.values())
    if unknown:
        kinds = ", ".join(f"{name} x{count}" for name, count in sorted(checker.unknown.items()))
        print(f"{_count(unknown, 'event')} of types this release does not know (written by a newer release?): {kinds}")
    outcome = "ok" if not checker.problems else _count(len(checker.problems), "problem")
    print(f"verified {_count(checker.events, 'event')} in {_count(checker.sessions, 'session')}: {outcome}")
    return 0 if not checker.problems else 1


async def _migrate(args: argparse.Namespace) -> int:
    async with _open(args.db, create=True, schema=args.schema):
        pass  # opening a db creates or upgrades its tables
    print(f"schema of {args.db} is up to date")
    return 0


async def _paused(args: argparse.Namespace) -> int:
    async with _open(args.db, schema=args.schema) as db:
        found = await db.get_paused_runs(session_id=args.session_id, user_id=args.user_id)
    if not found:
        print("no paused runs")
        return 0
    for session_id, run in found:
        if args.json:
            print(_json.encode({"session_id": session_id, "run": msgspec.to_builtins(run)}).decode())
            continue
        print(f"session {session_id} run {run.run_id}, paused {_when(run.updated_at)}:")
        for item in run.open_requirements:
            requirement = item.requirement
            detail = msgspec.to_builtins(requirement)
            kind = detail.pop("kind")
            detail.pop("requirement_id")
            print(f"  {requirement.requirement_id}: {kind} {_json.encode(detail).decode()}")
    return 0


def _requirement_text(requirement: Requirement) -> str:
    """A requirement in a line: what it is and, for tool calls, the call."""
    if isinstance(requirement, ToolConfirmation | ExternalExecution):
        kind = "confirmation of" if isinstance(requirement, ToolConfirmation) else "an outside result for"
        return f"{kind} {requirement.tool_name}({_json.encode(requirement.arguments).decode()})"
    return f"input: {', '.join(field.name for field in requirement.fields)}"
