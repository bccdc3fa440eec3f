"""Argument checks shared by every entry point, so bad input fails the same way on every backend."""

from __future__ import annotations

import re
from collections.abc import Collection

from kern_events.errors import InvalidArgumentError, InvalidIdentifierError
from kern_events.events import EVENT_TYPES

__all__ = [
    "check_event_types",
    "check_identifier",
    "check_name",
    "check_non_negative",
    "check_optional_identifier",
    "check_sql_identifier",
]

MAX_NAME_LENGTH = 1024

MAX_ID_LENGTH = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")


def check_identifier(argument: str, value: object) -> str:
    """A session, user, agent, team or workflow id: a non-empty string without control characters."""
    if not isinstance(value, str):
        raise InvalidIdentifierError(argument, value, "it must be a string")
    if not value or value.strip() == "":
        raise InvalidIdentifierError(argument, value, "it must not be empty or blank")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidIdentifierError(argument, value, f"it is longer than {MAX_ID_LENGTH} characters")
    if _CONTROL.search(value):
        raise InvalidIdentifierError(argument, value, "it contains a control character")
    return value


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


def check_non_negative(argument: str, value: object, *, allow_none: bool = False) -> None:
    """An integer >= 0 (``None`` too, if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(argument, f"expected an integer >= 0, got {value!r}")


def check_event_types(argument: str, value: Collection[str] | None) -> tuple[str, ...] | None:
    """Event type names (keys of ``EVENT_TYPES``), deduplicated and sorted; ``None`` passes through.

    A name this release does not know is refused rather than matching nothing, so a typo fails loudly.
    """
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Collection):
        raise InvalidArgumentError(argument, f"expected a collection of event type names, got {value!r}")
    unknown = sorted(repr(name) for name in value if not isinstance(name, str) or name not in EVENT_TYPES)
    if unknown:
        known = ", ".join(sorted(EVENT_TYPES))
        raise InvalidArgumentError(argument, f"unknown event type names {', '.join(unknown)} (known: {known})")
    if not value:
        raise InvalidArgumentError(argument, "expected at least one event type name")
    return tuple(sorted(set(value)))
