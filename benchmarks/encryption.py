"""What encryption at rest costs: appends and reads with ``Encryption`` against the same without.

* **append**: batches of 10 ~730-byte events appended to one session, sealed with AES-256-GCM under
  the user's data key, against the same appends unsealed (SQLite and PostgreSQL).
* **read**: one 1,000-event session read whole through ``store.read``, opened, against unsealed.

Run one case with ``python -m benchmarks.encryption --case NAME …``; ``python -m benchmarks`` runs them all.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from benchmarks._harness import Case, Comparison, Sample, Timer, analyze_postgres, case_main, message_pool, temp_db
from benchmarks.engine import _timed
from benchmarks.postgres import URL, _fresh_schema
from kern_events import Encryption, KeyringFile, PostgresEventStore, SessionStarted, SqliteEventStore
from kern_events.stores._base import BaseEventStore

__all__ = ["NOTES", "comparisons"]

_MODULE = "benchmarks.encryption"
_SESSION = "sealed-session"

NOTES = """\
encryption rows: ours = the store with Encryption(KeyringFile(...)) (a data key per user, cached after the
  first use; each payload sealed with AES-256-GCM and a synthetic nonce, an HMAC-SHA256 of the payload);
  reference = the same store without it. Same events, same batches. Target: within 15%. A read opens a
  page in one pass (one key lookup per page); what is left is the AES-GCM decryption of each row, about
  1-2 us per call in cryptography, which is most of the gap on a 1,000-row read."""


def _keyring(directory: str) -> Encryption:
    return Encryption(KeyringFile(Path(directory) / "keys.json"))


async def _appends(store: BaseEventStore, events: int, batch: int) -> Sample:
    """A session started for user ``u-1``, then ``events`` more appended ``batch`` at a time, timed."""
    pool = message_pool()
    await store.append(_SESSION, [SessionStarted(session_type="agent", user_id="u-1")])
    version = 1
    with Timer() as timer:
        while version <= events:
            count = min(batch, events + 1 - version)
            appended = [pool[(version + n) % len(pool)] for n in range(count)]
            version = (await store.append(_SESSION, appended, expected_version=version)).to_version
    return Sample(appends=-(-events // batch), events=events, seconds=timer.seconds)


async def _read(store: BaseEventStore, repeats: int) -> Sample:
    await _appends(store, 999, 999)

    async def whole() -> int:
        return len([record async for record in store.read(_SESSION)])

    return await _timed(repeats, whole)()


def _run(args: argparse.Namespace) -> Sample:
    async def on(store: BaseEventStore) -> Sample:
        if args.what == "append":
            return await _appends(store, args.batches * 10, 10)
        return await _read(store, args.repeats)

    async def run(directory: str) -> Sample:
        encryption = _keyring(directory) if args.side == "ours" else None
        if args.store == "postgres":
            async with (
                _fresh_schema(create_tables=False) as schema,
                PostgresEventStore(URL, schema=schema, pool_size=2) as store,
            ):
                store.encryption = encryption
                if args.what == "read":
                    await analyze_postgres(URL)
                return await on(store)
        with temp_db() as path:
            async with SqliteEventStore(path, synchronous="NORMAL") as store:
                store.encryption = encryption
                return await on(store)

    with tempfile.TemporaryDirectory(prefix="kern-bench-keys-") as directory:
        return asyncio.run(run(directory))


def _case(name: str, **options: object) -> Case:
    return Case.of(_MODULE, name, **options)


def comparisons(quick: bool) -> list[Comparison]:
    """Sealed against unsealed appends and reads, on SQLite and PostgreSQL; see :data:`NOTES`."""
    batches, repeats = (200, 20) if quick else (1000, 100)
    rows = []
    for store, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        sizes = {"store": store, "what": "append", "batches": batches}
        rows.append(
            Comparison(
                f"{label}, append 10-event batches encrypted vs not",
                _case("run", side="ours", **sizes),
                _case("run", side="plain", **sizes),
                "throughput",
                quick=store == "sqlite",
            )
        )
        sizes = {"store": store, "what": "read", "repeats": repeats}
        rows.append(
            Comparison(
                f"{label}, read 1,000-event session encrypted vs not",
                _case("run", side="ours", **sizes),
                _case("run", side="plain", **sizes),
                "latency",
            )
        )
    return rows


def unavailable() -> str | None:
    """Needs cryptography (the crypto extra) and, for its PostgreSQL rows, the server."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return "needs the crypto extra (cryptography)"
    from benchmarks.postgres import unavailable as postgres_unavailable

    return postgres_unavailable()


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--side", choices=("ours", "plain"), default="ours")
    parser.add_argument("--what", choices=("append", "read"), default="append")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    case_main({"run": _run}, parser)


if __name__ == "__main__":
    main()
