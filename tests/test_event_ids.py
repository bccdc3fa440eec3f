"""event_id_for: ids derived from content are stable forever and frame their parts."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from kern_events import InvalidArgumentError, event_id_for


def test_derived_ids_never_change_between_releases() -> None:
    # Stored ids were derived with these values: a change here would make every retry a new write.
    assert event_id_for("a", "bc") == UUID("b4e70af1-11e6-5214-8910-aed488cd0b9d")
    assert event_id_for("thread", b"\x00", -5) == UUID("c748d8bb-6ecb-57fc-8ddd-9bbf842d3271")


def test_parts_are_framed_by_kind_and_length() -> None:
    assert event_id_for("ab", "c") != event_id_for("a", "bc")
    assert len({event_id_for("1"), event_id_for(1), event_id_for(b"1")}) == 3
    assert event_id_for("a", "") != event_id_for("a")
    assert event_id_for("task", 0).version == 5


@pytest.mark.parametrize(
    ("parts", "argument"),
    [((), "parts"), ((True,), "parts[0]"), (("a", 1.5), "parts[1]"), (("\ud800",), "parts[0]"), ((None,), "parts[0]")],
)
def test_what_is_not_a_part_is_refused_naming_it(parts: tuple[Any, ...], argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        event_id_for(*parts)
    assert caught.value.argument == argument
