"""What DynamoDB would bill for the agent workload: capacity units per appended run and per context load,
computed from the sizes of the items ``DynamoEventStore`` writes and reads. No timing rows: the
emulator's speed says nothing about DynamoDB's.

The runs are the peer workload's (``benchmarks.peers.kern``: the reference Agent's three appends of a
run with a tool call, a checkpoint every 1,000 events), recorded on an in-memory db; each append is
turned into the items ``DynamoEventStore`` puts in its ``TransactWriteItems`` (built by the store's own
item builders, so the layout cannot drift from the store). AWS's rules: an item's size is its
attribute names' and values' bytes (a number about one byte per two digits, plus one); a transactional
write costs 2 WCU per KB of each item (rounded up per item); a strongly consistent read 1 RCU per 4 KB,
rounded up per ``GetItem`` and per ``Query`` page (the items a query reads, summed, filtered or not).

Usage: ``python -m benchmarks.dynamodb [--quick]`` prints the table; ``python -m benchmarks`` includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Sequence
from typing import Any

from benchmarks.peers import kern
from benchmarks.peers._workload import agent_runs
from kern_events import InMemoryDb
from kern_events.checkpoints import STATE_CHECKPOINT
from kern_events.db import CONTEXT_TAIL
from kern_events.events import Event
from kern_events.records import AppendResult
from kern_events.sessions import Session

__all__ = ["NOTES", "report", "unavailable"]

NOTES = """\
Capacity units computed from item sizes (no timing: the emulator's speed is not DynamoDB's). A run is
the Agent's three appends (three transactions, each with the head's read before it); a context load is
what the Agent reads before a run (head, state checkpoint, newest 65 events, the state events after the
checkpoint: four strongly consistent reads). The state events after the checkpoint are read with a
filter, and DynamoDB bills every item a query reads, so that read grows with the events since the last
checkpoint (one every 1,000 events) until the next one is written."""


def unavailable() -> str | None:
    """A reason the subject cannot run, or ``None``: it needs the dynamodb extra installed (for the
    store's module), and no server (the items are built offline)."""
    try:
        import aioboto3  # noqa: F401
    except ImportError:
        return "the dynamodb extra is not installed (pip install -e '.[dynamodb]')"
    return None


def _value_size(value: dict[str, Any]) -> int:
    ((kind, inner),) = value.items()
    if kind == "S":
        return len(str(inner).encode())
    if kind == "B":
        return len(inner)
    if kind == "N":
        digits = len(str(inner).lstrip("-").replace(".", "").strip("0")) or 1
        return (digits + 1) // 2 + 1
    raise ValueError(kind)


def item_size(item: dict[str, Any]) -> int:
    """An item's size as DynamoDB counts it: names' UTF-8 bytes plus values' sizes."""
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _items_of_append(dynamo: Any, session_id: str, events: Sequence[Event], result: AppendResult) -> list[int]:
    """The sizes of the items of the append's transaction, built by ``DynamoEventStore``'s own builders."""
    from kern_events.backend import advance_index

    pending = dynamo._encode(events, result.event_ids, None)
    hashes = dynamo.chain.hashes(session_id, None, result.from_version - 1, pending, result.recorded_at)
    info = advance_index(None, session_id, events, result.to_version, result.recorded_at)
    puts = [dynamo._head_put(session_id, result.from_version - 1, result.to_version, hashes[-1], info)]
    for offset, (new, chain) in enumerate(zip(pending, hashes, strict=True)):
        puts += dynamo._event_puts(session_id, result.from_version + offset, new, chain, result.recorded_at)
    return [item_size(put["Put"]["Item"]) for put in puts]


def _rcu(size: int) -> int:
    return max(1, math.ceil(size / 4096))


async def _measure(session_counts: Sequence[int]) -> list[tuple[str, int, int, float, float]]:
    """Rows: (what, items, bytes, WCU, RCU)."""
    from kern_events.stores.dynamodb import DynamoEventStore

    dynamo = DynamoEventStore("bench")  # never opened: only its item builders are used
    rows: list[tuple[str, int, int, float, float]] = []
    async with InMemoryDb() as db:
        session = await Session.open(db, "bench", agent_id="bench-agent", user_id="bench-user")
        appends: list[list[int]] = []
        append = db.store.append

        async def recorded(session_id: str, events: Sequence[Event], **options: Any) -> AppendResult:
            result = await append(session_id, events, **options)
            if session_id == "bench":
                appends.append(_items_of_append(dynamo, session_id, events, result))
            return result

        db.store.append = recorded  # type: ignore[method-assign]
        done = 0
        for runs in session_counts:
            for run in agent_runs(done + 1, runs - done):
                before = len(appends)
                await kern._persist(session, run)  # the Agent's three appends, as the kern peer does
                last_run = appends[before:]
            done = runs
            sizes = [size for items in last_run for size in items]
            wcu = sum(2 * math.ceil(size / 1024) for size in sizes)
            head_reads = len(last_run)  # the head's GetItem before each transaction (an item under 4 KB)
            rows.append((f"append one run (session at {runs} runs)", len(sizes), sum(sizes), wcu, head_reads))
            event_sizes = [items[1 + 2 * n + 1] for items in appends for n in range((len(items) - 1) // 2)]
            head_size = appends[-1][0]
            version = await db.store.current_version("bench")
            checkpoint = await db.store.load_snapshot("bench", STATE_CHECKPOINT)
            since = version - (checkpoint.version if checkpoint is not None else 0)
            checkpoint_size = 0 if checkpoint is None else len(checkpoint.data) + 60
            tail = event_sizes[-(CONTEXT_TAIL + 1) :]
            after = event_sizes[max(0, len(event_sizes) - since) :] if since else []
            reads = [head_size, checkpoint_size, sum(tail), sum(after)]
            rows.append(
                (
                    f"context load (session at {runs} runs, {since} events since the checkpoint)",
                    1 + len(tail) + len(after) + (checkpoint is not None),
                    sum(reads),
                    0,
                    sum(_rcu(size) for size in reads),
                )
            )
    return rows


def report(quick: bool) -> tuple[str, list[dict[str, object]]]:
    """The table and its rows as JSON."""
    counts = (10, 100) if quick else (10, 100, 1000)
    rows = asyncio.run(_measure(counts))
    header = f"{'':<70} {'items':>6} {'bytes':>9} {'WCU':>6} {'RCU':>6}"
    lines = [header] + [
        f"{what:<70} {items:>6} {size:>9} {wcu:>6.0f} {rcu:>6.0f}" for what, items, size, wcu, rcu in rows
    ]
    samples = [
        {"case": what, "items": items, "bytes": size, "wcu": wcu, "rcu": rcu} for what, items, size, wcu, rcu in rows
    ]
    return "\n".join(lines), samples


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dynamodb", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="sessions of 10 and 100 runs only")
    text, _ = report(parser.parse_args().quick)
    print(f"{text}\n\n{NOTES}")


if __name__ == "__main__":
    main()
