"""The tamper-evidence rule, in one place for every backend: each stored event carries a hash that
chains it to the previous event of its session, and a verifier that recomputes the chains.

The hash of the event at version ``v`` is SHA-256 (or HMAC-SHA-256 under a ``chain_key``) over the
previous event's hash, ``v``, the event id, the type, the schema version, the recorded time and the
payload bytes as stored: after any encryption (so verifying needs no data key) and, for a payload
stored out of line, its manifest (which holds the payload's length and SHA-256, checked against the
chunks on every read; so the manifest's hash covers the payload without reading it). The first
event of a session chains from a genesis hash of the session id, so events cannot be moved between
sessions either. A backend computes the hashes with :meth:`Chain.hashes` inside its atomic append,
from the head hash it stores beside the head version (the session index row), and stores each
event's hash with it and the last one as the new head hash. Versions are never reused, so a head
version names exactly one head hash: the expected-version check that guards the append also guards
the chain.
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
    :meth:`check` per event, :meth:`finish`); findings go to ``report``."""

    def __init__(self, chain: Chain, report: VerifyReport) -> None:
        self._chain = chain
        self.report = report
        self._session = ""
        self._previous: bytes | None = None
        self._expected_version = 1
        self._chained = False
        self._stored: dict[bytes, int] = {}
        self._suspects: list[StoredEvent] = []

    def start(self, session_id: str, first_version: int = 1, base: bytes | None = None) -> None:
        """Begin a session whose log starts at ``first_version`` (after a truncation, ``base`` is the
        hash of the last removed event, kept in the truncation marker)."""
        self.report.sessions += 1
        self._session, self._expected_version = session_id, first_version
        self._previous = base if base else None
        self._chained = bool(base)
        self._stored, self._suspects = {}, []

    def _problem(self, version: int, kind: ProblemKind, detail: str) -> None:
        self.report.problems.append(ChainProblem(session_id=self._session, version=version, kind=kind, detail=detail))

    def corrupt(self, version: int, detail: str) -> None:
        """A row that could not be read; the chain goes on from the next one (which then fails too)."""
        self.report.events += 1
        self._problem(version, "corrupt", detail)
        self._expected_version = version + 1
        self._previous = None

    def check(self, stored: StoredEvent) -> None:
        """One event, in version order."""
        self.report.events += 1
        version = stored.version
        after_gap = version > self._expected_version
        if after_gap and self._restarted(stored):
            after_gap = False  # a session deleted and started again: its chain starts afresh there
        elif after_gap:
            first, last = self._expected_version, version - 1
            span = f"version {first}" if first == last else f"versions {first}-{last}"
            self._problem(first, "missing", f"{span} absent from the log (deleted)")
        self._expected_version = version + 1
        if stored.chain is None:
            if self._chained:
                self._problem(version, "unchained", "its hash was removed")
            else:
                self.report.unchained += 1
            return
        previous = self._previous
        if previous is None and not self._chained:  # the first chained event: from the genesis
            previous = self._chain.genesis(self._session)
        self._chained = True
        self._stored[stored.chain] = version
        # After a gap the predecessor is gone: its hash cannot be checked (the gap is reported).
        if not after_gap and (previous is None or self._chain.of(previous, stored) != stored.chain):
            self._suspects.append(stored)
        self._previous = stored.chain

    def _restarted(self, stored: StoredEvent) -> bool:
        """Whether the session's first stored event, above version 1 with no truncation behind it,
        chains from the genesis: the session was deleted and started again (its versions go on
        from the tombstone's), not cut."""
        return (
            not self._chained
            and self._previous is None
            and self._expected_version == 1
            and stored.chain is not None
            and self._chain.of(self._chain.genesis(self._session), stored) == stored.chain
        )

    def finish(self, head: int) -> None:
        """The log must reach the head the index records; then tell moved events from edited ones."""
        reached = self._expected_version - 1
        if reached < head:
            self._problem(
                reached + 1, "truncated", f"the index says the session is at version {head}, the log ends at {reached}"
            )
        # Every stored hash may be a predecessor, at the version it is stored at until traced elsewhere.
        origins = dict(self._stored)
        origins[self._chain.genesis(self._session)] = 0
        unresolved = list(self._suspects) if len(self._suspects) <= _MAX_TRACED else []
        traced: set[bytes] = set()
        while unresolved:  # an event moved after a moved one is traced once its predecessor is
            found = [(stored, self._origin(stored, origins)) for stored in unresolved]
            progress = [(stored, origin) for stored, origin in found if origin is not None]
            if not progress:
                break
            for stored, origin in progress:
                assert stored.chain is not None
                origins[stored.chain] = origin
                traced.add(stored.chain)
                if origin != stored.version:
                    self._problem(stored.version, "moved", f"event {stored.event_id} was written at version {origin}")
            unresolved = [stored for stored, origin in found if origin is None]
        for stored in self._suspects:
            if stored.chain not in traced:
                self._problem(stored.version, "edited", "the event does not match its hash (payload, type, id or time)")
        self.report.problems.sort(key=lambda problem: (problem.session_id, problem.version))

    def _origin(self, stored: StoredEvent, origins: dict[bytes, int]) -> int | None:
        """The version an event that fails its link was written at, if its hash proves one: some
        event whose original version is known is its predecessor."""
        for previous, version in origins.items():
            if previous == stored.chain:
                continue
            written = msgspec.structs.replace(stored, version=version + 1)
            if self._chain.of(previous, written) == stored.chain:
                return version + 1
        return None
