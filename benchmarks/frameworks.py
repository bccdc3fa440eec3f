"""The agent workload against the storage of the agent frameworks people use today.

Each case is one system on one backend at one session length N: a fresh database, a session
prefilled with N runs through the system's own public API, then ``--repeats`` turns of what a
runtime does for every run: read what the next run needs (``load``), then persist that run
(``persist``). A run is a user message, an assistant tool call, the tool's result, the final answer
and usage metrics (``benchmarks.peers._workload``); one adapter module per system says what its
``load`` and ``persist`` call. Bytes stored per persisted run are the growth of the live rows'
bytes over the timed runs, divided by their number (SQLite: ``dbstat`` payload of the tables;
PostgreSQL: ``pg_column_size`` of every row, TOAST-compressed where the system's values are). That
growth leaves out what a system writes now and then (our checkpoints, every 1,000 events), so two more
figures divide everything stored at the end by the runs stored: the rows of every table (checkpoints
and snapshots counted), and those rows plus the indexes' pages (SQLite ``dbstat``, PostgreSQL
``pg_indexes_size``).

The peers come from the optional extra: ``pip install -e '.[bench]'``; a system that is not installed
is skipped with that reason. Run one case with
``python -m benchmarks.frameworks --case turn --system agno --backend sqlite --runs 100``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import secrets
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import asyncpg

from benchmarks._harness import Case, analyze_postgres, run_case_json, temp_db
from benchmarks.peers._workload import Backend, Target, agent_runs
from benchmarks.peers.kern_langgraph import SYSTEM as _KERN_LANGGRAPH

__all__ = [
    "NOTES",
    "QUICK_SYSTEMS",
    "SYSTEMS",
    "VIEW_NOTES",
    "TurnSample",
    "render_view",
    "report",
    "run_cases",
    "view_cases",
]

SYSTEMS = (
    "kern",
    "agno",
    "agno_kern",
    "openai_agents",
    "langgraph",
    "kern_langgraph",
    "adk",
    "adk:kern",
    "adk:recent",
    "adk:kern_recent",
)
"""Adapter modules under ``benchmarks.peers``, ours first; ``module:variant`` names one of a module's ``VARIANTS``."""

_MODULE = "benchmarks.frameworks"
_SESSION = "bench-session"

NOTES = """\
Each row: one system, one backend, a session already holding N runs. load = what the framework reads
  before the next run; persist = what it writes when the run ends; bytes/run = live bytes stored per
  persisted run (logical row bytes; indexes not counted). Medians over the timed turns, then over runs.
  stored/run = every table's rows at the end (checkpoints and snapshots counted, which the growth over
  20 runs misses: ours writes them every 1,000 events) / runs stored; +indexes/run adds the indexes'
  pages (SQLite dbstat, PostgreSQL pg_indexes_size). Both include each system's fixed tables, which
  weigh at N = 10 and not at N = 1,000.
kern-events: load = get_context(num_history_runs=3), as the reference Agent loads: the history window (a
  tail read) and the state (its checkpoint and the events after it) in one round trip (one statement on
  PostgreSQL, one thread hop on SQLite); persist = the reference Agent's three appends (a checkpoint every
  1,000 events). At N = 10 reading 40 items whole can be faster; from there on ours stays flat and theirs grows.
agno: Async{Sqlite,Postgres}Db as Agent.arun uses them. load = get_session (the session row and every run
  row; Agno caches decoded runs per db object, so a warm process decodes only new ones); persist = what
  acleanup_and_store does: upsert_session, upsert_run, update_approval_run_status.
agno on kern-events: the same calls on AsyncKernEventsDb (kern_events.adapters.agno, awaited as Agent.arun does)
  over kern-events' SqliteDb/PostgresDb, wrapping the agno rows' async db on the same file/database for the rest.
openai-agents: load = session.get_items() (every item: Runner's default limit is None); persist = the
  Runner's three add_items calls (user message; function_call + output; answer). SQLiteSession on SQLite,
  SQLAlchemySession on PostgreSQL. Usage metrics are not stored in the session.
langgraph: Async{Sqlite,Postgres}Saver driven as a ReAct graph's Pregel loop drives it: load = aget_tuple
  of the thread's latest checkpoint; persist = the input checkpoint, then per super-step (start, agent,
  tools, agent) aput_writes and an aput whose messages channel holds the whole list.
kern-events langgraph: our KernEventsSaver (kern_events.adapters.langgraph) on SqliteDb / PostgresDb, called
  exactly as the langgraph rows call LangGraph's savers; list channels are stored as deltas.
google-adk: load = DatabaseSessionService.get_session (every event by default); persist = four
  append_event calls. "google-adk on kern-events" makes the same calls on KernEventsSessionService (the
  adk extra's one-line switch): every event too, the state from its checkpoint. The ", last 12 events"
  rows load with GetSessionConfig(num_recent_events=12), a LIMIT in ADK's service and a tail read in ours.
On PostgreSQL the database is ANALYZEd after the prefill (as autovacuum keeps a live server), for all.
growth = cost at the largest N / cost at N = 10: near 1.0 is flat.
Why ours stores more per run than the issue's 1,200 B: a run is 7 events, each with its own envelope (a
  16-byte event id, time, type, version, position: ~60 B a row on SQLite) and one 32-byte chain hash per
  append (3 a run), and the run keeps its metrics; the values a run repeats are stored once already. The
  rest is the payload's field names: a prototype with array-encoded payloads reached 1,176 B, but msgspec
  reads an array only into a struct declared array_like, which would change the public event types' JSON
  shape (or cost a second struct and a conversion on every read), so the maps stay."""


@dataclass(frozen=True)
class TurnSample:
    """What one case measured: medians per turn, and bytes stored per persisted run."""

    system: str
    backend: str
    runs: int
    load_seconds: float
    persist_seconds: float
    bytes_per_run: float
    loaded: int
    stored_per_run: float = 0.0
    """Every table's rows at the end (checkpoints and snapshots counted) over the runs stored."""
    indexed_per_run: float = 0.0
    """:attr:`stored_per_run` plus the indexes' pages."""
    view_seconds: float | None = None
    """Ours only: the median of opening the whole session view (``db.get_session``) each turn."""


def adapter(system: str) -> Any:
    """The adapter module of ``system``, or the variant of it that ``module:variant`` names (importing it
    never imports the framework itself)."""
    name, _, variant = system.partition(":")
    module: ModuleType = importlib.import_module(f"benchmarks.peers.{name}")
    return module.VARIANTS[variant] if variant else module


# -- one case --------------------------------------------------------------------------------------


@asynccontextmanager
async def _target(backend: Backend, url: str) -> AsyncIterator[Target]:
    """A fresh SQLite file, or a fresh PostgreSQL database (dropped after, connections and all)."""
    if backend == "sqlite":
        with temp_db() as path:
            yield Target("sqlite", sqlite_path=path)
        return
    name = f"kb_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield Target("postgres", postgres_url=url.rsplit("/", 1)[0] + "/" + name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@dataclass(frozen=True)
class _Stored:
    rows: int
    """Live bytes of every table's rows (free space not counted)."""
    indexes: int
    """Bytes of the indexes' pages."""


async def _stored_bytes(target: Target) -> _Stored:
    """What every table and index of the target holds."""
    if target.backend == "sqlite":
        assert target.sqlite_path is not None
        with sqlite3.connect(target.sqlite_path) as connection:
            rows, indexes = connection.execute(
                "SELECT coalesce(sum(CASE WHEN m.type = 'table' THEN d.payload END), 0), "
                "coalesce(sum(CASE WHEN m.type = 'index' THEN d.pgsize END), 0) "
                "FROM dbstat AS d JOIN sqlite_master AS m ON m.name = d.name"
            ).fetchone()
        return _Stored(int(rows), int(indexes))
    assert target.postgres_url is not None
    connection = await asyncpg.connect(target.postgres_url)
    try:
        tables = await connection.fetch(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        rows = indexes = 0
        for (table,) in tables:
            rows += await connection.fetchval(f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} AS t")
            indexes += await connection.fetchval("SELECT pg_indexes_size($1::regclass)", table)
        return _Stored(int(rows), int(indexes))
    finally:
        await connection.close()


async def _turns(args: argparse.Namespace) -> TurnSample:
    module = adapter(args.system)
    async with _target(args.backend, args.url) as target, module.open_store(target, _SESSION) as store:
        await store.prefill(agent_runs(1, args.runs))
        if target.postgres_url is not None:
            await analyze_postgres(target.postgres_url)
        before = await _stored_bytes(target)
        loads: list[float] = []
        persists: list[float] = []
        views: list[float] = []
        view = getattr(store, "view", None)  # ours: the whole session view, as the peers' load reads it
        loaded = 0
        for run in agent_runs(args.runs + 1, args.repeats):
            started = time.perf_counter()
            loaded = await store.load()
            loads.append(time.perf_counter() - started)
            if view is not None:
                started = time.perf_counter()
                if await view() != args.runs + len(views):
                    raise RuntimeError(f"{args.system}'s whole view does not hold every run")
                views.append(time.perf_counter() - started)
            started = time.perf_counter()
            await store.persist(run)
            persists.append(time.perf_counter() - started)
        if loaded <= 0:
            raise RuntimeError(f"{args.system} loaded nothing for the next run")
        after = await _stored_bytes(target)
    return TurnSample(
        system=module.SYSTEM,
        backend=args.backend,
        runs=args.runs,
        load_seconds=statistics.median(loads),
        persist_seconds=statistics.median(persists),
        bytes_per_run=(after.rows - before.rows) / args.repeats,
        loaded=loaded,
        stored_per_run=after.rows / (args.runs + args.repeats),
        indexed_per_run=(after.rows + after.indexes) / (args.runs + args.repeats),
        view_seconds=statistics.median(views) if views else None,
    )


# -- the subject -----------------------------------------------------------------------------------


QUICK_SYSTEMS = ("kern", "agno")
"""What ``--quick`` alone runs (on SQLite): ours and Agno, the peer of issue 19's reference row. Each
peer's 1,000-run case takes seconds to a minute here (google-adk's prefill a minute; LangGraph's writes
~7 MB per run), so the rest would double the quick run; they run without ``--quick``, or with
``--quick --only frameworks``."""


def sizes(quick: bool) -> tuple[int, ...]:
    """Session lengths N (runs already stored); ``--quick`` keeps N = 1,000, where the differences are."""
    return (10, 1000) if quick else (10, 100, 1000)


VIEW_SYSTEMS = ("kern", "agno", "openai_agents", "langgraph", "adk")
"""The systems of the whole-session rows: ours opens its whole view, each peer its ``load`` (the whole session)."""
VIEW_RUNS = 10_000
"""The session length of the whole-session rows in a full run."""
VIEW_LIMITS = {"adk": 1_000}
"""Peers whose prefill at :data:`VIEW_RUNS` exceeds the time budget, at the largest N that fits: see
:data:`VIEW_NOTES`."""
VIEW_NOTES = """\
whole session: kern-events' db.get_session (the whole session view: every run, from its checkpoint and the
  events after it) timed in the same turns as its load above, against each peer's load, which reads the
  whole session (agno get_session, openai-agents get_items, langgraph aget_tuple, google-adk get_session).
  A full run measures them at N = 10,000 runs (one fresh process per system and backend, 3 turns: each
  prefill takes a minute or more); --quick reuses the N = 1,000 turns above. google-adk is measured at
  N = 1,000 only: its prefill is one append_event per event through DatabaseSessionService, ~14 ms each
  here (60 s for the 4,000 events of 1,000 runs), so 10,000 runs would take over 10 minutes per case,
  past the budget of the whole subject."""


def run_cases(
    *,
    quick: bool,
    repeats: int,
    backends: Sequence[Backend],
    url: str,
    systems: Sequence[str] = SYSTEMS,
    lengths: Mapping[str, Sequence[int]] | None = None,
    turns: int | None = None,
) -> tuple[list[TurnSample], list[str]]:
    """Every available system, backend and N (``lengths[system]``, else :func:`sizes`): ``repeats`` fresh
    processes each, ``turns`` timed turns in each; medians, and skip reasons."""
    turns = turns or (5 if quick else 20)
    skipped: list[str] = []
    cases: list[Case] = []
    for system in systems:
        module = adapter(system)
        reason = module.unavailable()
        if reason is not None:
            skipped.append(f"{module.SYSTEM}: skipped: {reason}")
            continue
        cases += [
            Case.of(_MODULE, "turn", system=system, backend=backend, runs=runs, repeats=turns, url=url)
            for backend in backends
            if backend in module.BACKENDS
            for runs in (lengths or {}).get(system, sizes(quick))
        ]
    samples: dict[Case, list[TurnSample]] = {case: [] for case in cases}
    for repeat in range(repeats):
        print(f"{_MODULE}: repetition {repeat + 1}/{repeats} ({len(cases)} cases)", file=sys.stderr, flush=True)
        for case in cases:
            samples[case].append(TurnSample(**run_case_json(case)))
    medians = []
    for runs in samples.values():
        first = runs[0]
        medians.append(
            TurnSample(
                system=first.system,
                backend=first.backend,
                runs=first.runs,
                load_seconds=statistics.median(run.load_seconds for run in runs),
                persist_seconds=statistics.median(run.persist_seconds for run in runs),
                bytes_per_run=statistics.median(run.bytes_per_run for run in runs),
                loaded=first.loaded,
                stored_per_run=statistics.median(run.stored_per_run for run in runs),
                indexed_per_run=statistics.median(run.indexed_per_run for run in runs),
                view_seconds=None
                if first.view_seconds is None
                else statistics.median(run.view_seconds or 0.0 for run in runs),
            )
        )
    return medians, skipped


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}" if seconds < 0.1 else f"{seconds * 1e3:.0f}"


_COLUMNS = (
    ("load ms", "load_seconds"),
    ("persist ms", "persist_seconds"),
    ("bytes/run", "bytes_per_run"),
    ("stored/run", "stored_per_run"),
    ("+indexes/run", "indexed_per_run"),
)
"""The table's column groups: what each shows, and the sample's field."""


def render(samples: Sequence[TurnSample]) -> str:
    """One row per system and backend: load, persist and bytes per run at each N, and their growth."""
    lengths = sorted({sample.runs for sample in samples})
    by_key = {(sample.system, sample.backend, sample.runs): sample for sample in samples}
    header = ["system", "backend"]
    for what, _ in _COLUMNS:
        header += [f"{what} N={n:,}" for n in lengths] + [f"{what.split()[0]} growth"]
    rows = [header]
    for system, backend in dict.fromkeys((sample.system, sample.backend) for sample in samples):
        row = [system, backend]
        for _, field in _COLUMNS:
            values = [getattr(by_key[(system, backend, n)], field) for n in lengths]
            shown = [_ms(value) if field.endswith("_seconds") else f"{value:,.0f}" for value in values]
            growth = values[-1] / values[0] if values[0] else float("nan")
            row += [*shown, f"{growth:.2f}x"]
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        " | ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def ratios(samples: Sequence[TurnSample]) -> str:
    """At the largest N, each peer's load and persist time over ours on the same backend."""
    largest = max(sample.runs for sample in samples)
    ours = {s.backend: s for s in samples if s.system == "kern-events" and s.runs == largest}
    lines = [f"at N = {largest:,} runs, peer time / kern-events time (higher = kern-events faster):"]
    for sample in samples:
        base = ours.get(sample.backend)
        if sample.runs != largest or sample.system in ("kern-events", _KERN_LANGGRAPH) or base is None:
            continue
        lines.append(
            f"  {sample.system} on {sample.backend}: load {sample.load_seconds / base.load_seconds:.1f}x, "
            f"persist {sample.persist_seconds / base.persist_seconds:.1f}x, "
            f"bytes/run {sample.bytes_per_run / base.bytes_per_run:.2f}x, "
            f"stored/run {sample.stored_per_run / base.stored_per_run:.2f}x, "
            f"+indexes/run {sample.indexed_per_run / base.indexed_per_run:.2f}x"
        )
    # LangGraph's own savers against ours, called the same way (the graph's checkpointer switched).
    saver = {(s.backend, s.runs): s for s in samples if s.system == _KERN_LANGGRAPH}
    theirs = [s for s in samples if s.system == "langgraph" and (s.backend, s.runs) in saver]
    if theirs:
        lines.append("LangGraph's saver time / KernEventsSaver time on the same calls (higher = ours faster):")
    for sample in theirs:
        base = saver[(sample.backend, sample.runs)]
        lines.append(
            f"  {sample.backend}, N = {sample.runs:,}: load {sample.load_seconds / base.load_seconds:.2f}x, "
            f"persist {sample.persist_seconds / base.persist_seconds:.2f}x, "
            f"bytes/run {sample.bytes_per_run / base.bytes_per_run:.1f}x"
        )
    return "\n".join(lines)


def view_cases(
    *, quick: bool, backends: Sequence[Backend], url: str, samples: Sequence[TurnSample]
) -> tuple[list[TurnSample], list[str]]:
    """The whole-session samples: those at N = 1,000 already measured with ``quick``, else one fresh
    process per system and backend at :data:`VIEW_RUNS` (or the system's :data:`VIEW_LIMITS`)."""
    if quick:
        return [sample for sample in samples if sample.runs == max(sizes(quick))], []
    lengths = {system: (VIEW_LIMITS.get(system, VIEW_RUNS),) for system in VIEW_SYSTEMS}
    measured, skipped = run_cases(
        quick=quick, repeats=1, backends=backends, url=url, systems=VIEW_SYSTEMS, lengths=lengths, turns=3
    )
    return [*measured, *(sample for sample in samples if sample.system == "kern-events")], skipped


def render_view(samples: Sequence[TurnSample]) -> str:
    """Each peer's whole-session load against our whole view at the same N and backend."""
    ours = {(s.backend, s.runs): s.view_seconds for s in samples if s.view_seconds is not None}
    header = ("system", "backend", "N runs", "their load ms", "our get_session ms", "theirs / ours")
    rows = [header]
    peers = {adapter(system).SYSTEM for system in VIEW_SYSTEMS if system != "kern"}
    for sample in samples:
        view = ours.get((sample.backend, sample.runs))
        if sample.system not in peers or view is None:
            continue
        ratio = f"{sample.load_seconds / view:.1f}x"
        shown = f"whole session: {sample.system}"  # not the table above's first cell (the README test keys on it)
        rows.append((shown, sample.backend, f"{sample.runs:,}", _ms(sample.load_seconds), _ms(view), ratio))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        " | ".join(
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def report(
    quick: bool, repeats: int, url: str, backends: Sequence[Backend], *, systems: Sequence[str] = SYSTEMS
) -> tuple[str, list[dict[str, Any]]]:
    """The subject's text (table, ratios, whole-session rows, notes) and its results as JSON data."""
    samples, skipped = run_cases(quick=quick, repeats=repeats, backends=backends, url=url, systems=systems)
    views, view_skipped = view_cases(quick=quick, backends=backends, url=url, samples=samples)
    used = (
        f"sizes used: N = {', '.join(f'{n:,}' for n in sizes(quick))} runs, {repeats} run(s) per case, "
        f"{5 if quick else 20} timed turns each; systems: {', '.join(systems)}; backends: {', '.join(backends)}"
    )
    text = "\n".join(
        [
            render(samples),
            "",
            ratios(samples),
            *skipped,
            "",
            "whole session, peer load vs kern-events get_session (higher = ours faster):",
            render_view(views),
            *view_skipped,
            "",
            used,
            "",
            NOTES,
            VIEW_NOTES,
        ]
    )
    return text, [asdict(sample) for sample in samples] + [asdict(s) for s in views if s not in samples]


def main() -> None:
    """Run one case named on the command line and print its sample as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", required=True, choices=["turn"])
    parser.add_argument("--system", required=True, choices=SYSTEMS)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--runs", type=int, default=10, help="runs already in the session (N)")
    parser.add_argument("--repeats", type=int, default=20, help="timed turns (load, then persist)")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test", help="PostgreSQL server")
    args = parser.parse_args()
    print(json.dumps(asdict(asyncio.run(_turns(args)))))


if __name__ == "__main__":
    main()
