"""Bytes to events and back: the only place that knows how events are encoded.

The default :class:`MsgpackCodec` encodes events with msgspec MessagePack, built once per codec.
Decoding never guesses: a type tag this release does not know becomes an
:class:`~kern_events.records.UnknownEvent` (so audit tools can still read a log written by a newer
release), and bytes of a known type that do not decode raise
:class:`~kern_events.errors.CorruptRecordError` naming the session and version.

Encoding is strict: msgspec does not check field types when a Struct is built, so every encoded
event is decoded back and compared with the event given. An event that would read back different
(a dict where ``RunMetrics`` is declared, a list where a tuple is, a set or tuple inside an ``Any``
field) is refused with :class:`~kern_events.errors.InvalidEventError` naming the field, as is one
the encoder cannot take at all (too deep, self-referencing, an integer beyond 64 bits, a lone
surrogate). NaN reads back as NaN and is accepted; so is a value that reads back *equal* but of a
plainer type (an ``IntEnum`` member as its int, ``bytearray`` as ``bytes``, an int as a declared float).

The type tag is stored once, in the row's ``type`` column, not again inside the payload: the encoded
map's leading ``"type"`` pair is cut off (:func:`untagged_payload`). Payloads written before kept it,
and still decode (the decoder of one type takes its own tag when present); upcasters are handed the
payload with its ``"type"`` key, as they always were, and :func:`tagged_payload` rebuilds the older
bytes of a payload so that a retry of an append first made by an older release is still recognized.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from uuid import UUID

import msgspec

from kern_events._registry import event_type as registered_type
from kern_events._registry import tag_of, upcaster
from kern_events.errors import CorruptRecordError, InvalidEventError, UnknownEventTypeError
from kern_events.events import EVENT_TYPES, Event
from kern_events.records import PendingEvent, Record, StoredEvent, UnknownEvent

__all__ = ["Codec", "MsgpackCodec", "tagged_payload", "untagged_payload"]


class Codec(Protocol):
    """Turns events into bytes and stored bytes back into records."""

    def encode(self, event: Event, event_id: UUID) -> PendingEvent:
        """Encode one event; raise :class:`UnknownEventTypeError` for anything that is not an event, and
        :class:`InvalidEventError` for one that could not be stored and read back exactly as given."""
        ...

    def decode(self, stored: StoredEvent) -> Record:
        """Decode one stored event into a record (unknown types become :class:`UnknownEvent`)."""
        ...


class MsgpackCodec:
    """msgspec MessagePack: the smallest and fastest of msgspec's formats for these events.

    Stores read pages through :meth:`decode_page` and :meth:`decode_rows`, one pass each; a subclass
    that overrides only :meth:`decode` is read through its ``decode`` instead, row by row."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[str, tuple[msgspec.msgpack.Decoder[Any], int]] = {
            tag: (msgspec.msgpack.Decoder(cls), cls.schema_version) for tag, cls in EVENT_TYPES.items()
        }

    def _entry(self, tag: str) -> tuple[msgspec.msgpack.Decoder[Any], int] | None:
        """The decoder for ``tag`` and the type's current schema version, built on first use for an
        extension type registered at any time (before or after this codec was made), or ``None`` for
        a tag nobody registered."""
        entry = self._decoders.get(tag)
        if entry is None:
            cls = registered_type(tag)
            if cls is None:
                return None
            entry = self._decoders[tag] = (msgspec.msgpack.Decoder(cls), cls.schema_version)
        return entry

    def _decoder(self, tag: str) -> msgspec.msgpack.Decoder[Any] | None:
        entry = self._entry(tag)
        return None if entry is None else entry[0]

    def encode(self, event: Event, event_id: UUID) -> PendingEvent:
        """Encode one event (its type tag is kept beside the bytes, not in them).

        The bytes are decoded once more and compared with ``event`` before they are handed out: an
        event that would not read back exactly as given must never be stored.
        """
        event_type = _tag_of(event)
        decoder = self._decoder(event_type)
        assert decoder is not None, "a registered tag always has a decoder"
        try:
            data = untagged_payload(self._encoder.encode(event), event_type)
            decoded = decoder.decode(data)
            same = decoded == event
        except _ENCODE_ERRORS as exc:
            raise InvalidEventError("event", event_type, _describe(exc), field=self._failing_field(event, exc)) from exc
        if not same:
            try:
                difference = _difference(event, decoded, "")
            except RecursionError as exc:  # deeper than Python frames allow, though msgspec coped (3.12+)
                raise InvalidEventError("event", event_type, _describe(exc), field=_deep_field(event, decoded)) from exc
            if difference is not None:
                raise InvalidEventError("event", event_type, difference[1], field=difference[0] or None)
        return PendingEvent(event_id=event_id, type=event_type, schema_version=event.schema_version, data=data)

    def _failing_field(self, event: msgspec.Struct, exc: BaseException, prefix: str = "") -> str | None:
        """The path of the field that made encoding fail: from msgspec's message where it gives one,
        else by encoding field after field (into nested Structs, a few levels deep) until one fails."""
        if isinstance(exc, msgspec.ValidationError):
            at = _AT.search(str(exc))
            return (at.group(1).lstrip(".") or None) if at else None
        if prefix.count(".") >= _FIELD_SEARCH_DEPTH:  # a Struct that contains itself through a list
            return None
        for name in event.__struct_fields__:
            value = getattr(event, name)
            try:
                self._encoder.encode(value)
            except _ENCODE_ERRORS:
                path = f"{prefix}{name}"
                if isinstance(value, msgspec.Struct):
                    return self._failing_field(value, exc, f"{path}.") or path
                if isinstance(value, tuple | list):
                    for index, item in enumerate(value):
                        if isinstance(item, msgspec.Struct):
                            try:
                                self._encoder.encode(item)
                            except _ENCODE_ERRORS:
                                return self._failing_field(item, exc, f"{path}[{index}].") or f"{path}[{index}]"
                return path
        return None

    def decode(self, stored: StoredEvent) -> Record:
        """Decode one stored event; an unknown type is returned as raw bytes, never dropped."""
        entry = self._entry(stored.type)
        event: Event | UnknownEvent
        if entry is None:
            event = UnknownEvent(type=stored.type, schema_version=stored.schema_version, data=stored.data)
        else:
            decoder, current = entry
            try:
                if stored.schema_version >= current:
                    event = decoder.decode(stored.data)
                else:
                    event = decoder.decode(_upcast(stored, current))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise _corrupt(stored, exc) from exc
        return Record(
            session_id=stored.session_id,
            version=stored.version,
            position=stored.position,
            event_id=stored.event_id,
            recorded_at=stored.recorded_at,
            event=event,
        )

    def decode_page(
        self, page: Sequence[StoredEvent], payloads: Sequence[bytes] | None = None
    ) -> tuple[list[Record], CorruptRecordError | None]:
        """Decode a page of stored events in one pass, as :meth:`decode` does each: the records of the
        rows before the first that does not decode, and that row's error (``None`` if all decode).

        The store reads through this when the codec has it: one loop with the decoders at hand, no
        call per row, the error returned instead of raised so that the rows before it still reach
        the reader. A row of an unknown type or an older schema version takes :meth:`decode`.
        ``payloads`` (opened by the store's encryption) stand in for the rows' own bytes, row by row,
        and stop at a row that did not open: no stored event is rebuilt around a plaintext on the way,
        so a sealed row costs what a clear one does, plus opening it.
        """
        decoders = self._decoders
        records: list[Record] = []
        append = records.append
        for stored, data in zip(page, [row.data for row in page] if payloads is None else payloads, strict=False):
            entry = decoders.get(stored.type)
            try:
                if entry is None or stored.schema_version < entry[1]:
                    append(self.decode(stored if data is stored.data else msgspec.structs.replace(stored, data=data)))
                    continue
                event = entry[0].decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return records, _corrupt(stored, exc)
            except CorruptRecordError as exc:
                return records, exc
            append(
                Record(
                    session_id=stored.session_id,
                    version=stored.version,
                    position=stored.position,
                    event_id=stored.event_id,
                    recorded_at=stored.recorded_at,
                    event=event,
                )
            )
        return records, None

    def decode_rows(
        self,
        rows: Sequence[Sequence[Any]],
        stored: Callable[[Any], StoredEvent],
        payloads: Sequence[bytes] | None = None,
    ) -> tuple[list[Record], CorruptRecordError | None]:
        """:meth:`decode_page` for a database's rows in :class:`StoredEvent`'s field order (the event
        id already a UUID), without a stored event built for each first (~0.15 us a row): ``stored``
        builds one only for a row that takes :meth:`decode` (an unknown type, an older schema
        version) or does not decode, so that it reads and fails exactly as through :meth:`decode_page`.
        """
        decoders = self._decoders
        records: list[Record] = []
        append = records.append
        for row, data in zip(rows, [row[6] for row in rows] if payloads is None else payloads, strict=False):
            entry = decoders.get(row[4])
            try:
                if entry is None or row[5] < entry[1]:
                    whole = stored(row)
                    append(self.decode(whole if data is whole.data else msgspec.structs.replace(whole, data=data)))
                    continue
                event = entry[0].decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return records, _corrupt(stored(row), exc)
            except CorruptRecordError as exc:
                return records, exc
            append(
                Record(
                    session_id=row[0],
                    version=row[1],
                    position=row[2],
                    event_id=row[3],
                    recorded_at=row[7],
                    event=event,
                )
            )
        return records, None


def _corrupt(stored: StoredEvent, exc: Exception) -> CorruptRecordError:
    """The error for a stored row of a known type whose bytes do not decode."""
    error = CorruptRecordError(stored.session_id, stored.version, stored.type, str(exc), position=stored.position)
    error.__cause__ = exc
    return error


def _upcast(stored: StoredEvent, current: int) -> bytes:
    """The payload of a row stored at an older schema version, lifted through the registered
    upcasters to ``current`` (a step without one is compatible: the payload goes on unchanged)."""
    version = stored.schema_version
    steps = []
    while version < current:
        step = upcaster(stored.type, version)
        if step is not None:
            steps.append((version, step))
        version += 1
    if not steps:
        return stored.data
    payload = msgspec.msgpack.decode(stored.data)
    if isinstance(payload, dict) and "type" not in payload:
        payload = {"type": stored.type, **payload}  # upcasters see the tag, as in payloads that carry it
    for version, step in steps:
        if not isinstance(payload, dict):
            raise msgspec.ValidationError(f"the payload is not a map before the upcaster from version {version}")
        try:
            payload = step(payload)
        except Exception as exc:  # the upcaster is user code: whatever it raises, the row is unreadable
            raise msgspec.ValidationError(
                f"the upcaster {step!r} from schema version {version} failed: {type(exc).__name__}: {exc}"
            ) from exc
    return msgspec.msgpack.encode(payload)


_TYPE_KEY = b"\xa4type"
"""The MessagePack key of the tag field, as msgspec writes it first in every tagged event."""


def _map_header(data: bytes) -> tuple[int, int] | None:
    """The entry count of the MessagePack map ``data`` starts with and its header's length, or ``None``."""
    head = data[:1]
    if not head:
        return None
    first = head[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, 1
    if first == 0xDE and len(data) >= 3:
        return int.from_bytes(data[1:3]), 3
    if first == 0xDF and len(data) >= 5:
        return int.from_bytes(data[1:5]), 5
    return None


def _map_head(count: int) -> bytes:
    if count < 16:
        return bytes((0x80 | count,))
    if count < 0x10000:
        return b"\xde" + count.to_bytes(2)
    return b"\xdf" + count.to_bytes(4)


_SMALL_MAPS = {bytes((0x80 | count,)): bytes((0x80 | count - 1,)) for count in range(1, 16)}
"""The header of a map of 1 to 15 entries, and that of one entry fewer."""

_TAG_PAIRS: dict[str, bytes] = {}
"""The encoded ``"type": tag`` entry of each tag seen, built once."""


def untagged_payload(data: bytes, tag: str) -> bytes:
    """``data`` (an encoded event map) without its leading ``"type": tag`` entry; ``data`` itself when
    it does not start with that entry."""
    pair = _TAG_PAIRS.get(tag)
    if pair is None:
        pair = _TAG_PAIRS.setdefault(tag, _TYPE_KEY + msgspec.msgpack.encode(tag))
    if data[:1] in _SMALL_MAPS and data.startswith(pair, 1):  # up to 15 entries, as nearly every event
        return _SMALL_MAPS[data[:1]] + data[1 + len(pair) :]
    header = _map_header(data)
    if header is None or header[0] == 0:
        return data
    count, length = header
    if not data.startswith(pair, length):
        return data
    return _map_head(count - 1) + data[length + len(pair) :]


def tagged_payload(data: bytes, tag: str) -> bytes:
    """The payload as releases that kept the tag inside it wrote ``data`` (the ``"type": tag`` entry
    first); ``data`` itself when it is not a map or has the entry already."""
    header = _map_header(data)
    if header is None or data.startswith(_TYPE_KEY, header[1]):
        return data
    count, length = header
    return _map_head(count + 1) + _TYPE_KEY + msgspec.msgpack.encode(tag) + data[length:]


def _tag_of(event: object) -> str:
    """The registered tag of an event, or a typed error for anything else (subclasses included)."""
    tag = tag_of(event)
    if tag is None:
        raise UnknownEventTypeError("events", event)
    return tag


_ENCODE_ERRORS = (TypeError, ValueError, ArithmeticError, RecursionError, msgspec.MsgspecError)
"""What msgspec raises for a value it cannot take: an unsupported type, a lone surrogate
(UnicodeEncodeError), an integer beyond 64 bits (OverflowError), nesting beyond the recursion limit
or a self-reference (RecursionError), a field of the wrong type on the way back (ValidationError)."""

_FIELD_SEARCH_DEPTH = 4

_AT = re.compile(r" - at `\$([^`]*)`$")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deeply, or refers to itself"
    if isinstance(exc, UnicodeError):
        return f"a string is not valid UTF-8 ({exc})"
    if isinstance(exc, OverflowError):
        return f"an integer is out of the 64-bit range ({exc})"
    return str(exc)


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else f"{shown[:77]}..."


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _deep_field(given: msgspec.Struct, back: msgspec.Struct) -> str | None:
    """The first top-level field whose value differs, or is too deep to compare."""
    for name in given.__struct_fields__:
        try:
            if getattr(given, name) != getattr(back, name):
                return name
        except RecursionError:
            return name
    return None


def _difference(given: Any, back: Any, path: str) -> tuple[str, str] | None:
    """Where ``back`` (what the log would return) differs from ``given``, as (path, what), or ``None``
    when they differ only in ways the module docstring accepts (NaNs, equal values of plainer types)."""
    if type(given) is not type(back):
        if given == back:
            return None
        return path, (
            f"a {type(given).__qualname__} would be stored and read back as a {type(back).__qualname__} "
            f"({_show(given)} -> {_show(back)}); give the declared type"
        )
    if isinstance(given, msgspec.Struct):
        for name in given.__struct_fields__:
            found = _difference(getattr(given, name), getattr(back, name), _join(path, name))
            if found is not None:
                return found
        return None
    if isinstance(given, float):
        same = given == back or (math.isnan(given) and math.isnan(back))
        return None if same else (path, f"{given!r} would read back as {back!r}")
    if isinstance(given, list | tuple):
        if len(given) != len(back):
            return path, f"{len(given)} items would read back as {len(back)}"
        for index, (item, item_back) in enumerate(zip(given, back, strict=True)):
            found = _difference(item, item_back, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    if isinstance(given, dict):
        if len(given) != len(back):
            return path, f"{len(given)} keys would read back as {len(back)} (keys that read back equal collapse)"
        for key, key_back in zip(given, back, strict=True):
            inner = _join(path, key) if isinstance(key, str) else f"{path}[{key!r}]"
            if type(key) is not type(key_back) or key != key_back:
                return inner, f"the key {_show(key)} would read back as {_show(key_back)}"
            found = _difference(given[key], back[key_back], inner)
            if found is not None:
                return found
        return None
    return None if given == back else (path, f"{_show(given)} would read back as {_show(back)}")
