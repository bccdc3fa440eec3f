"""The sessions page (``kern-events ui``): a small ASGI app (Starlette, Jinja2 templates, served by
uvicorn) that reads a kern-events database and shows its sessions.

It is a reader on top of the storage objects: the list pages through the session index with a
keyset cursor (never an offset scan, so page 1,000 costs what page 1 does), a session page shows the
view as of any version (time travel) and a bounded page of its runs, so a session of 10,000 runs
renders 20 of them. Every stored string reaches the page through Jinja2's autoescaping. Rename and
delete exist only with ``allow_writes``, as POST forms carrying a token this process made, so another
site cannot post them through the user's browser. Installed with the ``ui`` extra.
"""

from __future__ import annotations

import secrets
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from kern_events._index import SessionInfo
from kern_events._references import InRun, resolve
from kern_events.db import BaseDb
from kern_events.errors import InvalidArgumentError, KernEventsError, NotFoundError
from kern_events.events import ExternalExecution, MediaReference, ToolConfirmation, UserInput
from kern_events.replay import describe
from projections.runs import RunView

__all__ = ["RUNS_PER_PAGE", "SESSIONS_PER_PAGE", "bind", "create_app", "open_db", "serve"]

SESSIONS_PER_PAGE = 50
RUNS_PER_PAGE = 20
"""Runs shown per session page: what a page reads into HTML stays bounded however long the session is."""

_FILTERS = ("user_id", "session_type", "agent_id", "team_id", "workflow_id")
_json = msgspec.json.Encoder()


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    """A stored value as text: strings as they are, anything else as indented JSON."""
    if isinstance(value, str):
        return value
    return msgspec.json.format(_json.encode(value), indent=2).decode()


def _requirement(item: Any) -> str:
    requirement = item.requirement
    if isinstance(requirement, UserInput):
        return f"input of {', '.join(field.name for field in requirement.fields)}" + (
            f": {requirement.prompt}" if requirement.prompt else ""
        )
    kind = "confirmation of" if isinstance(requirement, ToolConfirmation) else "an outside result for"
    assert isinstance(requirement, ToolConfirmation | ExternalExecution)
    return f"{kind} {requirement.tool_name}({_json.encode(requirement.arguments).decode()})"


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every stored string is text on the page, never markup
        undefined=jinja2.StrictUndefined,
    )
    environment.filters.update(when=_when, pretty=_pretty, requirement=_requirement)
    return environment


def _cursor(text: str | None) -> tuple[float, str] | None:
    """The list's keyset cursor from the URL: ``<updated_at>:<session_id>``."""
    if not text:
        return None
    value, _, session_id = text.partition(":")
    try:
        return float(value), session_id
    except ValueError:
        raise InvalidArgumentError("after", f"expected <time>:<session id>, got {text!r}") from None


def _day(text: str | None) -> float | None:
    """``updated_since`` from the form: a day (``2026-12-01``) or a time, read as UTC."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError("updated_since", f"expected a date like 2026-12-01, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _int(request: Request, name: str) -> int | None:
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgumentError(name, f"expected a whole number, got {text!r}") from None


class _Page:
    """The app's handlers over one open db."""

    def __init__(self, db: BaseDb, *, allow_writes: bool) -> None:
        self.db = db
        self.allow_writes = allow_writes
        self.token = secrets.token_urlsafe(24)
        self.environment = _environment()

    def render(self, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        template = self.environment.get_template(name)
        html = template.render(allow_writes=self.allow_writes, token=self.token, **context)
        return HTMLResponse(html, status_code=status_code)

    async def sessions(self, request: Request) -> Response:
        query = {name: request.query_params.get(name) or None for name in _FILTERS}
        since = request.query_params.get("updated_since") or None
        after = _cursor(request.query_params.get("after"))
        rows = await self.db.get_sessions(
            user_id=query["user_id"],
            session_type=query["session_type"],
            agent_id=query["agent_id"],
            team_id=query["team_id"],
            workflow_id=query["workflow_id"],
            updated_since=_day(since),
            after=after,
            limit=SESSIONS_PER_PAGE + 1,
        )
        more = len(rows) > SESSIONS_PER_PAGE
        rows = rows[:SESSIONS_PER_PAGE]
        kept = {name: value for name, value in (*query.items(), ("updated_since", since)) if value}
        next_url = None
        if more:
            last = rows[-1]
            next_url = "/?" + urlencode({**kept, "after": f"{last.updated_at!r}:{last.session_id}"})
        return self.render(
            "sessions.html",
            rows=rows,
            filters=kept,
            first_url="/?" + urlencode(kept) if after is not None else None,
            next_url=next_url,
            session_url=self._session_url,
        )

    @staticmethod
    def _session_url(row: SessionInfo | str, **params: Any) -> str:
        session_id = row if isinstance(row, str) else row.session_id
        query = urlencode({key: value for key, value in params.items() if value is not None})
        return f"/session?{urlencode({'id': session_id})}" + (f"&{query}" if query else "")

    async def session(self, request: Request) -> Response:
        session_id = request.query_params.get("id") or ""
        info = await self.db.store.get_session_info(session_id) if session_id else None
        if info is None:
            raise NotFoundError(f"session {session_id!r} not found")
        version = _int(request, "version")
        if version is not None and not 1 <= version <= info.version:
            raise InvalidArgumentError("version", f"the session has versions 1 to {info.version}; got {version}")
        at = info.version if version is None else version
        view = await self.db.get_session(session_id, version=at)
        runs = view.runs
        start = _int(request, "runs_from")
        start = max(0, len(runs) - RUNS_PER_PAGE) if start is None else min(max(0, start), len(runs))
        shown = runs[start : start + RUNS_PER_PAGE]
        event = None
        async for record in self.db.store.read(session_id, from_version=at, to_version=at):
            run_id = getattr(record.event, "run_id", None)
            run = view.get_run(run_id) if isinstance(run_id, str) else None
            event = describe(record.event if run is None else resolve(record.event, InRun(run)))
        totals = [0, 0, 0]
        for run in runs:
            if run.metrics is not None:
                totals[0] += run.metrics.input_tokens
                totals[1] += run.metrics.output_tokens
                totals[2] += run.metrics.total_tokens
        version_param = None if version is None else at

        def url(**params: Any) -> str:
            return self._session_url(session_id, **params)

        return self.render(
            "session.html",
            info=info,
            view=view,
            at=at,
            latest=version is None or at == info.version,
            event=event,
            runs=shown,
            runs_from=start,
            run_count=len(runs),
            earlier_url=url(version=version_param, runs_from=max(0, start - RUNS_PER_PAGE)) if start > 0 else None,
            later_url=url(version=version_param, runs_from=start + RUNS_PER_PAGE)
            if start + RUNS_PER_PAGE < len(runs)
            else None,
            version_url=lambda v: url(version=v),
            paused=[run for run in runs if run.status == "paused"],
            totals=totals,
            media=_media(view.session_data.get("media", ()), shown),
            calls=_calls,
        )

    async def _form(self, request: Request) -> dict[str, str]:
        if not self.allow_writes:
            raise HTTPException(403, "this page is read-only; start it with --allow-writes to rename or delete")
        fields = {key: values[-1] for key, values in parse_qs((await request.body()).decode()).items()}
        if not secrets.compare_digest(fields.get("token", ""), self.token):
            raise HTTPException(403, "the form's token does not match this server's (reload the page)")
        return fields

    async def rename(self, request: Request) -> Response:
        fields = await self._form(request)
        session_id = fields.get("id", "")
        await self.db.rename_session(session_id, fields.get("name", ""))
        return RedirectResponse(self._session_url(session_id), status_code=303)

    async def delete(self, request: Request) -> Response:
        fields = await self._form(request)
        session_id = fields.get("id", "")
        if not await self.db.delete_session(session_id):
            raise NotFoundError(f"session {session_id!r} not found")
        return RedirectResponse("/", status_code=303)

    async def error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            status, message = exc.status_code, str(exc.detail)
        elif isinstance(exc, NotFoundError):
            status, message = 404, str(exc)
        else:
            status, message = 400, str(exc)
        return self.render("error.html", status_code=status, status=status, message=message)


def _calls(run: RunView) -> dict[str, Any]:
    return {call.tool_call_id: call for call in run.tool_calls}


def _media(session_media: Any, runs: tuple[RunView, ...]) -> list[tuple[str, MediaReference]]:
    """Every media reference on the page: the session's own, then each shown run's and message's."""
    found: list[tuple[str, MediaReference]] = []
    for item in session_media if isinstance(session_media, list | tuple) else ():
        try:
            found.append(("session", msgspec.convert(item, MediaReference)))
        except msgspec.ValidationError:
            continue
    for run in runs:
        found += [(run.run_id, media) for media in run.media]
        found += [(run.run_id, media) for message in run.messages for media in message.media]
    return found


def create_app(db: BaseDb, *, allow_writes: bool = False) -> Starlette:
    """The sessions page over an open ``db``; rename and delete only with ``allow_writes``."""
    page = _Page(db, allow_writes=allow_writes)
    return Starlette(
        routes=[
            Route("/", page.sessions),
            Route("/session", page.session),
            Route("/rename", page.rename, methods=["POST"]),
            Route("/delete", page.delete, methods=["POST"]),
        ],
        exception_handlers={HTTPException: page.error, KernEventsError: page.error},
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line error naming the address."""
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        raise InvalidArgumentError("--port", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


async def open_db(path: str, *, schema: str = "public", allow_writes: bool = False) -> BaseDb:
    """The database the page shows, checked: opened read-only first (a missing, foreign or damaged
    database is an error here, and nothing is created); with ``allow_writes`` then reopened for
    writing. Not yet entered: the caller uses it as ``async with``."""
    from kern_events.cli import _open

    async with _open(path, schema=schema) as db:
        await db.store.list_sessions(limit=1)
    return _open(path, create=True, schema=schema) if allow_writes else _open(path, schema=schema)


async def serve(
    path: str, *, schema: str = "public", host: str = "127.0.0.1", port: int = 8000, allow_writes: bool = False
) -> None:
    """Open the database at ``path`` (a bad one fails before anything listens) and serve the page
    until interrupted."""
    async with await open_db(path, schema=schema, allow_writes=allow_writes) as db:
        sock = bind(host, port)
        bound = sock.getsockname()[1]
        mode = "rename and delete allowed" if allow_writes else "read-only"
        print(f"sessions page on http://{host}:{bound}/ ({mode}); Ctrl-C stops it", flush=True)
        config = uvicorn.Config(create_app(db, allow_writes=allow_writes), log_level="warning", lifespan="off")
        await uvicorn.Server(config).serve(sockets=[sock])
