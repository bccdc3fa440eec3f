"""Tamper evidence: every append on every path leaves a hash chain that ``verify`` finds intact
(the capability ``chains`` of :class:`Backend`)."""

from __future__ import annotations

import asyncio

import pytest

from kern_events import MessageAdded, SessionAppend, SessionStarted, event_id_for
from kern_events.backend import BaseEventStore
from kern_events.testing._backend import Backend


def _message(text: str) -> MessageAdded:
    return MessageAdded(run_id="r1", role="user", content=text)


async def _clean(store: BaseEventStore, events: int) -> None:
    report = await store.verify()
    assert report.problems == []
    assert report.events == events and report.unchained == 0


async def test_every_append_path_leaves_a_chain_that_verifies(backend: Backend) -> None:
    backend.require("chains")
    async with backend.store() as store:
        store.read_page_size = 3  # the chain carries across pages
        await store.append("s", [SessionStarted(session_type="agent", user_id="u")])
        await store.append("s", [_message(f"m{n}") for n in range(5)], expected_version=1)
        await store.append("s", [_message("any")])
        ids = [event_id_for("chain", n) for n in range(3)]
        await store.append("s", [_message("a"), _message("b")], event_ids=ids[:2], skip_existing=True)
        await store.append("s", [_message("a"), _message("b"), _message("c")], event_ids=ids, skip_existing=True)
        last_of_each_append = await store._find_events(ids[1:])  # the others may keep none (Chain.kept)
        assert [stored is not None and stored.chain is not None for stored in last_of_each_append] == [True] * 2
        await _clean(store, 10)
        if backend.appends_many:
            await store.append_many(
                [SessionAppend("s", [_message("many")], expected_version=10), SessionAppend("t", [_message("new")])]
            )
            await _clean(store, 12)
        assert (await store.verify("s")).events == 11 if backend.appends_many else 10


async def test_concurrent_appends_to_one_session_chain_in_version_order(backend: Backend) -> None:
    backend.require("chains")
    async with backend.store() as store:
        await asyncio.gather(*(store.append("hot", [_message(f"m{n}")]) for n in range(20)))
        await asyncio.gather(*(store.append(f"s{n}", [_message("first")]) for n in range(10)))
        await _clean(store, 30)


async def test_two_stores_taking_turns_on_one_session_keep_one_chain(backend: Backend) -> None:
    """Each store's idea of the head goes stale when the other appends: the chain stays whole."""
    backend.require("chains")
    if not backend.persistent:
        pytest.skip("needs a second store on the same database")
    async with backend.store() as first, backend.store() as second:
        for n in range(6):
            store = (first, second)[n % 2]
            await store.append("s", [_message(f"m{n}")])
            await store.append("s", [_message(f"e{n}")], expected_version=2 * n + 1)
        await second.delete_session("s")
        await first.append("s", [_message("again")])  # first last saw the head before the deletion
        await second.append("s", [_message("and again")], expected_version=13)
        await _clean(first, 2)


async def test_truncation_and_deletion_keep_the_chain_verifiable(backend: Backend) -> None:
    backend.require("chains")
    async with backend.store() as store:
        await store.append("s", [_message(f"m{n}") for n in range(6)])
        await store.append("gone", [_message("x"), _message("y")])
        await store.delete_session("gone")
        await store.append("gone", [_message("started again")])
        if backend.truncates:
            await store.truncate_before("s", 4)
            await store.append("s", [_message("after the cut")], expected_version=6)
            await _clean(store, 5)
        else:
            await _clean(store, 7)


async def test_large_payloads_are_chained_by_their_stored_bytes(backend: Backend) -> None:
    backend.require("chains")
    store = backend.store()
    if backend.inline_limit is not None:
        store.inline_limit = backend.inline_limit
    async with store:
        big = MessageAdded(run_id="r", role="tool", content="x" * (3 * (store.inline_limit or 65536)))
        await store.append("s", [_message("small"), big, _message("after")])
        await _clean(store, 3)
