"""Run every benchmark subject and print one table of ratios (``--json`` for all samples).

Usage: ``python -m benchmarks [--quick] [--json] [--repeats N] [--only SUBJECT] [--results]``.
``--quick`` runs each subject's headline rows (the rest say how to run them) at small sizes, 3 runs
each, with the frameworks rows for ours and Agno at N = 10 and 1,000 on SQLite and the scale rows at
10,000 sessions: 45 s measured on this project's 2-vCPU machine with the peers installed when it was
quiet, 103 s while other jobs kept its load average at 7 (under two minutes either way).
``--quick --only SUBJECT`` runs every row of that subject at the small sizes.
``--results`` also writes ``benchmarks/RESULTS.md`` and its plots from this run; with ``--only
SUBJECT`` it replaces that subject's section (and its JSON) and keeps the others, so a full
regeneration can be done one subject at a time. Progress goes to stderr, results to stdout. A
subject whose ``unavailable()`` gives a reason (PostgreSQL not answering) is skipped with that
reason; so is a peer framework that is not installed (the peers come from the optional extra:
``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from benchmarks import (
    append,
    contention,
    dynamodb,
    encryption,
    engine,
    frameworks,
    history,
    nats,
    postgres,
    resume,
    scale,
    transfer,
    ui,
)
from benchmarks._harness import describe_sizes, measure, quick_rows, render_table, results_json
from benchmarks.peers._workload import Backend

_SUBJECTS = (append, postgres, contention, engine, history, resume, ui, encryption, transfer, nats)
_NAMES = [subject.__name__.rsplit(".", 1)[-1] for subject in (*_SUBJECTS, frameworks, scale, dynamodb)]


def main() -> None:
    """Measure every subject's comparisons and print them as a table, or as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="each subject's headline rows, small sizes")
    parser.add_argument("--json", action="store_true", help="print every sample as JSON instead of the table")
    parser.add_argument("--repeats", type=int, help="runs of each case (default 3 with --quick, else 5)")
    parser.add_argument("--only", choices=_NAMES, help="run one subject")
    parser.add_argument(
        "--results", action="store_true", help="write benchmarks/RESULTS.md and its plots (with --only: that section)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    every_row = not args.quick or args.only is not None  # --quick alone: each subject's headline rows
    started = time.perf_counter()
    sections: list[tuple[str, str]] = []
    results: dict[str, Any] = {}
    for subject in _SUBJECTS:
        name = subject.__name__.rsplit(".", 1)[-1]
        if args.only is not None and args.only != name:
            continue
        every = subject.comparisons(args.quick)
        comparisons = every if every_row else quick_rows(every)
        if not comparisons:  # said before probing the subject's server (a NATS cluster takes seconds)
            sections.append((name, f"not in --quick ({len(every)} rows): run `--quick --only {name}`, or the full run"))
            continue
        unavailable = getattr(subject, "unavailable", None)
        reason = unavailable() if unavailable is not None else None
        if reason is not None:
            print(f"{name}: skipped: {reason}", file=sys.stderr)
            sections.append((name, f"skipped: {reason}"))
            continue
        samples = measure(comparisons, repeats=repeats, label=subject.__name__)
        text = f"{render_table(comparisons, samples, repeats=repeats)}\n\n{subject.NOTES}"
        if args.quick:
            text += f"\n--quick: {len(comparisons)} of {len(every)} rows, each case run with:\n"
            text += describe_sizes(comparisons)
        sections.append((name, text))
        results[name] = results_json(comparisons, samples)
    if args.only in (None, "frameworks"):
        backends: list[Backend] = ["sqlite"]
        reason = postgres.unavailable()
        if reason is None:
            backends.append("postgres")
        else:
            print(f"frameworks: PostgreSQL rows skipped: {reason}", file=sys.stderr)
        if args.quick and not every_row:
            backends = ["sqlite"]
        text, samples_json = frameworks.report(
            args.quick,
            repeats if args.quick else min(repeats, 3),
            postgres.URL,
            backends,
            systems=frameworks.SYSTEMS if every_row else frameworks.QUICK_SYSTEMS,
        )
        sections.append(("frameworks", text))
        results["frameworks"] = samples_json
    if args.only in (None, "dynamodb"):  # capacity units from item sizes: no timing, so not measured
        reason = dynamodb.unavailable()
        if reason is None:
            text, cost_rows = dynamodb.report(args.quick)
            sections.append(("dynamodb", f"{text}\n\n{dynamodb.NOTES}"))
            results["dynamodb"] = cost_rows
        else:
            print(f"dynamodb: skipped: {reason}", file=sys.stderr)
            sections.append(("dynamodb", f"skipped: {reason}"))
    if args.only in (None, "scale"):
        reason = postgres.unavailable()
        if reason is None:
            text, points_json = scale.report(args.quick, repeats)
            sections.append(("scale", text))
            results["scale"] = points_json
        else:
            print(f"scale: skipped: {reason}", file=sys.stderr)
            sections.append(("scale", f"skipped: {reason}"))
    elapsed = time.perf_counter() - started
    print(f"done in {elapsed:.0f} s", file=sys.stderr)
    if args.results:
        from benchmarks import _results

        written = _results.write(
            sections, results, repeats=repeats, seconds=elapsed, order=_NAMES, merge=args.only is not None
        )
        print(f"wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n\n".join(f"== {name} ==\n{text}" for name, text in sections))


if __name__ == "__main__":
    main()
