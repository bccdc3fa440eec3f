"""What the SQL backends share: validated, quoted table names and the schema version they write."""

from __future__ import annotations

import msgspec

from kern_events._validate import check_sql_identifier
from kern_events.errors import InvalidArgumentError

__all__ = ["SCHEMA_VERSION", "TableNames", "quote"]

SCHEMA_VERSION = 1
"""The layout this release writes; a database recording a higher one is refused, a lower one migrated."""


def quote(identifier: str) -> str:
    """Quote an already-validated identifier for SQL (doubling any quote, though validation forbids it)."""
    return '"' + identifier.replace('"', '""') + '"'


_ARGUMENT = {
    "events": "events_table",
    "sessions": "session_table",
    "snapshots": "snapshot_table",
    "schema": "schema_table",
}
"""The keyword users pass each table name as (``SqliteDb(session_table=...)``), for error messages."""


class TableNames(msgspec.Struct, frozen=True, kw_only=True):
    """The tables of one kern-events workload; give each workload its own names to isolate it."""

    events: str = "kern_events"
    sessions: str = "kern_sessions"
    snapshots: str = "kern_snapshots"
    schema: str = "kern_schema"

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            check_sql_identifier(_ARGUMENT[field], getattr(self, field))
        names = [getattr(self, field) for field in self.__struct_fields__]
        if len({name.lower() for name in names}) != len(names):
            raise InvalidArgumentError("table names", f"each table needs its own name, got {names}")
