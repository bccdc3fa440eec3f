"""The ``kern-events`` command: a demo conversation that persists across processes, and read tools.

``--db`` names the database for every command, one function turning it into a db (:func:`_open`):
a SQLite file, a ``postgresql://`` URL (with ``--schema``) or a ``nats://`` URL of a JetStream
cluster, whose query parameters are :class:`~kern_events.db.NatsDb`'s options (``prefix``,
``shards``, ``replicas``, ``timeout``).

``demo`` writes the way a runtime would (one atomic ``store.append`` per run, guarded by the
session's version); ``migrate`` creates or upgrades the tables; ``import`` restores what ``export``
wrote (:mod:`kern_events.transfer`), creating the database if need be. Every other command only reads,
through the session index (``sessions``, ``paused``), the session view (``show``) or the raw log
(``events``, ``export``, ``verify``), and opens the database read-only: a SQLite file through a
read-only connection, a PostgreSQL schema without DDL, NATS without creating a stream, so it never
creates or writes a database, a table, a schema or a stream (SQLite may leave its own
``-wal``/``-shm`` files beside a WAL database).
Audit tools (``export``, ``verify``) read each session's stream directly, never through the fenced
global feed, so an open transaction elsewhere on the server hides nothing from them.
Tables and progress bars are drawn with ``rich`` on a terminal; piped output is plain.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

import msgspec
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from kern_events._index import SessionInfo
from kern_events.db import BaseDb, NatsDb, PostgresDb, SqliteDb
from kern_events.errors import CorruptRecordError, InvalidArgumentError, KernEventsError, SessionNotFoundError
from kern_events.events import ExternalExecution, Requirement, ToolConfirmation
from kern_events.records import Record, UnknownEvent
from kern_events.retention import RetentionPolicy
from kern_events.runtime import Agent, MemoryModel
from kern_events.stores._base import BaseEventStore
from kern_events.stores.sqlite import SqliteEventStore
from kern_events.timetravel import first_version
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


def _version() -> str:
    try:
        return importlib.metadata.version("kern-events")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kern-events",
        description="Inspect kern-events databases (SQLite, PostgreSQL or NATS JetStream), or run a demo conversation.",
    )
    parser.add_argument("--version", action="version", version=f"kern-events {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--db",
        default=DEFAULT_DB,
        metavar="PATH_OR_URL",
        help=(
            "a SQLite file, a postgresql:// URL, or nats://HOST:PORT,HOST:PORT,... with the options "
            f"?prefix=NAME&shards=N&replicas=N&timeout=SECONDS (default: {DEFAULT_DB})"
        ),
    )
    database.add_argument("--schema", default="public", help="PostgreSQL schema (default: public)")

    def command(name: str, handler: _Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[database], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    demo = command("demo", _demo, "Append the next turn of a scripted agent conversation and show the session.")
    demo.add_argument("--session-id", default=DEFAULT_SESSION_ID, help=f"default: {DEFAULT_SESSION_ID}")
    demo.add_argument("--reset", action="store_true", help="erase the demo session and start the conversation over")

    sessions = command("sessions", _sessions, "List sessions from the session index, newest first.")
    sessions.add_argument("--user-id")
    sessions.add_argument("--type", dest="session_type", help="agent, team, workflow or an integration's own")
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

    export = command(
        "export",
        _export,
        "Write sessions as JSON lines (envelopes, stored payloads, chain hashes) that `import` restores anywhere.",
    )
    export.add_argument("--session", dest="sessions", action="append", metavar="SESSION_ID", help="repeatable")
    export.add_argument("--user-id", help="only this user's sessions")
    export.add_argument(
        "--since", type=_moment, help="only sessions updated at or after this time (ISO 8601, or unix seconds)"
    )
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")

    import_ = command(
        "import",
        _import,
        "Restore an export into this database (created if need be); every line is checked before anything is stored.",
    )
    import_.add_argument("file", metavar="FILE", help="an export file (`-` reads standard input)")
    import_.add_argument(
        "--skip-existing", action="store_true", help="leave sessions the database has already as they are"
    )

    paused = command("paused", _paused, "List paused runs and what each is waiting for.")
    paused.add_argument("--session-id")
    paused.add_argument("--user-id")
    paused.add_argument("--json", action="store_true", help="one JSON object per line")

    command(
        "verify",
        _verify,
        "Check every session's log: gapless versions up to the index's, ordered positions, decodable records.",
    )
    command("migrate", _migrate, "Create or upgrade the tables (for deployments that forbid DDL at run time).")

    replay = command("replay", _replay, "Tell a session's log as the conversation happened, event by event.")
    replay.add_argument("session_id", metavar="SESSION_ID")
    replay.add_argument("--to-version", type=int, help="stop at this version")
    replay.add_argument("--json", action="store_true", help="one JSON object per step, then the token totals")

    ui = command("ui", _ui, "Serve a local page to browse sessions (needs the extra: pip install 'kern-events[ui]').")
    ui.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    ui.add_argument("--port", type=int, default=8000, help="default: 8000")
    ui.add_argument("--allow-writes", action="store_true", help="let the page rename and delete sessions")
    retain = command(
        "retain",
        _retain,
        "Apply a retention policy: list what would be deleted or compacted (a dry run), or do it with --apply.",
    )
    retain.add_argument(
        "--max-age", type=_duration, help="delete sessions not updated for this long (30d, 12h, 90m, 3600)"
    )
    retain.add_argument("--keep-runs", type=int, help="compact each session to its last N top-level runs")
    retain.add_argument("--apply", action="store_true", help="delete and compact (without it: only list)")
    retain.add_argument("--force", action="store_true", help="allow a policy of 0, which deletes everything")
    erase = command(
        "erase-user",
        _erase_user,
        "Erase every session of a user: list them (a dry run), or erase them for good with --yes.",
    )
    erase.add_argument("user_id", metavar="USER_ID")
    erase.add_argument("--yes", action="store_true", help="erase (without it: only list)")
    erase.add_argument(
        "--keyring",
        metavar="PATH",
        help="the KeyringFile of an encrypted database: the user's data keys are deleted too (crypto-shredding)",
    )
    return parser


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> float:
    """Seconds from ``3600``, ``90m``, ``12h``, ``30d`` or ``2w``."""
    unit = _UNITS.get(text[-1:].lower())
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 30d, 12h, 90m or 3600, got {text!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"expected a duration >= 0, got {text!r}")
    return seconds


def _open(path: str, *, create: bool = False, schema: str = "public") -> BaseDb:
    """The database at ``path``: a SQLite file, a PostgreSQL URL or a NATS URL (:func:`_nats_db`).

    Without ``create`` it is opened read-only: a missing file, a file or schema without kern-events
    tables, or a NATS server without the stream, is an error, and nothing is created or written.
    A ``scheme://`` other than these is an error naming it, never taken for a file name.
    """
    key = _chain_key()
    if path.startswith(("postgres://", "postgresql://", "postgresql+")):
        return PostgresDb(path, schema=schema, pool_size=2, create_schema=create, chain_key=key)
    scheme = _SCHEME.match(path)
    if scheme is not None and scheme.group(1).lower() == "nats":
        return _nats_db(path, create=create, schema=schema, chain_key=key)
    if scheme is not None:
        raise InvalidArgumentError(
            "--db", f"unknown scheme {scheme.group(1)!r}: expected a SQLite file, a postgresql:// or a nats:// URL"
        )
    if create:
        return SqliteDb(path, chain_key=key)
    if not os.path.lexists(path):  # the store would say so too; the CLI also says what creates one
        raise InvalidArgumentError(
            "--db", f"database file {path!r} does not exist (`kern-events demo` or `kern-events migrate` creates one)"
        )
    return BaseDb(SqliteEventStore(path, read_only=True, chain_key=key))


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")

_NATS_OPTIONS: dict[str, Callable[[str], object]] = {"prefix": str, "shards": int, "replicas": int, "timeout": float}
"""The query parameters of a ``nats://`` URL: :class:`NatsDb`'s options of the same names."""


def _nats_db(url: str, *, create: bool, schema: str, chain_key: bytes | None) -> BaseDb:
    """``nats://HOST:PORT[,HOST:PORT...][?prefix=NAME&shards=N&replicas=N&timeout=SECONDS]``: a
    :class:`NatsDb` on those servers (one cluster; the port defaults to 4222), the query parameters
    passed as its options (``replicas`` only matters when the streams are created). Without
    ``create`` a missing stream is an error (``create_streams=False``)."""
    if schema != "public":
        raise InvalidArgumentError("--schema", "is PostgreSQL's; name a NATS stream with ?prefix= on the nats:// URL")
    hosts, _, query = url.split("://", 1)[1].partition("?")
    servers = []
    for host in hosts.split(","):
        shown = host.rpartition("@")[2]  # never echo a password
        try:
            parts = urllib.parse.urlsplit(f"nats://{host}")
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            raise InvalidArgumentError("--db", f"bad NATS server {shown!r}: expected HOST or HOST:PORT") from None
        if not parts.hostname or parts.path or parts.fragment:
            raise InvalidArgumentError("--db", f"bad NATS server {shown!r}: expected HOST or HOST:PORT")
        servers.append(f"nats://{host}")
    options: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        convert = _NATS_OPTIONS.get(name)
        if convert is None:
            raise InvalidArgumentError(
                "--db", f"unknown query parameter {name!r} in the nats:// URL (expected {', '.join(_NATS_OPTIONS)})"
            )
        if name in options:
            raise InvalidArgumentError(name, "given twice in the nats:// URL")
        try:
            options[name] = convert(value)
        except ValueError:
            raise InvalidArgumentError(name, f"expected a number, got {value!r}") from None
    return NatsDb(servers, create_streams=create, chain_key=chain_key, **options)


CHAIN_KEY_VARIABLE = "KERN_EVENTS_CHAIN_KEY"
"""The environment variable holding the hash chain's secret key, in hex, for a database whose events
were written with ``chain_key=`` (a key on the command line would show in the process list)."""


def _chain_key() -> bytes | None:
    text = os.environ.get(CHAIN_KEY_VARIABLE)
    if not text:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise InvalidArgumentError(CHAIN_KEY_VARIABLE, "expected the chain key in hex") from None


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


def get_weather(city: str, session_state: dict[str, Any]) -> str:
    """The current weather in a city (a fixed answer: this is a demo)."""
    session_state["last_city"] = city
    return "sunny and 18 °C"


async def _summarize(view: SessionView) -> tuple[str, list[str]]:
    """A summary of the session from its own messages (a model would write this in a real runtime)."""
    asked = [m.content for run in view.runs for m in run.messages if m.role == "user" and isinstance(m.content, str)]
    return f"{_count(len(view.runs), 'run')}; the user said: " + " / ".join(asked), [
        "introductions",
        "weather",
        "memory",
    ]


async def _demo(args: argparse.Namespace) -> int:
    session_id: str = args.session_id
    async with _open(args.db, create=True, schema=args.schema) as db:
        info = await db.store.get_session_info(session_id)
        if info is not None and args.reset:
            await db.delete_session(session_id)
            print(f"erased session {session_id}; starting over")
            info = None
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
        elif runs >= len(_TURNS):
            print(
                f"the conversation is complete: all {len(_TURNS)} scripted turns are done "
                f"(run `kern-events demo --reset` to start over)"
            )
            return 0
        else:
            question = _TURNS[runs]
            print(f"user: {question}")
            output = await agent.arun(question)
            if output.status == "paused":
                waits = "; ".join(_requirement_text(requirement) for requirement in output.requirements)
                print(f"agent paused run {output.run_id}, waiting for: {waits}")
                print("this process exits now; run the command again to confirm it in a new process")
            else:
                print(f"agent: {output.content}")
            if runs == 2:
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


def _print_table(table: Table) -> None:
    """Print a table: with colour on a terminal; as plain, unwrapped columns when piped."""
    if sys.stdout.isatty():
        Console(highlight=False).print(table)
        return
    console = Console(highlight=False, no_color=True, width=100_000)
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        print(line.rstrip())


def _table(*columns: str) -> Table:
    """A table with these headings: ruled and bold on a terminal, bare columns when piped."""
    boxed = sys.stdout.isatty()
    table = Table(
        box=box.SIMPLE_HEAD if boxed else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold cyan" if boxed else "",
        padding=(0, 1),
    )
    for column in columns:
        table.add_column(column, no_wrap=not boxed)
    return table


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
    table = _table("SESSION_ID", "TYPE", "OWNER", "USER_ID", "NAME", "RUNS", "VERSION", "UPDATED_AT")
    for row in rows:
        owner = row.agent_id or row.team_id or row.workflow_id
        table.add_row(
            row.session_id,
            row.session_type or "-",
            owner or "-",
            row.user_id or "-",
            row.name or "-",
            str(row.run_count),
            str(row.version),
            _when(row.updated_at),
        )
    _print_table(table)
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


async def _sessions_oldest_first(
    db: BaseDb, *, user_id: str | None = None, updated_since: float | None = None
) -> AsyncIterator[SessionInfo]:
    """Every session in the index (of ``user_id``, updated since), oldest first, a page at a time."""
    page_size, offset = 1000, 0
    while True:
        page = await db.store.list_sessions(
            user_id=user_id,
            updated_since=updated_since,
            sort_by="created_at",
            descending=False,
            limit=page_size,
            offset=offset,
        )
        for info in page:
            yield info
        if len(page) < page_size:
            return
        offset += len(page)


class _RateColumn(ProgressColumn):
    """Events per second, as rich measures it over the last half minute."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


@contextlib.contextmanager
def _progress(description: str) -> Iterator[Progress]:
    """A progress bar on stderr while a terminal watches; nothing at all when stderr is not one."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    with progress:
        yield progress


async def _events_to_expect(db: BaseDb, progress: Progress) -> int | None:
    """How many events the sessions hold, from the index alone (only when a bar will show it)."""
    if progress.disable:
        return None
    return sum([info.version async for info in _sessions_oldest_first(db)])


async def _export(args: argparse.Namespace) -> int:
    from kern_events.transfer import export_events

    with _progress("exporting") as progress, _output(args.output) as out:
        async with _open(args.db, schema=args.schema) as db:
            total = None
            if not progress.disable and args.sessions is None:
                total = sum(
                    [
                        info.version
                        async for info in _sessions_oldest_first(db, user_id=args.user_id, updated_since=args.since)
                    ]
                )
            task = progress.add_task("exporting", total=total)
            progress.refresh()
            lines = export_events(
                db, session_ids=args.sessions, user_id=args.user_id, updated_since=args.since, exported_at=time.time()
            )
            async for line in lines:
                out.write(line)
                progress.advance(task)
            held_back = await _held_back(db)
    if held_back:
        print(f"note: {held_back}; export read those sessions directly, so it has them", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[BinaryIO]:
    """Where export writes: FILE, or standard output (flushed, not closed)."""
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    with open(path, "wb") as file:
        yield file


async def _import(args: argparse.Namespace) -> int:
    from kern_events.transfer import import_events

    with contextlib.ExitStack() as stack:
        path = args.file
        if path == "-":  # import reads its file twice (check, then store): keep standard input in a file
            spool = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".jsonl"))
            shutil.copyfileobj(sys.stdin.buffer, spool)
            spool.flush()
            path = spool.name
        with _progress("importing") as progress:
            checking = progress.add_task("checking", total=None)
            importing = progress.add_task("importing", total=None, visible=False)
            progress.refresh()

            def advance(stage: str, count: int) -> None:
                if stage == "checked":
                    progress.update(checking, completed=count)
                else:
                    progress.update(checking, total=progress.tasks[checking].completed, visible=False)
                    progress.update(importing, completed=count, visible=True)

            async with _open(args.db, create=True, schema=args.schema) as db:
                report = await import_events(db, path, skip_existing=args.skip_existing, progress=advance)
    for session_id in report.skipped:
        print(f"skipped {session_id} (the database has it already)")
    print(f"imported {_count(report.events, 'event')} in {_count(report.sessions, 'session')} into {args.db}")
    return 0


def _moment(text: str) -> float:
    """Unix seconds from ``1767225600`` or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time or unix seconds, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


async def _retain(args: argparse.Namespace) -> int:
    if args.max_age is None and args.keep_runs is None:
        print("error: give --max-age, --keep-runs or both", file=sys.stderr)
        return 2
    try:
        policy = RetentionPolicy(max_age=args.max_age, keep_runs=args.keep_runs, force=args.force)
    except InvalidArgumentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    verb = "retaining" if args.apply else "checking"
    database = _open(args.db, schema=args.schema)  # read-only, and refused if there is no database
    if args.apply:
        database = _open(args.db, create=True, schema=args.schema)
    with _progress(verb) as progress:
        async with database as db:
            task = progress.add_task(verb, total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            report = await db.apply_retention(policy, dry_run=not args.apply, progress=advance)
    would = "" if args.apply else "would be "
    for info in report.deleted:
        print(f"{'deleted' if args.apply else 'delete'}  {info.session_id}  (updated {_when(info.updated_at)})")
    for compaction in report.compacted:
        print(
            f"{'compacted' if args.apply else 'compact'}  {compaction.session_id}  "
            f"({compaction.events_removed} events before version {compaction.before_version})"
        )
    print(
        f"{_count(len(report.deleted), 'session')} {would}deleted, {_count(len(report.compacted), 'session')} "
        f"{would}compacted" + ("" if args.apply else "; run again with --apply to do it")
    )
    return 0


async def _erase_user(args: argparse.Namespace) -> int:
    async with _open(args.db, create=args.yes, schema=args.schema) as db:
        if args.keyring is not None:
            from kern_events.encryption import Encryption, KeyringFile

            store = db.store
            if not isinstance(store, BaseEventStore):  # pragma: no cover - _open gives the kit's stores
                raise InvalidArgumentError("--keyring", f"{type(store).__qualname__} does not encrypt")
            store.encryption = Encryption(KeyringFile(args.keyring))
        report = await db.erase_user(args.user_id, dry_run=not args.yes)
    for session_id in report.session_ids:
        print(f"{'erased' if args.yes else 'erase'}  {session_id}")
    summary = (
        f"{_count(len(report.session_ids), 'session')} ({_count(report.events, 'event')}) "
        f"of user {report.user_id!r} {'erased' if args.yes else 'would be erased'}"
    )
    if not args.yes:
        summary += "; run again with --yes to do it"
    elif args.keyring is not None:
        summary += f", {_count(report.keys_deleted, 'data key')} deleted"
    print(summary)
    return 0


async def _held_back(db: BaseDb) -> str | None:
    """What the global feed (``read_all``, subscriptions) holds back right now, in a sentence, or ``None``."""
    store = db.store
    if not isinstance(store, BaseEventStore):  # a third-party store without the fence report
        return None
    lag = await store.feed_lag()
    if not lag.held_back:
        return None
    holder = ""
    if lag.holder_pid is not None:
        since = "" if lag.since is None else f", open since {_when(lag.since)}"
        holder = f" (server process {lag.holder_pid} in database {lag.holder_database!r}{since})"
    return (
        f"the global feed (read_all, subscriptions) is holding back {_count(lag.held_back, 'committed event')} "
        f"behind an open transaction{holder}"
    )


# -- verify ------------------------------------------------------------------------------------------


class _Checker:
    """Checks one session's records in version order: versions follow without gaps up to the index's
    head, and positions increase."""

    def __init__(self) -> None:
        self.events = 0
        self.sessions = 0
        self.unknown: dict[str, int] = {}
        self.problems: list[str] = []
        self._session = ""
        self._last_position = -1
        self._first_version = 1
        self._last_version: int | None = None
        """None before a session's first record: a session started again after its deletion goes
        on from its tombstone's version, so its first version may be above 1."""

    def start(self, session_id: str, first_version: int = 1) -> None:
        """Begin a session whose log starts at ``first_version`` (above 1 after ``truncate_before``)."""
        self.sessions += 1
        self._session, self._last_position, self._last_version = session_id, -1, None
        self._first_version = first_version

    def check(self, version: int, position: int) -> None:
        """Check one record's envelope (also of a record whose payload did not decode)."""
        self.events += 1
        session_id, last = self._session, self._last_version
        if last is None and self._first_version > 1 and version != self._first_version:
            self.problems.append(
                f"session {session_id!r}: its log starts at version {version}, but it was truncated "
                f"before version {self._first_version}"
            )
        if last is not None and version != last + 1:
            kind = "a gap" if version > last + 1 else "out of order"
            self.problems.append(f"session {session_id!r}: version {version} follows version {last} ({kind})")
        if position <= self._last_position:
            self.problems.append(
                f"session {session_id!r} version {version}: position {position} does not follow "
                f"position {self._last_position}"
            )
        self._last_position = max(self._last_position, position)
        self._last_version = version if last is None else max(last, version)

    def finish(self, head: int) -> None:
        """The log must reach the version the session index holds."""
        reached = self._last_version if self._last_version is not None else self._first_version - 1
        if reached < head:
            self.problems.append(
                f"session {self._session!r}: the index says version {head}, the log ends at version {reached}"
            )


async def _verify(args: argparse.Namespace) -> int:
    checker = _Checker()
    with _progress("verifying") as progress:
        async with _open(args.db, schema=args.schema) as db:
            task = progress.add_task("verifying", total=await _events_to_expect(db, progress))
            progress.refresh()
            async for info in _sessions_oldest_first(db):
                checker.start(info.session_id, await first_version(db.store, info.session_id))
                await _verify_session(db, info.session_id, checker)
                checker.finish(info.version)
                progress.advance(task, info.version)
            if isinstance(db.store, BaseEventStore):  # the hash chains (edited, missing, moved events)
                chains = progress.add_task("checking hash chains", total=checker.events)
                report = await db.verify(progress=lambda count: progress.advance(chains, count))
                checker.problems += [str(problem) for problem in report.problems]
                if report.unchained:
                    print(f"{_count(report.unchained, 'event')} written before the hash chain (schema 2) are unchained")
            held_back = await _held_back(db)
    if held_back:
        print(f"note: {held_back}; verify read each session directly, so it checked them")
    for problem in checker.problems:
        print(f"problem: {problem}")
    unknown = sum(checker.unknown.values())
    if unknown:
        kinds = ", ".join(f"{name} x{count}" for name, count in sorted(checker.unknown.items()))
        print(f"{_count(unknown, 'event')} of types this release does not know (written by a newer release?): {kinds}")
    outcome = "ok" if not checker.problems else _count(len(checker.problems), "problem")
    print(f"verified {_count(checker.events, 'event')} in {_count(checker.sessions, 'session')}: {outcome}")
    return 0 if not checker.problems else 1


async def _verify_session(db: BaseDb, session_id: str, checker: _Checker) -> None:
    """Read the session's whole stream (per-session reads are not fenced); a corrupt record is a
    problem, and reading carries on after it."""
    version = 1
    while True:
        try:
            async for record in db.store.read(session_id, from_version=version):
                checker.check(record.version, record.position)
                if isinstance(record.event, UnknownEvent):
                    checker.unknown[record.type] = checker.unknown.get(record.type, 0) + 1
                version = record.version + 1
            return
        except CorruptRecordError as exc:
            checker.problems.append(str(exc))
            checker.check(exc.version, exc.position)
            version = exc.version + 1


async def _migrate(args: argparse.Namespace) -> int:
    async with _open(args.db, create=True, schema=args.schema):
        pass  # opening a db creates or upgrades its tables (NATS: its streams)
    print(f"{_what_migrate_made(args.db, args.schema)} up to date")
    return 0


def _what_migrate_made(path: str, schema: str) -> str:
    """What ``migrate`` created or upgraded, in the backend's own words, with no password shown."""
    if _SCHEME.match(path) is None:
        return f"the tables of {path} are"
    parts = urllib.parse.urlsplit(path)
    hosts = ",".join(host.rpartition("@")[2] for host in parts.netloc.split(","))
    where = f"{parts.scheme}://{hosts}{parts.path}"
    if parts.scheme.lower() == "nats":
        prefix = urllib.parse.parse_qs(parts.query).get("prefix", ["KERN"])[0]
        return f"the JetStream streams {prefix!r} on {where} are"
    return f"the tables in schema {schema!r} of {where} are"


async def _paused(args: argparse.Namespace) -> int:
    async with _open(args.db, schema=args.schema) as db:
        found = await db.get_paused_runs(session_id=args.session_id, user_id=args.user_id)
    if not found:
        print("no paused runs")
        return 0
    if args.json:
        for session_id, run in found:
            print(_json.encode({"session_id": session_id, "run": msgspec.to_builtins(run)}).decode())
        return 0
    table = _table("SESSION_ID", "RUN_ID", "PAUSED_AT", "REQUIREMENT", "WAITS FOR")
    for session_id, run in found:
        for item in run.open_requirements:
            requirement = item.requirement
            detail = msgspec.to_builtins(requirement)
            kind = detail.pop("kind")
            detail.pop("requirement_id")
            table.add_row(
                session_id,
                run.run_id,
                _when(run.updated_at),
                requirement.requirement_id,
                f"{kind} {_json.encode(detail).decode()}",
            )
    _print_table(table)
    return 0


def _requirement_text(requirement: Requirement) -> str:
    """A requirement in a line: what it is and, for tool calls, the call."""
    if isinstance(requirement, ToolConfirmation | ExternalExecution):
        kind = "confirmation of" if isinstance(requirement, ToolConfirmation) else "an outside result for"
        return f"{kind} {requirement.tool_name}({_json.encode(requirement.arguments).decode()})"
    return f"input: {', '.join(field.name for field in requirement.fields)}"


# -- replay and ui -----------------------------------------------------------------------------------


async def _replay(args: argparse.Namespace) -> int:
    from kern_events.replay import TokenTotals, render, replay

    async with _open(args.db, schema=args.schema) as db:
        info = await db.store.get_session_info(args.session_id)
        if info is None:
            raise SessionNotFoundError(args.session_id)
        if args.to_version is not None and not 0 <= args.to_version <= info.version:
            raise InvalidArgumentError(
                "--to-version", f"session {args.session_id!r} is at version {info.version}; got {args.to_version}"
            )
        steps = replay(db.store, args.session_id, to_version=args.to_version)
        if not args.json:
            await render(steps, Console(highlight=False, soft_wrap=not sys.stdout.isatty()))
            return 0
        totals = TokenTotals()
        async for step in steps:
            print(_json.encode(step).decode())
            totals = step.totals or totals
        print(_json.encode({"kind": "totals", **msgspec.to_builtins(totals)}).decode())
    return 0


async def _ui(args: argparse.Namespace) -> int:
    try:
        from kern_events.ui import serve
    except ImportError as exc:
        raise InvalidArgumentError(
            "ui", f"the sessions page needs the ui extra ({exc.name} is missing): pip install 'kern-events[ui]'"
        ) from None
    await serve(args.db, schema=args.schema, host=args.host, port=args.port, allow_writes=args.allow_writes)
    return 0
