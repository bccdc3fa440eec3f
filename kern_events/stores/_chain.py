"""The tamper-evidence rule, in one place for every backend: each stored event has a hash that
chains it to the previous event of its session, and a verifier that recomputes the chains.

The hash of the event at version ``v`` is SHA-256 (or HMAC-SHA-256 under a ``chain_key``) over the
previous event's hash, ``v``, the event id, the type, the schema version, the recorded time and the
payload bytes as stored: after any encryption (so verifying needs no data key) and, for a payload stored
out of line, its manifest (which holds the payload's length and SHA-256, checked against the chunks on
every read; so the manifest's hash covers the payload without reading it). The first event of a session
chains from a genesis hash of the session id, so events cannot be moved between sessions either. A
backend computes the hashes with :meth:`Chain.hashes` inside its atomic append, from the head hash it
stores beside the head version (the session index row), and stores the last event's hash with it
(:meth:`Chain.kept`: the others are recomputed from it) and as the new head hash. Versions are never
reused, so a head version names exactly one head hash: the expected-version check that guards the append
also guards the chain.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from typing import Literal

import msgspec

from kern_events.records import PendingEvent, StoredEvent

__all__ = ["CHAIN_SIZE", "Chain", "ChainProblem", "ChainVerifier", "ProblemKind", "VerifyReport"]

CHAIN_SIZE = 32
"""Bytes of one chain hash."""

_LINK = struct.Struct(">32sq16sqdI")
"""The fixed part hashed per event: previous hash, version, event id, schema version, recorded time,
length of the type; the type's bytes and the payload follow (the payload last, so no length needed)."""
_GENESIS = b"kern-events chain v1\x00"
_MAX_TRACED = 100
"""Events failing their link that :class:`ChainVerifier` tries to trace to their original version;
beyond that many (a rewritten log), each is reported as edited without tracing."""

ProblemKind = Literal["edited", "missing", "moved", "unchained", "truncated", "corrupt"]


class Chain:
    """Computes chain hashes; with ``key`` (bytes) they are HMACs, which no one without the key can
    forge, so rewriting a session and its hashes is caught too."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key

    @property
    def keyed(self) -> bool:
        """Whether hashes are HMACs under a secret key."""
        return self._key is not None

    def _digest(self, message: bytes) -> bytes:
        if self._key is None:
            return hashlib.sha256(message).digest()
        return hmac.digest(self._key, message, "sha256")

    def genesis(self, session_id: str) -> bytes:
        """What a session's first event chains from."""
        return self._digest(_GENESIS + session_id.encode("utf-8", "surrogatepass"))

    def link(
        self,
        previous: bytes,
        version: int,
        event_id: bytes,
        event_type: str,
        schema_version: int,
        data: bytes,
        recorded_at: float,
    ) -> bytes:
        """The hash of one event, chained to ``previous``."""
        kind = event_type.encode("utf-8", "surrogatepass")
        head = _LINK.pack(previous, version, event_id, schema_version, recorded_at, len(kind))
        return self._digest(head + kind + data)

    def hashes(
        self, session_id: str, previous: bytes | None, head: int, pending: Sequence[PendingEvent], recorded_at: float
    ) -> list[bytes]:
        """The hashes of ``pending`` appended after version ``head`` whose hash is ``previous``
        (``None``: the session has no chained event yet, so it starts from its genesis)."""
        last = self.genesis(session_id) if previous is None else previous
        hashes = []
        for version, new in enumerate(pending, start=head + 1):
            last = self.link(last, version, new.event_id.bytes, new.type, new.schema_version, new.data, recorded_at)
            hashes.append(last)
        return hashes

    @staticmethod
    def kept(hashes: Sequence[bytes]) -> list[bytes | None]:
        """What an append stores of its events' hashes: the last one only, 32 bytes less for every
        other event (verifying recomputes theirs, and the last one covers them)."""
        return [None] * (len(hashes) - 1) + [hashes[-1]]

    def of(self, previous: bytes, stored: StoredEvent) -> bytes:
        """What a stored event's hash must be after ``previous``."""
        return self.link(
            previous,
            stored.version,
            stored.event_id.bytes,
            stored.type,
            stored.schema_version,
            stored.data,
            stored.recorded_at,
        )


class ChainProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One finding of :meth:`~kern_events.db.BaseDb.verify`, by session and version."""

    session_id: str
    version: int
    kind: ProblemKind
    """``edited``: the event differs from what was hashed; ``missing``: versions absent from the log;
    ``moved``: an event stored at another version than it was written at (reordered, or deleted and
    inserted again); ``unchained``: a hash missing where the chain had begun; ``truncated``: the log
    ends before the head the index records; ``corrupt``: a row that cannot be read."""
    detail: str

    def __str__(self) -> str:
        return f"session {self.session_id!r} version {self.version}: {self.kind}: {self.detail}"


class VerifyReport(msgspec.Struct, kw_only=True):
    """What :meth:`~kern_events.db.BaseDb.verify` found."""

    sessions: int = 0
    events: int = 0
    unchained: int = 0
    """Events written before the chain existed (a database of schema version 2 or older): no hash to
    check; they are reported, not counted as problems."""
    problems: list[ChainProblem] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing was found."""
        return not self.problems


class ChainVerifier:
    """Recomputes one session's chain from its stored events in version order (call :meth:`start`,
    :meth:`check` per event, :meth:`finish`); findings go to ``report``.

    Events without a hash wait for the next one that has one: an append stores only its last hash
    (see :meth:`Chain.kept`), so a hash covers the events of its append before it, and a mismatch is
    reported at the append's first version, naming its versions. An event without a hash is only
    part of an append if the next event shares its recorded time (one append, one time); otherwise
    its hash was removed (or, before the chain began, it never had one)."""

    def __init__(self, chain: Chain, report: VerifyReport) -> None:
        self._chain = chain
        self.report = report
        self._session = ""
        self._previous: bytes | None = None
        self._expected_version = 1
        self._chained = False
        self._stored: dict[bytes, int] = {}
        self._suspects: list[list[StoredEvent]] = []
        self._waiting: list[StoredEvent] = []
        self._gap: tuple[int, int] | None = None

    def start(self, session_id: str, first_version: int = 1, base: bytes | None = None) -> None:
        """Begin a session whose log starts at ``first_version`` (after a truncation, ``base`` is the
        hash of the last removed event, kept in the truncation marker)."""
        self.report.sessions += 1
        self._session, self._expected_version = session_id, first_version
        self._previous = base if base else None
        self._chained = bool(base)
        self._stored, self._suspects, self._waiting, self._gap = {}, [], [], None

    def _problem(self, version: int, kind: ProblemKind, detail: str) -> None:
        self.report.problems.append(ChainProblem(session_id=self._session, version=version, kind=kind, detail=detail))

    def corrupt(self, version: int, detail: str) -> None:
        """A row that could not be read; the chain goes on from the next one (which then fails too)."""
        self._drop(removed=False)
        self._report_gap()
        self.report.events += 1
        self._problem(version, "corrupt", detail)
        self._expected_version = version + 1
        self._previous = None

    def check(self, stored: StoredEvent) -> None:
        """One event, in version order."""
        self.report.events += 1
        version = stored.version
        after_gap = version > self._expected_version
        if self._waiting and (after_gap or stored.recorded_at != self._waiting[-1].recorded_at):
            self._drop(removed=not after_gap)  # the waiting events' append ends without its hash
        if after_gap:
            self._report_gap()
            self._gap = (self._expected_version, version - 1)
        self._expected_version = version + 1
        self._waiting.append(stored)
        if stored.chain is not None:
            self._link(self._waiting)
            self._waiting, self._gap = [], None

    def _drop(self, *, removed: bool) -> None:
        """Events waiting for a hash that will not come: before the chain began they never had one;
        after it, the last one's hash was ``removed`` (else its successor is missing, reported as such)."""
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        self._report_gap()
        start = self._previous if self._chained else self._chain.genesis(self._session)
        if start is not None:  # what they would hash to: predecessors for tracing moved events
            for stored, computed in zip(waiting, self._through(start, waiting), strict=True):
                self._stored.setdefault(computed, stored.version)
        if not self._chained:
            self.report.unchained += len(waiting)
        elif removed:
            self._problem(
                waiting[-1].version, "unchained", "its append ends without a hash (removed, or an event's time changed)"
            )
        self._previous = None  # the next event's link cannot be checked (what came before is reported)

    def _report_gap(self) -> None:
        if self._gap is not None:
            first, last = self._gap
            span = f"version {first}" if first == last else f"versions {first}-{last}"
            self._problem(first, "missing", f"{span} absent from the log (deleted)")
            self._gap = None

    def _link(self, events: list[StoredEvent]) -> None:
        """Events ending with one that has a hash: check it, chained from the previous hash."""
        last = events[-1]
        assert last.chain is not None
        genesis = self._chain.genesis(self._session)
        if self._gap is not None:
            if self._restarted(events, genesis):
                self._gap = None  # a session deleted and started again: its chain starts afresh there
                self._previous = genesis
            else:
                self._report_gap()
                self._previous = None  # after a gap the predecessor's hash is unknown: not checked
        elif not self._chained:
            self._previous = genesis  # the first chained event: from the genesis
        self._chained = True
        previous = self._previous
        if previous is not None:
            hashes = self._through(previous, events)
            if hashes[-1] != last.chain:
                self._suspects.append(events)
            else:
                for stored, computed in zip(events[:-1], hashes, strict=False):
                    self._stored.setdefault(computed, stored.version)
        self._stored[last.chain] = last.version
        self._previous = last.chain

    def _through(self, previous: bytes, events: Sequence[StoredEvent], first_version: int | None = None) -> list[bytes]:
        """The hashes of ``events`` chained from ``previous`` (numbered from ``first_version``, if given)."""
        hashes = []
        for offset, stored in enumerate(events):
            if first_version is not None:
                stored = msgspec.structs.replace(stored, version=first_version + offset)
            previous = self._chain.of(previous, stored)
            hashes.append(previous)
        return hashes

    def _restarted(self, events: list[StoredEvent], genesis: bytes) -> bool:
        """Whether the session's first stored events, above version 1 with no truncation behind them,
        chain from the genesis: the session was deleted and started again (its versions go on
        from the tombstone's), not cut."""
        return (
            not self._chained
            and self._previous is None
            and self._gap is not None
            and self._gap[0] == 1
            and self._through(genesis, events)[-1] == events[-1].chain
        )

    def finish(self, head: int) -> None:
        """The log must reach the head the index records; then tell moved events from edited ones."""
        self._drop(removed=True)
        reached = self._expected_version - 1
        if reached < head:
            self._problem(
                reached + 1, "truncated", f"the index says the session is at version {head}, the log ends at {reached}"
            )
        # Every hash may be a predecessor, at the version it is stored at until traced elsewhere.
        origins = dict(self._stored)
        origins[self._chain.genesis(self._session)] = 0
        unresolved = list(self._suspects) if len(self._suspects) <= _MAX_TRACED else []
        traced: set[bytes] = set()
        while unresolved:  # events moved after moved ones are traced once their predecessor is
            found = [(events, self._origin(events, origins)) for events in unresolved]
            progress = [(events, origin) for events, origin in found if origin is not None]
            if not progress:
                break
            for events, origin in progress:
                chain = events[-1].chain
                assert chain is not None
                origins[chain] = origin + len(events) - 1
                traced.add(chain)
                for written, stored in enumerate(events, start=origin):
                    if written != stored.version:
                        self._problem(
                            stored.version, "moved", f"event {stored.event_id} was written at version {written}"
                        )
            unresolved = [events for events, origin in found if origin is None]
        for events in self._suspects:
            if events[-1].chain not in traced:
                first, last = events[0].version, events[-1].version
                what = "the event does not" if first == last else f"one of versions {first}-{last} does not"
                self._problem(first, "edited", f"{what} match its hash (payload, type, id or time)")
        self.report.problems.sort(key=lambda problem: (problem.session_id, problem.version))

    def _origin(self, events: list[StoredEvent], origins: dict[bytes, int]) -> int | None:
        """The version events failing their link were first written at, if their hash proves one:
        some event whose original version is known is their predecessor."""
        chain = events[-1].chain
        for previous, version in origins.items():
            if previous != chain and self._through(previous, events, version + 1)[-1] == chain:
                return version + 1
        return None
