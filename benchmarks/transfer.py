"""What export and import cost, and that they stream: against the raw driver and plain appends.

* **export**: ``export_events`` of a SQLite database (sessions of ten ~730-byte events in ten appends
  each) to a file, against a raw ``SELECT`` of the same rows written as JSON lines with base64 payloads.
* **import**: ``import_events`` of that file into a fresh SQLite file or PostgreSQL schema (the check
  pass, then the appends), against appending the same events with ``store.append``, 16 sessions at once.
* **memory**: peak RSS of a fresh process exporting then importing ten times as many events.

Run one case with ``python -m benchmarks.transfer --case NAME …``; ``python -m benchmarks`` runs them all.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._harness import Case, Comparison, Sample, Timer, case_main, message_pool
from benchmarks.postgres import URL, _fresh_schema
from kern_events import PostgresEventStore, SqliteEventStore, export_events, import_events
from kern_events.stores._base import BaseEventStore

__all__ = ["NOTES", "comparisons"]

_MODULE = "benchmarks.transfer"
_PER_SESSION = 10

NOTES = """\
transfer rows: export = export_events (a page of stored rows at a time, each written as a JSON line with
  its envelope, base64 payload, chain hash and the decoded event) vs a raw SELECT of the rows written as
  JSON lines with base64 payloads (no decoding); import = import_events (every line checked first: the
  format, versions, chain hashes, payloads decoded; then one append per original append, 16 sessions at
  once) vs the same appends through store.append, 16 sessions at once; memory = peak RSS of one process
  exporting and importing 10x the events (flat is the goal)."""


async def _fill(store: BaseEventStore, events: int) -> None:
    pool = message_pool()
    for session in range(events // _PER_SESSION):
        for step in range(_PER_SESSION):
            await store.append(f"s{session:06d}", [pool[(session + step) % len(pool)]])


def _filled(directory: Path, events: int) -> Path:
    """A SQLite database of ``events`` events, written by another process (so this one's RSS is its own)."""
    path = directory / "source.db"
    code = (
        "import asyncio, sys\n"
        "from benchmarks.transfer import _fill\n"
        "from kern_events import SqliteEventStore\n"
        "async def main():\n"
        "    async with SqliteEventStore(sys.argv[1], synchronous='NORMAL') as store:\n"
        "        await _fill(store, int(sys.argv[2]))\n"
        "asyncio.run(main())\n"
    )
    if subprocess.run([sys.executable, "-c", code, str(path), str(events)], check=False).returncode != 0:
        raise SystemExit("filling the database failed")
    return path


async def _export(source: Path, target: Path) -> None:
    async with SqliteEventStore(source) as store:
        with target.open("wb") as file:
            async for line in export_events(store):
                file.write(line)


def _raw_export(source: Path, target: Path) -> None:
    columns = "session_id, version, event_id, type, schema_version, data, recorded_at, chain"
    with sqlite3.connect(source) as connection, target.open("w") as file:
        for row in connection.execute(f"SELECT {columns} FROM kern_events ORDER BY session_id, version"):
            session_id, version, event_id, kind, schema_version, data, recorded_at, chain = row
            line = {
                "session_id": session_id,
                "version": version,
                "event_id": event_id.hex(),
                "type": kind,
                "schema_version": schema_version,
                "data": base64.b64encode(data).decode(),
                "recorded_at": recorded_at,
                "chain": base64.b64encode(chain).decode(),
            }
            file.write(json.dumps(line) + "\n")
    connection.close()


async def _into(args: argparse.Namespace, file: Path, directory: Path) -> float:
    """Seconds to import ``file`` (or, for the reference, to append the same events) into the target."""

    async def on(store: BaseEventStore) -> float:
        with Timer() as timer:
            if args.side == "ours":
                await import_events(store, file)
            else:
                pool, slots = message_pool(), asyncio.Semaphore(16)

                async def session(number: int) -> None:
                    async with slots:
                        for step in range(_PER_SESSION):
                            await store.append(f"s{number:06d}", [pool[(number + step) % len(pool)]])

                await asyncio.gather(*(session(number) for number in range(args.events // _PER_SESSION)))
        return timer.seconds

    if args.store == "postgres":
        async with _fresh_schema(create_tables=False) as schema, PostgresEventStore(URL, schema=schema) as store:
            return await on(store)
    async with SqliteEventStore(directory / "target.db", synchronous="NORMAL") as store:
        return await on(store)


def _run(args: argparse.Namespace) -> Sample:
    with tempfile.TemporaryDirectory(prefix="kern-bench-transfer-") as name:
        directory = Path(name)
        source, file = _filled(directory, args.events), directory / "export.jsonl"
        if args.what == "export":
            with Timer() as timer:
                if args.side == "ours":
                    asyncio.run(_export(source, file))
                else:
                    _raw_export(source, file)
            return Sample(appends=1, events=args.events, seconds=timer.seconds)
        asyncio.run(_export(source, file))
        if args.what == "import":
            seconds = asyncio.run(_into(args, file, directory))
            return Sample(appends=args.events, events=args.events, seconds=seconds)
        args.side, args.store = "ours", "sqlite"
        seconds = asyncio.run(_into(args, file, directory))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        return Sample(appends=1, events=args.events, seconds=seconds, peak_rss=peak)


def _case(**options: object) -> Case:
    return Case.of(_MODULE, "run", **options)


def comparisons(quick: bool) -> list[Comparison]:
    """Export, import and their memory; see :data:`NOTES`."""
    events = 5_000 if quick else 50_000
    rows = [
        Comparison(
            f"SQLite, export {events:,} events vs raw select to JSON",
            _case(what="export", side="ours", events=events),
            _case(what="export", side="raw", events=events),
            "throughput",
        )
    ]
    for store, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        sizes = {"what": "import", "store": store, "events": events}
        rows.append(
            Comparison(
                f"{label}, import {events:,} events vs appending them",
                _case(side="ours", **sizes),
                _case(side="plain", **sizes),
                "throughput",
            )
        )
    rows.append(
        Comparison(
            f"SQLite, export + import {events * 10:,} events vs {events:,}: peak RSS",
            _case(what="memory", events=events * 10),
            _case(what="memory", events=events),
            "memory",
        )
    )
    return rows


def unavailable() -> str | None:
    """The PostgreSQL row needs the server."""
    from benchmarks.postgres import unavailable as postgres_unavailable

    return postgres_unavailable()


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--what", choices=("export", "import", "memory"), default="export")
    parser.add_argument("--side", choices=("ours", "raw", "plain"), default="ours")
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--events", type=int, default=5000)
    case_main({"run": _run}, parser)


if __name__ == "__main__":
    main()
