"""Every block in the README runs exactly as printed, and its figures are those of benchmarks/RESULTS.md.

Python blocks run in a fresh interpreter in an empty directory (``-W error``); the PostgreSQL block
gets ``KERN_EVENTS_DB_URL``, which it reads itself, pointing at a database made for the test. The
command-line block runs line by line in bash, after the demo, with ``.venv`` being this interpreter's
environment. The set-up commands: the test one is what CI runs; the demo one runs in a fresh copy of
the checkout, with a new virtual environment (heavy: about 15 s).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests import _dynamo, _pg

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _block_after(heading: str, *, index: int = 0) -> str:
    section = README.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def _run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    script = cwd / "block.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def test_every_python_block_is_one_of_those_run_below() -> None:
    blocks = _python_blocks()
    tested = [
        _block_after("Quick start"),
        _block_after("Agents, teams and workflows"),
        _block_after("Agents, teams and workflows", index=1),
        _block_after("Several sessions at once; truncating a log"),
        _block_after("Extension events and idempotency keys"),
        _block_after("Data lifecycle"),
        _block_after("Use it from your framework"),
        _block_after("Use it from your framework", index=1),
        _block_after("Use it from your framework", index=2),
        _block_after("Use it from your framework", index=3),
        _block_after("Telemetry (OpenTelemetry)"),
        _block_after("PostgreSQL: the production store"),
        _block_after("Your own backend"),
    ]
    assert blocks == tested


def test_quick_start_runs_and_a_second_process_continues_the_session(tmp_path: Path) -> None:
    code = _block_after("Quick start")
    assert _run_python(code, tmp_path) == "1 run; last answer: Nice to meet you, Alice!\n"
    assert _run_python(code, tmp_path).startswith("2 runs; ")


def test_the_quick_start_runs_on_dynamodb_with_its_one_line_swapped(
    tmp_path: Path, dynamo_server: _dynamo.Emulator
) -> None:
    """The README says the storage is one line: swapped for ``DynamoDb("agents")`` as it prints it,
    the quick start runs against the emulator (reached through AWS's own environment variables)."""
    code = _block_after("Quick start")
    line = 'SqliteDb(db_file="agents.db")'
    assert line in code and 'DynamoDb("agents")' in README.read_text()
    code = code.replace(line, 'DynamoDb("agents")').replace(", SqliteDb\n", ", SqliteDb, DynamoDb\n")
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": dynamo_server.url,
        "AWS_DEFAULT_REGION": _dynamo.CREDENTIALS["region_name"],
        "AWS_ACCESS_KEY_ID": _dynamo.CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": _dynamo.CREDENTIALS["aws_secret_access_key"],
    }
    try:
        assert _run_python(code, tmp_path, env) == "1 run; last answer: Nice to meet you, Alice!\n"
        assert _run_python(code, tmp_path, env).startswith("2 runs; ")
    finally:
        _dynamo.delete_table(dynamo_server, "agents")


def test_the_agent_quick_start_runs_as_written(tmp_path: Path) -> None:
    out = _run_python(_block_after("Agents, teams and workflows"), tmp_path)
    assert out == "Your name is Alice.\nYou said: Hello!\n"


def test_the_session_api_example_runs_as_written(tmp_path: Path) -> None:
    out = _run_python(_block_after("Agents, teams and workflows", index=1), tmp_path)
    assert out == "['user', 'assistant', 'tool', 'assistant'] {'city': 'Paris'}\n"


def test_the_multi_session_and_truncation_example_runs_as_written(tmp_path: Path) -> None:
    out = _run_python(_block_after("Several sessions at once; truncating a log"), tmp_path)
    assert out == "4 [5] alice\n"


def test_the_extension_events_example_runs_as_written(tmp_path: Path) -> None:
    out = _run_python(_block_after("Extension events and idempotency keys"), tmp_path)
    assert out == "wrote version 4; votes {'yes': 2, 'no': 1}; 1 poll session\n"


def test_the_data_lifecycle_example_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("cryptography", reason="needs the crypto extra")
    out = _run_python(_block_after("Data lifecycle"), tmp_path)
    assert out == "2 runs still in the view; 5 events compacted\n1 session and 1 key erased; []\n"
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600


def test_the_telemetry_example_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="needs the otel-test extra")
    out = _run_python(_block_after("Telemetry (OpenTelemetry)"), tmp_path)
    assert out == ("['kern_events.append', 'kern_events.run.complete', 'kern_events.run.start']\n")


def test_the_langgraph_example_runs_as_written_and_a_second_process_continues_the_thread(tmp_path: Path) -> None:
    pytest.importorskip("langgraph", reason="needs the langgraph extra")
    code = _block_after("Use it from your framework")
    assert _run_python(code, tmp_path) == "2 turns; reply to hello\n"
    assert _run_python(code, tmp_path) == "4 turns; reply to hello\n"


def test_the_agno_switch_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("agno", reason="the agno extra is not installed")
    out = _run_python(_block_after("Use it from your framework", index=1), tmp_path)
    assert out == "{'n': 2} 1\n"


def test_the_postgres_example_runs_as_written(tmp_path: Path) -> None:
    _pg.require_postgres()
    database = f"kt_readme_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(_pg.PG_URL)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    _pg.run_sync(lambda: admin(f'CREATE DATABASE "{database}"'))
    try:
        url = _pg.PG_URL.rsplit("/", 1)[0] + f"/{database}"
        out = _run_python(
            _block_after("PostgreSQL: the production store"), tmp_path, env={**os.environ, "KERN_EVENTS_DB_URL": url}
        )
    finally:
        _pg.run_sync(lambda: admin(f'DROP DATABASE IF EXISTS "{database}"'))
    assert out == "[]\nTrue\n"


def test_the_command_line_block_runs_as_written_and_lists_every_command(tmp_path: Path) -> None:
    from kern_events.cli import _parser

    section = README.read_text().split("## The command line\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```sh\n(.*?)\n```", section, re.S)
    subcommands = next(action for action in _parser()._actions if action.dest == "command").choices
    assert subcommands is not None
    listed = set(re.findall(r"^kern-events (\w[\w-]*)", block, re.M))
    assert listed == set(subcommands) - {"ui"}  # it serves until stopped: its own section shows it
    assert "kern-events ui" in README.read_text().split("## Look at your sessions\n", 1)[1].split("\n## ", 1)[0]
    assert "kern-events --version" in block

    (tmp_path / ".venv").symlink_to(sys.prefix)
    done = subprocess.run(
        ["bash", "-e", "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "starting session conversation_123" in done.stdout
    assert "as of version 6" in done.stdout
    assert (tmp_path / "all.jsonl").read_text().count("\n") > 6


def test_every_nats_url_the_readme_shows_is_one_the_command_line_takes() -> None:
    """The ``--db 'nats://...'`` examples parse into a NatsDb (nothing connects), and the URL form the
    command-line section spells out names exactly the query parameters the CLI knows."""
    from kern_events.cli import _NATS_OPTIONS, _open
    from kern_events.db import NatsDb

    text = README.read_text()
    urls = re.findall(r"--db\s+'(nats://[^']+)'", text)
    assert len(urls) >= 3, urls
    for url in urls:
        assert isinstance(_open(url, create=True), NatsDb), url
    section = text.split("## The command line\n", 1)[1].split("\n## ", 1)[0]
    form = re.search(r"`nats://HOST:PORT\[,HOST:PORT\.\.\.\]\[\?([^`]+)\]`", section)
    assert form is not None
    assert [pair.split("=")[0] for pair in form.group(1).split("&")] == list(_NATS_OPTIONS)


def test_readme_has_exactly_two_set_up_commands_and_ci_runs_the_test_one() -> None:
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", setup, re.S)
    assert len(commands) == 2
    assert commands[0] == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/kern-events demo"
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci


@pytest.mark.heavy
def test_the_demo_set_up_command_runs_as_written_in_a_fresh_copy(tmp_path: Path) -> None:
    """A new virtual environment, a plain install (no extras) and the demo, as a new user types it."""
    text = README.read_text()
    command = re.findall(r"```sh\n(.*?)\n```", text.split("## Set up", 1)[1].split("\n## ", 1)[0], re.S)[0]
    checkout = tmp_path / "kern-events"
    ignored = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "*.db", "*.db-*", ".*_cache")
    shutil.copytree(ROOT, checkout, ignore=ignored)
    done = subprocess.run(
        ["bash", "-e", "-c", command], cwd=checkout, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "starting session conversation_123" in done.stdout
    assert "agent: Nice to meet you, Alice!" in done.stdout


def test_python_m_benchmarks_runs_as_the_readme_says_from_the_checkout() -> None:
    text = README.read_text()
    assert "`python -m benchmarks" not in text, "say .venv/bin/python: a bare python may not be the venv's"
    assert "`.venv/bin/python -m benchmarks`" in text
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# -- figures -----------------------------------------------------------------------------------------


def _results_rows() -> dict[str, list[str]]:
    """RESULTS.md's table rows by their first cell (cells stripped)."""
    rows: dict[str, list[str]] = {}
    for line in RESULTS.read_text().splitlines():
        if " | " in line and not line.startswith("-"):
            cells = [cell.strip() for cell in line.split("|")]
            rows.setdefault(cells[0], cells[1:])
            rows[" / ".join(cells[:2])] = cells[2:]
    return rows


def _number(text: str) -> float:
    return float(re.sub(r"[^\d.]", "", text))


def _close(printed: str, measured: float) -> bool:
    """The README rounds: to the digits it prints."""
    digits = len(printed.split(".")[1]) if "." in printed else 0
    return abs(_number(printed) - measured) <= 0.5 * 10**-digits + 1e-9


def test_the_readme_ratios_are_those_in_results() -> None:
    ratios = {cells[-1] for cells in _results_rows().values() if cells and re.fullmatch(r"\d+\.\d\d", cells[-1] or "")}
    table = README.read_text().split("**Against the raw drivers**", 1)[1].split("\n\n", 2)[1]
    rows = [row for row in table.splitlines()[2:] if "faster" not in row]  # the one "Nx faster" row: below
    printed = [value for row in rows for value in row.split("|")[2].strip().split(" / ")]
    printed = [re.match(r"[\d.]+", value).group(0) for value in printed]  # type: ignore[union-attr]
    assert printed and set(printed) <= ratios, set(printed) - ratios
    faster = re.search(r"with the checkpoint vs without \| ([\d,]+)x faster", README.read_text())
    assert faster is not None
    assert _close(faster.group(1), _number(_results_rows()["resume at 100,000 events: checkpoint vs none"][-1]))


def test_the_readme_resume_figures_are_those_in_results() -> None:
    found = re.search(
        r"\(([\d.]+) ms at 100 events, ([\d.]+) ms at 100,000; ([\d,]+) ms without the checkpoint\)",
        README.read_text().replace("\n", " "),
    )
    assert found is not None
    rows = _results_rows()
    at_100 = _number(rows["resume at 100 events: checkpoint vs none"][0]) / 1000
    at_100k = _number(rows["resume at 100,000 events: checkpoint vs none"][0]) / 1000
    without = _number(rows["resume at 100,000 events: checkpoint vs none"][1]) / 1000
    assert _close(found.group(1), at_100) and _close(found.group(2), at_100k) and _close(found.group(3), without)


@pytest.mark.parametrize(
    ("name", "system"),
    [
        ("kern-events", "kern-events"),
        ("Agno", "agno"),
        ("OpenAI Agents SDK", "openai-agents"),
        ("LangGraph", "langgraph"),
        ("KernEventsSaver", "kern-events langgraph"),
        ("Google ADK", "google-adk"),
    ],
)
def test_the_readme_framework_figures_are_those_in_results(name: str, system: str) -> None:
    text = README.read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| {name} "))
    load, persist, size = (cell.strip().split(" / ") for cell in row.split("|")[2:5])
    rows = _results_rows()
    header = rows["system"][1:]  # the first table whose first column is "system": the frameworks table
    for backend, column in (("sqlite", 0), ("postgres", 1)):
        measured = dict(zip(header, rows[f"{system} / {backend}"], strict=False))
        assert _close(load[column].removesuffix(" ms"), _number(measured["load ms N=1,000"])), (backend, load)
        assert _close(persist[column].removesuffix(" ms"), _number(measured["persist ms N=1,000"])), (backend, persist)
        assert size[column].removesuffix(" B") == measured["bytes/run N=1,000"], (backend, size)


def test_the_own_backend_example_runs_the_conformance_suite_as_written(tmp_path: Path) -> None:
    (tmp_path / "test_my_store.py").write_text(_block_after("Your own backend"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "--strict-markers",
            "test_my_store.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"\b[1-9]\d+ passed", done.stdout), done.stdout[-500:]
