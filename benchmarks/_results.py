"""Write ``benchmarks/RESULTS.md`` and its plots from one run of ``python -m benchmarks --results``."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_scale", "write"]

_HERE = Path(__file__).resolve().parent
_PLOTS = _HERE / "plots"


def _cpu() -> str:
    """The processor's model name (the hosts a shared machine runs on differ, and so do its figures)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine() -> list[str]:
    """What the numbers were measured on (the last run's machine; each section names its processor)."""
    cpu = _cpu()
    try:
        server = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-Atc", "show server_version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        server = ""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [
        f"- machine of the last run: {os.cpu_count()} vCPU ({cpu}), {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()} (sections measured since 2026-12-03 name their processor)",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, PostgreSQL {server or 'n/a'}",
        "- shared and noisy: every figure is a median, and every row compares two cases run side by side",
    ]


def _commit() -> str:
    """`` at commit abc1234`` for the checkout measured (``+`` when it had changes), or nothing outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=_HERE)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], capture_output=True, text=True, cwd=_HERE.parent
        )
    except OSError:
        return ""
    if head.returncode != 0:
        return ""
    changed = any(not line.endswith(("RESULTS.md", "results.json", ".png")) for line in dirty.stdout.splitlines())
    return f" at commit {head.stdout.strip()}{'+' if changed else ''}"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend, or ``None`` (said on stderr) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return None
    return plt


def _plot(samples: Sequence[dict[str, Any]], directory: Path) -> list[Path]:
    """Load, persist and bytes per run against session length, one line per system and backend."""
    plt = _pyplot()
    if plt is None or not samples:
        return []
    directory.mkdir(exist_ok=True)
    written = []
    charts = (
        ("load_seconds", "load for the next run (ms)", 1e3, "load.png"),
        ("persist_seconds", "persist one run (ms)", 1e3, "persist.png"),
        ("bytes_per_run", "bytes stored per persisted run", 1.0, "bytes_per_run.png"),
    )
    lines = sorted({(sample["system"], sample["backend"]) for sample in samples})
    systems = list(dict.fromkeys(sample["system"] for sample in samples))
    colors = {system: f"C{index}" for index, system in enumerate(systems)}  # one colour per system
    for field, label, scale, name in charts:
        figure, axes = plt.subplots(figsize=(7, 4.5))
        for system, backend in lines:
            points = sorted(
                (sample["runs"], sample[field] * scale)
                for sample in samples
                if sample["system"] == system and sample["backend"] == backend
            )
            style = "-" if backend == "sqlite" else "--"
            width = 2.5 if system == "kern-events" else 1.2
            axes.plot(
                *zip(*points, strict=True),
                style,
                color=colors[system],
                marker="o",
                linewidth=width,
                label=f"{system} ({backend})",
            )
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("runs already in the session (N)")
        axes.set_ylabel(label)
        axes.set_title(f"{label} against session length")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        path = directory / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def plot_scale(points: Sequence[dict[str, Any]], directory: Path = _PLOTS) -> list[Path]:
    """The PostgreSQL scale rows: each operation's cost (ms per operation) against store size, log-log."""
    plt = _pyplot()
    if plt is None or not points:
        return []
    directory.mkdir(exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, operation in enumerate(dict.fromkeys(point["operation"] for point in points)):
        line = sorted(
            (point["sessions"], point["seconds_per_operation"] * 1e3)
            for point in points
            if point["operation"] == operation
        )
        axes.plot(*zip(*line, strict=True), "-", color=f"C{index}", marker="o", label=operation)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("sessions in the store (10 events each)")
    axes.set_ylabel("ms per operation")
    axes.set_title("PostgreSQL: cost against store size")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = directory / "scale.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return [path]


def _sections(text: str) -> dict[str, list[str]]:
    """An existing RESULTS.md's subject sections by name: the lines under each ``## name``, plots left out."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            current = None if name == "Plots" else found.setdefault(name, [])
        elif line.startswith("Every sample of th"):
            current = None
        elif current is not None:
            current.append(line)
    return found


def _provenance(text: str) -> str | None:
    """The measuring line an older RESULTS.md wrote once for all its sections (``Written by …``)."""
    found = re.search(r"^Written by `([^`]+)` on (\S+) \(([^)]*)\)", text, re.MULTILINE)
    return None if found is None else f"Measured by `{found.group(1)}` on {found.group(2)} ({found.group(3)})."


def write(
    sections: Sequence[tuple[str, str]],
    results: dict[str, Any],
    *,
    repeats: int,
    seconds: float,
    order: Sequence[str],
    merge: bool = False,
    directory: Path = _HERE,
) -> list[Path]:
    """RESULTS.md with every subject's table and notes, and the plots; the paths written.

    Each section says the command and date that measured it. With ``merge`` (``--results --only
    SUBJECT``) the sections and JSON of subjects not in this run are kept from the files already
    written, so a long regeneration can be done one subject at a time; ``order`` places them.
    """
    target, data = directory / "RESULTS.md", directory / "results.json"
    command = " ".join(["python -m benchmarks", *sys.argv[1:]])
    measured = (
        f"Measured by `{command}` on {datetime.date.today().isoformat()}{_commit()} on {_cpu()} "
        f"({repeats} runs per case, {max(1, round(seconds / 60))} min)."
    )
    bodies: dict[str, list[str]] = {}
    if merge and target.exists():
        old = target.read_text()
        inherited = _provenance(old)
        for name, body in _sections(old).items():
            while body and not body[-1]:
                body.pop()
            if inherited is not None and not any(line.startswith("Measured by `") for line in body):
                body = ["", inherited, *body]
            bodies[name] = body
        if data.exists():
            results = {**json.loads(data.read_text()), **results}
    for name, text in sections:
        bodies[name] = ["", measured, "", "```text", text, "```"]
    names = [name for name in order if name in bodies] + [name for name in bodies if name not in order]
    plots = _plot(results.get("frameworks", []), directory / "plots") + plot_scale(
        results.get("scale", []), directory / "plots"
    )
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m benchmarks --results --repeats 3`; `--results --only SUBJECT` re-measures one",
        "section and keeps the others, so each section says the command and date that measured it.",
        "Ratios are ours / reference as throughput: above 1.00 ours is faster (for latency, p99 and memory",
        "rows the ratio is reference / ours, so higher is better there too).",
        "",
        *_machine(),
        "",
    ]
    for name in names:
        lines += [f"## {name}", *bodies[name], ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{path.stem}](plots/{path.name})" for path in plots]
        lines.append("")
    lines += ["Every sample of these runs, as JSON: [results.json](results.json).", ""]
    target.write_text("\n".join(lines))
    data.write_text(json.dumps(results, indent=1) + "\n")
    return [target, data, *plots]
