"""Reads stream: memory held while reading a long session stays flat, whatever its length."""

from __future__ import annotations

import tracemalloc

import pytest

from kern_events import MessageAdded
from kern_events.testing._backend import Backend


async def _peak_while_reading(backend: Backend, session_id: str, events: int, page: int) -> tuple[int, int]:
    """Write ``events`` events to a session, then return (events read, peak bytes allocated while
    reading it ``page`` rows at a time)."""
    async with backend.store() as store:
        store.read_page_size = min(store.read_page_size, page)
        size = min(1000, backend.max_events_per_append)
        batch = [MessageAdded(run_id="r", role="assistant", content="x" * 200) for _ in range(size)]
        for start in range(0, events, size):
            await store.append(session_id, batch[: min(size, events - start)])
        tracemalloc.start()
        try:
            count = 0
            async for _record in store.read(session_id):
                count += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return count, peak


async def test_reading_a_long_session_holds_memory_flat_in_its_length(backend: Backend, heavy_scale: int) -> None:
    if not backend.streams_from_storage:
        pytest.skip("this backend holds whole sessions in memory by design")
    # The short session spans two pages (of the store's size, or smaller for a backend that sets a
    # shorter long session), the long one ten times as many events.
    short_events = backend.long_session_events // 10
    long_events = backend.long_session_events * heavy_scale
    page = short_events // 2
    short_count, short_peak = await _peak_while_reading(backend, "short", short_events, page)
    long_count, long_peak = await _peak_while_reading(backend, "long", long_events, page)
    assert (short_count, long_count) == (short_events, long_events)
    # Ten times (or more) the events must not need ten times the memory: pages are bounded.
    assert long_peak < 2 * short_peak, (short_peak, long_peak)
