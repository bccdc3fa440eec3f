"""Bytes to events and back: the only place that knows how events are encoded.

The default :class:`MsgpackCodec` encodes events with msgspec MessagePack, built once per codec.
Decoding never guesses: a type tag this release does not know becomes an
:class:`~kern_events.records.UnknownEvent` (so audit tools can still read a log written by a newer
release), and bytes of a known type that do not decode raise
:class:`~kern_events.errors.CorruptRecordError` naming the session and version.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

import msgspec

from kern_events.errors import CorruptRecordError, InvalidEventError, UnknownEventTypeError
from kern_events.events import EVENT_TYPES, Event
from kern_events.records import PendingEvent, Record, StoredEvent, UnknownEvent

__all__ = ["Codec", "MsgpackCodec"]


class Codec(Protocol):
    """Turns events into bytes and stored bytes back into records."""

    def encode(self, event: Event, event_id: UUID) -> PendingEvent:
        """Encode one event; raise :class:`UnknownEventTypeError` for anything that is not an event."""
        ...

    def decode(self, stored: StoredEvent) -> Record:
        """Decode one stored event into a record (unknown types become :class:`UnknownEvent`)."""
        ...


class MsgpackCodec:
    """msgspec MessagePack: the smallest and fastest of msgspec's formats for these events."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders = {tag: msgspec.msgpack.Decoder(cls) for tag, cls in EVENT_TYPES.items()}

    def encode(self, event: Event, event_id: UUID) -> PendingEvent:
        """Encode one event (its type tag is part of the bytes and also kept beside them).

        The bytes are decoded once more before they are handed out: msgspec does not check field
        types when a Struct is built, and an event that would not decode must never be stored.
        """
        event_type = _tag_of(event)
        try:
            data = self._encoder.encode(event)
            self._decoders[event_type].decode(data)
        except (TypeError, msgspec.EncodeError, msgspec.ValidationError) as exc:
            raise InvalidEventError("event", event_type, str(exc)) from exc
        return PendingEvent(event_id=event_id, type=event_type, schema_version=event.schema_version, data=data)

    def decode(self, stored: StoredEvent) -> Record:
        """Decode one stored event; an unknown type is returned as raw bytes, never dropped."""
        decoder = self._decoders.get(stored.type)
        event: Event | UnknownEvent
        if decoder is None:
            event = UnknownEvent(type=stored.type, schema_version=stored.schema_version, data=stored.data)
        else:
            try:
                event = decoder.decode(stored.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise CorruptRecordError(
                    stored.session_id, stored.version, stored.type, str(exc), position=stored.position
                ) from exc
        return Record(
            session_id=stored.session_id,
            version=stored.version,
            position=stored.position,
            event_id=stored.event_id,
            recorded_at=stored.recorded_at,
            event=event,
        )


def _tag_of(event: object) -> str:
    """The registered tag of an event, or a typed error for anything else (subclasses included)."""
    cls = type(event)
    tag = getattr(getattr(cls, "__struct_config__", None), "tag", None)
    if not isinstance(tag, str) or EVENT_TYPES.get(tag) is not cls:
        raise UnknownEventTypeError("events", event)
    return tag
