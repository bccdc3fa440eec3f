"""The sessions page (``kern-events ui``): what opening a page costs as the database grows.

Each case builds a SQLite database, then times GET requests through the ASGI app in-process (no
sockets, so the figures are the page's own work: index or log reads, folding, templating):
- a session page of a session with N runs (checkpointed, as the session API leaves it), which
  renders one page of runs whatever N is;
- the session list at page P of 100,000 sessions, by keyset cursor (what the page does) and, for
  contrast, by offset.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
from typing import Any
from urllib.parse import urlencode

from benchmarks._harness import Case, Comparison, Sample, Timer, case_main, temp_db
from kern_events import MessageAdded, RunCompleted, RunMetrics, RunStarted, SessionStarted, SqliteDb
from kern_events.events import Event
from kern_events.records import SessionAppend

__all__ = ["NOTES", "comparisons", "unavailable"]

_MODULE = "benchmarks.ui"
_SESSION = "long-conversation"

NOTES = """\
session page rows: GET /session?id=... through the ASGI app, the session at its latest version (the view
  from its checkpoint, the event at that version, one page of 20 runs rendered); the absolute time is the
  target (under 300 ms at 10,000 runs), the ratio shows what length costs.
list rows: GET / at the given depth of 100,000 sessions (50 per page): keyset (the page's `after` cursor)
  against the same depth by offset, which must sort past every earlier row."""


def unavailable() -> str | None:
    """Why this subject cannot run (the ui extra is not installed), or ``None``."""
    if importlib.util.find_spec("starlette") is None:
        return "the ui extra is not installed (pip install -e '.[ui]')"
    return None


def _run(number: int) -> list[Event]:
    run_id = f"run-{number}"
    return [
        RunStarted(run_id=run_id, input=f"question {number}", model_id="m"),
        MessageAdded(run_id=run_id, role="user", content=f"Question {number}: what did we decide about the plan?"),
        MessageAdded(run_id=run_id, role="assistant", content=f"Answer {number}: we keep the plan, as agreed."),
        RunCompleted(run_id=run_id, metrics=RunMetrics(input_tokens=40, output_tokens=12, total_tokens=52)),
    ]


async def _get(app: Any, path: str, query: str) -> int:
    """One GET through the ASGI app; its status (the body is read and dropped)."""
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    return status


def _session_page(args: argparse.Namespace) -> Sample:
    from kern_events.ui import create_app

    async def main() -> Sample:
        with temp_db() as path:
            async with SqliteDb(path, synchronous="NORMAL") as db:
                batch: list[Event] = [SessionStarted(session_type="agent", agent_id="a", user_id="u")]
                version = 0
                for number in range(1, args.runs + 1):
                    batch += _run(number)
                    if len(batch) >= 4000 or number == args.runs:
                        version = (await db.store.append(_SESSION, batch, expected_version=version)).to_version
                        batch = []
                await db.save_checkpoint(_SESSION)
                app = create_app(db)
                query = urlencode({"id": _SESSION})
                assert await _get(app, "/session", query) == 200
                with Timer() as timer:
                    for _ in range(args.repeats):
                        await _get(app, "/session", query)
        return Sample(appends=args.repeats, events=args.repeats, seconds=timer.seconds)

    return asyncio.run(main())


def _list_page(args: argparse.Namespace) -> Sample:
    from kern_events.ui import create_app

    async def main() -> Sample:
        with temp_db() as path:
            async with SqliteDb(path, synchronous="NORMAL") as db:
                for start in range(0, args.sessions, 1000):
                    await db.store.append_many(
                        [
                            SessionAppend(f"s{n:07}", [SessionStarted(session_type="agent", user_id=f"u{n % 100}")])
                            for n in range(start, min(start + 1000, args.sessions))
                        ]
                    )
                app = create_app(db)
                if args.paging == "keyset":
                    before = (await db.get_sessions(limit=args.depth))[-1]
                    query = urlencode({"after": f"{before.updated_at!r}:{before.session_id}"})
                    timed = lambda: _get(app, "/", query)  # noqa: E731
                else:

                    async def timed() -> int:
                        await db.get_sessions(limit=51, offset=args.depth)  # what an offset page reads
                        return 200

                assert await timed() == 200
                with Timer() as timer:
                    for _ in range(args.repeats):
                        await timed()
        return Sample(appends=args.repeats, events=args.repeats, seconds=timer.seconds)

    return asyncio.run(main())


def _case(name: str, **options: object) -> Case:
    return Case.of(_MODULE, name, **options)


def comparisons(quick: bool) -> list[Comparison]:
    """A session page at 10,000 runs vs 10; the list deep in 100,000 sessions, keyset vs offset."""
    repeats = 5 if quick else 20
    sessions = 20_000 if quick else 100_000
    depth = sessions - 100
    long, short = (_case("session", runs=n, repeats=repeats) for n in (10_000, 10))
    return [
        Comparison("session page at 10,000 runs vs 10 runs", long, short, metric="latency"),
        Comparison(
            f"list page {depth:,} rows deep in {sessions:,} sessions: keyset vs offset",
            _case("list", sessions=sessions, depth=depth, paging="keyset", repeats=repeats),
            _case("list", sessions=sessions, depth=depth, paging="offset", repeats=repeats),
            metric="latency",
        ),
        Comparison(
            f"list page {depth:,} rows deep vs the first page (keyset, {sessions:,} sessions)",
            _case("list", sessions=sessions, depth=depth, paging="keyset", repeats=repeats),
            _case("list", sessions=sessions, depth=1, paging="keyset", repeats=repeats),
            metric="latency",
        ),
    ]


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--paging", choices=("keyset", "offset"), default="keyset")
    parser.add_argument("--repeats", type=int, default=10)
    case_main({"session": _session_page, "list": _list_page}, parser)


if __name__ == "__main__":
    main()
