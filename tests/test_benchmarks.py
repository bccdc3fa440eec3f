"""The benchmark suite runs from a checkout: a case of each new subject, at tiny sizes, in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._harness import percentile
from benchmarks.peers._workload import agent_run, missing
from kern_events import SessionStarted

ROOT = Path(__file__).resolve().parent.parent


def _case(module: str, *arguments: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", module, *arguments], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_agent_workload_case_loads_our_history_window_and_counts_bytes_per_run() -> None:
    sample = _case("benchmarks.frameworks", "--case", "turn", "--system", "kern", "--runs", "4", "--repeats", "2")
    assert sample["system"] == "kern-events"
    assert sample["loaded"] == 12, "three runs of four messages: the history window, not the whole session"
    assert isinstance(sample["view_seconds"], float) and sample["view_seconds"] > 0, "the whole view, timed too"
    assert isinstance(sample["bytes_per_run"], float) and sample["bytes_per_run"] > 1000
    assert isinstance(sample["stored_per_run"], float) and isinstance(sample["indexed_per_run"], float)
    assert sample["indexed_per_run"] > sample["stored_per_run"] > 0


async def test_stored_bytes_count_every_table_checkpoints_included_and_index_pages_apart(tmp_path: Path) -> None:
    """What the growth over the timed runs misses (a checkpoint now and then) is in the totals."""
    from benchmarks.frameworks import _stored_bytes
    from benchmarks.peers._workload import Target
    from kern_events import SqliteDb
    from kern_events.records import Snapshot

    target = Target("sqlite", sqlite_path=tmp_path / "b.db")
    async with SqliteDb(target.sqlite_path) as db:
        await db.store.append("s", [SessionStarted(session_type="agent")])
        before = await _stored_bytes(target)
        await db.store.save_snapshot(
            Snapshot(session_id="s", name="view", schema_version=1, version=1, data=b"x" * 9000)
        )
    after = await _stored_bytes(target)
    assert after.rows - before.rows >= 9000
    assert before.indexes > 0 and after.indexes >= before.indexes


def test_the_agno_adapter_case_loads_the_whole_session_as_agno_does() -> None:
    import pytest

    pytest.importorskip("agno", reason="the agno extra is not installed")
    reason = missing("agno", ("psycopg",))
    if reason is not None:
        pytest.skip(reason)
    sample = _case("benchmarks.frameworks", "--case", "turn", "--system", "agno_kern", "--runs", "4", "--repeats", "2")
    assert sample["system"] == "agno on kern-events"
    assert sample["loaded"] == 5 * 4, "every message of the five runs stored before the last load (Agno reads all)"
    assert isinstance(sample["bytes_per_run"], float) and sample["bytes_per_run"] > 1000


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
@pytest.mark.parametrize("side", ["ours", "raw"])
def test_the_read_cases_read_and_decode_the_session_on_both_sides(store: str, side: str) -> None:
    for what in ("whole", "tail"):
        arguments = ["--store", store, "--side", side, "--what", what, "--length", "30", "--repeats", "2"]
        assert _case("benchmarks.engine", "--case", "read", *arguments)["appends"] == 2


def test_the_streaming_case_reports_its_peak_memory() -> None:
    sample = _case("benchmarks.engine", "--case", "stream", "--length", "300")
    assert sample["events"] == 300
    assert isinstance(sample["peak_rss"], int) and sample["peak_rss"] > 10 * 2**20


def test_a_peer_that_is_not_installed_is_skipped_with_how_to_install_it() -> None:
    reason = missing("some-framework", ("json", "kern_no_such_module"))
    assert reason is not None and "kern_no_such_module" in reason and ".[bench]" in reason
    assert missing("stdlib", ("json",)) is None


def test_runs_are_distinct_and_percentiles_are_nearest_rank() -> None:
    assert agent_run(1).run_id != agent_run(2).run_id and agent_run(1).user != agent_run(2).user
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert percentile([5.0], 0.99) == 5.0


def test_the_hot_session_case_stores_every_writers_steps() -> None:
    sample = _case("benchmarks.contention", "--case", "writers", "--writers", "8", "--sessions", "1", "--steps", "2")
    assert (sample["appends"], sample["events"]) == (16, 16), "the case itself checks the stored count"


def test_the_adk_adapter_runs_the_agent_workload_as_adks_own_service_does() -> None:
    if missing("google-adk", ("google.adk.sessions",)) is not None:
        pytest.skip("the adk extra is not installed")
    sample = _case("benchmarks.frameworks", "--case", "turn", "--system", "adk:kern", "--runs", "4", "--repeats", "2")
    assert sample["system"] == "google-adk on kern-events"
    assert sample["loaded"] in (16, 20), "get_session with no config: every event of the runs stored before the load"
    assert isinstance(sample["bytes_per_run"], float) and sample["bytes_per_run"] > 1000


def test_the_ui_cases_open_a_session_page_and_a_deep_list_page() -> None:
    pytest.importorskip("starlette", reason="the ui extra is not installed")
    assert _case("benchmarks.ui", "--case", "session", "--runs", "30", "--repeats", "2")["appends"] == 2
    for paging in ("keyset", "offset"):
        sample = _case("benchmarks.ui", "--case", "list", "--sessions", "300", "--depth", "250", "--paging", paging)
        assert sample["appends"] == 10


def test_the_encryption_cases_run_sealed_and_plain() -> None:
    pytest.importorskip("cryptography", reason="needs the crypto extra")
    for side in ("ours", "plain"):
        sample = _case("benchmarks.encryption", "--case", "run", "--side", side, "--batches", "5")
        assert sample["events"] == 50
    for events in ("messages", "agent-runs"):
        sample = _case("benchmarks.encryption", "--case", "run", "--what", "read", "--repeats", "2", "--events", events)
        assert sample["events"] == 2


def test_the_agent_run_events_span_the_sizes_the_encryption_row_names() -> None:
    import msgspec

    from benchmarks.encryption import agent_runs

    sizes = [len(msgspec.msgpack.encode(event)) for event in agent_runs()]
    assert min(sizes) < 120 and 2_000 < max(sizes) < 3_000 and 800 < sum(sizes) / len(sizes) < 1_000


def test_the_jetstream_append_case_runs_on_a_cluster_of_its_own() -> None:
    from benchmarks import nats

    reason = nats.unavailable()
    if reason is not None:
        pytest.skip(reason)
    sample = _case("benchmarks.nats", "--case", "append", "--nodes", "1", "--replicas", "1", "--appends", "5")
    assert (sample["appends"], sample["events"]) == (5, 5)


@pytest.mark.parametrize("option", [("--chain", "off"), ("--telemetry", "on"), ("--telemetry", "bypass")])
def test_the_append_case_runs_without_the_chain_and_with_or_behind_telemetry(option: tuple[str, str]) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs the otel-test extra")
    sample = _case("benchmarks.append", "--case", "ours", "--appends", "3", "--batch", "2", "--warmup", "1", *option)
    assert sample["events"] == 6


def test_the_transfer_cases_export_import_and_report_memory() -> None:
    for what, side in (("export", "ours"), ("export", "raw"), ("import", "ours"), ("import", "plain")):
        sample = _case("benchmarks.transfer", "--case", "run", "--what", what, "--side", side, "--events", "40")
        assert sample["events"] == 40
    sample = _case("benchmarks.transfer", "--case", "run", "--what", "memory", "--events", "40")
    assert isinstance(sample["peak_rss"], int) and sample["peak_rss"] > 10 * 2**20


def test_the_dynamodb_cost_rows_count_the_items_of_a_run_and_a_context_load_flat_in_the_session_length() -> None:
    import pytest

    pytest.importorskip("aioboto3", reason="the dynamodb extra is not installed")
    from benchmarks import dynamodb

    _, rows = dynamodb.report(quick=False)
    appends, loads = rows[0::2], rows[1::2]
    assert [row["case"] for row in loads] == [
        "context load (session at 10 runs, 72 events since the checkpoint)",
        "context load (session at 100 runs, 702 events since the checkpoint)",
        "context load (session at 1000 runs, 2 events since the checkpoint)",
    ]
    for append in appends:
        # a run is three appends (three head items) of seven events (an id item and an event item each),
        # each item under 1 KB (2 WCU), and each head also written twice to by_time and to by_user
        assert append["items"] == 3 + 2 * 7 and append["wcu"] == 2 * append["items"] + 3 * 2 * 2
    # head, checkpoint, tail, state events: four strongly consistent reads, whatever the events since
    # the checkpoint (the state events come from the sparse by_type index, not a filtered query)
    assert len({load["rcu"] for load in loads}) == 1 and loads[0]["rcu"] >= 4


async def test_the_lone_writer_reference_appends_with_no_group_commit_code(tmp_path: Path) -> None:
    from benchmarks.append import _Ungrouped
    from kern_events import ConcurrencyError, MessageAdded

    message = MessageAdded(run_id="run-1", role="user", content="hello")
    async with _Ungrouped(tmp_path / "lone.db") as store:
        store._group = None  # type: ignore[assignment]  # any use of the group committer fails
        assert (await store.append("s", [message, message], expected_version=0)).to_version == 2
        with pytest.raises(ConcurrencyError):
            await store.append("s", [message], expected_version=0)
        assert [record.version async for record in store.read("s")] == [1, 2]
    sample = _case("benchmarks.append", "--case", "ours", "--group", "none", "--appends", "3", "--warmup", "1")
    assert sample["events"] == 3


def test_the_scale_fill_writes_sessions_the_store_reads_and_every_operation_runs() -> None:
    import asyncio

    import asyncpg

    from benchmarks import postgres, scale
    from kern_events import MessageAdded, PostgresDb, RunCompleted, RunStarted

    reason = postgres.unavailable()
    if reason is not None:
        pytest.skip(reason)

    async def check(schema: str) -> None:
        async with PostgresDb(postgres.URL, schema=schema, pool_size=1) as db:
            listed = await db.get_sessions(user_id="user-000029")
            assert sorted(info.session_id for info in listed) == [f"scale-{n:07d}" for n in range(290, 300)]
            records = [record async for record in db.store.read("scale-0000299")]
            assert [record.version for record in records] == list(range(1, 11))
            kinds = [type(record.event) for record in records]
            assert kinds == [RunStarted, *[MessageAdded] * 8, RunCompleted]
            assert len([record async for record in db.store.read_all()]) == 3000

    async def schemas(name: str) -> int:
        connection = await asyncpg.connect(postgres.URL)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", name))
        finally:
            await connection.close()

    with scale._schema() as schema:
        for first, last in ((0, 150), (150, 300)):  # grown in steps, as the subject grows it
            arguments = ["--case", "fill", "--schema", schema, "--first", str(first), "--sessions", str(last)]
            assert _case("benchmarks.scale", *arguments)["events"] == (last - first) * scale.EVENTS_PER_SESSION
        asyncio.run(check(schema))
        for operation in ("append", "by_user", "newest", "feed"):
            arguments = ["--case", operation, "--schema", schema, "--sessions", "300", "--repeats", "3", "--page", "50"]
            sample = _case("benchmarks.scale", *arguments)
            assert sample["appends"] == 3 and sample["seconds"] > 0
    assert asyncio.run(schemas(schema)) == 0, "the schema is dropped with its rows"


def test_the_scale_plot_and_table_show_cost_against_store_size(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="needs the bench extra")
    from benchmarks import _results, scale

    points = [
        scale.ScalePoint(
            operation=name,
            sessions=size,
            events=size * 10,
            seconds_per_operation=size / 1e6,
            events_per_second=1e5 if name == "feed" else None,
            runs=3,
        )
        for name, _ in scale._OPERATIONS
        for size in (10_000, 100_000)
    ]
    table = scale.render(points)
    assert "100,000 sessions" in table and "10.00x" in table and "100,000 ev/s" in table
    assert "—" in scale.render([point for point in points if point.sessions == 10_000])
    from dataclasses import asdict

    (written,) = _results.plot_scale([asdict(point) for point in points], tmp_path)
    assert written.name == "scale.png" and written.stat().st_size > 1000


def test_the_whole_session_rows_compare_each_peers_load_with_our_view_at_the_same_size() -> None:
    from benchmarks.frameworks import TurnSample, render_view

    def sample(system: str, backend: str, runs: int, load: float, view: float | None = None) -> TurnSample:
        return TurnSample(system, backend, runs, load, 0.001, 1000.0, 4 * runs, view_seconds=view)

    table = render_view(
        [
            sample("kern-events", "sqlite", 1_000, 0.0005, view=0.002),
            sample("kern-events", "sqlite", 10_000, 0.0005, view=0.004),
            sample("agno", "sqlite", 10_000, 0.2),
            sample("google-adk", "sqlite", 1_000, 1.4),
            sample("langgraph", "postgres", 10_000, 0.5),  # no view of ours on that backend: no row
        ]
    )
    lines = table.splitlines()
    assert len(lines) == 4, table
    assert lines[2].startswith("whole session: agno") and "10,000" in lines[2] and lines[2].endswith("50.0x")
    assert lines[3].startswith("whole session: google-adk") and "1,000" in lines[3] and lines[3].endswith("700.0x")


def test_quick_runs_the_headline_rows_and_prints_the_options_each_case_runs_with() -> None:
    from benchmarks import append, engine, frameworks, history
    from benchmarks import postgres as postgres_subject
    from benchmarks._harness import describe_sizes, quick_rows

    chosen = [
        row for subject in (append, postgres_subject, engine, history) for row in quick_rows(subject.comparisons(True))
    ]
    workloads = {row.workload for row in chosen}
    assert "SQLite NORMAL, 1 ev/txn vs aiosqlite autocommit" in workloads
    assert "SQLite NORMAL, lone writer: group commit vs no group-commit code" in workloads
    assert "PostgreSQL, context for the next run (history + state) at 1,000 runs vs 10" in workloads
    sizes = describe_sizes(chosen)
    assert "read length=1000 repeats=50 side=raw store=postgres what=whole" in sizes
    assert 1000 in frameworks.sizes(quick=True), "the frameworks rows differ at N = 1,000: quick keeps it"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "default 3 with --quick" in done.stdout


def test_results_for_one_subject_replace_its_section_and_keep_the_others(tmp_path: Path) -> None:
    from benchmarks import _results

    order = ["append", "postgres", "engine"]
    (tmp_path / "RESULTS.md").write_text(
        "# Benchmark results\n\nWritten by `python -m benchmarks --results --repeats 3` on 2026-12-01 "
        "(3 runs per case, 35 min in all); regenerate with the same command.\n\n"
        "## append\n\n```text\nold append table\n```\n\n## engine\n\n```text\nold engine table\n```\n\n"
        "Every sample of this run, as JSON: [results.json](results.json).\n"
    )
    (tmp_path / "results.json").write_text(json.dumps({"append": [1], "engine": [2]}))

    def measured(name: str, table: str, samples: list[int], seconds: float) -> str:
        _results.write(
            [(name, table)], {name: samples}, repeats=3, seconds=seconds, order=order, merge=True, directory=tmp_path
        )
        return (tmp_path / "RESULTS.md").read_text()

    text = measured("postgres", "new postgres table", [3], 90)
    assert [line[3:] for line in text.splitlines() if line.startswith("## ")] == order
    assert "old append table" in text and "old engine table" in text and "new postgres table" in text
    kept = "Measured by `python -m benchmarks --results --repeats 3` on 2026-12-01 (3 runs per case, 35 min in all)."
    assert text.count(kept) == 2, "each kept section says which run measured it"
    assert text.count("(3 runs per case, 2 min).") == 1
    assert json.loads((tmp_path / "results.json").read_text()) == {"append": [1], "engine": [2], "postgres": [3]}
    text = measured("append", "newer append table", [4], 60)
    assert "old append table" not in text and "newer append table" in text and text.count(kept) == 1
    assert json.loads((tmp_path / "results.json").read_text())["append"] == [4]
