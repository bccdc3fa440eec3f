"""Encryption at rest: payloads and snapshots sealed with AES-256-GCM under a data key per user
(per session for a session without a user), the envelope left in clear.

A store given an :class:`Encryption` seals every encoded payload before it is stored (and before a
large one is cut into chunks) and opens it after reading, before the codec sees it; so a hash chain
or a backup over stored rows sees only ciphertext. The envelope (session id, version, position,
type, schema version, times) and the session index stay readable, so the log stays ordered and
auditable and listings need no key. The associated data binds each ciphertext to its session id,
event id, type and schema version (a snapshot's to its session, name and version): a payload moved
to another row, or changed, fails to open with :class:`~kern_events.DecryptionError` naming the
session and version. (The version itself is assigned when the append commits, after sealing; rows
are bound to it through their unique event id.)

Data keys come from a :class:`KeyProvider`: :class:`KeyringFile` keeps them in a local file; a
cloud KMS plugs in as a provider whose ``create_key`` generates a data key and stores it wrapped
(envelope encryption: ``GenerateDataKey`` on AWS KMS, ``encrypt`` on Google Cloud KMS), whose
``get_key`` unwraps it, and whose ``delete_key`` deletes the wrapped key. Deleting a key is
crypto-shredding: every copy of that user's payloads, in backups and exports too, reads as
:class:`~kern_events.ErasedError` from then on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast
from uuid import UUID

import anyio
import msgspec

from kern_events.errors import DecryptionError, ErasedError, InvalidArgumentError, KeyProviderError
from kern_events.events import SessionStarted
from kern_events.records import PendingEvent, Snapshot, StoredEvent

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["Encryption", "KeyProvider", "KeyringFile"]

SEAL_MARK = b"\xc7"
"""First byte of a sealed payload. msgpack events are maps, which never start with it (it is the
ext 8 type); a row without it is read as written before encryption was turned on."""
_FORMAT = 1
_HEADER = struct.Struct(">cBH")
"""The mark, the format, and the length of the key id that follows (then a 12-byte nonce, then the
ciphertext with its 16-byte tag)."""
_NONCE = 12
_KEY_BYTES = 32
_KEYS_CACHED = 4096
_SESSIONS_CACHED = 65_536

_Row = TypeVar("_Row")
"""A row of a page being opened: a stored event, or a driver's row in its field order."""

UserLookup = Callable[[str], Awaitable[str | None]]
"""The user of a session (from its index row), or ``None``."""


class KeyProvider(Protocol):
    """Where data keys (32 random bytes each) live; one per user, or per session without a user."""

    async def get_key(self, key_id: str) -> bytes | None:
        """The key, or ``None`` if it does not exist (never created, or deleted: shredded)."""
        ...

    async def create_key(self, key_id: str) -> bytes:
        """The key, created now if it does not exist yet (two racing calls get the same key)."""
        ...

    async def delete_key(self, key_id: str) -> bool:
        """Delete the key for good; ``False`` if there was none."""
        ...


class KeyringFile:
    """Data keys in a local JSON file (created with mode 0600), rewritten atomically on each change.

    Keep it apart from the database and its backups: whoever holds both can read everything. For
    production, prefer a KMS-backed provider (see the module docstring).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = anyio.Lock()
        self._keys: dict[str, bytes] | None = None

    def _load(self) -> dict[str, bytes]:
        if self._keys is None:
            try:
                raw = json.loads(self.path.read_text())
            except FileNotFoundError:
                raw = {}
            self._keys = {key_id: base64.b64decode(key) for key_id, key in raw.items()}
        return self._keys

    def _save(self, keys: dict[str, bytes]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(handle, "w") as file:
                json.dump({key_id: base64.b64encode(key).decode() for key_id, key in keys.items()}, file)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    async def get_key(self, key_id: str) -> bytes | None:
        async with self._lock:
            return self._load().get(key_id)

    async def create_key(self, key_id: str) -> bytes:
        async with self._lock:
            keys = self._load()
            key = keys.get(key_id)
            if key is None:
                key = os.urandom(_KEY_BYTES)
                self._save({**keys, key_id: key})
                keys[key_id] = key
            return key

    async def delete_key(self, key_id: str) -> bool:
        async with self._lock:
            keys = self._load()
            if key_id not in keys:
                return False
            self._save({name: key for name, key in keys.items() if name != key_id})
            del keys[key_id]
            return True


def _aesgcm() -> type[AESGCM]:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise InvalidArgumentError(
            "encryption", "needs the cryptography package: pip install 'kern-events[crypto]'"
        ) from exc
    return AESGCM


def user_key_id(user_id: str) -> str:
    """The key id of a user's data key: a digest, so the id stored in every sealed row (and kept in
    backups) does not name the user."""
    return "user-" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


def session_key_id(session_id: str) -> str:
    """The key id of the data key of a session without a user (a digest, like :func:`user_key_id`)."""
    return "session-" + hashlib.sha256(session_id.encode()).hexdigest()[:32]


class Encryption:
    """Seals payloads and snapshots under per-user data keys from ``key_provider``; give it to a db
    (``SqliteDb(..., encryption=Encryption(KeyringFile("keys.json")))``) or a store."""

    def __init__(self, key_provider: KeyProvider) -> None:
        for method in ("get_key", "create_key", "delete_key"):
            if not callable(getattr(key_provider, method, None)):
                raise InvalidArgumentError("key_provider", f"expected a KeyProvider, it has no {method}()")
        self._aesgcm = _aesgcm()
        self.key_provider = key_provider
        self._ciphers: OrderedDict[str, tuple[AESGCM, bytes]] = OrderedDict()
        """By key id: the cipher, and the key its synthetic nonces are derived with."""
        self._session_keys: OrderedDict[str, str] = OrderedDict()

    # -- keys --------------------------------------------------------------------------------------

    async def _cipher(self, key_id: str, *, create: bool) -> tuple[AESGCM, bytes] | None:
        cipher = self._ciphers.get(key_id)
        if cipher is not None:
            self._ciphers.move_to_end(key_id)
            return cipher
        try:
            key = await (self.key_provider.create_key(key_id) if create else self.key_provider.get_key(key_id))
        except Exception as exc:
            raise KeyProviderError(key_id, f"{type(exc).__name__}: {exc}") from exc
        if key is None:
            return None
        if not isinstance(key, bytes) or len(key) != _KEY_BYTES:
            raise KeyProviderError(key_id, f"a data key must be {_KEY_BYTES} bytes")
        nonce_key = hmac.new(key, b"kern-events nonce", hashlib.sha256).digest()
        cipher = self._ciphers[key_id] = (self._aesgcm(key), nonce_key)
        while len(self._ciphers) > _KEYS_CACHED:
            self._ciphers.popitem(last=False)
        return cipher

    async def forget(self, key_ids: Sequence[str], session_ids: Sequence[str]) -> int:
        """Delete the keys (crypto-shredding) and forget the sessions; how many keys were deleted."""
        deleted = 0
        for key_id in key_ids:
            self._ciphers.pop(key_id, None)
            try:
                deleted += bool(await self.key_provider.delete_key(key_id))
            except Exception as exc:
                raise KeyProviderError(key_id, f"{type(exc).__name__}: {exc}") from exc
        for session_id in session_ids:
            self._session_keys.pop(session_id, None)
        return deleted

    async def key_id(self, session_id: str, events: object, user_of: UserLookup) -> str:
        """The key an append to ``session_id`` seals with: its user's, named by a ``SessionStarted``
        in the batch or by the session's index row, else the session's own."""
        if isinstance(events, Sequence):
            for event in reversed(events):
                if isinstance(event, SessionStarted):
                    key_id = user_key_id(event.user_id) if event.user_id else session_key_id(session_id)
                    self._remember(session_id, key_id)
                    return key_id
        known = self._session_keys.get(session_id)
        if known is not None:
            return known
        user_id = await user_of(session_id)
        key_id = user_key_id(user_id) if user_id else session_key_id(session_id)
        self._remember(session_id, key_id)
        return key_id

    def _remember(self, session_id: str, key_id: str) -> None:
        self._session_keys[session_id] = key_id
        self._session_keys.move_to_end(session_id)
        while len(self._session_keys) > _SESSIONS_CACHED:
            self._session_keys.popitem(last=False)

    # -- events ------------------------------------------------------------------------------------

    async def sealer(self, session_id: str, key_id: str) -> Sealer:
        """A function sealing each encoded event of one append under ``key_id`` (created if new)."""
        cipher = await self._cipher(key_id, create=True)
        assert cipher is not None
        return Sealer(cipher[0], cipher[1], session_id, key_id)

    async def open(self, stored: StoredEvent) -> StoredEvent:
        """``stored`` with its payload decrypted (a row without the seal mark is returned as it is)."""
        _, payloads, error = await self.open_payloads((stored,))
        if error is not None:
            raise error
        return msgspec.structs.replace(stored, data=payloads[0])

    async def open_payloads(
        self, page: Sequence[_Row], stored: Callable[[_Row], StoredEvent] | None = None, *, skip_erased: bool = False
    ) -> tuple[Sequence[_Row], list[bytes], DecryptionError | ErasedError | None]:
        """The payloads of a page's rows decrypted in one pass, for the codec to decode beside their
        envelopes (no stored event is rebuilt around a plaintext): the rows, the payload of each
        (a row without the seal mark: its own bytes), and the error that ends them, ``None`` if all
        opened. ``page`` holds stored events, or a driver's rows in :class:`StoredEvent`'s field
        order with ``stored`` building a stored event from one (for an error's facts only).

        A row that does not open (wrong key, modified ciphertext, a damaged header) ends the payloads
        with a :class:`DecryptionError` naming its session and version; a row whose data key was
        deleted ends them with an :class:`ErasedError` (a session's read raises it), or, with
        ``skip_erased`` (the global feed, which a shredded user must not stop for everyone else), is
        left out of the rows returned.

        Reads are the hot path: a row pays for its AES-GCM call and as little else as possible. The
        header a key's rows start with (mark, format, key id) is parsed and its key looked up once
        per page (:class:`_PageKeys`); each later row under that key is recognised by ``startswith``
        alone, and its associated data is put together from parts kept per session and per type. A
        header that differs in any byte (another key, a damaged or unknown format) takes the full
        parse, which names a damaged row. The loop is written twice, for stored events and for
        rows: reading a stored event's fields by name in the loop itself is ~0.1 us a row cheaper
        than one ``attrgetter`` call for all five."""
        keys = _PageKeys(self)
        payloads: list[bytes] = []
        append = payloads.append
        skipped: list[int] = []
        prefix: bytes | tuple[()] = ()  # startswith(()) is False: the first sealed row takes the parse
        aead: AESGCM | None = None
        start = 0
        session: str | None = None
        head = b""
        tails = keys.tails
        if stored is None:
            for event in cast(Sequence[StoredEvent], page):
                data = event.data
                if not data.startswith(prefix):
                    if data[:1] != SEAL_MARK:
                        append(data)
                        continue
                    try:
                        prefix, start, aead = await keys.header(data, event)
                    except DecryptionError as exc:
                        return _kept(page, skipped), payloads, exc
                if aead is None:
                    if not skip_erased:
                        return _kept(page, skipped), payloads, _erased(event, data, start)
                    skipped.append(len(payloads) + len(skipped))
                    continue
                if event.session_id != session:
                    session, head = event.session_id, keys.head(event.session_id)
                tail = tails.get(event.type)
                if tail is None or tail[0] != event.schema_version:
                    tail = keys.tail(event.type, event.schema_version)
                aad = head + event.event_id.int.to_bytes(16) + tail[1]
                try:
                    append(aead.decrypt(data[start : start + _NONCE], data[start + _NONCE :], aad))
                except Exception as exc:
                    return _kept(page, skipped), payloads, _undecryptable(event, data, start, exc)
        else:
            for row in page:
                data, session_id, event_id, event_type, schema_version = _ROW_FIELDS(row)
                if not data.startswith(prefix):
                    if data[:1] != SEAL_MARK:
                        append(data)
                        continue
                    try:
                        prefix, start, aead = await keys.header(data, stored(row))
                    except DecryptionError as exc:
                        return _kept(page, skipped), payloads, exc
                if aead is None:
                    if not skip_erased:
                        return _kept(page, skipped), payloads, _erased(stored(row), data, start)
                    skipped.append(len(payloads) + len(skipped))
                    continue
                if session_id != session:
                    session, head = session_id, keys.head(session_id)
                tail = tails.get(event_type)
                if tail is None or tail[0] != schema_version:
                    tail = keys.tail(event_type, schema_version)
                aad = head + event_id.bytes + tail[1]  # a driver's UUID keeps its bytes
                try:
                    append(aead.decrypt(data[start : start + _NONCE], data[start + _NONCE :], aad))
                except Exception as exc:
                    return _kept(page, skipped), payloads, _undecryptable(stored(row), data, start, exc)
        return _kept(page, skipped), payloads, None

    # -- snapshots ---------------------------------------------------------------------------------

    async def seal_snapshot(self, snapshot: Snapshot, key_id: str) -> Snapshot:
        cipher = await self._cipher(key_id, create=True)
        assert cipher is not None
        nonce = os.urandom(_NONCE)
        sealed = cipher[0].encrypt(nonce, snapshot.data, _snapshot_aad(snapshot))
        return msgspec.structs.replace(snapshot, data=_pack(key_id, nonce, sealed))

    async def open_snapshot(self, snapshot: Snapshot) -> Snapshot:
        data = snapshot.data
        if data[:1] != SEAL_MARK:
            return snapshot
        key_id, nonce, sealed = _parse(data, snapshot.session_id, snapshot.version, f"snapshot {snapshot.name}", -1)
        cipher = await self._cipher(key_id, create=False)
        if cipher is None:
            raise ErasedError(snapshot.session_id, f"its data key {key_id!r} was deleted", version=snapshot.version)
        try:
            plain = cipher[0].decrypt(nonce, sealed, _snapshot_aad(snapshot))
        except Exception as exc:
            raise DecryptionError(
                snapshot.session_id,
                snapshot.version,
                f"snapshot {snapshot.name}",
                f"the snapshot does not decrypt under key {key_id!r}: wrong key, or modified ciphertext",
                position=-1,
            ) from exc
        return msgspec.structs.replace(snapshot, data=plain)


class Sealer:
    """Seals the encoded events of one append (sync: it runs inside the store's encoding step).

    The nonce is synthetic (an HMAC of the associated data and the payload, as in SIV): a retry of
    an append seals to the same bytes, so the store still recognises it as a retry by comparing
    rows, and two different payloads never share a nonce under one key.
    """

    __slots__ = ("_cipher", "_head", "_nonce_key", "_prefix", "key_id", "session_id")

    def __init__(self, cipher: AESGCM, nonce_key: bytes, session_id: str, key_id: str) -> None:
        self._cipher = cipher
        self._nonce_key = nonce_key
        self.session_id = session_id
        self.key_id = key_id
        self._head = _event_aad_head(session_id)
        self._prefix = _pack(key_id, b"", b"")
        """The header every sealed payload of this key starts with (the mark, the format, the key id)."""

    def __call__(self, pending: PendingEvent) -> PendingEvent:
        data = pending.data
        aad = self._head + pending.event_id.bytes + _event_aad_tail(pending.type, pending.schema_version)
        nonce = hmac.digest(self._nonce_key, aad + data, "sha256")[:_NONCE]
        sealed = self._cipher.encrypt(nonce, data, aad)
        return msgspec.structs.replace(pending, data=self._prefix + nonce + sealed)


_ROW_FIELDS: Callable[[Any], tuple[bytes, str, UUID, str, int]] = itemgetter(6, 0, 3, 4, 5)
"""What opening a payload reads of a driver's row in :class:`StoredEvent`'s field order, in one call."""


class _PageKeys:
    """What opening one page looks up once and keeps: each key header's cipher (``None``: the key
    was deleted), and the parts of the associated data per session and per type."""

    __slots__ = ("ciphers", "encryption", "heads", "tails")

    def __init__(self, encryption: Encryption) -> None:
        self.encryption = encryption
        self.ciphers: dict[bytes, AESGCM | None] = {}
        self.heads: dict[str, bytes] = {}
        self.tails: dict[str, tuple[int, bytes]] = {}

    async def header(self, data: bytes, stored: StoredEvent) -> tuple[bytes, int, AESGCM | None]:
        """The key header ``data`` starts with, where its nonce starts, and its cipher; a damaged
        header is a :class:`DecryptionError` naming the row."""
        key_id = _parse(data, stored.session_id, stored.version, stored.type, stored.position)[0]
        start = _HEADER.size + int.from_bytes(data[2:4])
        header = data[:start]
        if header not in self.ciphers:
            cipher = await self.encryption._cipher(key_id, create=False)
            self.ciphers[header] = None if cipher is None else cipher[0]
        return header, start, self.ciphers[header]

    def head(self, session_id: str) -> bytes:
        head = self.heads.get(session_id)
        if head is None:
            head = self.heads[session_id] = _event_aad_head(session_id)
        return head

    def tail(self, event_type: str, schema_version: int) -> tuple[int, bytes]:
        tail = self.tails[event_type] = (schema_version, _event_aad_tail(event_type, schema_version))
        return tail


def _kept(page: Sequence[_Row], skipped: list[int]) -> Sequence[_Row]:
    """``page`` without the rows at ``skipped`` (erased rows the global feed leaves out)."""
    if not skipped:
        return page
    left_out = set(skipped)
    return [row for index, row in enumerate(page) if index not in left_out]


def _erased(stored: StoredEvent, data: bytes, start: int) -> ErasedError:
    """The error that stands for a row whose data key was deleted (its payload ``data``, the nonce at ``start``)."""
    key_id = data[_HEADER.size : start].decode()
    return ErasedError(
        stored.session_id, f"its data key {key_id!r} was deleted", version=stored.version, position=stored.position
    )


def _undecryptable(stored: StoredEvent, data: bytes, start: int, exc: Exception) -> DecryptionError:
    """The error for a row whose payload ``data`` (the nonce at ``start``) does not decrypt."""
    error = DecryptionError(
        stored.session_id,
        stored.version,
        stored.type,
        f"the payload does not decrypt under key {data[_HEADER.size : start].decode()!r}: "
        "wrong key, or modified ciphertext",
        position=stored.position,
    )
    error.__cause__ = exc
    return error


def _pack(key_id: str, nonce: bytes, sealed: bytes) -> bytes:
    name = key_id.encode()
    return _HEADER.pack(SEAL_MARK, _FORMAT, len(name)) + name + nonce + sealed


def _parse(data: bytes, session_id: str, version: int, what: str, position: int) -> tuple[str, bytes, bytes]:
    """A sealed payload's key id, nonce and ciphertext (with its tag); see :data:`_HEADER`."""
    start = _HEADER.size + int.from_bytes(data[2:4])
    if len(data) < start + _NONCE + 16 or data[1] != _FORMAT:
        detail = "truncated" if len(data) < start + _NONCE + 16 else f"of an unknown format {data[1]}"
        raise DecryptionError(session_id, version, what, f"a damaged sealed payload: {detail}", position=position)
    try:
        key_id = data[_HEADER.size : start].decode()
    except UnicodeDecodeError as exc:
        detail = "a damaged sealed payload: its key id"
        raise DecryptionError(session_id, version, what, detail, position=position) from exc
    return key_id, data[start : start + _NONCE], data[start + _NONCE :]


def _event_aad(session_id: str, event_id: UUID, event_type: str, schema_version: int) -> bytes:
    return _event_aad_head(session_id) + event_id.bytes + _event_aad_tail(event_type, schema_version)


def _event_aad_head(session_id: str) -> bytes:
    return b"event\x00" + session_id.encode() + b"\x00"


def _event_aad_tail(event_type: str, schema_version: int) -> bytes:
    return b"\x00" + event_type.encode() + b"\x00%d" % schema_version


def _snapshot_aad(snapshot: Snapshot) -> bytes:
    return b"\x00".join(
        (
            b"snapshot",
            snapshot.session_id.encode(),
            snapshot.name.encode(),
            b"%d" % snapshot.schema_version,
            b"%d" % snapshot.version,
        )
    )
