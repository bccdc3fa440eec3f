"""Reads stream: memory held while reading a long session stays flat, whatever its length."""

from __future__ import annotations

import tracemalloc

import pytest

from kern_events import MessageAdded
from kern_events.testing._backend import Backend


async def _peak_while_reading(backend: Backend, session_id: str, events: int) -> tuple[int, int]:
    """Write ``events`` events to a session, then return (events read, peak bytes allocated while reading)."""
    async with backend.store() as store:
        batch = [MessageAdded(run_id="r", role="assistant", content="x" * 200) for _ in range(1000)]
        for _ in range(events // len(batch)):
            await store.append(session_id, batch)
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
    short_count, short_peak = await _peak_while_reading(backend, "short", 2_000)
    long_count, long_peak = await _peak_while_reading(backend, "long", 20_000 * heavy_scale)
    assert (short_count, long_count) == (2_000, 20_000 * heavy_scale)
    # Ten times (or more) the events must not need ten times the memory: pages are bounded.
    assert long_peak < 2 * short_peak, (short_peak, long_peak)
