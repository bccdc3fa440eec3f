"""Registering upcasters: bad registrations are typed errors, and an upcaster that fails makes its
row a CorruptRecordError naming the session and version, never a crash of the reader."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import pytest

from kern_events import (
    CorruptRecordError,
    Event,
    InvalidArgumentError,
    MessageAdded,
    MsgpackCodec,
    StoredEvent,
    event_id_for,
    register_event_type,
    register_upcaster,
)


@register_event_type
class Moody(Event, tag="tests.moody", frozen=True):
    schema_version: ClassVar[int] = 2
    mood: str


@register_upcaster(Moody, 1)
def _fails(payload: dict[str, Any]) -> dict[str, Any]:
    raise KeyError("feeling")


class Unregistered(Event, tag="tests.unregistered", frozen=True):
    schema_version: ClassVar[int] = 2


def _stored(version: int) -> StoredEvent:
    return StoredEvent(
        session_id="s",
        version=7,
        position=9,
        event_id=event_id_for("s", "x"),
        type="tests.moody",
        schema_version=version,
        data=msgspec.msgpack.encode({"type": "tests.moody", "feeling": "ok"}),
        recorded_at=0.0,
    )


def test_an_upcaster_that_fails_is_a_corrupt_record_naming_session_and_version() -> None:
    with pytest.raises(CorruptRecordError) as raised:
        MsgpackCodec().decode(_stored(1))
    assert (raised.value.session_id, raised.value.version) == ("s", 7)
    assert "upcaster" in str(raised.value) and "KeyError" in str(raised.value)


@pytest.mark.parametrize(
    ("event", "from_version", "argument"),
    [
        (Moody, 2, "from_version"),
        (Moody, 0, "from_version"),
        (Moody, True, "from_version"),
        (MessageAdded, 1, "from_version"),
        (Unregistered, 1, "event"),
    ],
)
def test_bad_registrations_are_refused_naming_the_argument(event: Any, from_version: Any, argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        register_upcaster(event, from_version)
    assert raised.value.argument == argument


def test_a_second_upcaster_for_the_same_step_is_refused() -> None:
    register_upcaster(Moody, 1)(_fails)  # the same function again: nothing happens
    with pytest.raises(InvalidArgumentError, match="already has an upcaster"):
        register_upcaster(Moody, 1)(lambda payload: payload)
