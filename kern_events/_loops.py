"""Event loops and threads: what lets one store be used from any loop on any thread.

Agent frameworks use one store object from several threads, each running its own event loop
(``asyncio.run`` per thread, or per call), and call async methods from synchronous code. The pieces
here carry no loop of their own: :class:`AnyLoopLock` is a lock that tasks of different loops can
share; :func:`call_soon_on` delivers a result to a loop that may have closed meanwhile;
:func:`on_loop_end` runs clean-up on a loop before ``asyncio.run`` closes it; :func:`run_blocking`
runs a coroutine function from synchronous code on a private home loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from kern_events.errors import BlockingCallError

__all__ = ["AnyLoopLock", "call_soon_on", "finish_on", "home_loop", "on_loop_end", "run_blocking"]

T = TypeVar("T")
P = ParamSpec("P")


def call_soon_on(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> bool:
    """``loop.call_soon_threadsafe(callback, *args)``; ``False`` (nothing scheduled) if the loop has
    closed, as it has when an ``asyncio.run`` finished while the call it waited for was in flight."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        return False
    return True


async def finish_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, object]) -> None:
    """Run ``coroutine`` on another thread's ``loop`` and wait for it; its errors are dropped.

    For closing what lives on that loop. If the loop ends first (its shutdown cancels the coroutine,
    or it has closed), this returns quietly: the loop's own end hooks close what it would have. Only
    a cancellation of the caller itself propagates.
    """
    try:
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    except RuntimeError:  # that loop has closed
        coroutine.close()
        return
    waited = asyncio.wrap_future(future)
    try:
        # a loop that closes before it ran the coroutine never answers: look every 50 ms (and leave
        # `waited` pending: cancelling it would pass the cancellation on to the closed loop, which
        # refuses it with an error logged)
        while not (await asyncio.wait({waited}, timeout=0.05))[0]:
            if loop.is_closed():
                coroutine.close()
                return
        waited.result()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:
        pass


class AnyLoopLock:
    """An async lock that tasks on different event loops (and threads) can share.

    ``asyncio.Lock`` and ``anyio.Lock`` belong to one loop; this one hands itself over to a waiter on
    whatever loop it waits on. Uncontended, it costs one thread lock round trip and no loop turn.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._locked = False
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = collections.deque()

    async def acquire(self) -> None:
        with self._mutex:
            if not self._locked:
                self._locked = True
                return
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            await waiter
        except BaseException:
            with self._mutex:
                if (loop, waiter) in self._waiters:
                    self._waiters.remove((loop, waiter))  # never handed the lock
                    raise
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed the lock just as the cancellation came
            raise  # else the hand-over finds it cancelled and passes the lock on

    def release(self) -> None:
        with self._mutex:
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                if call_soon_on(loop, self._hand_over, waiter):
                    return
            self._locked = False

    def _hand_over(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():  # cancelled before it got the lock: the next one gets it
            self.release()
        else:
            waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *_: object) -> None:
        self.release()


def on_loop_end(callback: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    """Run ``callback()`` on the running loop when it finalizes its async generators, which
    ``asyncio.run``, ``asyncio.Runner`` and pytest-asyncio do just before closing it; return a
    function that cancels this (without awaiting anything).

    That is the last moment a loop's connections can still be closed politely; after it, a socket
    of a closed loop can only be dropped with a ResourceWarning.
    """
    cancelled = False

    async def watch() -> AsyncGenerator[None]:
        try:
            yield
        finally:
            if not cancelled:
                with contextlib.suppress(Exception):
                    await callback()

    watcher = watch()
    step = watcher.asend(None)  # the loop's first-iteration hook now tracks the generator
    with contextlib.suppress(StopIteration):
        step.send(None)

    def cancel() -> None:
        nonlocal cancelled
        cancelled = True
        closing = watcher.aclose()
        with contextlib.suppress(StopIteration, RuntimeError):
            closing.send(None)

    return cancel


_home: asyncio.AbstractEventLoop | None = None
_home_lock = threading.Lock()


def home_loop() -> asyncio.AbstractEventLoop:
    """The private event loop, on a daemon thread, that synchronous calls run on.

    One loop for every sync call keeps a store's per-loop connections alive from one call to the
    next; being a daemon, its thread never keeps the process from exiting.
    """
    global _home
    with _home_lock:
        if _home is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="kern-events-home", daemon=True).start()
            _home = loop
        return _home


def run_blocking(function: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``await function(*args, **kwargs)`` to completion from synchronous code, in any thread.

    The coroutine runs on kern-events' home loop (a daemon thread), never on the caller's, so it also
    works from a worker thread of an async app whose own loop uses the same store. On a thread whose
    event loop is running it raises :class:`~kern_events.errors.BlockingCallError` instead of
    blocking that loop (which would stall it, and deadlock if the coroutine needed it).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise BlockingCallError(getattr(function, "__name__", repr(function)))
    return asyncio.run_coroutine_threadsafe(function(*args, **kwargs), home_loop()).result()
