"""Property: the view folded from any event sequence equals the view a db reads back after reopening."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kern_events import (
    Event,
    ExternalExecution,
    InputField,
    MediaAdded,
    MediaReference,
    MessageAdded,
    MetadataUpdated,
    Record,
    RequirementResolved,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunMetrics,
    RunPaused,
    RunResumed,
    RunStarted,
    SessionRenamed,
    SessionStarted,
    SessionStateChanged,
    SummaryUpdated,
    ToolCallCompleted,
    ToolCallRequest,
    ToolCallStarted,
    ToolConfirmation,
    UserInput,
)
from kern_events.testing._backend import Backend
from projections import fold_records

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
identifiers = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=8).filter(
    str.strip
)
scalars = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | names
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3), max_leaves=6
)
objects = st.dictionaries(names, json_values, max_size=3)
run_ids = st.sampled_from(["r1", "r2", "r3"])
ids = st.sampled_from(["a", "b", "c"])
media = st.builds(MediaReference, media_id=ids, kind=st.sampled_from(["image", "audio", "video", "file"]))
requirements = st.one_of(
    st.builds(ToolConfirmation, requirement_id=ids, tool_call_id=ids, tool_name=names, arguments=objects),
    st.builds(UserInput, requirement_id=ids, fields=st.lists(st.builds(InputField, name=names), max_size=2).map(tuple)),
    st.builds(ExternalExecution, requirement_id=ids, tool_call_id=ids, tool_name=names, arguments=objects),
)
metrics = st.builds(RunMetrics, input_tokens=st.integers(0, 10**6), output_tokens=st.integers(0, 10**6))

events: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        RunStarted, run_id=run_ids, parent_run_id=st.none() | run_ids, input=json_values, model_id=st.none() | names
    ),
    st.builds(
        MessageAdded,
        run_id=run_ids,
        role=st.sampled_from(["system", "user", "assistant", "tool"]),
        content=json_values,
        tool_call_id=st.none() | ids,
        tool_calls=st.lists(st.builds(ToolCallRequest, tool_call_id=ids, tool_name=names), max_size=2).map(tuple),
        media=st.lists(media, max_size=1).map(tuple),
    ),
    st.builds(ToolCallStarted, run_id=run_ids, tool_call_id=ids, tool_name=names, arguments=objects),
    st.builds(
        ToolCallCompleted,
        run_id=run_ids,
        tool_call_id=ids,
        tool_name=names,
        result=json_values,
        error=st.none() | names,
        duration=st.none() | st.floats(0, 100),
    ),
    st.builds(SessionStateChanged, set=objects, removed=st.lists(names, max_size=2).map(tuple)),
    st.builds(RunPaused, run_id=run_ids, requirements=st.lists(requirements, min_size=1, max_size=2).map(tuple)),
    st.builds(
        RequirementResolved,
        run_id=run_ids,
        requirement_id=ids,
        confirmed=st.none() | st.booleans(),
        values=st.none() | objects,
    ),
    st.builds(RunResumed, run_id=run_ids),
    st.builds(RunCompleted, run_id=run_ids, output=json_values, metrics=metrics),
    st.builds(RunFailed, run_id=run_ids, error=names),
    st.builds(RunCancelled, run_id=run_ids, reason=st.none() | names),
    st.builds(SummaryUpdated, summary=names, topics=st.lists(names, max_size=2).map(tuple)),
    st.builds(SessionRenamed, name=identifiers),
    st.builds(MetadataUpdated, set=objects, removed=st.lists(names, max_size=2).map(tuple)),
    st.builds(MediaAdded, media=st.lists(media, min_size=1, max_size=2).map(tuple), run_id=st.none() | run_ids),
)
starts = st.builds(
    SessionStarted,
    session_type=st.sampled_from(["agent", "team", "workflow"]),
    user_id=st.none() | identifiers,
    agent_data=st.none() | objects,
    metadata=st.none() | objects,
    session_data=st.none() | objects,
    name=st.none() | identifiers,
)


async def _write_then_reopen(
    backend: Backend, session_id: str, batches: list[list[Event]], checkpoint_after: int | None
) -> tuple[Any, Any]:
    records: list[Record] = []
    async with backend.db() as db:
        for index, batch in enumerate(batches):
            result = await db.store.append(session_id, batch, expected_version=len(records))
            records += [
                Record(
                    session_id=session_id,
                    version=version,
                    position=position,
                    event_id=event_id,
                    recorded_at=result.recorded_at,
                    event=event,
                )
                for version, position, event_id, event in zip(
                    range(result.from_version, result.to_version + 1),
                    result.positions,
                    result.event_ids,
                    batch,
                    strict=True,
                )
            ]
            if index == checkpoint_after:
                await db.save_checkpoint(session_id)
        if not backend.persistent:
            return fold_records(records), await db.get_session(session_id)
    async with backend.db() as reopened:
        return fold_records(records), await reopened.get_session(session_id)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    start=starts,
    body=st.lists(events, max_size=30),
    cuts=st.lists(st.integers(1, 30), max_size=6),
    checkpoint=st.none() | st.integers(0, 3),
)
def test_folded_view_equals_the_view_read_back_after_reopening(
    backend: Backend, start: Event, body: list[Event], cuts: list[int], checkpoint: int | None
) -> None:
    sequence = [start, RunStarted(run_id="r1"), *body]
    bounds = sorted({0, len(sequence), *(cut for cut in cuts if cut < len(sequence))})
    batches = [sequence[low:high] for low, high in itertools.pairwise(bounds)]
    session_id = f"s-{uuid.uuid4().hex}"  # each example on a session of its own, in the one database
    expected, actual = asyncio.run(_write_then_reopen(backend, session_id, batches, checkpoint))
    assert actual == expected
