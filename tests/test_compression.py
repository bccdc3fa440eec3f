"""Checkpoints are stored compressed above a size, and checkpoints written before that (plain
MessagePack) still read: a session's whole view grows with the session and three are kept, so
uncompressed they were most of a long session's bytes (~4,900 B per run at 1,000 runs on SQLite)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from kern_events import SqliteDb
from kern_events._compress import CHECKPOINT_COMPRESS_ABOVE, CompressedDataError, compress, decompress, is_compressed
from kern_events.checkpoints import STATE_CHECKPOINT, STATE_SCHEMA_VERSION, decode_state, encode_state
from kern_events.records import Snapshot
from kern_events.testing._samples import conversation
from projections.runs import decode_run, encode_run
from projections.session import SESSION_PROJECTION, SESSION_SCHEMA_VERSION, decode_view


async def _session(db: SqliteDb, runs: int) -> None:
    for batch in conversation(runs=runs):
        await db.store.append("c", batch)


def test_a_small_document_is_stored_as_it_is_and_a_large_one_compressed() -> None:
    small = msgspec.msgpack.encode({"k": "v"})
    assert compress(small, CHECKPOINT_COMPRESS_ABOVE) is small
    large = msgspec.msgpack.encode({"k": "v" * 10_000})
    packed = compress(large, CHECKPOINT_COMPRESS_ABOVE)
    assert is_compressed(packed) and not is_compressed(large)
    assert len(packed) < len(large) // 50
    assert decompress(packed) == large
    assert decompress(large) is large


def test_bytes_that_only_start_like_a_compressed_document_are_a_decode_error() -> None:
    with pytest.raises(CompressedDataError, match="does not inflate"):
        decompress(msgspec.msgpack.encode(msgspec.msgpack.Ext(1, b"not zlib")))
    with pytest.raises(CompressedDataError, match="extension value of type 7"):
        decompress(msgspec.msgpack.encode(msgspec.msgpack.Ext(7, b"x")))
    with pytest.raises(msgspec.DecodeError):  # what a checkpoint reader already treats as "rebuild it"
        decode_view(msgspec.msgpack.encode(msgspec.msgpack.Ext(1, b"")))


async def test_checkpoints_are_stored_compressed_and_read_back_equal(tmp_path: Path) -> None:
    async with SqliteDb(tmp_path / "c.db", checkpoint_every=None) as db:
        await _session(db, 60)
        await db.save_checkpoint("c")
        stored = await db.store.load_snapshot("c", SESSION_PROJECTION)
        assert stored is not None and is_compressed(stored.data)
        view = await db.get_session("c")
        plain = msgspec.msgpack.encode(view)
        assert len(stored.data) * 10 < len(plain), (len(stored.data), len(plain))
        assert decode_view(stored.data) == view
        run = view.runs[-1]
        assert decode_run(encode_run(run)) == run
        state = {"notes": ["a long note"] * 200}
        assert is_compressed(encode_state(state)) and decode_state(encode_state(state)) == state


async def test_checkpoints_written_uncompressed_by_earlier_releases_still_read(tmp_path: Path) -> None:
    async with SqliteDb(tmp_path / "old.db", checkpoint_every=None) as db:
        await _session(db, 60)
        expected = await db.get_session("c")
        info = await db.store.get_session_info("c")
        assert info is not None
        version = info.version
        old_view = msgspec.msgpack.encode(expected)  # what encode_view wrote before compression
        assert len(old_view) > CHECKPOINT_COMPRESS_ABOVE and not is_compressed(old_view)
        assert decode_view(old_view) == expected
        old_state = msgspec.msgpack.encode({**expected.session_state, "from": "the checkpoint"})
        for name, schema, data in (
            (SESSION_PROJECTION, SESSION_SCHEMA_VERSION, old_view),
            (STATE_CHECKPOINT, STATE_SCHEMA_VERSION, old_state),
        ):
            await db.store.save_snapshot(
                Snapshot(session_id="c", name=name, schema_version=schema, version=version, data=data)
            )
    async with SqliteDb(tmp_path / "old.db", checkpoint_every=None) as db:
        assert await db.get_session("c") == expected
        # the state is read from the old checkpoint (its marker shows it was used, not rebuilt)
        assert (await db.get_session_state("c"))["from"] == "the checkpoint"
