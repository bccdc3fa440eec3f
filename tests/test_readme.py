"""The README's quick start runs as written, and continues the session in a second process."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_quick_start_runs_and_a_second_process_continues_the_session(tmp_path: Path) -> None:
    text = README.read_text()
    code = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S)
    assert code is not None, "the README has a Python quick start"
    script = tmp_path / "quick_start.py"
    script.write_text(code.group(1))
    first = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert first.stdout == "1 runs; last answer: Nice to meet you, Alice!\n"
    assert second.stdout.startswith("2 runs")


def test_readme_has_exactly_two_set_up_commands_and_ci_runs_the_test_one() -> None:
    text = README.read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", setup, re.S)
    assert len(commands) == 2
    assert "kern-events demo" in commands[0]
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_the_agent_quick_start_runs_as_written(tmp_path: Path) -> None:
    text = README.read_text()
    code = re.search(r"## Agents, teams and workflows\n\n.*?```python\n(.*?)```", text, re.S)
    assert code is not None
    script = tmp_path / "agents.py"
    script.write_text(code.group(1))
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout == "Your name is Alice.\nYou said: Hello!\n"


def test_the_session_api_example_runs(tmp_path: Path) -> None:
    section = README.read_text().split("## Agents, teams and workflows", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    body = textwrap.indent(blocks[1], "    ")
    script = tmp_path / "session_api.py"
    script.write_text(
        "import asyncio\n"
        "from kern_events import InMemoryDb, RunMetrics, ToolCallRequest\n\n"
        "async def main() -> None:\n"
        "    db = InMemoryDb()\n"
        f"{body}"
        "    view = await db.get_session('conversation_123')\n"
        "    print(view.session_state, [m.role for m in history], view.runs[0].tool_calls[0].result)\n\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert done.stdout == "{'city': 'Paris'} ['user', 'assistant', 'tool', 'assistant'] {'temp': 21}\n"
