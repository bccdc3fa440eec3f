"""An append is all or nothing at any size: a failure near the end of a large batch stores none of it."""

from __future__ import annotations

import uuid

import pytest

from kern_events import IdempotencyError, MessageAdded
from kern_events.testing._backend import Backend


@pytest.mark.parametrize("size", [4_500, 50_000])
async def test_a_large_append_failing_near_its_end_stores_nothing_and_the_session_goes_on(
    backend: Backend, size: int
) -> None:
    if size > backend.max_events_per_append:  # the largest append the backend takes, failing near its end
        if size != 4_500:
            pytest.skip(f"{backend.name} takes at most {backend.max_events_per_append} events per append")
        size = backend.max_events_per_append
    taken = uuid.uuid4()
    ids = [uuid.uuid4() for _ in range(size)]
    ids[size - min(300, size // 8)] = taken
    batch = [MessageAdded(run_id="r", role="user", content=f"m{n}") for n in range(size)]
    async with backend.store() as store:
        await store.append("other", [MessageAdded(run_id="r", role="user", content="owner")], event_ids=[taken])
        with pytest.raises(IdempotencyError):
            await store.append("s", batch, event_ids=ids)
        assert await store.current_version("s") == 0
        assert [record async for record in store.read("s", limit=1)] == []
        result = await store.append("s", batch[:3], expected_version=0)
        assert (result.from_version, result.to_version) == (1, 3)
        assert [record.version async for record in store.read("s")] == [1, 2, 3]
