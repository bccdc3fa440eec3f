"""One store used from several event loops: threads each running ``asyncio.run`` on it at once (as
the OpenAI Agents SDK does), and ``asyncio.run`` called again and again with it (``Runner.run_sync``).

These tests are synchronous: each starts its own threads and loops.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from kern_events import MessageAdded
from kern_events.testing._backend import Backend

_THREADS = 4
_APPENDS = 8


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


def test_threads_each_running_an_event_loop_append_to_one_store(backend: Backend) -> None:
    if not backend.thread_safe:
        pytest.skip(f"{backend.name} stores are not shared by threads")
    store = backend.store()
    errors: list[BaseException] = []
    start = threading.Barrier(_THREADS)

    def work(n: int) -> None:
        async def main() -> None:
            for k in range(_APPENDS):
                await store.append("shared", [_message(f"{n}:{k}")])
                await store.append(f"own-{n}", [_message(f"{n}:{k}")])
            assert [record.version async for record in store.read(f"own-{n}")] == list(range(1, _APPENDS + 1))

        start.wait(30)
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    async def shared() -> list[str]:
        return sorted([str(getattr(record.event, "content", "")) async for record in store.read("shared")])

    threads = [threading.Thread(target=work, args=(n,)) for n in range(_THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[0]
        assert asyncio.run(shared()) == sorted(f"{n}:{k}" for n in range(_THREADS) for k in range(_APPENDS))
        assert asyncio.run(store.current_version("shared")) == _THREADS * _APPENDS
    finally:
        asyncio.run(store.aclose())


def test_successive_event_loops_use_one_store(backend: Backend) -> None:
    store = backend.store()

    async def turn(n: int) -> int:
        await store.append("s", [_message(f"turn {n}")])
        return await store.current_version("s")

    try:
        assert [asyncio.run(turn(n)) for n in range(3)] == [1, 2, 3]
    finally:
        asyncio.run(store.aclose())
