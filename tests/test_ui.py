"""The sessions page over HTTP (uvicorn in a thread, the standard library's client): listing,
filters and keyset paging, a session page with its runs paged, time travel, escaping, writes only
with --allow-writes, and one-line errors for a database the page cannot use."""

from __future__ import annotations

import html
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the ui extra is not installed: pip install -e '.[ui]'")

from kern_events.ui import RUNS_PER_PAGE, SESSIONS_PER_PAGE
from tests import _ui


@pytest.fixture(scope="module")
def ui_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _ui.make_db(tmp_path_factory.mktemp("ui") / "ui.db")


@pytest.fixture(scope="module")
def page(ui_db: Path) -> Iterator[str]:
    with _ui.serve(ui_db) as url:
        yield url


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post(url: str, fields: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(fields).encode(), method="POST")
    return get(request)  # type: ignore[arg-type]


def session_ids(body: str) -> list[str]:
    return [html.unescape(found) for found in re.findall(r'class="session-link" href="[^"]*">([^<]*)</a>', body)]


def test_the_list_pages_through_every_session_by_keyset_cursor(page: str) -> None:
    seen: list[str] = []
    url: str | None = page + "/"
    while url is not None:
        status, body = get(url)
        assert status == 200
        ids = session_ids(body)
        assert len(ids) <= SESSIONS_PER_PAGE
        seen += ids
        found = re.search(r'id="next" href="([^"]*)"', body)
        url = page + html.unescape(found[1]) if found else None
        assert url is None or ("after=" in url and "offset" not in url)
    assert len(seen) == len(set(seen)) == 3 + _ui.FILLERS
    assert {"conversation_123", "xss", "long"} <= set(seen)


def test_filters_by_user_type_owner_and_update_time(page: str) -> None:
    assert session_ids(get(page + "/?user_id=alice%40example.com")[1]) == ["conversation_123"]
    assert session_ids(get(page + "/?session_type=team")[1]) == ["long"]
    assert session_ids(get(page + "/?team_id=crew")[1]) == ["long"]
    assert session_ids(get(page + "/?agent_id=mallory-bot")[1]) == ["xss"]
    assert len(session_ids(get(page + "/?workflow_id=flow&user_id=user3")[1])) == len(range(3, _ui.FILLERS, 7))
    assert session_ids(get(page + "/?updated_since=2999-01-01")[1]) == []
    assert len(session_ids(get(page + "/?updated_since=2000-01-01&session_type=agent")[1])) == 2
    status, body = get(page + "/?updated_since=yesterday")
    assert status == 400 and "updated_since" in body


def test_stored_markup_is_text_on_every_page(page: str) -> None:
    for url in (page + "/?user_id=mallory", page + "/session?id=xss"):
        status, body = get(url)
        assert status == 200
        assert "<script>alert" not in body and "<img src=x" not in body
        assert _ui.IMG not in body and _ui.IMG in html.unescape(body)
    body = get(page + "/session?id=xss")[1]
    assert _ui.SCRIPT not in body and _ui.SCRIPT in html.unescape(body)


def test_a_session_page_shows_runs_tool_calls_metrics_state_and_summary(page: str) -> None:
    status, body = get(page + "/session?id=conversation_123")
    assert status == 200
    assert body.count('class="card run"') == 4
    assert "<details" in body and "get_weather" in body and "sunny and 18 °C" in body
    assert '"city": "Paris"' in html.unescape(body.split("<details", 1)[1])  # the arguments, folded
    assert 'id="tokens"' in body and "= <strong>258</strong>" in body
    assert "Alice" in body.split('id="state"', 1)[1].split("</pre>", 1)[0]
    assert 'id="summary"' in body and "introductions" in body
    assert "read-only" in body and '<form method="post"' not in body


def test_a_long_session_renders_a_bounded_page_of_runs(page: str) -> None:
    body = get(page + "/session?id=long")[1]
    runs = re.findall(r'data-run="([^"]*)"', body)
    assert runs == [f"run{n:03}" for n in range(_ui.LONG_RUNS - RUNS_PER_PAGE, _ui.LONG_RUNS)]
    earlier = html.unescape(re.search(r'id="earlier-runs" href="([^"]*)"', body)[1])  # type: ignore[index]
    runs = re.findall(r'data-run="([^"]*)"', get(page + earlier)[1])
    assert runs == [f"run{n:03}" for n in range(_ui.LONG_RUNS - 2 * RUNS_PER_PAGE, _ui.LONG_RUNS - RUNS_PER_PAGE)]
    assert f"tokens over {_ui.LONG_RUNS} runs" in body


def test_time_travel_shows_the_session_as_of_a_version_with_its_open_pause(page: str) -> None:
    body = get(page + "/session?id=conversation_123&version=27")[1]  # the pause (each tool call is one event)
    assert "as of version 27 of 34" in body
    assert "paused, waiting for confirmation of book_flight" in html.unescape(body)
    assert 'id="paused"' in body and "call_book_flight_oslo" in body
    assert "booked" not in body.split('id="state"', 1)[1].split("</pre>", 1)[0]
    assert re.search(r'id="prev" href="[^"]*version=26"', body) and re.search(r'id="next" href="[^"]*version=28"', body)
    assert get(page + "/session?id=conversation_123&version=99")[0] == 400
    assert get(page + "/session?id=conversation_123&version=x")[0] == 400
    assert get(page + "/session?id=nope")[0] == 404


def test_the_event_line_writes_out_what_the_event_stores_once_elsewhere(page: str) -> None:
    def event_line(version: int) -> str:
        body = get(page + f"/session?id=conversation_123&version={version}")[1]
        found = re.search(r'id="event">v[0-9]+: ([^<]*)</p>', body)
        assert found is not None
        return html.unescape(found.group(1))

    assert event_line(3) == "user: Hi! My name is Alice."  # stored as a reference to the run's input
    assert event_line(6).startswith('tool remember_name({"name":"Alice"}) returned')
    assert event_line(7) == "tool (remember_name): I will remember that your name is Alice."
    assert event_line(10).endswith(": Nice to meet you, Alice!")


def test_writes_are_refused_without_allow_writes(page: str) -> None:
    status, body = post(page + "/delete", {"id": "xss"})
    assert status == 403 and "--allow-writes" in body
    assert get(page + "/session?id=xss")[0] == 200


def test_rename_and_delete_with_allow_writes_and_this_servers_token(tmp_path: Path) -> None:
    db = _ui.make_db(tmp_path / "w.db")
    with _ui.serve(db, allow_writes=True) as page:
        body = get(page + "/session?id=xss")[1]
        token = re.search(r'name="token" value="([^"]*)"', body)[1]  # type: ignore[index]
        assert post(page + "/delete", {"id": "xss", "token": "forged"})[0] == 403
        status, body = post(page + "/rename", {"id": "xss", "name": "<b>renamed</b>", "token": token})
        assert status == 200 and "<b>renamed</b>" not in body and "<b>renamed</b>" in html.unescape(body)
        status, body = post(page + "/delete", {"id": "xss", "token": token})
        assert status == 200 and "xss" not in session_ids(body)
        assert get(page + "/session?id=xss")[0] == 404


@pytest.mark.parametrize("kind", ["missing", "junk", "directory"])
def test_a_database_the_page_cannot_use_is_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "db"
    if kind == "junk":
        path.write_bytes(b"definitely not SQLite " * 200)
    elif kind == "directory":
        path.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "kern_events", "ui", "--db", str(path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_ui_right_after_the_demo_serves_the_demos_database(tmp_path: Path) -> None:
    """What the README says: `kern-events demo`, then `kern-events ui` in the same directory."""
    demo = subprocess.run(
        [sys.executable, "-m", "kern_events", "demo"], cwd=tmp_path, capture_output=True, timeout=60, check=False
    )
    assert demo.returncode == 0
    assert_ui_serves_the_demo([], tmp_path)


def assert_ui_serves_the_demo(db_args: list[str], cwd: Path) -> None:
    """Start `kern-events ui` on a free port and check its page lists the demo's one conversation."""
    with subprocess.Popen(
        [sys.executable, "-m", "kern_events", "ui", *db_args, "--port", "0"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stdout is not None and server.stderr is not None
        try:
            first = server.stdout.readline()
            found = re.search(r"on (http://127\.0\.0\.1:\d+/) \(read-only\)", first)
            assert found, first
            assert session_ids(get(found[1])[1]) == ["conversation_123"]
        finally:
            server.terminate()
            server.wait(30)
        assert "Traceback" not in server.stderr.read()
