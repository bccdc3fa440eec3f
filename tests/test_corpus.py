"""Payloads written by earlier releases must keep decoding: every release adds a directory under
``tests/corpus/`` (never edits an old one) with one stored payload of every event type
(``events.json``) and a SQLite file whose rows were written by that release's store
(``sessions.sqlite3``). A change to an event type that breaks an old payload fails here until it
gets an upcaster (:func:`kern_events.register_upcaster`).

``python -m tests.test_corpus`` writes the current release's directory, once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import kern_events
from kern_events import MsgpackCodec, SqliteDb, StoredEvent, UnknownEvent, event_id_for, registered_event_types
from kern_events.testing._samples import conversation, every_event_type, stored_once

CORPUS = Path(__file__).parent / "corpus"
RELEASES = sorted(path for path in CORPUS.iterdir() if path.is_dir()) if CORPUS.is_dir() else []


def _entries(release: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((release / "events.json").read_text())
    return entries


def test_there_is_a_corpus_of_this_release() -> None:
    assert (CORPUS / kern_events.__version__ / "events.json").is_file()
    assert (CORPUS / kern_events.__version__ / "sessions.sqlite3").is_file()


def test_the_corpus_holds_every_built_in_event_type_of_this_release() -> None:
    tags = {entry["type"] for entry in _entries(CORPUS / kern_events.__version__)}
    assert set(registered_event_types()) - tags <= {tag for tag in registered_event_types() if "." in tag}


@pytest.mark.parametrize("release", RELEASES, ids=[path.name for path in RELEASES])
def test_every_payload_of_every_release_still_decodes(release: Path) -> None:
    codec = MsgpackCodec()
    for number, entry in enumerate(_entries(release), start=1):
        stored = StoredEvent(
            session_id="corpus",
            version=number,
            position=number,
            event_id=event_id_for("corpus", str(number)),
            type=entry["type"],
            schema_version=entry["schema_version"],
            data=base64.b64decode(entry["data"]),
            recorded_at=0.0,
        )
        event = codec.decode(stored).event
        assert not isinstance(event, UnknownEvent), f"{entry['type']} is no longer a known type"
        cls = type(event)
        if cls.schema_version == entry["schema_version"]:  # unchanged since: it reads back as written
            assert json.loads(msgspec.json.encode(event)) == entry["value"], entry["type"]


@pytest.mark.parametrize("release", RELEASES, ids=[path.name for path in RELEASES])
async def test_every_session_of_every_release_still_reads_and_folds(release: Path, tmp_path: Path) -> None:
    copy = tmp_path / "old.sqlite3"
    shutil.copy(release / "sessions.sqlite3", copy)
    async with SqliteDb(copy) as db:
        sessions = await db.get_sessions(limit=None)
        assert {info.session_id for info in sessions} == {"every-type", "conversation"}
        types = [record.type async for record in db.store.read("every-type")]
        assert types == [entry["type"] for entry in _entries(release)]
        view = await db.get_session("conversation")
        assert [run.status for run in view.runs] == ["completed", "completed"]
        assert (await db.get_session_state("conversation"))["turns"] == 2
        assert len([record async for record in db.store.read_all()]) == len(types) + sum(map(len, conversation()))
        report = await db.verify()
        assert report.ok, str(report)  # the hash chain as that release wrote it still verifies


def _write(release: Path) -> None:
    codec = MsgpackCodec()
    entries = []
    for event in [*every_event_type(), *stored_once()]:
        pending = codec.encode(event, event_id_for("corpus", "x"))
        entries.append(
            {
                "type": pending.type,
                "schema_version": pending.schema_version,
                "data": base64.b64encode(pending.data).decode(),
                "value": msgspec.to_builtins(event),
            }
        )
    release.mkdir(parents=True)
    (release / "events.json").write_text(json.dumps(entries, indent=1) + "\n")
    asyncio.run(_write_sessions(release / "sessions.sqlite3"))
    for suffix in ("-wal", "-shm"):
        (release / f"sessions.sqlite3{suffix}").unlink(missing_ok=True)


async def _write_sessions(path: Path) -> None:
    async with SqliteDb(path, synchronous="FULL") as db:
        for event in [*every_event_type(), *stored_once()]:
            await db.store.append("every-type", [event])
        for batch in conversation():
            await db.store.append("conversation", batch)


if __name__ == "__main__":
    target = CORPUS / kern_events.__version__
    if target.exists():
        sys.exit(f"{target} exists: a release's corpus is written once and never changed")
    _write(target)
    print(f"wrote {target}")
