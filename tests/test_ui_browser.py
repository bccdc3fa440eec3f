"""The sessions page in a real browser: Debian's chromium (/usr/bin/chromium, installed by .ci/run)
driven by Playwright for Python, with no browser download. Flow: the list, a filter, a session,
a step back in time to the earlier state; stored XSS strings stay text (no dialog ever fires).
Under CI a missing chromium or Playwright fails; elsewhere the test skips."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).parent.parent / "docs"


def _require(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser test)")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require(False, "Playwright is not installed: pip install -e '.[ui-test]'")
    _require(os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def ui_db(tmp_path: Path) -> Path:
    """Made before the browser starts: Playwright's sync API keeps an event loop on this thread."""
    _require(importlib.util.find_spec("starlette") is not None, "the ui extra is not installed")
    from tests import _ui

    return _ui.make_db(tmp_path / "ui.db")


def test_list_filter_open_step_back_in_time_and_xss_stays_text(ui_db: Path, browser: Any, tmp_path: Path) -> None:
    from tests import _ui

    db = ui_db
    dialogs: list[str] = []
    with _ui.serve(db) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(url + "/")
        assert page.locator("a.session-link").count() == 50
        assert page.locator("#next").is_visible()
        page.screenshot(path=str(tmp_path / "sessions-list.png"), full_page=False)

        # The XSS session's name is shown as the very text that was stored.
        page.fill("input[name=user_id]", "mallory")
        page.click("button[type=submit]")
        page.wait_for_url("**/?user_id=mallory*")
        assert page.locator("#sessions tbody tr td:nth-child(2)").inner_text() == _ui.IMG
        page.click("a.session-link")
        page.wait_for_selector(".run")
        said = page.locator(".msg").all_inner_texts()
        assert said == [f"user{_ui.SCRIPT}", f"assistant{_ui.IMG}"]
        assert _ui.SCRIPT in page.locator("#media").inner_text()
        assert page.locator("img").count() == 0 and page.locator("main script").count() == 0

        # List -> filter -> the demo session.
        page.goto(url + "/")
        page.fill("input[name=user_id]", "alice@example.com")
        page.click("button[type=submit]")
        page.wait_for_url("**/?user_id=alice*")
        assert page.locator("a.session-link").all_inner_texts() == ["conversation_123"]
        page.click("a.session-link")
        page.wait_for_selector("#as-of")
        assert page.locator("#as-of").inner_text() == "version 34 (latest)"
        assert "booked" in page.locator("#state").inner_text()
        assert page.locator(".run").count() == 4
        page.locator("details.tool summary").first.click()  # arguments and results unfold
        assert page.locator("details.tool pre").first.is_visible()
        page.screenshot(path=str(tmp_path / "session.png"), full_page=True)

        # Step back in time: two versions earlier the booking was not in the state yet.
        for expected in (33, 32):
            page.click("#prev")
            page.wait_for_selector(f"text=as of version {expected} of 34")
        assert "booked" not in page.locator("#state").inner_text()
        assert "Alice" in page.locator("#state").inner_text()
        page.fill("input[name=version]", "27")  # the pause (each tool call is one event)
        page.click("#travel button")
        page.wait_for_selector("text=as of version 27 of 34")
        assert "call_book_flight_oslo" in page.locator("#paused").inner_text()
        page.screenshot(path=str(tmp_path / "session-as-of-29.png"), full_page=True)
        page.close()
    assert dialogs == []
    for name in ("sessions-list.png", "session.png", "session-as-of-29.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    if os.environ.get("KERN_UPDATE_SCREENSHOTS"):  # refresh the README's pictures
        DOCS.mkdir(exist_ok=True)
        for name in ("sessions-list.png", "session.png"):
            shutil.copy(tmp_path / name, DOCS / name)


def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(BaseException, match="no chromium") as under_ci:  # a skip must not pass for a failure
        _require(False, "no chromium")
    assert under_ci.type is pytest.fail.Exception and "CI must run the browser test" in str(under_ci.value)
    monkeypatch.delenv("CI")
    with pytest.raises(BaseException, match="no chromium") as locally:
        _require(False, "no chromium")
    assert locally.type is pytest.skip.Exception
    _require(True, "never raised")
