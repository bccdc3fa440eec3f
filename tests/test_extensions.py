"""Registering extension event types: what is refused, and codecs that learn types registered after them."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from kern_events import (
    Event,
    InvalidArgumentError,
    MsgpackCodec,
    PendingEvent,
    Record,
    RunStarted,
    StoredEvent,
    UnknownEvent,
    register_event_type,
    registered_event_types,
)
from kern_events.stores.memory import InMemoryEventStore
from kern_events.testing._samples import ConformanceNote


def _stored(pending: PendingEvent) -> StoredEvent:
    return StoredEvent(
        session_id="s",
        version=1,
        position=1,
        event_id=pending.event_id,
        type=pending.type,
        schema_version=pending.schema_version,
        data=pending.data,
        recorded_at=0.0,
    )


def test_a_codec_made_before_a_registration_encodes_and_decodes_the_new_type() -> None:
    codec = MsgpackCodec()

    class Later(Event, tag="tests.later", frozen=True):
        value: int

    with pytest.raises(InvalidArgumentError):  # not registered yet: refused on encode
        codec.encode(Later(value=1), uuid.uuid4())
    raw = PendingEvent(
        event_id=uuid.uuid4(), type="tests.later", schema_version=1, data=msgspec.msgpack.encode(Later(value=1))
    )
    before = codec.decode(_stored(raw))
    assert isinstance(before.event, UnknownEvent)  # not registered yet: read raw, never dropped

    assert register_event_type(Later) is Later
    pending = codec.encode(Later(value=2), uuid.uuid4())
    assert pending.type == "tests.later"
    assert codec.decode(_stored(pending)).event == Later(value=2)
    assert registered_event_types()["tests.later"] is Later


def test_registering_the_same_class_twice_is_a_no_op_and_a_clash_is_refused() -> None:
    assert register_event_type(ConformanceNote) is ConformanceNote

    class Impostor(Event, tag="conformance.note", frozen=True):
        text: str

    with pytest.raises(InvalidArgumentError, match=r"already registered by .*ConformanceNote") as caught:
        register_event_type(Impostor)
    assert caught.value.argument == "event_type"
    assert registered_event_types()["conformance.note"] is ConformanceNote


class _Untagged(Event, frozen=True):
    value: int = 0


class _Flat(Event, tag="flat", frozen=True):
    pass


class _Mutable(Event, tag="tests.mutable", frozen=False):
    pass


class _Builtin(RunStarted, tag="tests.run_started", frozen=True):
    pass


class _OtherField(msgspec.Struct, tag="tests.other", tag_field="kind", frozen=True):
    pass


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (int, "subclass of kern_events.Event"),
        (Event, "subclass of kern_events.Event"),
        (_OtherField, "subclass of kern_events.Event"),
        (ConformanceNote(text="an instance"), "subclass of kern_events.Event"),
        (_Untagged, "without tag= is tagged with its own name"),
        (_Flat, "dotted namespace"),
        (_Mutable, "frozen=True"),
        (_Builtin, "built-in event RunStarted"),
    ],
)
def test_what_is_not_an_extension_event_type_is_refused_naming_why(cls: Any, reason: str) -> None:
    with pytest.raises(InvalidArgumentError, match=reason) as caught:
        register_event_type(cls)
    assert caught.value.argument == "event_type"
    assert all(registered is not cls for registered in registered_event_types().values())


@pytest.mark.parametrize("tag", ["a.", ".a", "a..b", "a b.c", "a.b/c", "vendor.é", "x." + "y" * 300])
def test_malformed_namespaced_tags_are_refused(tag: str) -> None:
    cls = type(f"Bad{abs(hash(tag))}", (Event,), {}, tag=tag, frozen=True)
    with pytest.raises(InvalidArgumentError, match="dotted namespace"):
        register_event_type(cls)


class Vote(Event, tag="tests.vote", frozen=True):
    """An extension event of a poll plugin."""

    choice: str


register_event_type(Vote)


def tally(counts: dict[str, int], record: Record) -> dict[str, int]:
    """A projection over the plugin's events: pure, and it skips every other event (known or not)."""
    event = record.event
    if isinstance(event, Vote):
        return {**counts, event.choice: counts.get(event.choice, 0) + 1}
    return counts


async def test_a_projection_folds_an_extension_event_type() -> None:
    async with InMemoryEventStore() as store:
        await store.append("poll", [RunStarted(run_id="r"), Vote(choice="yes"), Vote(choice="no"), Vote(choice="yes")])
        counts: dict[str, int] = {}
        async for record in store.read("poll"):
            counts = tally(counts, record)
    assert counts == {"yes": 2, "no": 1}
