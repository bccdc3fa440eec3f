"""kern-events: an async, event-sourced persistence engine for AI-agent sessions.

Layers, in the one direction data flows: events (``events``) are encoded (``codec``) and appended
to a store (``store``, ``stores/``) as records (``records``); the ``projections`` package folds
records into views; the storage objects (``db``) put a store and the views together for runtimes.

The foundation is imported eagerly. Names that pull in the projections or a database driver are
loaded on first access (module ``__getattr__``), so ``import projections`` never meets a
half-initialized ``kern_events`` and ``import kern_events`` does not pay for drivers it won't use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kern_events._ids import event_id_for
from kern_events._index import SessionInfo
from kern_events._loops import run_blocking
from kern_events._registry import Upcaster, register_event_type, register_upcaster, registered_event_types
from kern_events.codec import Codec, MsgpackCodec
from kern_events.errors import (
    AppendTooLargeError,
    BlockingCallError,
    ConcurrencyError,
    CorruptRecordError,
    DatabaseOpenError,
    DecryptionError,
    ErasedError,
    ExportFileError,
    IdempotencyError,
    InvalidArgumentError,
    InvalidEventError,
    InvalidIdentifierError,
    KernEventsError,
    KeyProviderError,
    NotFoundError,
    PayloadTooLargeError,
    RequirementNotFoundError,
    RunNotFoundError,
    RunStateError,
    SchemaMissingError,
    SchemaVersionError,
    SessionNotFoundError,
    ShardLayoutError,
    StorageError,
    StorageUnavailableError,
    StoreClosedError,
    TruncatedError,
    UnknownEventTypeError,
    UnsupportedError,
)
from kern_events.events import (
    AnyEvent,
    Event,
    ExternalExecution,
    InputField,
    MediaAdded,
    MediaReference,
    MessageAdded,
    MetadataUpdated,
    Requirement,
    RequirementResolved,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunMetrics,
    RunPaused,
    RunResumed,
    RunStarted,
    SessionRenamed,
    SessionStarted,
    SessionStateChanged,
    SessionType,
    SummaryUpdated,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
    ToolConfirmation,
    UserInput,
)
from kern_events.records import (
    ANY,
    FEED_SHARD_SHIFT,
    NO_STREAM,
    TRUNCATION_SNAPSHOT,
    AppendResult,
    ErasureReport,
    ExpectedVersion,
    FeedCursor,
    FeedLag,
    FeedPosition,
    PendingEvent,
    Record,
    SessionAppend,
    Snapshot,
    StoredEvent,
    UnknownEvent,
    next_position,
)
from kern_events.sessions import Run, Session, StoragePolicy, Summarizer, retry_on_conflict
from kern_events.store import EventStore
from kern_events.stores._sql import TableNames

if TYPE_CHECKING:
    from kern_events.db import BaseDb, DynamoDb, InMemoryDb, NatsDb, PostgresDb, SqliteDb
    from kern_events.encryption import Encryption, KeyProvider, KeyringFile
    from kern_events.retention import Compaction, RetentionPolicy, RetentionReport
    from kern_events.runtime import Agent, MemoryModel, Team, Workflow
    from kern_events.stores.dynamodb import DynamoEventStore
    from kern_events.stores.memory import InMemoryEventStore
    from kern_events.stores.nats import NatsEventStore
    from kern_events.stores.postgres import PostgresEventStore
    from kern_events.stores.sqlite import SqliteEventStore
    from kern_events.telemetry import instrument, uninstrument
    from kern_events.transfer import ImportReport, export_events, import_events

__version__ = "0.2.0"

_LAZY = {
    "Agent": "kern_events.runtime",
    "MemoryModel": "kern_events.runtime",
    "Team": "kern_events.runtime",
    "Workflow": "kern_events.runtime",
    "BaseDb": "kern_events.db",
    "InMemoryDb": "kern_events.db",
    "SqliteDb": "kern_events.db",
    "PostgresDb": "kern_events.db",
    "PostgresEventStore": "kern_events.stores.postgres",
    "InMemoryEventStore": "kern_events.stores.memory",
    "SqliteEventStore": "kern_events.stores.sqlite",
    "Compaction": "kern_events.retention",
    "RetentionPolicy": "kern_events.retention",
    "ImportReport": "kern_events.transfer",
    "export_events": "kern_events.transfer",
    "import_events": "kern_events.transfer",
    "RetentionReport": "kern_events.retention",
    "Encryption": "kern_events.encryption",
    "KeyProvider": "kern_events.encryption",
    "KeyringFile": "kern_events.encryption",
    "NatsDb": "kern_events.db",
    "NatsEventStore": "kern_events.stores.nats",
    "DynamoDb": "kern_events.db",
    "DynamoEventStore": "kern_events.stores.dynamodb",
    "instrument": "kern_events.telemetry",
    "uninstrument": "kern_events.telemetry",
}

__all__ = [
    "ANY",
    "FEED_SHARD_SHIFT",
    "NO_STREAM",
    "TRUNCATION_SNAPSHOT",
    "Agent",
    "AnyEvent",
    "AppendResult",
    "AppendTooLargeError",
    "BaseDb",
    "BlockingCallError",
    "Codec",
    "Compaction",
    "ConcurrencyError",
    "CorruptRecordError",
    "DatabaseOpenError",
    "DecryptionError",
    "DynamoDb",
    "DynamoEventStore",
    "Encryption",
    "ErasedError",
    "ErasureReport",
    "Event",
    "EventStore",
    "ExpectedVersion",
    "ExportFileError",
    "ExternalExecution",
    "FeedCursor",
    "FeedLag",
    "FeedPosition",
    "IdempotencyError",
    "ImportReport",
    "InMemoryDb",
    "InMemoryEventStore",
    "InputField",
    "InvalidArgumentError",
    "InvalidEventError",
    "InvalidIdentifierError",
    "KernEventsError",
    "KeyProvider",
    "KeyProviderError",
    "KeyringFile",
    "MediaAdded",
    "MediaReference",
    "MemoryModel",
    "MessageAdded",
    "MetadataUpdated",
    "MsgpackCodec",
    "NatsDb",
    "NatsEventStore",
    "NotFoundError",
    "PayloadTooLargeError",
    "PendingEvent",
    "PostgresDb",
    "PostgresEventStore",
    "Record",
    "Requirement",
    "RequirementNotFoundError",
    "RequirementResolved",
    "RetentionPolicy",
    "RetentionReport",
    "Run",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunMetrics",
    "RunNotFoundError",
    "RunPaused",
    "RunResumed",
    "RunStarted",
    "RunStateError",
    "SchemaMissingError",
    "SchemaVersionError",
    "Session",
    "SessionAppend",
    "SessionInfo",
    "SessionNotFoundError",
    "SessionRenamed",
    "SessionStarted",
    "SessionStateChanged",
    "SessionType",
    "ShardLayoutError",
    "Snapshot",
    "SqliteDb",
    "SqliteEventStore",
    "StorageError",
    "StoragePolicy",
    "StorageUnavailableError",
    "StoreClosedError",
    "StoredEvent",
    "Summarizer",
    "SummaryUpdated",
    "TableNames",
    "Team",
    "ToolCallCompleted",
    "ToolCallRequest",
    "ToolCallStarted",
    "ToolConfirmation",
    "TruncatedError",
    "UnknownEvent",
    "UnknownEventTypeError",
    "UnsupportedError",
    "Upcaster",
    "UserInput",
    "Workflow",
    "event_id_for",
    "export_events",
    "import_events",
    "instrument",
    "next_position",
    "register_event_type",
    "register_upcaster",
    "registered_event_types",
    "retry_on_conflict",
    "run_blocking",
    "uninstrument",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kern_events' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
