"""Argument checks shared by every entry point, so bad input fails the same way on every backend.

They also refuse what some driver could not bind (a lone surrogate in a string, an integer beyond
64 bits): such a value must fail here, as an :class:`InvalidArgumentError` before anything runs,
never as a driver error inside a batch it shares with other callers' appends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping
from typing import TypeVar

import msgspec

from kern_events._registry import event_type, registered_event_types
from kern_events.errors import InvalidArgumentError, InvalidIdentifierError

__all__ = [
    "MAX_INT32",
    "MAX_INT64",
    "MAX_SNAPSHOT_NAME_LENGTH",
    "check_choice",
    "check_event_types",
    "check_flag",
    "check_identifier",
    "check_items",
    "check_name",
    "check_non_negative",
    "check_optional_identifier",
    "check_seconds",
    "check_sql_identifier",
]

MAX_INT64 = 2**63 - 1
"""The largest version, position, limit or offset: both SQL backends store them as signed 64 bits."""

MAX_INT32 = 2**31 - 1
"""The largest snapshot schema version (PostgreSQL stores it as ``integer``)."""

T = TypeVar("T")

MAX_NAME_LENGTH = 1024

MAX_ID_LENGTH = 255

MAX_SNAPSHOT_NAME_LENGTH = 2 * MAX_ID_LENGTH
"""Snapshot names hold an id after a prefix (a run's checkpoint is ``"run:" + run_id``)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


def check_identifier(argument: str, value: object, *, max_length: int = MAX_ID_LENGTH) -> str:
    """A session, user, agent, team or workflow id: a non-empty string without control characters."""
    if not isinstance(value, str):
        raise InvalidIdentifierError(argument, value, "it must be a string")
    if not value or value.strip() == "":
        raise InvalidIdentifierError(argument, value, "it must not be empty or blank")
    if len(value) > max_length:
        raise InvalidIdentifierError(argument, value, f"it is longer than {max_length} characters")
    if _CONTROL.search(value):
        raise InvalidIdentifierError(argument, value, "it contains a control character")
    if not _is_utf8(value):
        raise InvalidIdentifierError(argument, value, "it is not valid UTF-8 (it holds a lone surrogate)")
    return value


def _is_utf8(value: str) -> bool:
    """Whether ``value`` encodes to UTF-8 (no lone surrogates), which every driver needs to bind it."""
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_optional_identifier(argument: str, value: object) -> str | None:
    """Like :func:`check_identifier`, but ``None`` passes."""
    return None if value is None else check_identifier(argument, value)


def check_name(argument: str, value: object) -> str:
    """A display name: a non-blank string without NUL characters, 1024 characters at most."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(argument, f"a name must be a non-blank string, got {value!r}")
    if "\x00" in value:
        raise InvalidArgumentError(argument, "a name must not contain NUL characters")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(argument, f"a name is at most {MAX_NAME_LENGTH} characters")
    if not _is_utf8(value):
        raise InvalidArgumentError(argument, "a name must be valid UTF-8 (it holds a lone surrogate)")
    return value


def check_sql_identifier(argument: str, value: object) -> str:
    """A table or schema name: letters, digits and underscores, not starting with a digit, 48 at most.

    48 leaves room for the suffixes of index names within PostgreSQL's 63-byte identifiers. Names
    are also quoted where they are used; this check makes a bad name fail before any SQL runs.
    """
    if not isinstance(value, str) or not _SQL_IDENTIFIER.fullmatch(value):
        raise InvalidIdentifierError(
            argument, value, "use letters, digits and underscores (not first), at most 48 characters"
        )
    return value


def check_non_negative(argument: str, value: object, *, allow_none: bool = False, maximum: int = MAX_INT64) -> None:
    """An integer from 0 to ``maximum`` (64-bit signed by default; ``None`` too, if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidArgumentError(argument, f"expected an integer from 0 to {maximum}, got {value!r}")


def check_flag(argument: str, value: object) -> bool:
    """A ``bool`` (not merely something truthy: ``backwards="no"`` is a mistake, not a yes)."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(argument, f"expected True or False, got {value!r}")
    return value


def check_seconds(argument: str, value: object, *, finite: bool = False) -> float:
    """A time or duration in seconds (unix time for a timestamp) as a float: an int or float, never
    NaN (and, if ``finite``, not infinite either)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(argument, f"expected a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if math.isnan(seconds) or (finite and math.isinf(seconds)):
        raise InvalidArgumentError(
            argument, f"expected a {'finite ' if finite else ''}number of seconds, got {value!r}"
        )
    return seconds


def check_choice(argument: str, value: object, choices: Collection[str]) -> str:
    """One of ``choices`` (a string; anything else, hashable or not, is refused)."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(argument, f"expected one of {sorted(choices)}, got {value!r}")
    return value


def check_items(argument: str, value: Iterable[T]) -> list[T]:
    """A sequence of items as a list: refuses ``None``, a string, a mapping or a single item."""
    if type(value) is list or type(value) is tuple:  # the common case, without the ABC checks (~2 us)
        return list(value)
    if isinstance(value, str | bytes | bytearray | Mapping | msgspec.Struct) or not isinstance(value, Iterable):
        raise InvalidArgumentError(argument, f"expected a sequence, got {type(value).__qualname__}")
    return list(value)


def check_event_types(argument: str, value: Collection[str] | None) -> tuple[str, ...] | None:
    """Event type names (built-in tags, or registered extension tags), deduplicated and sorted;
    ``None`` passes through.

    A name nobody registered is refused rather than matching nothing, so a typo fails loudly.
    """
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Collection):
        raise InvalidArgumentError(argument, f"expected a collection of event type names, got {value!r}")
    unknown = sorted(repr(name) for name in value if not isinstance(name, str) or event_type(name) is None)
    if unknown:
        known = ", ".join(sorted(registered_event_types()))
        raise InvalidArgumentError(argument, f"unknown event type names {', '.join(unknown)} (known: {known})")
    if not value:
        raise InvalidArgumentError(argument, "expected at least one event type name")
    return tuple(sorted(set(value)))
