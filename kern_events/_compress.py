"""Compressed MessagePack documents, told apart from plain ones by their first byte, so that bytes
written before compression existed (or below its threshold) read back unchanged.

A compressed document is itself one MessagePack value: an extension value of type
:data:`ZLIB_EXT` holding a zlib stream (with its Adler-32 check) of the original document. Event
payloads and checkpoints are MessagePack maps, so none of them ever starts with an extension
header: a reader looks at one byte to know whether to inflate. Only documents larger than the
caller's threshold are compressed, and only when that makes them smaller.
"""

from __future__ import annotations

import zlib

import msgspec

__all__ = [
    "CHECKPOINT_COMPRESS_ABOVE",
    "ZLIB_EXT",
    "CompressedDataError",
    "compress",
    "decompress",
    "is_compressed",
]

ZLIB_EXT = 1
"""The MessagePack extension type of a zlib-compressed document. Never reuse it for another format."""

CHECKPOINT_COMPRESS_ABOVE = 1024
"""Checkpoints (session views, run views, state) above this many bytes are stored compressed: a
whole-session view at 1,000 runs is ~1.9 MB and compresses ~34x at level 1; a small state stays as it is."""

_LEVEL = 1
"""zlib's fastest: a 1,000-run view (1.9 MB) in ~4.5 ms here to 55 KB (34x), against ~12 ms and
48 KB at the default level 6; the view is written inside a run's append, every 1,000 events, and
its size grows with the session, so the write's time weighs more than 13 % of a 34x smaller size.
Reading it back costs about the same either way (get_session at 1,000 runs: 4.7-5.4 ms plain,
5.0-5.4 compressed, the 1.9 MB no longer read from the file paying for the inflate)."""

_EXT_HEADS = frozenset({0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8})
"""First bytes of a MessagePack extension value (ext 8/16/32 and fixext 1-16); no map starts so."""


class CompressedDataError(msgspec.DecodeError):
    """Bytes that start as a compressed document but do not inflate (damaged, or a format this
    release does not know). A ``msgspec.DecodeError``, so whoever handles bytes that do not decode
    (a checkpoint ignored and rebuilt, a payload reported corrupt) handles these too."""


def compress(document: bytes, above: int) -> bytes:
    """``document`` compressed if it is larger than ``above`` bytes and compression makes it smaller;
    else ``document`` itself."""
    if len(document) <= above:
        return document
    packed = msgspec.msgpack.encode(msgspec.msgpack.Ext(ZLIB_EXT, zlib.compress(document, _LEVEL)))
    return packed if len(packed) < len(document) else document


def is_compressed(data: bytes) -> bool:
    """Whether ``data`` starts like a compressed document (one byte looked at)."""
    return bool(data) and data[0] in _EXT_HEADS


def decompress(data: bytes) -> bytes:
    """The document ``data`` holds: inflated if it was compressed, else ``data`` itself; raises
    :class:`CompressedDataError` for bytes that start as a compressed document and do not inflate."""
    if not is_compressed(data):
        return data
    try:
        value = msgspec.msgpack.decode(data)
    except msgspec.DecodeError as exc:
        raise CompressedDataError(f"a compressed document that does not decode: {exc}") from exc
    if not isinstance(value, msgspec.msgpack.Ext) or value.code != ZLIB_EXT:
        code = value.code if isinstance(value, msgspec.msgpack.Ext) else None
        raise CompressedDataError(f"an extension value of type {code}, not a compressed document ({ZLIB_EXT})")
    try:
        return zlib.decompress(value.data)
    except zlib.error as exc:
        raise CompressedDataError(f"a compressed document that does not inflate: {exc}") from exc
