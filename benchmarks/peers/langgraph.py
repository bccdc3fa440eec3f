"""LangGraph on the peer workload, through its checkpointers (``AsyncSqliteSaver``, ``AsyncPostgresSaver``).

``load`` is ``aget_tuple`` of the thread's latest checkpoint, what the Pregel loop reads when a graph is invoked
on a thread. ``persist`` makes the saver calls one ``ainvoke`` of a ReAct graph (``MessagesState`` with the
``add_messages`` reducer, nodes ``agent`` and ``tools``) makes: the ``input`` checkpoint (the user message in
``__start__``), then for each super-step (``__start__``, ``agent``, ``tools``, ``agent``) ``aput_writes`` of the
task's writes and ``aput`` of the next checkpoint, whose ``messages`` channel holds the whole list so far: 5 puts
and 4 put_writes, with the loop's channel versions, ``versions_seen`` and metadata. Each is awaited in turn, as
with ``durability="sync"`` (the default ``"async"`` lets a step's put overlap the next node; no node runs here).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from benchmarks.peers._workload import AgentRun, Backend, PeerStore, Target, missing

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
    )

__all__ = ["BACKENDS", "SYSTEM", "open_store", "unavailable"]

SYSTEM = "langgraph"
BACKENDS: tuple[Backend, ...] = ("sqlite", "postgres")

# The channels StateGraph compiles a MessagesState graph with START -> agent, agent -(tools_condition)-> tools | END,
# tools -> agent into: the state key, the input channel and one trigger channel per node.
_MESSAGES = "messages"
_START = "__start__"
_INPUT = "__input__"
_TO_AGENT = "branch:to:agent"
_TO_TOOLS = "branch:to:tools"
_STEPS_PER_RUN = 5
"""Checkpoints one invoke saves: the input one and one per super-step (__start__, agent, tools, agent)."""


def unavailable() -> str | None:
    """``None`` when LangGraph's SQLite and PostgreSQL checkpointers import, else why not."""
    return missing(
        "langgraph", ("langchain_core.messages", "langgraph.checkpoint.postgres.aio", "langgraph.checkpoint.sqlite.aio")
    )


def _messages(run: AgentRun) -> list[BaseMessage]:
    """The run's four messages as the nodes return them (ids set, as ``add_messages`` sets missing ones)."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    call = {"name": run.tool_name, "args": run.tool_arguments, "id": run.tool_call_id, "type": "tool_call"}
    usage = {"input_tokens": run.input_tokens, "output_tokens": run.output_tokens, "total_tokens": run.total_tokens}
    return [
        HumanMessage(content=run.user, id=str(uuid.uuid4())),
        AIMessage(content="", tool_calls=[call], id=str(uuid.uuid4())),
        ToolMessage(content=run.tool_result, name=run.tool_name, tool_call_id=run.tool_call_id, id=str(uuid.uuid4())),
        AIMessage(content=run.answer, usage_metadata=usage, id=str(uuid.uuid4())),
    ]


def _checkpoint(
    step: int, values: dict[str, Any], versions: ChannelVersions, seen: dict[str, ChannelVersions], updated: set[str]
) -> Checkpoint:
    """A checkpoint as the loop's ``create_checkpoint`` builds it (format 4, id ordered by step)."""
    from langgraph.checkpoint.base import Checkpoint
    from langgraph.checkpoint.base.id import uuid6

    return Checkpoint(
        v=4,
        id=str(uuid6(clock_seq=step)),
        ts=datetime.now(UTC).isoformat(),
        channel_values=values,
        channel_versions=dict(versions),
        versions_seen={node: dict(seen_by_node) for node, seen_by_node in seen.items()},
        updated_channels=sorted(updated),
    )


class _LangGraphStore:
    def __init__(self, saver: BaseCheckpointSaver[str], thread_id: str) -> None:
        self._saver = saver
        self._thread: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        self._head: CheckpointTuple | None = None
        """The thread's latest checkpoint: the last ``load``'s, or the last one put since."""

    def _version(self, number: int) -> str:
        """The saver's channel version ``number`` (``NNN…N.<random>``, as ``get_next_version`` makes them)."""
        return self._saver.get_next_version(number - 1, None)

    def _next_version(self, versions: ChannelVersions) -> str:
        """The version ``apply_writes`` gives every channel a step bumps: one past the highest."""
        return self._saver.get_next_version(max(versions.values()) if versions else None, None)

    async def _put(
        self, parent: RunnableConfig, checkpoint: Checkpoint, source: str, step: int, previous: ChannelVersions
    ) -> RunnableConfig:
        """``aput`` with the loop's metadata and the versions newer than the previous put's."""
        from langgraph.checkpoint.base import CheckpointTuple

        versions = checkpoint["channel_versions"]
        # get_new_channel_versions: what changed since the loop's previous put (all of it on a first put).
        new_versions = {k: v for k, v in versions.items() if str(v) > str(previous.get(k, ""))}
        metadata: CheckpointMetadata = {"source": source, "step": step, "parents": {}}
        config = await self._saver.aput(parent, checkpoint, metadata, new_versions)
        self._head = CheckpointTuple(config, checkpoint, metadata, parent)
        return config

    async def prefill(self, runs: Sequence[AgentRun]) -> None:
        """One ``aput`` of the checkpoint a fresh thread ends with after ``runs`` invokes (versions, seen, step)."""
        if not runs:
            return
        last = _STEPS_PER_RUN * len(runs)  # the highest version; run 1 ends at 5 (see persist), each one adds 5
        versions = {
            _START: self._version(last - 3),
            _MESSAGES: self._version(last),
            _TO_AGENT: self._version(last),
            _TO_TOOLS: self._version(last - 1),
        }
        seen = {
            _INPUT: {},
            _START: {_START: self._version(last - 4)},
            "agent": {_TO_AGENT: self._version(last - 1)},
            "tools": {_TO_TOOLS: self._version(last - 2)},
        }
        step = last - 2
        values = {_MESSAGES: [message for run in runs for message in _messages(run)]}
        checkpoint = _checkpoint(step, values, versions, seen, {_MESSAGES})
        await self._put(self._thread, checkpoint, "loop", step, {})

    async def persist(self, run: AgentRun) -> None:
        """One invoke's saves from the latest checkpoint: the input put, then per super-step put_writes and put."""
        human, call, result, answer = _messages(run)
        config: RunnableConfig = self._thread
        values: dict[str, Any] = {}
        versions: ChannelVersions = {}
        seen: dict[str, ChannelVersions] = {}
        step = -2  # a fresh thread: the loop starts from an empty checkpoint with step -2
        if self._head is not None:
            head = self._head.checkpoint
            config, values, step = self._head.config, head["channel_values"], self._head.metadata["step"]
            versions, seen = dict(head["channel_versions"]), {n: dict(s) for n, s in head["versions_seen"].items()}
        previous = dict(versions)
        messages: list[BaseMessage] = list(values.get(_MESSAGES, []))

        # _first: the input goes to __start__ (no task triggers, so no ephemeral channel is cleared).
        step += 1
        seen.setdefault(_INPUT, {})
        versions[_START] = self._next_version(versions)
        values = {**values, _START: {_MESSAGES: [human]}}
        config = await self._put(config, _checkpoint(step, values, versions, seen, {_START}), "input", step, previous)
        previous = dict(versions)

        # tick / after_tick per super-step: (node, the trigger it consumes, its writes).
        supersteps: list[tuple[str, str, list[tuple[str, Any]]]] = [
            (_START, _START, [(_MESSAGES, [human]), (_TO_AGENT, None)]),
            ("agent", _TO_AGENT, [(_MESSAGES, [call]), (_TO_TOOLS, None)]),
            ("tools", _TO_TOOLS, [(_MESSAGES, [result]), (_TO_AGENT, None)]),
            ("agent", _TO_AGENT, [(_MESSAGES, [answer])]),
        ]
        for node, trigger, writes in supersteps:
            step += 1
            # The task's writes, saved against the checkpoint the step started from (LangGraph derives the
            # task id from that checkpoint's id, the step and the node; any unique id stores the same).
            await self._saver.aput_writes(config, writes, str(uuid.uuid4()), f"~__pregel_pull, {node}")
            # apply_writes: the node has seen its trigger; the written channels and the ephemeral ones that held
            # a value (now cleared) get the next version; add_messages returns a new, longer list.
            seen.setdefault(node, {})[trigger] = versions[trigger]
            version = self._next_version(versions)
            written = {channel for channel, _ in writes}
            for channel in written | (values.keys() - {_MESSAGES}):
                versions[channel] = version
            messages = [*messages, *dict(writes)[_MESSAGES]]
            values = {_MESSAGES: messages, **dict.fromkeys(written - {_MESSAGES})}
            checkpoint = _checkpoint(step, values, versions, seen, written)
            config = await self._put(config, checkpoint, "loop", step, previous)
            previous = dict(versions)

    async def load(self) -> int:
        """``aget_tuple`` of the thread's latest checkpoint; the messages its ``messages`` channel holds."""
        self._head = await self._saver.aget_tuple(self._thread)
        if self._head is None:
            return 0
        return len(self._head.checkpoint["channel_values"].get(_MESSAGES, []))


@asynccontextmanager
async def open_store(target: Target, session_id: str) -> AsyncIterator[PeerStore]:
    """The backend's async saver (its ``from_conn_string`` connection, closed on exit) after ``setup()``."""
    if target.backend == "sqlite":
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        if target.sqlite_path is None:
            raise ValueError("a SQLite target needs sqlite_path")
        async with AsyncSqliteSaver.from_conn_string(str(target.sqlite_path)) as sqlite_saver:
            await sqlite_saver.setup()
            yield _LangGraphStore(sqlite_saver, session_id)
        return
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    if target.postgres_url is None:
        raise ValueError("a PostgreSQL target needs postgres_url")
    # from_conn_string opens one psycopg connection with autocommit, prepare_threshold=0 and dict rows, as the
    # saver requires (setup() creates indexes CONCURRENTLY, which cannot run in a transaction).
    async with AsyncPostgresSaver.from_conn_string(target.postgres_url) as postgres_saver:
        await postgres_saver.setup()
        yield _LangGraphStore(postgres_saver, session_id)
