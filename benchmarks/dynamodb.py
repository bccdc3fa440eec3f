"""What DynamoDB would bill for the agent workload: capacity units per appended run and per context load,
computed from the sizes of the items ``DynamoEventStore`` writes and reads. No timing rows: the
emulator's speed says nothing about DynamoDB's.

The runs are the peer workload's (``benchmarks.peers.kern``: the reference Agent's three appends of a
run with a tool call, a checkpoint every 1,000 events), recorded on an in-memory db; each append is
turned into the items ``DynamoEventStore`` puts in its ``TransactWriteItems`` (built by the store's own
item builders, so the layout cannot drift from the store). AWS's rules: an item's size is its
attribute names' and values' bytes (a number about one byte per two digits, plus one); a transactional
write costs 2 WCU per KB of each item (rounded up per item); a strongly consistent read 1 RCU per 4 KB,
rounded up per ``GetItem`` and per ``Query`` page (the items a query reads, summed, filtered or not);
an index write costs 1 WCU per KB of the projected item, twice when the update changes the item's index
key (delete and put): the head's ``gt`` changes with every append, so each append writes the head to
``by_time`` and ``by_user`` twice each, and a state event once to ``by_type``.

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
from kern_events.events import Event
from kern_events.records import AppendResult
from kern_events.sessions import Session
from projections.session import STATE_EVENT_TYPES

__all__ = ["NOTES", "report", "unavailable"]

NOTES = """\
Capacity units computed from item sizes (no timing: the emulator's speed is not DynamoDB's). A run is
the Agent's three appends (three transactions, each with the head's read before it); its WCU include
the index writes (the head to by_time and by_user, a state event to by_type). A context load is what
the Agent reads before a run (head, state checkpoint, the newest events as far back as its last load's
window took plus half and one more, at most 65, the state events after the checkpoint: four strongly
consistent reads). The state events after the checkpoint come from the
sparse local index by_type, which holds only state events, so that read costs what it returns however
many other events followed the checkpoint: the load is flat in the session's length."""


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


def _items_of_append(
    dynamo: Any, session_id: str, events: Sequence[Event], result: AppendResult, info: Any
) -> list[dict[str, Any]]:
    """The items of the append's transaction, built by ``DynamoEventStore``'s own builders (``info``:
    the session's index row after it)."""
    pending = dynamo._encode(events, result.event_ids, None)
    hashes = dynamo.chain.hashes(session_id, None, result.from_version - 1, pending, result.recorded_at)
    puts = [dynamo._head_put(session_id, result.from_version - 1, result.to_version, hashes[-1], info)]
    for offset, (new, chain) in enumerate(zip(pending, dynamo.chain.kept(hashes), strict=True)):
        puts += dynamo._event_puts(session_id, result.from_version + offset, new, chain, result.recorded_at)
    return [put["Put"]["Item"] for put in puts]


def _wcu(items: Sequence[dict[str, Any]]) -> int:
    """A transaction's WCU with its index writes: 2 per KB of each item, the head twice to each global
    index it is in (its ``gt`` key changes), an item of ``by_type`` once."""
    wcu = 0
    for item in items:
        kb = math.ceil(item_size(item) / 1024)
        wcu += 2 * kb
        if item["sk"]["S"] == "h":
            wcu += 2 * kb * (("gs" in item) + ("gu" in item))
        elif "x" in item:
            wcu += kb
    return wcu


def _rcu(size: int) -> int:
    return max(1, math.ceil(size / 4096))


async def _measure(session_counts: Sequence[int]) -> list[tuple[str, int, int, float, float]]:
    """Rows: (what, items, bytes, WCU, RCU)."""
    from kern_events.stores.dynamodb import DynamoEventStore

    dynamo = DynamoEventStore("bench")  # never opened: only its item builders are used
    rows: list[tuple[str, int, int, float, float]] = []
    async with InMemoryDb() as db:
        session = await Session.open(db, "bench", agent_id="bench-agent", user_id="bench-user")
        appends: list[list[dict[str, Any]]] = []
        append = db.store.append

        async def recorded(session_id: str, events: Sequence[Event], **options: Any) -> AppendResult:
            result = await append(session_id, events, **options)
            if session_id == "bench":
                info = await db.store.get_session_info(session_id)
                appends.append(_items_of_append(dynamo, session_id, events, result, info))
            return result

        db.store.append = recorded  # type: ignore[method-assign]
        done = 0
        for runs in session_counts:
            for run in agent_runs(done + 1, runs - done):
                before = len(appends)
                await kern._persist(session, run)  # the Agent's three appends, as the kern peer does
                last_run = appends[before:]
            done = runs
            sizes = [item_size(item) for items in last_run for item in items]
            wcu = sum(_wcu(items) for items in last_run)
            head_reads = len(last_run)  # the head's GetItem before each transaction (an item under 4 KB)
            rows.append((f"append one run (session at {runs} runs)", len(sizes), sum(sizes), wcu, head_reads))
            events = [item for items in appends for item in items if item["sk"]["S"].startswith("e#")]
            head_size = item_size(appends[-1][0])
            version = await db.store.current_version("bench")
            checkpoint = await db.store.load_snapshot("bench", STATE_CHECKPOINT)
            since = version - (checkpoint.version if checkpoint is not None else 0)
            checkpoint_size = 0 if checkpoint is None else len(checkpoint.data) + 60
            # the Agent's load, twice: the second reads as far back as the first one's window took
            # (with room for a longer run), as every load after a process's first does
            await db.get_context("bench", num_history_runs=kern.HISTORY_RUNS)
            reach = db._context_tails.tail(("bench", kern.HISTORY_RUNS, None, True))
            tail = [item_size(item) for item in events[-(reach + 1) :]]
            # the items the read of the state events after the checkpoint reads: from by_type (only the
            # state events) when the store indexes their types, else a filtered query reads every event
            since_events = events[max(0, len(events) - since) :] if since else []
            by_type = dynamo._indexed_types.issuperset(STATE_EVENT_TYPES)
            after = [item_size(item) for item in since_events if "x" in item or not by_type]
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
