"""The backend kit: everything a store of your own builds on, public and documented.

A backend is a subclass of :class:`BaseEventStore` that implements its underscore hooks over some
storage. The base class does the rest once for every backend: argument checks, encoding (a backend
stores and returns :class:`StoredEvent` rows and never sees the codec), paging, the lifecycle
(``async with``, :meth:`~BaseEventStore.aclose`), subscriptions and change signals. The rules that
decide between "conflict", "idempotent retry" and "reused id" are functions here
(:func:`check_expected`, :func:`conflict`, :func:`match_retry`; for ``skip_existing``,
:func:`split_stored` and :func:`stored_result`, applied by the base class), and so is the session-index rule
(:func:`advance_index`, or :func:`index_delta` + :func:`apply_delta` for a backend that applies it in
its own query language), so that every backend answers the same way.

The hooks, each called only with checked arguments on an open store:

==========================  ======================================================================
``_open`` / ``_close``      connect and create tables on first use / release it all (optional)
``_append``                 store pending events atomically after checking the expected version,
                            and advance the session index in the same atomic step
``_read_page``              up to ``limit`` rows of one session by version, optionally by type
``_read_all_page``          up to ``limit`` rows of every session in global position order
                            (both a :data:`Page`: a damaged row ends it as a ``CorruptRecordError``;
                            optional: without it the store has no global feed, see below)
``_find_events``            the stored event of each of some event ids, in any session (only
                            ``append(..., skip_existing=True)`` needs it; without it that fails)
``_current_version``        the session's head version (kept after deletion as a tombstone)
``_get_session_info``       the session's index row, ``None`` if absent or deleted
``_list_sessions``          index rows matching a :class:`SessionFilter`
``_delete_session``         erase events (with their chunks), snapshots and the index row, keep the version
``_erase_sessions``         erase a user's sessions for ``erase_user`` (optional: the default calls
                            ``_delete_session`` for each; the kit lists them, fences appends and reports)
``_save_snapshot``          store a checkpoint, keeping the newest :data:`SNAPSHOTS_KEPT`
``_load_snapshot``          the newest matching checkpoint
``_load_context``           the index row, a snapshot, the newest rows and the rows of some types after
                            the snapshot, for ``load_context`` (optional: the default calls the hooks
                            above in turn; override it to read them in one round trip)
``_append_many``            several sessions' :class:`PendingAppend` parts, all or nothing (optional:
                            without it ``append_many`` raises :class:`UnsupportedError`)
``_truncate_before``        delete a session's events below a version and save the snapshots given,
                            atomically, after :func:`check_truncation` (optional, likewise)
``listen`` / ``_announce``  cross-process wake-ups for subscriptions (optional; else they poll)
``_feed_start``             a sharded store's :class:`FeedCursor` at an int position (only with
``_read_feed_page``         :attr:`BaseEventStore.feed_layout` set: then these replace ``_read_all_page``)
``_read_chunks``            the chunks of out-of-line payloads for a page's events, in one round trip
                            (only for a backend that sets ``inline_limit``)
==========================  ======================================================================

**Tamper evidence.** Each stored event is chained by a hash to the previous event of its session
(``StoredEvent.chain``, kept on the last event of each append); the rule is :class:`Chain`
(``self.chain`` on the store, keyed by the store's ``chain_key``). In its atomic append a backend calls
``self.chain.hashes(session_id, head_hash, head, pending, recorded_at)`` with the head hash it keeps
beside the head version (``None`` for a session with none, which then chains from its genesis), stores
with each event what ``self.chain.kept(hashes)`` keeps of it (the last event's hash, ``None`` for the
others, whose hashes ``verify`` recomputes; storing every hash verifies as well), the last one as the
new head hash, and forgets the head hash when the session is deleted. A backend that computes hashes
outside its atomic step (before a conditional write, as PostgreSQL's one-statement append does) must
make the write conditional on the head hash too, as on the version. ``verify`` (on the store and the db)
recomputes the chains; the kit keeps the hash of the last removed event in the truncation marker.

``_append_many`` and ``_truncate_before`` have no default, because a sequence of plain appends or
deletes is not one atomic step. What storage can offer them: any SQL database (one transaction;
lock the sessions in one canonical order, as ours do, so that two calls never deadlock); DynamoDB's
``TransactWriteItems`` (a condition per session item, at most 100 items per call); NATS JetStream's
atomic batches (ADR-50, server 2.11 or newer, at most 1,000 messages, within one stream). A store
that shards sessions over independent logs cannot, and should leave the hooks out: the calls then
raise :class:`UnsupportedError`, and its conformance ``Backend`` declares ``appends_many = False``
or ``truncates = False``. Truncation uses :func:`check_truncation` for its rule, and records where
the log starts as the snapshot :data:`~kern_events.records.TRUNCATION_SNAPSHOT` that the kit hands
the hook with the caller's.

**Sharded feeds.** A store whose sessions live in independent logs (shards) has no one sequence
ordering every append, so no int can say where a feed reader stopped. It sets
:attr:`BaseEventStore.feed_layout` to a name of its layout and implements ``_read_feed_page`` (its
shards' rows, each shard in its own order, merged) and ``_feed_start`` (the cursor at an int
position); its record positions carry their shard in the bits above :data:`FEED_SHARD_SHIFT`. The kit
then hands ``read_all`` and subscriptions a :class:`FeedCursor` (a position per shard) and moves it
past every record, so that resuming from it neither skips nor repeats; a cursor of another layout is a
:class:`~kern_events.errors.ShardLayoutError`.

**No global feed.** A store whose storage orders nothing across sessions (DynamoDB: no commit order
across partitions) leaves out ``_read_all_page``: :attr:`BaseEventStore.global_feed` is then false,
``read_all``, ``read_all_stored`` and ``subscribe`` raise :class:`UnsupportedError` naming the
capability ``global feed``, and its conformance ``Backend`` declares ``global_feed = False``.

**Large payloads.** Any event up to ``max_event_size`` (:data:`DEFAULT_MAX_EVENT_SIZE`) is accepted.
A backend whose rows are small (a message or item size limit) sets the class attribute
:attr:`BaseEventStore.inline_limit`: a payload above it reaches ``_append`` as a small manifest in
``PendingEvent.data`` and the payload cut into ``PendingEvent.chunks`` (each at most ``inline_limit``
bytes), which the backend stores keyed by (event id, part) in the same atomic step as the event, and
removes with the event whenever it erases one (a SQL foreign key ``ON DELETE CASCADE`` does both for
any delete). Reads find the manifests, fetch their chunks through ``_read_chunks`` once per page and
check them against the manifest's length and SHA-256 (a mismatch is a ``CorruptRecordError``); the
backend never reassembles anything itself.

**Encryption and erasure.** With :attr:`BaseEventStore.encryption` set, the kit seals payloads and
snapshots before they reach the hooks and opens them after: a backend stores ciphertext without
knowing it (large sealed payloads are chunked like any other). ``erase_user`` is the kit's too: it
lists the user's sessions with ``_list_sessions``, refuses new appends to them, waits for those in
flight, and erases them through ``_erase_sessions``; a backend needs nothing more for it. That fence
holds for appends through the erasing store object; to refuse appends from other processes too, a
backend overrides ``_erase_sessions`` to leave a mark on each erased session in the same atomic step
and refuses appends to a marked session in theirs (the SQL backends keep it as the index row's head
hash), and sets the conformance capability ``fences_erasure_across_stores``.

**Export and import** (:mod:`kern_events.transfer`) need nothing more from a backend: the kit's
:meth:`~BaseEventStore.read_stored` and :meth:`~BaseEventStore.read_all_stored` read events as stored
through ``_read_page`` and ``_read_all_page`` (and ``_read_chunks``), and
:meth:`~BaseEventStore.append_stored` restores one original append through ``_append`` with its
recorded time, so the backend computes the same chain hashes as the source did.

A backend is done when it passes the conformance suite, :mod:`kern_events.testing`.
:class:`GroupCommit` is there for backends that gain from committing concurrent appends together.
"""

from __future__ import annotations

from kern_events._index import IndexDelta, SessionInfo, advance_index, apply_delta, index_delta
from kern_events.errors import UnsupportedError
from kern_events.records import (
    FEED_SHARD_SHIFT,
    AppendResult,
    ExpectedVersion,
    FeedCursor,
    PendingEvent,
    SessionAppend,
    Snapshot,
    StoredEvent,
)
from kern_events.store import EventStore, SessionSort
from kern_events.stores._base import (
    DEFAULT_MAX_EVENT_SIZE,
    MAX_EVENTS_PER_APPEND,
    SNAPSHOTS_KEPT,
    STATE_EVENT_TYPES,
    BaseEventStore,
    Page,
    PendingAppend,
    SessionContext,
    SessionFilter,
    check_expected,
    check_truncation,
    conflict,
    match_retry,
    new_event_id,
    split_stored,
    stored_result,
)
from kern_events.stores._chain import Chain, ChainProblem, VerifyReport
from kern_events.stores._group import GroupCommit
from kern_events.subscription import ChangeSignal

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE",
    "FEED_SHARD_SHIFT",
    "MAX_EVENTS_PER_APPEND",
    "SNAPSHOTS_KEPT",
    "STATE_EVENT_TYPES",
    "AppendResult",
    "BaseEventStore",
    "Chain",
    "ChainProblem",
    "ChangeSignal",
    "EventStore",
    "ExpectedVersion",
    "FeedCursor",
    "GroupCommit",
    "IndexDelta",
    "Page",
    "PendingAppend",
    "PendingEvent",
    "SessionAppend",
    "SessionContext",
    "SessionFilter",
    "SessionInfo",
    "SessionSort",
    "Snapshot",
    "StoredEvent",
    "UnsupportedError",
    "VerifyReport",
    "advance_index",
    "apply_delta",
    "check_expected",
    "check_truncation",
    "conflict",
    "index_delta",
    "match_retry",
    "new_event_id",
    "split_stored",
    "stored_result",
]
