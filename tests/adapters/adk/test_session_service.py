"""What every ADK ``BaseSessionService`` owes its callers, in our words, on all three backends; and
what ``KernEventsSessionService`` promises beyond it: the expected version as the stale check, one
atomic append for an event and its shared-state deltas, reads that never fold a whole session."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from kern_events import InMemoryDb, InvalidArgumentError
from tests.adapters._dbs import open_db as _open
from tests.adapters.adk import _adk

_adk.require_adk()

from google.adk.errors import StaleSessionError  # noqa: E402  (after the extra is known to be there)
from google.adk.errors.already_exists_error import AlreadyExistsError  # noqa: E402
from google.adk.errors.session_not_found_error import SessionNotFoundError  # noqa: E402
from google.adk.events.event import Event  # noqa: E402
from google.adk.events.event_actions import EventActions  # noqa: E402
from google.adk.sessions.base_session_service import GetSessionConfig  # noqa: E402
from google.adk.sessions.session import Session  # noqa: E402
from google.genai import types  # noqa: E402

from kern_events.adapters.adk import SESSION_TYPE, STATE_SNAPSHOT, KernEventsSessionService  # noqa: E402

APP, USER = "app", "u1"


def _event(delta: dict[str, Any] | None = None, **fields: Any) -> Event:
    fields.setdefault("author", "user")
    fields.setdefault("invocation_id", "inv")
    return Event(actions=EventActions(state_delta=delta or {}), **fields)


async def test_a_created_session_reads_back_equal_and_is_gone_after_delete(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        assert await service.get_session(app_name=APP, user_id=USER, session_id="none") is None
        session = await service.create_session(app_name=APP, user_id=USER, state={"k": "v"})
        assert session.id and session.state == {"k": "v"} and session.last_update_time <= time.time()
        assert await service.get_session(app_name=APP, user_id=USER, session_id=session.id) == session
        with pytest.raises(AlreadyExistsError):
            await service.create_session(app_name=APP, user_id=USER, session_id=session.id)
        await service.delete_session(app_name=APP, user_id=USER, session_id=session.id)
        assert await service.get_session(app_name=APP, user_id=USER, session_id=session.id) is None
        await service.delete_session(app_name=APP, user_id=USER, session_id=session.id)  # nothing there: a no-op
        # The id can be used again (the deleted session's versions stay as a tombstone underneath).
        again = await service.create_session(app_name=APP, user_id=USER, session_id=session.id, state={"n": 2})
        await service.append_event(again, _event({"x": 1}))
        got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert got is not None and got.state == {"n": 2, "x": 1} and len(got.events) == 1


async def test_padded_ids_are_stripped_and_sessions_belong_to_their_user(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        created = await service.create_session(app_name=APP, user_id=USER, session_id=" s1\n")
        assert created.id == "s1"
        await service.append_event(created, _event())
        other = await service.create_session(app_name=APP, user_id="u2", session_id="s1")
        assert other.events == []
        got = await service.get_session(app_name=APP, user_id="u2", session_id="s1\n")
        assert got is not None and got.user_id == "u2" and got.events == []
        await service.delete_session(app_name=APP, user_id=USER, session_id="s1 ")
        assert await service.get_session(app_name=APP, user_id=USER, session_id="s1") is None
        assert await service.get_session(app_name=APP, user_id="u2", session_id="s1") is not None


async def test_app_state_is_shared_by_the_app_user_state_by_the_user_session_state_by_nobody(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        first = await service.create_session(
            app_name=APP, user_id=USER, session_id="s1", state={"app:a": 1, "user:u": 1, "s": 1, "temp:t": 1}
        )
        assert first.state == {"app:a": 1, "user:u": 1, "s": 1}
        await service.append_event(first, _event({"app:a": {"x": 1}, "user:u": None, "s": False, "s2": True}))
        mine = await service.create_session(app_name=APP, user_id=USER, session_id="s2")
        assert mine.state == {"app:a": {"x": 1}, "user:u": None}
        theirs = await service.create_session(app_name=APP, user_id="u2", session_id="s3")
        assert theirs.state == {"app:a": {"x": 1}}
        elsewhere = await service.create_session(app_name="other", user_id=USER, session_id="s4")
        assert elsewhere.state == {}
        got = await service.get_session(app_name=APP, user_id=USER, session_id="s1")
        assert got is not None and got.state == {"app:a": {"x": 1}, "user:u": None, "s": False, "s2": True}
        assert await service.get_user_state(app_name=APP, user_id=USER) == {"u": None}
        assert await service.get_user_state(app_name=APP, user_id="u2") == {}
        assert await service.get_user_state(app_name="other", user_id=USER) == {}


async def test_temp_keys_reach_the_session_object_only_and_partial_events_are_not_stored(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP, user_id=USER)
        event = _event({"temp:t": 1, "k": 2})
        await service.append_event(session, event)
        assert session.state == {"temp:t": 1, "k": 2} and event.actions.state_delta == {"k": 2}
        await service.append_event(session, _event({"k": 3}, partial=True))
        assert len(session.events) == 1
        got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert got is not None and got.state == {"k": 2} and len(got.events) == 1
        assert got.events[0].actions.state_delta == {"k": 2}


async def test_events_round_trip_whole_and_last_update_time_is_the_last_events_timestamp(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP, user_id=USER)
        event = _event(
            content=types.Content(role="user", parts=[types.Part.from_bytes(data=b"\x00png", mime_type="image/png")]),
            long_running_tool_ids={"tool"},
            custom_metadata={"k": [1, 2]},
            timestamp=session.last_update_time + 10,
        )
        await service.append_event(session, event)
        assert session.last_update_time == event.timestamp
        got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert got == session
        assert got is not None and got.last_update_time == event.timestamp
        # Exact epochs, whatever the local time zone.
        for epoch in (1730613600.0, 1730615400.123456):
            await service.append_event(session, _event(timestamp=epoch))
        got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert got is not None and [e.timestamp for e in got.events][1:] == [1730613600.0, 1730615400.123456]
        assert got.last_update_time == 1730615400.123456


async def test_get_session_config_is_a_tail_window_and_state_never_comes_from_it(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP, user_id=USER, state={"first": 0})
        base = 1_700_000_000.0
        for i in range(1, 6):
            await service.append_event(session, _event({f"k{i}": i}, timestamp=base + i))

        async def window(**config: Any) -> list[float]:
            got = await service.get_session(
                app_name=APP, user_id=USER, session_id=session.id, config=GetSessionConfig(**config)
            )
            assert got is not None
            assert got.state == {"first": 0, "k1": 1, "k2": 2, "k3": 3, "k4": 4, "k5": 5}
            assert got.last_update_time == base + 5
            return [event.timestamp - base for event in got.events]

        assert await window() == [1, 2, 3, 4, 5]
        assert await window(num_recent_events=0) == []
        assert await window(num_recent_events=3) == [3, 4, 5]
        assert await window(after_timestamp=base + 4) == [4, 5]
        assert await window(after_timestamp=base + 50) == []
        assert await window(after_timestamp=base + 2, num_recent_events=2) == [4, 5]


async def test_sessions_list_least_recently_updated_first_with_their_state(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        for user, session_id in ((USER, "a"), (USER, "b"), ("u2", "c")):
            await service.create_session(
                app_name=APP, user_id=user, session_id=session_id, state={"id": session_id, "app:x": 1}
            )
        await service.create_session(app_name="other", user_id=USER, session_id="d")
        a = await service.get_session(app_name=APP, user_id=USER, session_id="a")
        assert a is not None
        await anyio.sleep(0.01)
        await service.append_event(a, _event({"n": 1}))
        mine = (await service.list_sessions(app_name=APP, user_id=USER)).sessions
        assert [s.id for s in mine] == ["b", "a"]
        assert mine[1].state == {"id": "a", "n": 1, "app:x": 1} and mine[1].events == []
        assert mine[1].last_update_time == a.last_update_time
        everyone = (await service.list_sessions(app_name=APP)).sessions
        assert [(s.user_id, s.id) for s in everyone] == [(USER, "b"), ("u2", "c"), (USER, "a")]
        assert (await service.list_sessions(app_name="nobody")).sessions == []
        assert {info.session_type for info in await db.store.list_sessions(session_type=SESSION_TYPE)} == {"adk"}


async def test_an_append_from_a_stale_copy_is_rejected_and_stores_nothing_anywhere(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP, user_id=USER)
        stale = copy.deepcopy(session)
        # A later timestamp on the stale copy does not help: versions decide, not clocks.
        await service.append_event(session, _event({"s": 1}, timestamp=1.0))
        with pytest.raises(StaleSessionError, match="modified in storage"):
            await service.append_event(stale, _event({"app:a": 1, "user:u": 1, "s": 2}, timestamp=time.time() + 99))
        got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert got is not None and got.state == {"s": 1} and len(got.events) == 1
        assert await service.get_user_state(app_name=APP, user_id=USER) == {}
        fresh = await service.create_session(app_name=APP, user_id="u2")
        assert fresh.state == {}  # the rejected app: delta was not stored either


async def test_of_two_concurrent_appends_from_one_read_exactly_one_lands(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP, user_id=USER)
        for round_ in range(4):
            latest = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
            assert latest is not None
            outcomes: list[str] = []

            async def append(copy_: Any, key: str, outcomes: list[str]) -> None:
                try:
                    await service.append_event(copy_, _event({key: 1, "user:last": key}))
                    outcomes.append(key)
                except StaleSessionError:
                    outcomes.append("stale")

            async with anyio.create_task_group() as group:
                for side in ("x", "y"):
                    group.start_soon(append, copy.deepcopy(latest), f"{side}{round_}", outcomes)
            assert len(outcomes) == 2 and outcomes.count("stale") == 1, outcomes
            winner = next(key for key in outcomes if key != "stale")
            assert await service.get_user_state(app_name=APP, user_id=USER) == {"last": winner}
        got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert got is not None and len(got.events) == 4


async def test_appending_to_a_deleted_or_never_created_session_is_session_not_found(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        never_created = Session(app_name=APP, user_id=USER, id="never_created")
        with pytest.raises(SessionNotFoundError):
            await service.append_event(never_created, _event())
        assert await service.get_session(app_name=APP, user_id=USER, session_id="never_created") is None
        session = await service.create_session(app_name=APP, user_id=USER)
        await service.delete_session(app_name=APP, user_id=USER, session_id=session.id)
        with pytest.raises(SessionNotFoundError):
            await service.append_event(session, _event())
        markerless = copy.deepcopy(session)
        markerless._storage_update_marker = None
        with pytest.raises(SessionNotFoundError):
            await service.append_event(markerless, _event())
        assert await service.get_session(app_name=APP, user_id=USER, session_id=session.id) is None


async def test_a_retried_append_of_the_same_event_is_stored_once(db_kind: tuple[str, str], tmp_path: Path) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP, user_id=USER)
        before = copy.deepcopy(session)
        event = _event({"app:n": 1, "k": 1})
        await service.append_event(session, event)
        await service.append_event(before, copy.deepcopy(event))  # a retry after a lost reply
        got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert got is not None and [e.id for e in got.events] == [event.id]
        assert got.state == {"k": 1, "app:n": 1}
        assert [r.version async for r in db.store.read("adk.app:app")] == [1]


async def test_events_with_tied_timestamps_keep_their_append_order(db_kind: tuple[str, str], tmp_path: Path) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        session = await service.create_session(app_name=APP, user_id=USER)
        for event_id in ("z", "a", "m"):
            await service.append_event(session, _event(id=event_id, timestamp=100.0))
        got = await service.get_session(app_name=APP, user_id=USER, session_id=session.id)
        assert got is not None and [e.id for e in got.events] == ["z", "a", "m"]


async def test_names_of_any_length_and_characters_map_to_distinct_sessions(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        service = KernEventsSessionService(db)
        long_app, long_user, long_id = "a" * 300, "u:\x01" * 100, "s" * 400
        session = await service.create_session(
            app_name=long_app, user_id=long_user, session_id=long_id, state={"user:k": 1}
        )
        await service.append_event(session, _event({"app:k": 2}))
        got = await service.get_session(app_name=long_app, user_id=long_user, session_id=long_id)
        assert got is not None and got.id == long_id and got.state == {"user:k": 1, "app:k": 2}
        # ':' in names cannot make two (app, user, session) triples collide.
        one = await service.create_session(app_name="a:b", user_id="c", session_id="d")
        two = await service.create_session(app_name="a", user_id="b:c", session_id="d")
        await service.append_event(one, _event({"which": 1}))
        got_two = await service.get_session(app_name="a", user_id="b:c", session_id="d")
        assert got_two is not None and got_two.state == {} and two.state == {}
        listed = (await service.list_sessions(app_name=long_app, user_id=long_user)).sessions
        assert [(s.app_name, s.user_id, s.id) for s in listed] == [(long_app, long_user, long_id)]


class _CountingStore:
    """The db's store, counting the records that reads hand back, the calls made (read's keyword
    arguments kept) and how many were in flight at once."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.records = 0
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.in_flight = self.most_in_flight = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name not in {"load_snapshot", "get_session_info", "list_sessions"}:
            return method

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, {}))
            self._enter()
            try:
                await anyio.sleep(0.001)
                return await method(*args, **kwargs)
            finally:
                self.in_flight -= 1

        return counted

    def _enter(self) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)

    async def _counted(self, records: Any) -> Any:
        self._enter()
        try:
            await anyio.sleep(0.001)
            async for record in records:
                self.records += 1
                yield record
        finally:
            self.in_flight -= 1

    def read(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("read", kwargs))
        return self._counted(self._store.read(*args, **kwargs))


async def test_a_listing_is_one_index_query_and_two_concurrent_reads_per_session(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        counting = _CountingStore(db.store)
        service = KernEventsSessionService(counting)  # type: ignore[arg-type]
        for i in range(12):
            session = await service.create_session(app_name=APP, user_id=f"u{i % 3}", session_id=f"s{i}")
            await service.append_event(session, _event({"n": i, "user:last": i}))
        counting.calls.clear()
        listed = (await service.list_sessions(app_name=APP)).sessions
        assert [s.id for s in listed] == [f"s{i}" for i in range(12)]
        assert [s.state for s in listed][-1] == {"n": 11, "user:last": 11}
        names = [name for name, _ in counting.calls]
        assert names.count("list_sessions") == 1
        # per session a checkpoint load and one read (ids and users come from the index), the same
        # for the app and each of the 3 users, and nothing else
        assert len(names) == 1 + 2 * 12 + 2 * (1 + 3), names
        assert not [kw for name, kw in counting.calls if kw.get("types") == ("adk.session_created",)]
        assert counting.most_in_flight > 1  # not one session after another


async def test_reading_a_long_session_reads_its_window_and_the_states_checkpoint_tail_only(
    db_kind: tuple[str, str], tmp_path: Path
) -> None:
    async with _open(db_kind, tmp_path) as db:
        counting = _CountingStore(db.store)
        service = KernEventsSessionService(counting, state_checkpoint_every=20)  # type: ignore[arg-type]
        session = await service.create_session(app_name=APP, user_id=USER)
        for i in range(130):
            await service.append_event(session, _event({f"k{i % 7}": i, "user:n": i}))
        assert await db.store.load_snapshot(session_id_of(session), STATE_SNAPSHOT) is not None
        counting.records = 0
        got = await service.get_session(
            app_name=APP, user_id=USER, session_id=session.id, config=GetSessionConfig(num_recent_events=5)
        )
        assert got is not None and len(got.events) == 5
        assert got.state == {**{f"k{j}": max(i for i in range(130) if i % 7 == j) for j in range(7)}, "user:n": 129}
        # 6 window records (one more to see it is full) + at most 20 state deltas per stream, not 130.
        assert counting.records <= 6 + 20 + 20, counting.records


def test_a_checkpoint_interval_below_one_is_refused() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        KernEventsSessionService(InMemoryDb(), state_checkpoint_every=0)
    assert raised.value.argument == "state_checkpoint_every"


def session_id_of(session: Any) -> str:
    """The kern-events session id behind an ADK session (short names: no hashing)."""
    return f"adk.session:{session.app_name}:{session.user_id}:{session.id}"
