"""Run every benchmark subject and print one table of ratios (``--json`` for all samples).

Usage: ``python -m benchmarks [--quick] [--json] [--repeats N]``. ``--quick`` uses small sizes (about
a minute); the default sizes take a few minutes. Progress goes to stderr, results to stdout. A subject
whose ``unavailable()`` gives a reason (PostgreSQL not answering) is skipped with that reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks import append, history, postgres, resume
from benchmarks._harness import measure, render_table, results_json

_SUBJECTS = (append, postgres, history, resume)


def main() -> None:
    """Measure every subject's comparisons and print them as a table, or as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, about a minute in all")
    parser.add_argument("--json", action="store_true", help="print every sample as JSON instead of the table")
    parser.add_argument("--repeats", type=int, help="runs of each case (default 3 with --quick, else 5)")
    parser.add_argument(
        "--only", choices=[subject.__name__.rsplit(".", 1)[-1] for subject in _SUBJECTS], help="run one subject"
    )
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    started = time.perf_counter()
    report: list[str] = []
    results = []
    for subject in _SUBJECTS:
        if args.only is not None and not subject.__name__.endswith("." + args.only):
            continue
        unavailable = getattr(subject, "unavailable", None)
        reason = unavailable() if unavailable is not None else None
        if reason is not None:
            print(f"{subject.__name__}: skipped: {reason}", file=sys.stderr)
            report += [f"{subject.__name__}: skipped: {reason}", ""]
            continue
        comparisons = subject.comparisons(args.quick)
        samples = measure(comparisons, repeats=repeats, label=subject.__name__)
        report += [render_table(comparisons, samples, repeats=repeats), "", subject.NOTES, ""]
        results += results_json(comparisons, samples)
    print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(json.dumps(results, indent=2) if args.json else "\n".join(report).rstrip())


if __name__ == "__main__":
    main()
