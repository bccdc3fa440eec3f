"""What encryption at rest costs: appends and reads with ``Encryption`` against the same without.

* **append**: batches of 10 ~730-byte events appended to one session, sealed with AES-256-GCM under
  the user's data key, against the same appends unsealed (SQLite and PostgreSQL).
* **read**: one 1,000-event session read whole through ``store.read``, opened, against unsealed.
* **read, agent runs**: the same read of a session made of tool-using agent runs (:func:`agent_runs`:
  run started, user message, assistant message with a tool call, tool call started and completed,
  the tool's result as a message, the answer, run completed; 90 bytes to 2.6 KB, about 900 bytes on
  average), beside the row of equal 730-byte messages: the cost of a row depends on its size.

Run one case with ``python -m benchmarks.encryption --case NAME …``; ``python -m benchmarks`` runs them all.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks._harness import Case, Comparison, Sample, Timer, analyze_postgres, case_main, message_pool, temp_db
from benchmarks.engine import _timed
from benchmarks.postgres import URL, _fresh_schema
from kern_events import (
    Encryption,
    Event,
    KeyringFile,
    MessageAdded,
    PostgresEventStore,
    RunCompleted,
    RunStarted,
    SessionStarted,
    SqliteEventStore,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
)
from kern_events.stores._base import BaseEventStore

__all__ = ["NOTES", "comparisons"]

_MODULE = "benchmarks.encryption"
_SESSION = "sealed-session"

NOTES = """\
encryption rows: ours = the store with Encryption(KeyringFile(...)) (a data key per user, cached after the
  first use; each payload sealed with AES-256-GCM and a synthetic nonce, an HMAC-SHA256 of the payload);
  reference = the same store without it. Same events, same batches. Target: within 15%. A read opens a
  page's payloads in one pass (a key's rows recognised by their header, the key looked up once per page)
  into a list the codec decodes beside the rows' envelopes, as it decodes a clear page: no stored event is
  rebuilt around a plaintext, and PostgreSQL decodes sealed rows straight from the driver's rows as it does
  clear ones. Measured in one process (minimum of 100 whole reads; the pass alone: minimum of 9x20 over
  a 1,000-row page; SQLite, 730-byte rows): the clear read costs about 2.6 us a row (fetch 1.65, decode
  0.8), the sealed one about 1.2 us more, nearly all of it the opening pass (1.07): the AES-GCM call 0.55
  (cryptography 50), slicing out nonce and ciphertext 0.12 (a memoryview or decrypt_into measured slower),
  the associated data 0.12, the rest of the loop 0.28 (the header check, the cached parts, the list); the
  decode after it costs what the clear one does. PostgreSQL the same: clear 2.3 us a row, sealed 1.2 more.
  The AES-GCM call and its slices alone are a quarter of a clear row, so one call per row cannot read
  within 15%; larger events (agent runs, 2.6 KB tool results) cost a little more."""


_DOCUMENT = (
    "Revenue in the northern region grew by eleven percent over the quarter, driven by renewals of the "
    "enterprise contracts signed last year and by the new partner channel; the southern region was flat. "
    "Costs rose with the hiring plan. "
) * 2


def agent_runs(runs: int = 16) -> list[Event]:
    """The events of ``runs`` tool-using agent runs, eight each (see the module docstring), from
    90 bytes (run completed) to about 2.6 KB (a tool result of five documents) in MessagePack."""
    events: list[Event] = []
    for index in range(runs):
        run_id = f"run-{index:04d}"
        call = ToolCallRequest(
            tool_call_id=f"call-{index:04d}",
            tool_name="search_documents",
            arguments={"query": f"quarterly revenue by region {index}", "limit": 5},
        )
        documents = [{"id": f"doc-{index}-{n}", "score": 0.9 - n / 10, "text": _DOCUMENT[n:]} for n in range(5)]
        events += [
            RunStarted(run_id=run_id, agent_id="analyst", input=f"How did revenue develop last quarter? ({index})"),
            MessageAdded(run_id=run_id, role="user", content=f"How did revenue develop last quarter? ({index})"),
            MessageAdded(run_id=run_id, role="assistant", content=_DOCUMENT[:300], tool_calls=(call,)),
            ToolCallStarted(run_id=run_id, tool_call_id=call.tool_call_id, tool_name=call.tool_name),
            ToolCallCompleted(
                run_id=run_id, tool_call_id=call.tool_call_id, tool_name=call.tool_name, result=documents, duration=0.4
            ),
            MessageAdded(run_id=run_id, role="tool", content=documents, tool_call_id=call.tool_call_id),
            MessageAdded(run_id=run_id, role="assistant", content=(_DOCUMENT * 3)[index : index + 1200]),
            RunCompleted(run_id=run_id, output="Revenue grew by eleven percent in the north."),
        ]
    return events


def _keyring(directory: str) -> Encryption:
    return Encryption(KeyringFile(Path(directory) / "keys.json"))


async def _appends(store: BaseEventStore, events: int, batch: int, pool: Sequence[Event] | None = None) -> Sample:
    """A session started for user ``u-1``, then ``events`` more from ``pool`` (equal 730-byte messages
    if not given) appended ``batch`` at a time, timed."""
    pool = pool or message_pool()
    await store.append(_SESSION, [SessionStarted(session_type="agent", user_id="u-1")])
    version = 1
    with Timer() as timer:
        while version <= events:
            count = min(batch, events + 1 - version)
            appended = [pool[(version + n) % len(pool)] for n in range(count)]
            version = (await store.append(_SESSION, appended, expected_version=version)).to_version
    return Sample(appends=-(-events // batch), events=events, seconds=timer.seconds)


async def _read(store: BaseEventStore, repeats: int, pool: Sequence[Event] | None) -> Sample:
    await _appends(store, 999, 999, pool)

    async def whole() -> int:
        return len([record async for record in store.read(_SESSION)])

    return await _timed(repeats, whole)()


def _run(args: argparse.Namespace) -> Sample:
    async def on(store: BaseEventStore) -> Sample:
        if args.what == "append":
            return await _appends(store, args.batches * 10, 10)
        return await _read(store, args.repeats, agent_runs() if args.events == "agent-runs" else None)

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
        sizes = {**sizes, "events": "agent-runs"}
        rows.append(
            Comparison(
                f"{label}, read 1,000 agent-run events encrypted vs not",
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
    parser.add_argument("--events", choices=("messages", "agent-runs"), default="messages")
    case_main({"run": _run}, parser)


if __name__ == "__main__":
    main()
