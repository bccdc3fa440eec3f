"""What the sessions page's tests share: a database with the demo conversation, a session full of
XSS strings, a long session and filler sessions, and the page served by uvicorn in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from kern_events.cli import main
from kern_events.db import SqliteDb
from kern_events.events import (
    MediaAdded,
    MediaReference,
    MessageAdded,
    RunCompleted,
    RunMetrics,
    RunStarted,
    SessionStarted,
)

SCRIPT = "<script>alert('xss')</script>"
IMG = '"><img src=x onerror=alert(1)>'
LONG_RUNS = 60
FILLERS = 70


def make_db(path: Path) -> Path:
    """Filler sessions, then the demo played to its end (four runs; the booking paused and resumed),
    the XSS session and the long one (newest first in the list)."""
    asyncio.run(_fillers(path))
    for _ in range(5):
        assert main(["demo", "--db", str(path)]) == 0
    asyncio.run(_more(path))
    return path


async def _more(path: Path) -> None:
    async with SqliteDb(path) as db:
        await db.store.append(
            "xss",
            [
                SessionStarted(session_type="agent", agent_id="mallory-bot", user_id="mallory", name=IMG),
                RunStarted(run_id="r1"),
                MessageAdded(run_id="r1", role="user", content=SCRIPT),
                MessageAdded(run_id="r1", role="assistant", content=IMG),
                MediaAdded(run_id="r1", media=(MediaReference(media_id="m1", kind="image", name=SCRIPT),)),
                RunCompleted(run_id="r1", metrics=RunMetrics(input_tokens=3, output_tokens=4, total_tokens=7)),
            ],
        )
        long = [SessionStarted(session_type="team", team_id="crew", user_id="bob")]
        for number in range(LONG_RUNS):
            run = f"run{number:03}"
            long += [
                RunStarted(run_id=run),
                MessageAdded(run_id=run, role="user", content=f"question {number}"),
                RunCompleted(run_id=run, metrics=RunMetrics(total_tokens=1)),
            ]
        await db.store.append("long", long)


async def _fillers(path: Path) -> None:
    async with SqliteDb(path) as db:
        for number in range(FILLERS):
            await db.store.append(
                f"filler{number:03}",
                [SessionStarted(session_type="workflow", workflow_id="flow", user_id=f"user{number % 7}")],
            )


@contextlib.contextmanager
def serve(path: Path, *, allow_writes: bool = False) -> Iterator[str]:
    """The page on a free port of 127.0.0.1, in a thread with its own event loop; its base URL.
    The server is stopped and the database closed on exit."""
    import uvicorn

    from kern_events.ui import bind, create_app, open_db

    sock = bind("127.0.0.1", 0)
    started = threading.Event()
    holder: dict[str, uvicorn.Server] = {}
    failure: list[BaseException] = []

    async def run() -> None:
        async with await open_db(str(path), allow_writes=allow_writes) as db:
            config = uvicorn.Config(create_app(db, allow_writes=allow_writes), log_level="warning", lifespan="off")
            server = holder["server"] = uvicorn.Server(config)
            loop_started = asyncio.get_running_loop()
            loop_started.call_soon(started.set)
            await server.serve(sockets=[sock])

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=target, name="kern-events-ui", daemon=True)
    thread.start()
    started.wait(30)
    if failure:
        raise failure[0]
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        holder["server"].should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "the page's server did not stop"
        if failure:
            raise failure[0]
