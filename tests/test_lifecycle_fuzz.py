"""The data-lifecycle entry points given anything: a typed error or a result, nothing else, and
nothing stored changes on a refusal."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kern_events import InMemoryDb, InvalidArgumentError, RetentionPolicy, SessionStarted

_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5), st.binary(max_size=3)
)


@settings(max_examples=200, deadline=None)
@given(max_age=_values, keep_runs=_values, force=_values)
def test_a_retention_policy_is_built_or_refused_naming_the_argument(max_age: Any, keep_runs: Any, force: Any) -> None:
    try:
        RetentionPolicy(max_age=max_age, keep_runs=keep_runs, force=force)
    except InvalidArgumentError as error:
        assert error.argument in {"max_age", "keep_runs", "force"}


@settings(max_examples=100, deadline=None)
@given(user_id=st.one_of(st.text(max_size=300), st.integers(), st.none()))
def test_erase_user_with_any_argument_reports_or_refuses_and_keeps_other_users(user_id: Any) -> None:
    async def run() -> None:
        async with InMemoryDb() as db:
            await db.store.append("kept", [SessionStarted(session_type="agent", user_id="somebody-else")])
            try:
                report = await db.erase_user(user_id)
            except InvalidArgumentError as error:
                assert error.argument == "user_id"
            else:
                assert report.session_ids == () or user_id == "somebody-else"
            if user_id != "somebody-else":
                assert [info.session_id for info in await db.get_sessions()] == ["kept"]

    asyncio.run(run())
