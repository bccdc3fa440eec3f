"""Event upcasting: a row stored at an older schema version reads in the type's current shape,
through the upcasters registered for each step, and the stored bytes are never rewritten.

The example change: ``conformance.contact`` v1 had ``{"name": "Ada Lovelace", "mail": ...}``; v2
renamed ``mail`` to ``email``; v3 split ``name`` into ``given_name`` and ``family_name``.
"""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

import msgspec

from kern_events import Event, MessageAdded, register_upcaster
from kern_events._registry import register_event_type
from kern_events.codec import MsgpackCodec
from kern_events.events import Event as _Event
from kern_events.records import PendingEvent
from kern_events.testing._backend import Backend
from kern_events.testing._feed import feed_settled


@register_event_type
class ConformanceContact(Event, tag="conformance.contact", frozen=True):
    """Version 3 of an extension event whose shape changed twice."""

    schema_version: ClassVar[int] = 3
    given_name: str
    family_name: str = ""
    email: str | None = None


@register_upcaster(ConformanceContact, 1)
def _mail_renamed_email(payload: dict[str, Any]) -> dict[str, Any]:
    payload = dict(payload)
    if "mail" in payload:
        payload["email"] = payload.pop("mail")
    return payload


@register_upcaster(ConformanceContact, 2)
def _name_split(payload: dict[str, Any]) -> dict[str, Any]:
    payload = dict(payload)
    given, _, family = payload.pop("name", "").partition(" ")
    return {**payload, "given_name": given, "family_name": family}


class _ReleaseCodec(MsgpackCodec):
    """Writes ``conformance.contact`` as the release at :attr:`schema_version` did (1, 2, or 3: now);
    reads as this release does."""

    def __init__(self) -> None:
        super().__init__()
        self.schema_version = ConformanceContact.schema_version

    def encode(self, event: _Event, event_id: UUID) -> PendingEvent:
        if not isinstance(event, ConformanceContact) or self.schema_version == ConformanceContact.schema_version:
            return super().encode(event, event_id)
        name = f"{event.given_name} {event.family_name}".strip()
        mail_field = "mail" if self.schema_version == 1 else "email"
        payload = {"type": "conformance.contact", "name": name, mail_field: event.email}
        return PendingEvent(
            event_id=event_id,
            type="conformance.contact",
            schema_version=self.schema_version,
            data=msgspec.msgpack.encode(payload),
        )


ADA = ConformanceContact(given_name="Ada", family_name="Lovelace", email="ada@example.com")


async def test_rows_of_every_older_schema_version_read_in_the_current_shape(backend: Backend) -> None:
    codec = _ReleaseCodec()
    async with backend.store(codec=codec) as store:
        for version in (1, 2, 3):
            codec.schema_version = version
            await store.append(f"v{version}", [MessageAdded(run_id="r", role="user", content="hi"), ADA])
        for session_id in ("v1", "v2", "v3"):
            records = [record async for record in store.read(session_id, types=["conformance.contact"])]
            assert [record.event for record in records] == [ADA], session_id
        if backend.global_feed:
            await feed_settled(store)
            feed = [record.event async for record in store.read_all() if record.type == "conformance.contact"]
            assert feed == [ADA, ADA, ADA]
        backwards = [record.event async for record in store.read("v1", backwards=True)]
        assert backwards[0] == ADA
    if backend.persistent:
        async with backend.store() as reopened:
            assert [record.event async for record in reopened.read("v1")][1] == ADA


async def test_upcasting_never_rewrites_the_stored_row(backend: Backend) -> None:
    backend.require("persistent")
    codec = _ReleaseCodec()
    codec.schema_version = 1
    async with backend.store(codec=codec) as old:
        await old.append("s", [ADA])
    async with backend.store() as store:
        assert [record.event async for record in store.read("s")] == [ADA]
        raw = await _raw_rows(store, "s")
    as_written = {"type": "conformance.contact", "name": "Ada Lovelace", "mail": ADA.email}
    assert raw == [(1, msgspec.msgpack.encode(as_written))]


async def _raw_rows(store: object, session_id: str) -> list[tuple[int, bytes]]:
    """The stored (schema version, bytes) of the session's rows, as the backend returns them."""
    page = await store._read_page(session_id, 1, None, 100, False, None)  # type: ignore[attr-defined]
    return [(row.schema_version, row.data) for row in page]


async def test_extension_events_upcast_through_the_session_api(backend: Backend) -> None:
    backend.require("persistent")
    codec = _ReleaseCodec()
    async with backend.db() as db:
        session = await db.open_session("s", session_type="agent", user_id="u")
        await session.append([ADA])
    codec.schema_version = 1
    async with backend.store(codec=codec) as old:
        await old.append("s", [ADA])
    async with backend.db() as db:
        assert (await db.get_session("s")).session_id == "s"
        events = [record.event async for record in db.store.read("s", types=["conformance.contact"])]
        assert events == [ADA, ADA]
