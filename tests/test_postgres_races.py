"""PostgreSQL under concurrency: deletes racing appends, batches of new sessions, poisoned batches, conflicts.

Each scenario runs many short trials against the real server, because each race shows only in a
fraction of them; the sizes are small by default and grow with ``KERN_HEAVY_SCALE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

import asyncpg
import pytest

from kern_events import ConcurrencyError, KernEventsError, MessageAdded, PostgresEventStore
from tests import _pg


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r", role="user", content=text)


@pytest.mark.heavy
async def test_after_a_delete_returns_no_event_of_the_deleted_session_is_readable(
    schema: str, heavy_scale: int
) -> None:
    """A delete racing appends either erases them or precedes them; never a tombstone over live events."""
    trials = 200 * heavy_scale
    leaked: list[tuple[int, list[int]]] = []
    async with _pg.store(schema, pool_size=6) as store, _pg.store(schema, pool_size=6) as writer:
        for trial in range(trials):
            session = f"s{trial}"
            await store.append(session, [_message("first")])
            appends = [asyncio.ensure_future(writer.append(session, [_message(f"racing {n}")])) for n in range(4)]
            await asyncio.sleep(0)  # the appends are on their way to the server
            await store.delete_session(session)
            await asyncio.gather(*appends)
            if await store.get_session_info(session) is not None:
                continue  # an append landed after the delete: a new incarnation, legitimately readable
            readable = [record.version async for record in store.read(session)]
            readable += [record.version async for record in store.read(session, backwards=True)]
            everywhere = [record.version async for record in store.read_all() if record.session_id == session]
            if readable or everywhere:
                leaked.append((trial, readable + everywhere))
    assert leaked == [], f"{len(leaked)} of {trials} deletes left events readable behind the tombstone"


async def _create_in_order(store: PostgresEventStore, sessions: list[str]) -> list[BaseException | object]:
    """One append per session, all at once, so the group committer batches them in this order."""
    results = await asyncio.gather(
        *(store.append(session, [_message(session)]) for session in sessions), return_exceptions=True
    )
    return list(results)


@pytest.mark.heavy
async def test_batches_creating_the_same_new_sessions_in_opposite_order_never_fail(
    schema: str, heavy_scale: int
) -> None:
    trials = 15 * heavy_scale
    failed: list[BaseException] = []
    async with _pg.store(schema, pool_size=2) as first, _pg.store(schema, pool_size=2) as second:
        await first.append("warm-up", [_message("tables")])
        await second.append("warm-up", [_message("connections")])
        for trial in range(trials):
            sessions = [f"t{trial}-{n:03d}" for n in range(200)]
            outcomes = await asyncio.gather(_create_in_order(first, sessions), _create_in_order(second, sessions[::-1]))
            failed += [outcome for results in outcomes for outcome in results if isinstance(outcome, BaseException)]
        counts = await first._fetch(f'SELECT count(*) FROM "{schema}".kern_events WHERE session_id LIKE $1', "t%")
    assert failed == [], f"{len(failed)} appends failed, e.g. {failed[0]!r}"
    assert counts[0][0] == trials * 200 * 2


async def test_a_poisoned_append_fails_alone_and_its_batch_commits(schema: str) -> None:
    """Five appends the server cannot take among 500 concurrent ones: only their callers see an error."""
    poisoned = set(range(3, 500, 100))
    async with _pg.store(schema, pool_size=2) as store:
        for n in sorted(poisoned):
            await store.append(f"p{n}", [_message("exists")])

        async def append(n: int) -> object:
            if n in poisoned:
                return await store.append(f"p{n}", [_message("poison")], expected_version=2**63)
            return await store.append(f"p{n}", [_message(f"innocent {n}")])

        outcomes = await asyncio.gather(*(append(n) for n in range(500)), return_exceptions=True)
        stored = await store._fetch(f'SELECT count(*) FROM "{schema}".kern_events WHERE data <> $1', b"")
    errors = {n: outcome for n, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)}
    assert set(errors) == poisoned, f"{len(errors)} appends failed: {sorted(errors)[:10]}…"
    assert all(isinstance(error, KernEventsError) for error in errors.values()), errors
    assert stored[0][0] == 495 + len(poisoned), "the innocent appends, and the poisoned sessions' first events"


@contextlib.contextmanager
def _statements_sent(store: PostgresEventStore) -> Iterator[list[str]]:
    """The statements the store's appending connection sends while the block runs (the driver
    reports each soon after it ran: yield to the loop once before counting)."""
    appender = store._appender
    assert appender is not None
    statements: list[str] = []

    def log(record: asyncpg.connection.LoggedQuery) -> None:
        statements.append(record.query)

    appender.add_query_logger(log)
    try:
        yield statements
    finally:
        appender.remove_query_logger(log)


async def test_a_conflict_costs_one_query_after_the_append_and_carries_the_current_version(schema: str) -> None:
    """On a hot session every writer but one conflicts: the append that wrote nothing is followed by
    one query only, and the error says where the session is, so the writer retries at once."""
    async with _pg.store(schema) as store:
        await store.append("hot", [_message("one"), _message("two")])
        await store.append("new-ish", [_message("warms up the full statement too")])
        with _statements_sent(store) as statements:
            for stale, events in ((1, [_message("stale")]), (0, [_message("a"), _message("b")])):
                statements.clear()
                with pytest.raises(ConcurrencyError) as caught:
                    await store.append("hot", events, expected_version=stale)
                assert (caught.value.expected_version, caught.value.actual_version) == (stale, 2)
                await asyncio.sleep(0)  # the driver calls its query loggers soon after each query
                assert len(statements) == 2, statements
        result = await store.append("hot", [_message("retried")], expected_version=caught.value.actual_version)
        assert result.to_version == 3


async def test_a_missing_session_and_a_retry_answer_in_as_few_queries(schema: str) -> None:
    """An exact version on a session that has no row is a conflict at version 0 (the append that
    wrote nothing, then one query); a retry of a stored append reads the stored ids once more."""
    async with _pg.store(schema) as store:
        await store.append("hot", [_message("one")])
        with pytest.raises(ConcurrencyError):  # the driver learns the error path's types once
            await store.append("hot", [_message("stale")], expected_version=5)
        second = await store.append("hot", [_message("two")], expected_version=1)
        with _statements_sent(store) as statements:
            with pytest.raises(ConcurrencyError) as caught:
                await store.append("nowhere", [_message("lost")], expected_version=3)
            assert (caught.value.expected_version, caught.value.actual_version) == (3, 0)
            await asyncio.sleep(0)
            assert len(statements) == 2, statements
            statements.clear()
            again = await store.append("hot", [_message("two")], expected_version=1, event_ids=second.event_ids)
            assert again == second
            await asyncio.sleep(0)
            assert len(statements) == 3, statements  # the append, the look at what is stored, the ids


async def test_many_writers_retrying_on_one_session_lose_nothing(schema: str) -> None:
    """Writers that retry from the conflict's ``actual_version`` alone, never reading the head."""
    writers, each = 16, 8
    async with _pg.store(schema, pool_size=4) as first, _pg.store(schema, pool_size=4) as second:

        async def writer(n: int) -> int:
            store, head, conflicts = (first, second)[n % 2], 0, 0
            for k in range(each):
                while True:
                    try:
                        head = (await store.append("hot", [_message(f"{n}:{k}")], expected_version=head)).to_version
                        break
                    except ConcurrencyError as error:
                        head, conflicts = error.actual_version, conflicts + 1
            return conflicts

        conflicts = await asyncio.gather(*(writer(n) for n in range(writers)))
        records = [record async for record in first.read("hot")]
    assert [record.version for record in records] == list(range(1, writers * each + 1))
    assert sorted(str(record.event.content) for record in records) == sorted(  # type: ignore[union-attr]
        f"{n}:{k}" for n in range(writers) for k in range(each)
    )
    assert sum(conflicts) > 0, "the writers did contend"


def test_appends_at_any_version_never_conflict_however_often_others_get_in_first(schema: str) -> None:
    """An append at any version has no version to conflict with: under contention it may lose the
    optimistic race every time it tries, and then waits its turn on the session's row lock instead
    of giving up with a ConcurrencyError (seen under load in test_loops' shared-store test).

    Threads, each running its own loop (so each with its own connections), append to one session.
    """
    threads, each = 10, 40
    store = PostgresEventStore(_pg.PG_URL, schema=schema)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        async def main() -> None:
            for k in range(each):
                await store.append("shared", [_message(f"{n}:{k}")])

        try:
            asyncio.run(main())
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    async def contents() -> list[str]:
        async with store:
            return sorted([str(record.event.content) async for record in store.read("shared")])  # type: ignore[union-attr]

    assert errors == []
    assert asyncio.run(contents()) == sorted(f"{n}:{k}" for n in range(threads) for k in range(each))
