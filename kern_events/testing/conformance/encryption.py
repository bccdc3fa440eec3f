"""Encryption at rest: payloads and snapshots sealed under per-user data keys, the envelope in clear;
a deleted key makes that user's events unreadable (typed, never garbage); a wrong key or a failing
key provider is a typed error, and nothing is ever written unencrypted. Needs ``cryptography``
(``kern-events[crypto]``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kern_events import (
    Agent,
    DecryptionError,
    Encryption,
    ErasedError,
    KeyProviderError,
    KeyringFile,
    MemoryModel,
    MessageAdded,
    SessionStarted,
)
from kern_events.encryption import SEAL_MARK, user_key_id
from kern_events.stores._base import BaseEventStore
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled
from kern_events.testing._samples import conversation, every_event_type


def _require_crypto() -> None:
    pytest.importorskip("cryptography", reason="encryption needs kern-events[crypto]")


class _Keys:
    """An in-memory key provider that can be told to fail or to hand out other keys."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.failing = False

    async def get_key(self, key_id: str) -> bytes | None:
        if self.failing:
            raise ConnectionError("the KMS is unreachable")
        return self.keys.get(key_id)

    async def create_key(self, key_id: str) -> bytes:
        if self.failing:
            raise ConnectionError("the KMS is unreachable")
        return self.keys.setdefault(key_id, os.urandom(32))

    async def delete_key(self, key_id: str) -> bool:
        return self.keys.pop(key_id, None) is not None


def _encrypted(backend: Backend, keys: _Keys) -> BaseEventStore:
    _require_crypto()
    store = backend.store()
    store.encryption = Encryption(keys)
    return store


async def _raw(store: BaseEventStore, session_id: str) -> list[bytes]:
    page = await store._read_page(session_id, 1, None, 1000, False, None)
    return [row.data for row in page]  # type: ignore[union-attr]


async def test_payloads_are_sealed_and_read_back_exactly_with_the_envelope_in_clear(backend: Backend) -> None:
    _require_crypto()
    keys = _Keys()
    async with _encrypted(backend, keys) as store:
        events = every_event_type()
        await store.append("s", events)
        records = [record async for record in store.read("s")]
        assert [record.event for record in records] == events
        assert [record.event for record in records if record.session_id == "s"] == events
        if backend.global_feed:  # the feed opens stored events; a session read may open its driver's rows
            await feed_settled(store)
            assert [record async for record in store.read_all()] == records
        assert [record.event async for record in store.read("s", backwards=True, types=["run_paused"])] == [
            event for event in events if type(event).__name__ == "RunPaused"
        ]
        raw = await _raw(store, "s")
        assert all(data[:1] == SEAL_MARK for data in raw)
        assert not any(b"alice@example.com" in data or b"Paris" in data for data in raw)
        assert set(keys.keys) == {user_key_id("alice@example.com")}
        assert (await store.get_session_info("s")).user_id == "alice@example.com"  # type: ignore[union-attr]


async def test_a_retry_of_an_encrypted_append_is_still_recognised(backend: Backend) -> None:
    _require_crypto()
    async with _encrypted(backend, _Keys()) as store:
        from kern_events import event_id_for

        ids = [event_id_for("s", "one")]
        first = await store.append("s", [MessageAdded(run_id="r", role="user", content="hi")], event_ids=ids)
        again = await store.append("s", [MessageAdded(run_id="r", role="user", content="hi")], event_ids=ids)
        assert again == first


async def test_large_encrypted_payloads_are_chunked_after_sealing(backend: Backend) -> None:
    _require_crypto()
    async with _encrypted(backend, _Keys()) as store:
        if backend.inline_limit is not None:
            store.inline_limit = backend.inline_limit
        big = MessageAdded(run_id="r", role="user", content="x" * 50_000)
        await store.append("s", [big])
        assert [record.event async for record in store.read("s")] == [big]


async def test_snapshots_are_sealed_and_views_read_through_them(backend: Backend) -> None:
    _require_crypto()
    keys = _Keys()
    async with backend.db() as db:
        db.store.encryption = Encryption(keys)  # type: ignore[attr-defined]
        for batch in conversation(runs=2):
            await db.store.append("s", batch)
        view = await db.get_session("s")
        checkpoint = await db.save_checkpoint("s")
        stored = await db.store._load_snapshot("s", "session", None, None)  # type: ignore[attr-defined]
        assert stored.data[:1] == SEAL_MARK and stored.data != checkpoint.data
        assert await db.get_session("s") == view
        assert (await db.get_session_state("s"))["turns"] == 2


async def test_a_deleted_key_shreds_the_users_events_into_typed_errors(backend: Backend) -> None:
    _require_crypto()
    keys = _Keys()
    async with backend.db() as db:
        db.store.encryption = Encryption(keys)  # type: ignore[attr-defined]
        for batch in conversation(user_id="alice"):
            await db.store.append("a", batch)
        for batch in conversation(user_id="bob"):
            await db.store.append("b", batch)
        await db.save_checkpoint("a")
        bob = await db.get_session("b")
    async with backend.db() as db:  # a new process (or a restored backup) that still has the rows
        db.store.encryption = Encryption(keys)  # type: ignore[attr-defined]
        if not backend.persistent:
            return
        await keys.delete_key(user_key_id("alice"))
        with pytest.raises(ErasedError) as raised:
            [record async for record in db.store.read("a")]
        assert (raised.value.session_id, raised.value.version) == ("a", 1)
        with pytest.raises(ErasedError):
            await db.get_session("a")
        assert {info.session_id for info in await db.get_sessions()} == {"a", "b"}
        assert await db.get_paused_runs() == []  # the shredded session does not break the listing
        assert await db.get_session("b") == bob


async def test_a_shredded_users_rows_are_left_out_of_the_feed_for_everyone_else(backend: Backend) -> None:
    _require_crypto()
    backend.require("persistent")
    backend.require("global_feed")
    keys = _Keys()
    async with _encrypted(backend, keys) as store:
        for batch in conversation(user_id="alice"):
            await store.append("a", batch)
        for batch in conversation(user_id="bob"):
            await store.append("b", batch)
        for batch in conversation(user_id="alice"):
            await store.append("a2", batch)
    await keys.delete_key(user_key_id("alice"))
    async with _encrypted(backend, keys) as store:  # a restored backup: alice's rows are there, her key is not
        bobs = [record.event async for record in store.read("b")]
        await feed_settled(store)
        feed = [record async for record in store.read_all()]
        assert {record.session_id for record in feed} == {"b"}
        assert [record.event for record in feed] == bobs
        async with store.subscribe() as subscription:
            seen = []
            async for record in subscription:
                seen.append(record.event)
                if len(seen) == len(bobs):
                    break
        assert seen == bobs
        with pytest.raises(ErasedError):  # the session's own reads still say why
            [record async for record in store.read("a2")]


async def test_a_wrong_key_is_a_typed_error_naming_session_and_version(backend: Backend) -> None:
    _require_crypto()
    backend.require("persistent")
    keys = _Keys()
    async with _encrypted(backend, keys) as store:
        await store.append("s", [SessionStarted(session_type="agent", user_id="u")])
        await store.append("s", [MessageAdded(run_id="r", role="user", content="secret")])
    keys.keys[user_key_id("u")] = os.urandom(32)
    async with _encrypted(backend, keys) as store:
        with pytest.raises(DecryptionError) as raised:
            [record async for record in store.read("s")]
        assert (raised.value.session_id, raised.value.version) == ("s", 1)
        assert "'s'" in str(raised.value) and "version 1" in str(raised.value)


async def test_a_failing_key_provider_is_a_typed_error_and_nothing_is_written(backend: Backend) -> None:
    _require_crypto()
    keys = _Keys()
    keys.failing = True
    async with _encrypted(backend, keys) as store:
        with pytest.raises(KeyProviderError) as raised:
            await store.append("s", [SessionStarted(session_type="agent", user_id="u")])
        assert raised.value.key_id == user_key_id("u")
        assert await store.current_version("s") == 0
        if backend.global_feed:
            assert [record async for record in store.read_all()] == []


async def test_erasing_a_user_deletes_their_key(backend: Backend) -> None:
    _require_crypto()
    backend.require("erases_users")
    keys = _Keys()
    async with backend.db() as db:
        db.store.encryption = Encryption(keys)  # type: ignore[attr-defined]
        for batch in conversation(user_id="alice"):
            await db.store.append("a", batch)
        report = await db.erase_user("alice")
        assert report.keys_deleted == 1 and keys.keys == {}


async def test_the_reference_agent_runs_on_an_encrypted_db(backend: Backend, tmp_path: Path) -> None:
    _require_crypto()
    keyring = KeyringFile(tmp_path / "keys.json")
    async with backend.db() as db:
        db.store.encryption = Encryption(keyring)  # type: ignore[attr-defined]
        model = MemoryModel()
        agent = Agent(model=model, db=db, session_id="c", user_id="alice@example.com", add_history_to_context=True)
        assert (await agent.arun("My name is Alice")).content == "Nice to meet you, Alice!"
        assert (await agent.arun("What's my name?")).content == "Your name is Alice."
        assert [run.status for run in (await db.get_session("c")).runs] == ["completed"] * 2
        assert all(data[:1] == SEAL_MARK for data in await _raw(db.store, "c"))  # type: ignore[arg-type]
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


async def test_the_hash_chain_covers_the_sealed_bytes_and_verifies_without_keys(backend: Backend) -> None:
    _require_crypto()
    backend.require("chains")
    keys = _Keys()
    async with _encrypted(backend, keys) as store:
        for batch in conversation(user_id="alice", runs=2):
            await store.append("s", batch)
        cut = 0
        if backend.truncates:  # the chain also continues from a cut
            cut = await store.truncate_before("s", 3)
        report = await store.verify()
        assert report.ok and report.events == await store.current_version("s") - cut
        keys.keys.clear()  # shredded: the chain still verifies over the ciphertext
        assert (await store.verify()).ok
