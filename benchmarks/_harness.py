"""What every benchmark subject shares: cases run in fresh processes, timing, medians and the table.

A subject module (``benchmarks.append``) defines its cases as functions returning a :class:`Sample`
and hands them to :func:`case_main`, so ``python -m benchmarks.<subject> --case NAME --key value …``
prints one JSON line (most cases time their appends with :func:`drive`). ``python -m benchmarks`` runs
every :class:`Comparison` through :func:`measure`, which interleaves our case and its reference within
each repetition, and prints ratios of medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import asyncpg

from kern_events.events import MessageAdded, ToolCallRequest

__all__ = [
    "AppendFunction",
    "Case",
    "Comparison",
    "Sample",
    "Timer",
    "analyze_postgres",
    "case_main",
    "describe_sizes",
    "drive",
    "measure",
    "message_pool",
    "percentile",
    "quick_rows",
    "render_table",
    "results_json",
    "run_case_json",
    "session_ids",
    "temp_db",
]

Metric = Literal["throughput", "latency", "p99", "memory"]
"""Throughput compares events per second; latency compares seconds per append, p99 the 99th percentile
of single appends' latency, memory the peak resident set size (lower is better for the last three)."""

AppendFunction = Callable[[str, int, Sequence[MessageAdded]], Awaitable[None]]
"""Append events to a session whose current version is given; what differs between engines."""

_ROOT = Path(__file__).resolve().parent.parent
_TEXT = (
    "The quarterly report shows revenue growth in all three regions; the assistant summarises the main "
    "drivers, lists the open questions and proposes next steps for the team before the review. "
) * 3


@dataclass(frozen=True)
class Sample:
    """What one run of a case measured: appends and events completed in ``seconds`` of wall time."""

    appends: int
    events: int
    seconds: float
    p99: float | None = None
    """The 99th percentile of single appends' (or operations') latency, in seconds, where recorded."""
    peak_rss: int | None = None
    """The process's peak resident set size in bytes, where the case reports it."""

    @property
    def events_per_second(self) -> float:
        """Throughput in events per second."""
        return self.events / self.seconds

    @property
    def seconds_per_append(self) -> float:
        """Mean latency of one append (the appends of concurrent writers overlap)."""
        return self.seconds / self.appends


@dataclass(frozen=True)
class Case:
    """One case of a subject module and its options, run as ``python -m <module> --case <name> …``."""

    module: str
    name: str
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, module: str, name: str, **options: object) -> Case:
        """A case with its options given as keywords (``None`` values are left out, the rest sorted)."""
        given = sorted((key, str(value)) for key, value in options.items() if value is not None)
        return cls(module, name, tuple(given))

    def argv(self) -> list[str]:
        """The command line that runs this case in a fresh interpreter."""
        flags = [part for key, value in self.options for part in (f"--{key.replace('_', '-')}", value)]
        return [sys.executable, "-m", self.module, "--case", self.name, *flags]

    def describe(self) -> dict[str, str]:
        """The case as plain JSON data."""
        return {"case": self.name, **dict(self.options)}


@dataclass(frozen=True)
class Comparison:
    """One row of the table: our case against a reference case (or none), on one metric."""

    workload: str
    ours: Case
    reference: Case | None = None
    metric: Metric = "throughput"
    quick: bool = False
    """Whether ``--quick`` runs this row (the headline rows; the rest run in a full run, or with
    ``--quick --only SUBJECT``)."""


class Timer:
    """A ``with`` block's wall time by ``time.perf_counter``, in :attr:`seconds`."""

    seconds: float = 0.0

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.seconds = time.perf_counter() - self._start


@contextmanager
def temp_db() -> Iterator[Path]:
    """A database file path in a fresh temporary directory (on disk, honouring ``TMPDIR``), removed after."""
    with tempfile.TemporaryDirectory(prefix="kern-bench-") as directory:
        yield Path(directory) / "bench.db"


async def analyze_postgres(url: str) -> None:
    """``ANALYZE`` the database at ``url``: planner statistics as autovacuum keeps them on a live server.

    Without them the planner guesses a freshly filled table's row counts, and a plain
    ``ORDER BY version DESC LIMIT 20`` sorts every row of the session instead of walking the index.
    """
    connection = await asyncpg.connect(url)
    try:
        await connection.execute("ANALYZE")
    finally:
        await connection.close()


def message_pool(size: int = 64) -> list[MessageAdded]:
    """Distinct assistant messages with a tool call, about 730 bytes each in MessagePack."""
    return [
        MessageAdded(
            run_id=f"run-{index // 8:04d}",
            role="assistant",
            content=(_TEXT[index:] + _TEXT[:index])[:520] + f" ({index})",
            message_id=f"msg-{index:06d}",
            tool_calls=(
                ToolCallRequest(
                    tool_call_id=f"call-{index:06d}",
                    tool_name="search_documents",
                    arguments={"query": f"quarterly revenue by region {index}", "limit": 5},
                ),
            ),
        )
        for index in range(size)
    ]


def session_ids(tasks: int) -> list[str]:
    """One session id per writer task."""
    return [f"session-{task:03d}" for task in range(tasks)]


async def drive(append: AppendFunction, sessions: Mapping[str, int], args: argparse.Namespace) -> Sample:
    """Run one writer per session (given with its version): ``--warmup`` untimed appends, then ``--appends`` timed.

    Each append carries ``--batch`` events and states the exact expected version.
    """
    batch: int = args.batch
    pool = message_pool()
    batches = [[pool[(start + offset) % len(pool)] for offset in range(batch)] for start in range(len(pool))]
    versions = dict(sessions)
    latencies: list[float] = []

    async def writer(session_id: str, count: int, timed: bool) -> None:
        for step in range(count):
            version = versions[session_id]
            started = time.perf_counter()
            await append(session_id, version, batches[step % len(batches)])
            if timed:
                latencies.append(time.perf_counter() - started)
            versions[session_id] = version + batch

    await asyncio.gather(*(writer(session_id, args.warmup, False) for session_id in versions))
    with Timer() as timer:
        await asyncio.gather(*(writer(session_id, args.appends, True) for session_id in versions))
    total = args.appends * len(versions)
    return Sample(appends=total, events=total * batch, seconds=timer.seconds, p99=percentile(latencies, 0.99))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def case_main(cases: Mapping[str, Callable[[argparse.Namespace], Sample]], parser: argparse.ArgumentParser) -> None:
    """Parse ``--case NAME`` and the subject's options, run that case once, print its sample as JSON."""
    parser.add_argument("--case", required=True, choices=sorted(cases))
    args = parser.parse_args()
    sample = cases[args.case](args)
    print(json.dumps(asdict(sample)))


def run_case_json(case: Case) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return the JSON object its last line printed."""
    done = subprocess.run(case.argv(), cwd=_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"case {case.describe()} failed with exit code {done.returncode}:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def run_case(case: Case) -> Sample:
    """Run one case in a fresh interpreter and return what it measured."""
    return Sample(**run_case_json(case))


def measure(comparisons: Sequence[Comparison], *, repeats: int, label: str) -> dict[Case, list[Sample]]:
    """Run every distinct case ``repeats`` times; each comparison's cases run back to back, in rotating order.

    Progress goes to stderr, prefixed with ``label``.
    """
    groups: dict[Case, list[Case]] = {}
    placed: set[Case] = set()
    for comparison in comparisons:
        group = groups.setdefault(comparison.ours, [])
        for case in (comparison.ours, comparison.reference):
            if case is not None and case not in placed:
                placed.add(case)
                group.append(case)
    samples: dict[Case, list[Sample]] = {case: [] for case in placed}
    for repeat in range(repeats):
        print(f"{label}: repetition {repeat + 1}/{repeats}", file=sys.stderr, flush=True)
        for group in groups.values():
            if not group:
                continue
            shift = repeat % len(group)
            for case in group[shift:] + group[:shift]:
                samples[case].append(run_case(case))
    return samples


def _value(sample: Sample, metric: Metric) -> float:
    if metric == "throughput":
        return sample.events_per_second
    if metric == "latency":
        return sample.seconds_per_append
    measured = sample.p99 if metric == "p99" else sample.peak_rss
    if measured is None:
        raise ValueError(f"the sample has no {metric} figure: {sample}")
    return float(measured)


def _median(samples: Sequence[Sample], metric: Metric) -> float:
    return statistics.median(_value(sample, metric) for sample in samples)


def _ratio(ours: float, reference: float, metric: Metric) -> float:
    """Ours over reference as throughput, so higher is better for every metric."""
    return ours / reference if metric == "throughput" else reference / ours


def _format(value: float, metric: Metric) -> str:
    if metric == "throughput":
        return f"{value:,.0f} ev/s"
    if metric == "memory":
        return f"{value / 2**20:,.1f} MiB peak RSS"
    if metric == "p99":
        return f"{value * 1e3:,.2f} ms p99"
    return f"{value * 1e6:,.0f} µs/op"


def render_table(comparisons: Sequence[Comparison], samples: Mapping[Case, Sequence[Sample]], *, repeats: int) -> str:
    """The comparisons as a text table of medians and their ratio."""
    header = ("workload", "ours", "reference", "ratio: ours/ref throughput (higher = ours faster)")
    rows: list[tuple[str, str, str, str]] = [header]
    for comparison in comparisons:
        ours = _median(samples[comparison.ours], comparison.metric)
        if comparison.reference is None:
            rows.append((comparison.workload, _format(ours, comparison.metric), "—", "—"))
            continue
        reference = _median(samples[comparison.reference], comparison.metric)
        ratio = _ratio(ours, reference, comparison.metric)
        rows.append(
            (
                comparison.workload,
                _format(ours, comparison.metric),
                _format(reference, comparison.metric),
                f"{ratio:.2f}",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        " | ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    lines.append(f"(medians of {repeats} runs per case, each in a fresh process, ours and reference interleaved)")
    return "\n".join(lines)


_METRIC_NAMES = {
    "throughput": "events_per_second",
    "latency": "seconds_per_operation",
    "p99": "p99_seconds",
    "memory": "peak_rss_bytes",
}


def quick_rows(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The rows ``--quick`` runs of a subject: those marked ``quick``."""
    return [comparison for comparison in comparisons if comparison.quick]


def describe_sizes(comparisons: Sequence[Comparison]) -> str:
    """Each row's cases with the options they really run with (``--quick`` prints them in its notes)."""
    lines = []
    for comparison in comparisons:
        sides = [comparison.ours, *([comparison.reference] if comparison.reference is not None else [])]
        shown = "; ".join(" ".join([case.name, *(f"{key}={value}" for key, value in case.options)]) for case in sides)
        lines.append(f"  {comparison.workload}: {shown}")
    return "\n".join(lines)


def results_json(comparisons: Sequence[Comparison], samples: Mapping[Case, Sequence[Sample]]) -> list[dict[str, Any]]:
    """Every comparison with all its samples, medians and ratio, as plain JSON data."""

    def side(case: Case | None, metric: Metric) -> dict[str, Any] | None:
        if case is None:
            return None
        runs = [asdict(sample) for sample in samples[case]]
        return {**case.describe(), "median": _median(samples[case], metric), "samples": runs}

    results = []
    for comparison in comparisons:
        ours = side(comparison.ours, comparison.metric)
        reference = side(comparison.reference, comparison.metric)
        ratio = None
        if ours is not None and reference is not None:
            ratio = _ratio(ours["median"], reference["median"], comparison.metric)
        results.append(
            {
                "workload": comparison.workload,
                "metric": _METRIC_NAMES[comparison.metric],
                "ours": ours,
                "reference": reference,
                "ratio": ratio,
            }
        )
    return results
