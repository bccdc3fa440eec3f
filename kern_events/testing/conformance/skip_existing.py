"""``append(..., skip_existing=True)``: first write wins per event id, the rest appended atomically;
ids derived from content with ``event_id_for``."""

from __future__ import annotations

import asyncio

import pytest

from kern_events import (
    ConcurrencyError,
    IdempotencyError,
    InvalidArgumentError,
    MessageAdded,
    event_id_for,
)
from kern_events.testing._backend import Backend
from kern_events.testing._samples import ConformanceNote


def _writes(*texts: str) -> list[ConformanceNote]:
    return [ConformanceNote(text=text) for text in texts]


def _ids(*indexes: int) -> list[object]:
    return [event_id_for("conformance", "task-1", index) for index in indexes]


async def _texts(store: object, session_id: str) -> list[str]:
    return [record.event.text async for record in store.read(session_id)]  # type: ignore[attr-defined]


async def test_skip_existing_keeps_the_first_write_and_appends_the_rest(backend: Backend) -> None:
    async with backend.store() as store:
        first = await store.append("s", _writes("a0", "a1"), event_ids=_ids(0, 1))  # type: ignore[arg-type]
        rest = await store.append(
            "s",
            _writes("b0", "b1", "b2", "b3"),
            event_ids=_ids(0, 1, 2, 3),  # type: ignore[arg-type]
            skip_existing=True,
        )
        texts = await _texts(store, "s")
        records = [record async for record in store.read("s")]
    assert texts == ["a0", "a1", "b2", "b3"]  # stored content is never replaced
    assert (rest.from_version, rest.to_version, rest.event_ids) == (3, 4, tuple(_ids(2, 3)))
    assert rest.positions == tuple(record.position for record in records[2:])
    assert first.event_ids == tuple(_ids(0, 1))


async def test_skip_existing_with_every_id_stored_writes_nothing_and_describes_the_stored_events(
    backend: Backend,
) -> None:
    async with backend.store() as store:
        await store.append("s", _writes("a0"), event_ids=_ids(0))  # type: ignore[arg-type]
        await store.append("s", [MessageAdded(run_id="r", role="user", content="between")])
        await store.append("s", _writes("a1"), event_ids=_ids(1))  # type: ignore[arg-type]
        records = [record async for record in store.read("s")]
        again = await store.append(
            "s",
            _writes("x1", "x0"),
            event_ids=_ids(1, 0),  # type: ignore[arg-type]
            skip_existing=True,
            expected_version=0,  # not checked when nothing is written, as for an exact retry
        )
        version = await store.current_version("s")
    assert version == 3
    assert (again.from_version, again.to_version) == (1, 3)
    assert again.event_ids == tuple(_ids(1, 0))  # in the call's order
    assert again.positions == (records[2].position, records[0].position)
    assert again.recorded_at == records[2].recorded_at


async def test_skip_existing_checks_the_expected_version_when_it_writes(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("s", _writes("a0"), event_ids=_ids(0))  # type: ignore[arg-type]
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(
                "s",
                _writes("b0", "b1"),
                event_ids=_ids(0, 1),  # type: ignore[arg-type]
                skip_existing=True,
                expected_version=0,
            )
        assert (caught.value.expected_version, caught.value.actual_version) == (0, 1)
        done = await store.append(
            "s",
            _writes("b0", "b1"),
            event_ids=_ids(0, 1),  # type: ignore[arg-type]
            skip_existing=True,
            expected_version=1,
        )
        assert (done.from_version, done.to_version) == (2, 2)
        assert await _texts(store, "s") == ["a0", "b1"]


async def test_skip_existing_still_refuses_an_id_of_another_session(backend: Backend) -> None:
    async with backend.store() as store:
        await store.append("other", _writes("a0"), event_ids=_ids(0))  # type: ignore[arg-type]
        with pytest.raises(IdempotencyError, match="another session") as caught:
            await store.append("s", _writes("b0", "b1"), event_ids=_ids(1, 0), skip_existing=True)  # type: ignore[arg-type]
        assert caught.value.event_id == _ids(0)[0]
        assert await store.current_version("s") == 0
        with pytest.raises(IdempotencyError):  # without skip_existing a partly stored batch is an error
            await store.append("other", _writes("a0", "a1"), event_ids=_ids(0, 1))  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="skip_existing"):
            await store.append("s", _writes("c"), skip_existing=True)  # no event_ids: nothing could be stored
        with pytest.raises(InvalidArgumentError, match="skip_existing"):
            await store.append("s", _writes("c"), event_ids=_ids(9), skip_existing="yes")  # type: ignore[arg-type]
        assert await store.current_version("s") == 0


async def test_racing_skip_existing_appends_store_each_event_once(backend: Backend) -> None:
    rounds = 10
    async with backend.store() as one, backend.store() as two:
        stores = [one, two] if backend.persistent else [one, one]
        for attempt in range(rounds):
            session_id = f"race-{attempt}"
            ids = [event_id_for("race", attempt, index) for index in range(4)]
            results = await asyncio.gather(
                stores[0].append(session_id, _writes("a0", "a1", "a2"), event_ids=ids[:3], skip_existing=True),
                stores[1].append(session_id, _writes("b1", "b2", "b3"), event_ids=ids[1:], skip_existing=True),
                one.append(session_id, _writes("c0", "c1", "c2", "c3"), event_ids=ids, skip_existing=True),
                one.append(f"bystander-{attempt}", _writes("d")),  # shares a group commit with the race
            )
            records = [record async for record in one.read(session_id)]
            assert sorted(record.event_id for record in records) == sorted(ids), attempt
            assert [record.version for record in records] == [1, 2, 3, 4]
            by_id = {record.event_id: record for record in records}
            for result in results[:3]:
                assert result.session_id == session_id
                for event_id, position in zip(result.event_ids, result.positions, strict=True):
                    assert by_id[event_id].position == position  # every caller learns where each is stored
