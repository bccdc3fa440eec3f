"""Codecs that write what a newer release or a damaged disk would, to test how reads cope."""

from __future__ import annotations

from uuid import UUID

import msgspec

from kern_events.codec import MsgpackCodec
from kern_events.events import Event, MessageAdded
from kern_events.records import PendingEvent, Record, StoredEvent


class FutureCodec(MsgpackCodec):
    """Stores ``SessionRenamed`` events under a type name this release does not know."""

    def encode(self, event: Event, event_id: UUID) -> PendingEvent:
        pending = super().encode(event, event_id)
        if pending.type == "session_renamed":
            return PendingEvent(event_id=event_id, type="from_the_future", schema_version=7, data=pending.data)
        return pending


class CorruptingCodec(MsgpackCodec):
    """Stores ``SummaryUpdated`` events as bytes that do not decode."""

    def encode(self, event: Event, event_id: UUID) -> PendingEvent:
        pending = super().encode(event, event_id)
        if pending.type == "summary_updated":
            return PendingEvent(event_id=event_id, type=pending.type, schema_version=1, data=b"\xc1not msgpack")
        return pending


class UnregisteredCodec(MsgpackCodec):
    """Stores ``conformance.counter`` events under ``conformance.unregistered``, an extension tag no
    class is registered for (as a log written by a process that had a plugin this one lacks)."""

    def encode(self, event: Event, event_id: UUID) -> PendingEvent:
        pending = super().encode(event, event_id)
        if pending.type == "conformance.counter":
            return PendingEvent(event_id=event_id, type="conformance.unregistered", schema_version=1, data=pending.data)
        return pending


class ReadingCodec(MsgpackCodec):
    """Reads its own way: overrides only ``decode``, handing back every message's content in capitals
    (as a codec that unwraps a field it wrapped would), which every read path must go through."""

    def decode(self, stored: StoredEvent) -> Record:
        record = super().decode(stored)
        event = record.event
        if isinstance(event, MessageAdded) and isinstance(event.content, str):
            return msgspec.structs.replace(record, event=msgspec.structs.replace(event, content=event.content.upper()))
        return record
