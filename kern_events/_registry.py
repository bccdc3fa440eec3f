"""The registry of event types: the built-in ones, and extension events registered by third parties.

The codec, the ``types=`` filter of reads and the append checks all look an event type up here, at
the moment they need it, so a codec or store built before a registration still encodes and decodes
the types registered after it. Extension tags carry a dotted namespace (``"vendor.name"``); built-in
tags have none, so the two can never collide. A registration is for the life of the process: tags
name stored rows, so one never changes meaning.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from kern_events.errors import InvalidArgumentError
from kern_events.events import EVENT_TYPES, Event

__all__ = [
    "Upcaster",
    "event_type",
    "register_event_type",
    "register_upcaster",
    "registered_event_types",
    "tag_of",
    "upcaster",
]

E = TypeVar("E", bound=type[Event])

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns an event's payload, as a dict (its msgpack map, the ``"type"`` tag included), from one
schema version into the next one."""

U = TypeVar("U", bound=Upcaster)

MAX_TAG_LENGTH = 255
"""Tags are stored in a text column beside every row, and must fit every backend's index on it."""

_TAG = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")

_types: dict[str, type[Event]] = dict(EVENT_TYPES)
_upcasters: dict[tuple[str, int], Upcaster] = {}
_lock = threading.Lock()


def register_event_type(cls: E) -> E:
    """Register ``cls`` as an extension event type, so every codec and store can encode it, read it
    back typed, filter reads by its tag and let folds match it; returns ``cls`` (use it as a decorator).

    ``cls`` must be a frozen msgspec Struct subclass of :class:`~kern_events.Event` whose tag has a
    dotted namespace (``class CheckpointPut(Event, tag="langgraph.checkpoint_put", frozen=True)``).
    Registering the same class again does nothing; anything else raises
    :class:`~kern_events.InvalidArgumentError` on ``"event_type"``: not an Event subclass, a subclass
    of a built-in event, no tag, a tag without a namespace, not frozen, or a tag another class holds.
    """
    if not isinstance(cls, type) or not issubclass(cls, Event) or cls is Event:
        raise InvalidArgumentError("event_type", f"expected a subclass of kern_events.Event, got {cls!r}")
    builtin = next((base for base in cls.__mro__[1:] if base in EVENT_TYPES.values()), None)
    if builtin is not None:
        raise InvalidArgumentError(
            "event_type",
            f"{cls.__qualname__} subclasses the built-in event {builtin.__qualname__}; folds would take it "
            "for one: subclass kern_events.Event",
        )
    config = cls.__struct_config__
    tag = config.tag
    if not isinstance(tag, str) or config.tag_field != "type":
        raise InvalidArgumentError(
            "event_type", f'{cls.__qualname__} has no string tag: declare it as class X(Event, tag="vendor.name")'
        )
    if len(tag) > MAX_TAG_LENGTH or not _TAG.fullmatch(tag):
        untagged = " (a class declared without tag= is tagged with its own name)" if tag == cls.__name__ else ""
        raise InvalidArgumentError(
            "event_type",
            f'the tag {tag!r} of {cls.__qualname__}{untagged} needs a dotted namespace ("vendor.name": letters, '
            f"digits, '_' and '-' in each part, {MAX_TAG_LENGTH} characters at most)",
        )
    if not config.frozen:
        raise InvalidArgumentError(
            "event_type", f"{cls.__qualname__} must be declared frozen=True (events never change)"
        )
    with _lock:
        holder = _types.get(tag)
        if holder is not None and holder is not cls:
            raise InvalidArgumentError(
                "event_type",
                f"the tag {tag!r} is already registered by {holder.__module__}.{holder.__qualname__}",
            )
        _types[tag] = cls
    return cls


def registered_event_types() -> Mapping[str, type[Event]]:
    """Every event type known now, built-in and registered, by tag (a copy: changing it changes nothing)."""
    with _lock:
        return dict(_types)


def event_type(tag: str) -> type[Event] | None:
    """The event class registered for ``tag`` (built-in or extension), or ``None``."""
    return _types.get(tag)


def tag_of(event: object) -> str | None:
    """The tag of a registered event's exact class, or ``None`` (a subclass, an unregistered type)."""
    cls = type(event)
    tag = getattr(getattr(cls, "__struct_config__", None), "tag", None)
    if isinstance(tag, str) and _types.get(tag) is cls:
        return tag
    return None


def register_upcaster(event: type[Event], from_version: int) -> Callable[[U], U]:
    """Register a function that lifts a stored payload of ``event`` from ``from_version`` to
    ``from_version + 1`` (use it as a decorator); returns the function.

    When an event type's shape changes, bump its ``schema_version`` and register one upcaster per
    step: a row stored at version 1 of a type now at version 3 reads through the 1 and 2 upcasters,
    in order, on every read. Nothing stored is rewritten and no table changes. A step without an
    upcaster is taken as compatible (a field added with a default) and the payload decodes as it is.
    ``event`` must be registered (built-in or through :func:`register_event_type`), ``from_version``
    below its ``schema_version``; registering another function for the same step raises
    :class:`~kern_events.InvalidArgumentError` on ``"from_version"``.
    """
    tag = getattr(getattr(event, "__struct_config__", None), "tag", None)
    if not isinstance(tag, str) or _types.get(tag) is not event:
        raise InvalidArgumentError("event", f"{event!r} is not a registered event type")
    current = event.schema_version
    if isinstance(from_version, bool) or not isinstance(from_version, int) or not 1 <= from_version < current:
        raise InvalidArgumentError(
            "from_version",
            f"{event.__qualname__} is at schema version {current}; an upcaster lifts a version from 1 to "
            f"{current - 1}, got {from_version!r}",
        )

    def register(function: U) -> U:
        if not callable(function):
            raise InvalidArgumentError("upcaster", f"expected a function, got {function!r}")
        with _lock:
            holder = _upcasters.get((tag, from_version))
            if holder is not None and holder is not function:
                raise InvalidArgumentError(
                    "from_version", f"{tag!r} already has an upcaster from version {from_version}: {holder!r}"
                )
            _upcasters[(tag, from_version)] = function
        return function

    return register


def upcaster(tag: str, from_version: int) -> Upcaster | None:
    """The upcaster registered for ``tag`` from ``from_version``, or ``None``."""
    return _upcasters.get((tag, from_version))
