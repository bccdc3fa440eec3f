"""The LangGraph saver (``kern_events.adapters.langgraph``) on every backend.

Proof 1: LangGraph's own conformance package (``langgraph-checkpoint-conformance``, registered with
``@checkpointer_test`` and run by ``validate()``) passes every capability, base and extended. Then what their
suite has no test for: the single-writer fence, delta-encoded list channels, and the sync methods.
(Proof 2, LangGraph's runtime tests from its sdist, runs in ``.ci/langgraph``.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

pytest.importorskip("langgraph.checkpoint.conformance", reason="needs the langgraph extra")

from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.serde.types import ERROR

from kern_events import (
    BlockingCallError,
    ConcurrencyError,
    InMemoryDb,
    InvalidArgumentError,
    SessionStarted,
    run_blocking,
)
from kern_events.adapters import langgraph as langgraph_adapter
from kern_events.adapters.langgraph import BlobsPut, KernEventsSaver
from kern_events.db import BaseDb
from tests._backends import Backend

CAPABILITY_TESTS = {
    "put": 17,
    "put_writes": 10,
    "get_tuple": 10,
    "list": 16,
    "delete_thread": 5,
    "delete_for_runs": 7,
    "copy_thread": 8,
    "prune": 8,
}


async def test_langgraph_conformance_every_capability_passes(backend: Backend) -> None:
    db = backend.db()

    @checkpointer_test(name=f"KernEventsSaver[{backend.name}]")
    async def factory() -> AsyncIterator[KernEventsSaver]:
        yield KernEventsSaver(db)

    async with db:
        report = await validate(factory)
    failures = {name: result.failures for name, result in report.results.items() if result.passed is False}
    expected = dict(CAPABILITY_TESTS)
    if not backend.truncates:  # delete_for_runs and prune rewrite a thread with truncate_before
        assert set(failures) <= {"delete_for_runs", "prune"}, failures
        assert all("truncate_before" in failure for found in failures.values() for failure in found), failures
        for name in failures:
            expected.pop(name, None)
        failures = {}
    assert not failures, failures
    results = report.results.items()
    kept = set(expected) if not backend.truncates else None
    detected = {
        name: result.tests_passed for name, result in results if result.detected and (kept is None or name in kept)
    }
    assert detected == expected


def _config(thread_id: str, checkpoint_id: str | None = None) -> Any:
    configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def _checkpoint(values: dict[str, Any], versions: dict[str, str]) -> Any:
    return {
        "v": 1,
        "id": str(uuid6(clock_seq=-1)),
        "ts": datetime.now(UTC).isoformat(),
        "channel_values": values,
        "channel_versions": versions,
        "versions_seen": {},
        "pending_sends": [],
        "updated_channels": None,
    }


async def _put(
    saver: KernEventsSaver, thread_id: str, parent: Any, values: dict[str, Any], versions: dict[str, str]
) -> Any:
    """Put a checkpoint after ``parent`` (a config, or None), as the Pregel loop does."""
    config = parent if parent is not None else _config(thread_id)
    return await saver.aput(config, _checkpoint(values, versions), {"source": "loop", "step": 0}, versions)


async def test_second_writer_going_on_from_a_stale_state_is_rejected(backend: Backend) -> None:
    async with backend.db() as db:
        first, second = KernEventsSaver(db), KernEventsSaver(db)
        start = await _put(first, "t", None, {"x": 1}, {"x": first.get_next_version(None, None)})
        await second.aget_tuple(_config("t"))
        await first.aget_tuple(_config("t"))
        winner = await _put(second, "t", start, {"x": 2}, {"x": second.get_next_version("1", None)})
        with pytest.raises(ConcurrencyError) as raised:
            await _put(first, "t", start, {"x": 3}, {"x": first.get_next_version("1", None)})
        with pytest.raises(ConcurrencyError):
            await first.aput_writes(start, [("x", 4)], "task")
        assert raised.value.session_id == "langgraph:t"
        chain = [item.config["configurable"]["checkpoint_id"] async for item in first.alist(_config("t"))]
        assert chain == [winner["configurable"]["checkpoint_id"], start["configurable"]["checkpoint_id"]]
        # Having read the thread again, the first writer goes on from the winner's checkpoint.
        latest = await first.aget_tuple(_config("t"))
        assert latest is not None and latest.checkpoint["channel_values"] == {"x": 2}
        await _put(first, "t", latest.config, {"x": 3}, {"x": first.get_next_version("2", None)})


async def test_two_graphs_going_on_from_one_checkpoint_fork_no_chain_the_late_one_fails(backend: Backend) -> None:
    """langchain-ai/langgraph#8796: worker A stalls inside a node, worker B runs the same thread on; when A
    wakes, its writes are refused instead of forking the thread's chain."""
    from langgraph.graph import START, StateGraph

    stalled, release = asyncio.Event(), asyncio.Event()

    async def slow(state: dict[str, Any]) -> dict[str, Any]:
        stalled.set()
        await release.wait()
        return {"turns": [*state["turns"], "a"]}

    async def quick(state: dict[str, Any]) -> dict[str, Any]:
        return {"turns": [*state["turns"], "b"]}

    def graph(node: Any, saver: KernEventsSaver) -> Any:
        from typing import TypedDict

        class State(TypedDict):
            turns: list[str]

        return StateGraph(State).add_node("reply", node).add_edge(START, "reply").compile(checkpointer=saver)

    async with backend.db() as db:
        a, b = graph(slow, KernEventsSaver(db)), graph(quick, KernEventsSaver(db))
        config = {"configurable": {"thread_id": "t"}}
        worker_a = asyncio.create_task(a.ainvoke({"turns": ["hello"]}, config, durability="sync"))
        await stalled.wait()
        assert (await b.ainvoke(None, config, durability="sync"))["turns"] == ["hello", "b"]
        release.set()
        with pytest.raises(ConcurrencyError):
            await worker_a
        history = [item async for item in KernEventsSaver(db).alist(_config("t"))]
        parents = [item.parent_config["configurable"]["checkpoint_id"] for item in history if item.parent_config]
        assert len(parents) == len(set(parents)), "no checkpoint has two children"
        assert history[0].checkpoint["channel_values"]["turns"] == ["hello", "b"]


async def test_one_writers_concurrent_writes_do_not_fence_each_other(backend: Backend) -> None:
    async with backend.db() as db:
        saver = KernEventsSaver(db)
        start = await _put(saver, "t", None, {"x": 1}, {"x": "1"})
        await asyncio.gather(*(saver.aput_writes(start, [("x", i)], f"task-{i}") for i in range(10)))
        latest = await saver.aget_tuple(_config("t"))
        assert latest is not None and latest.pending_writes is not None
        assert sorted(value for _, _, value in latest.pending_writes) == list(range(10))


async def test_a_tasks_regular_writes_keep_the_first_value_and_errors_the_last(backend: Backend) -> None:
    async with backend.db() as db:
        saver = KernEventsSaver(db)
        start = await _put(saver, "t", None, {"x": 1}, {"x": "1"})
        await saver.aput_writes(start, [("x", "first"), (ERROR, "first error")], "task")
        await saver.aput_writes(start, [("x", "second"), (ERROR, "second error")], "task")
        found = await KernEventsSaver(db).aget_tuple(_config("t"))
        assert found is not None
        assert found.pending_writes == [("task", ERROR, "second error"), ("task", "x", "first")]


async def test_a_channel_value_of_megabytes_round_trips(backend: Backend) -> None:
    """5 MiB, or the largest event the backend takes (DynamoDB: one transaction's bytes)."""
    async with backend.db() as db:
        saver = KernEventsSaver(db)
        big = "x" * min(5 * 2**20, backend.large_event_size)
        stored = await _put(saver, "t", None, {"document": big}, {"document": "1"})
        await saver.aput_writes(stored, [("document", big + "!")], "task")
        found = await KernEventsSaver(db).aget_tuple(_config("t"))
        assert found is not None and found.checkpoint["channel_values"]["document"] == big
        assert found.pending_writes == [("task", "document", big + "!")]


async def test_listing_without_a_thread_lists_every_threads_checkpoints(backend: Backend) -> None:
    async with backend.db() as db:
        saver = KernEventsSaver(db)
        first = await _put(saver, "one", None, {"x": 1}, {"x": "1"})
        await _put(saver, "one", first, {"x": 2}, {"x": "2"})
        await _put(saver, "two", None, {"x": 3}, {"x": "1"})
        # Another kind of session, named like a thread, is no thread: it is not listed again.
        await db.store.append("agent-session", [SessionStarted(session_type="agent", name="one")])
        found = [
            (item.config["configurable"]["thread_id"], item.checkpoint["channel_values"]["x"])
            async for item in KernEventsSaver(db).alist(None)
        ]
        assert sorted(found) == [("one", 1), ("one", 2), ("two", 3)]
        limited = [item async for item in saver.alist(None, filter={"source": "loop"}, limit=2)]
        assert len(limited) == 2


def test_sync_methods_work_from_code_without_an_event_loop(backend: Backend) -> None:
    db = backend.db()
    run_blocking(db.__aenter__)
    try:
        saver = KernEventsSaver(db)
        stored = saver.put(_config("t"), _checkpoint({"x": 1}, {"x": "1"}), {"source": "loop", "step": 0}, {"x": "1"})
        saver.put_writes(stored, [("x", 2)], "task")
        found = KernEventsSaver(db).get_tuple(_config("t"))
        assert found is not None and found.checkpoint["channel_values"] == {"x": 1}
        assert found.pending_writes == [("task", "x", 2)]
        assert [item.config for item in saver.list(None)] == [stored]
    finally:
        run_blocking(db.aclose)


@pytest.mark.parametrize(("argument", "value"), [("snapshot_every", 0), ("full_every", 0), ("full_every", "50")])
def test_bad_saver_options_are_refused_naming_them(argument: str, value: Any) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        KernEventsSaver(InMemoryDb(), **{argument: value})
    assert raised.value.argument == argument


class _CountingStore:
    """A store that counts the records its reads return."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.records_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def read(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for record in self._store.read(*args, **kwargs):
            self.records_read += 1
            yield record


async def test_reads_fold_the_tail_after_the_index_snapshot_not_the_whole_thread(backend: Backend) -> None:
    async with backend.db() as db:
        writer = KernEventsSaver(db, snapshot_every=16)
        parent = None
        for step in range(100):
            parent = await _put(writer, "t", parent, {"x": step}, {"x": writer.get_next_version(str(step), None)})
            await writer.aget_tuple(_config("t"))
        counting = _CountingStore(db.store)
        found = await KernEventsSaver(counting, snapshot_every=16).aget_tuple(_config("t"))
        assert found is not None and found.checkpoint["channel_values"] == {"x": 99}
        assert counting.records_read <= 16 + 2, "the index snapshot, its tail, then the checkpoint and its blobs"
        assert await db.store.current_version("langgraph:t") > 200


async def _grow(saver: KernEventsSaver, thread_id: str, turns: int) -> list[Any]:
    """A thread whose ``messages`` list channel gains two items a step, as a chat's history does."""
    parent, messages, version, configs = None, [], None, []
    for turn in range(turns):
        messages = [*messages, f"question {turn} " * 20, f"answer {turn} " * 40]
        version = saver.get_next_version(version, None)
        parent = await _put(
            saver, thread_id, parent, {"messages": messages, "step": turn}, {"messages": version, "step": version}
        )
        configs.append((parent, messages))
    return configs


async def _blob_bytes(db: BaseDb, thread_id: str) -> int:
    return sum(
        [
            len(blob.value.data)
            async for record in db.store.read(f"langgraph:{thread_id}", types=["langgraph.blobs"])
            if isinstance(record.event, BlobsPut)
            for blob in record.event.blobs
            if blob.value is not None
        ]
    )


async def test_list_channels_are_stored_as_deltas_and_read_back_whole(backend: Backend) -> None:
    async with backend.db() as db:
        delta, whole = KernEventsSaver(db, full_every=10), KernEventsSaver(db, full_every=1)
        configs = await _grow(delta, "delta", 40)
        await _grow(whole, "whole", 40)
        assert await _blob_bytes(db, "delta") * 5 < await _blob_bytes(db, "whole")
        for config, messages in configs:
            found = await KernEventsSaver(db).aget_tuple(config)
            assert found is not None and found.checkpoint["channel_values"]["messages"] == messages
        bases = [
            (blob.version, blob.base, blob.depth)
            async for record in db.store.read("langgraph:delta", types=["langgraph.blobs"])
            if isinstance(record.event, BlobsPut)
            for blob in record.event.blobs
            if blob.channel == "messages"
        ]
        assert max(depth for _, _, depth in bases) == 9
        assert sum(base is None for _, base, _ in bases) == 4


async def test_a_delta_never_rests_on_its_own_version(backend: Backend) -> None:
    async with backend.db() as db:
        saver = KernEventsSaver(db)
        first = await _put(saver, "t", None, {"messages": ["a"]}, {"messages": "1"})
        second = await _put(saver, "t", first, {"messages": ["a", "b"]}, {"messages": "1"})
        found = await KernEventsSaver(db).aget_tuple(second)
        assert found is not None and found.checkpoint["channel_values"] == {"messages": ["a", "b"]}
        async for record in db.store.read("langgraph:t", types=["langgraph.blobs"]):
            assert isinstance(record.event, BlobsPut)
            assert all(blob.base != blob.version for blob in record.event.blobs)


async def test_prune_and_copy_keep_delta_channels_whole(backend: Backend) -> None:
    backend.require("truncates")
    async with backend.db() as db:
        saver = KernEventsSaver(db, full_every=10)
        configs = await _grow(saver, "t", 25)
        await saver.acopy_thread("t", "copy")
        for config, messages in configs:
            copied = await saver.aget_tuple({"configurable": {**config["configurable"], "thread_id": "copy"}})
            assert copied is not None and copied.checkpoint["channel_values"]["messages"] == messages
        await saver.aprune(["t"], strategy="keep_latest")
        latest = await KernEventsSaver(db).aget_tuple(_config("t"))
        assert latest is not None and latest.checkpoint["channel_values"]["messages"] == configs[-1][1]
        blobs = [
            blob
            async for record in db.store.read("langgraph:t", types=["langgraph.blobs"])
            if isinstance(record.event, BlobsPut)
            for blob in record.event.blobs
        ]
        assert all(blob.base is None for blob in blobs)
        # The thread goes on from the kept checkpoint, with deltas against it.
        await _put(saver, "t", latest.config, {"messages": [*configs[-1][1], "more"]}, {"messages": "99"})
        found = await KernEventsSaver(db).aget_tuple(_config("t"))
        assert found is not None and found.checkpoint["channel_values"]["messages"] == [*configs[-1][1], "more"]


async def test_deleting_a_runs_checkpoints_keeps_the_others_whole_across_several_appends(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.require("truncates")
    monkeypatch.setattr(langgraph_adapter, "_REWRITE_BATCH", 5)
    async with backend.db() as db:
        saver = KernEventsSaver(db, full_every=4)
        parent, messages, kept = None, [], []
        for step in range(30):
            messages = [*messages, f"message {step}"]
            config = parent if parent is not None else _config("t")
            checkpoint = _checkpoint({"messages": messages}, {"messages": f"{step + 1:05}"})
            run_id = "doomed" if step % 3 == 0 else "kept"
            parent = await saver.aput(config, checkpoint, {"run_id": run_id}, {"messages": f"{step + 1:05}"})
            await saver.aput_writes(parent, [("messages", [f"pending {step}"])], f"task-{step}")
            if run_id == "kept":
                kept.append((parent, list(messages), step))
        await saver.adelete_for_runs(["doomed"])
        listed = [item async for item in KernEventsSaver(db).alist(_config("t"))]
        assert len(listed) == len(kept) == 20
        for config, values, step in kept:
            found = await KernEventsSaver(db).aget_tuple(config)
            assert found is not None and found.checkpoint["channel_values"]["messages"] == values
            assert found.pending_writes == [(f"task-{step}", "messages", [f"pending {step}"])]


async def test_sync_methods_run_on_the_savers_loop_from_another_thread(backend: Backend) -> None:
    async with backend.db() as db:
        saver = KernEventsSaver(db)
        stored = await _put(saver, "t", None, {"x": 1}, {"x": "1"})
        found = await asyncio.to_thread(saver.get_tuple, _config("t"))
        assert found is not None and found.config == stored
        await asyncio.to_thread(saver.put_writes, stored, [("x", 2)], "task")
        listed = await asyncio.to_thread(lambda: list(saver.list(_config("t"))))
        assert [item.pending_writes for item in listed] == [[("task", "x", 2)]]
        with pytest.raises(BlockingCallError, match="aget_tuple"):
            saver.get_tuple(_config("t"))
