"""End-to-end: a fresh server's first visitor, deep-linked to a page, never sees Streamlit's legacy page list.

The sidebar is watched from the first response until the app is ready: the app's own links ("Dataset
browser", capitalised) must be the only navigation; Streamlit's list of pages/ scripts ("app", "dataset
browser", ...) must never appear, not even for a moment. The server log must hold no widget-state warning.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from .conftest import FIRST_LOAD_S, WIDGET_STATE_WARNING, streamlit_server

pytestmark = pytest.mark.e2e

LEGACY_NAMES = ("app", "home", "study viewer", "compare maps", "dataset browser", "validation", "model card")
"""How Streamlit's legacy list names the scripts (file names, lower case, underscores as spaces)."""

_SIDEBAR_STATE = """() => {
  const legacy = document.querySelector('[data-testid="stSidebarNav"]');
  const links = Array.from(document.querySelectorAll('[data-testid="stSidebar"] a')).map(a => a.innerText.trim().split('\\n').pop().trim());
  const app = document.querySelector('[data-testid="stApp"]');
  return {legacy: legacy ? legacy.innerText : null, links: links,
          state: app ? app.getAttribute('data-test-script-state') : null,
          heading: Array.from(document.querySelectorAll('h1')).map(h => h.innerText.trim())};
}"""


def _watch_until_ready(page, heading: str, timeout: float = FIRST_LOAD_S) -> list[dict]:
    """Poll the sidebar from page load until `heading` is shown and the script has stopped running."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = page.evaluate(_SIDEBAR_STATE)
        seen.append(state)
        if heading in state["heading"] and state["state"] == "notRunning" and state["links"]:
            return seen
        page.wait_for_timeout(50)
    raise AssertionError(f"the page {heading!r} was not ready within {timeout:.0f} s; last state {seen[-1]}")


def test_fresh_server_deep_link_shows_only_the_apps_navigation(browser, e2e_weights: Path, tmp_path: Path):
    log = tmp_path / "streamlit.log"
    with streamlit_server(e2e_weights, log) as url:
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(FIRST_LOAD_S * 1000)
        page.goto(f"{url}/dataset_browser", wait_until="commit")   # the server's very first request
        seen = _watch_until_ready(page, "Dataset browser")
        assert len(seen) > 1
        for state in seen:
            assert state["legacy"] is None, f"Streamlit's page list appeared: {state['legacy']!r}"
            assert not [text for text in state["links"] if text in LEGACY_NAMES], state["links"]
        assert seen[-1]["links"][:7] == ["Home", "Study viewer", "Compare heat maps", "Dataset browser", "Worklist",
                                          "Validation",
                                         "Model card"]

        # widgets keep their values across pages without Streamlit's widget-state warning
        page.get_by_role("link", name="Study viewer").first.click()
        _watch_until_ready(page, "Study viewer")
        page.get_by_role("link", name="Home").first.click()
        _watch_until_ready(page, "Bone X-ray abnormality viewer")
        page.get_by_role("link", name="Study viewer").first.click()
        _watch_until_ready(page, "Study viewer")
        context.close()
    assert WIDGET_STATE_WARNING not in log.read_text()


def test_shared_server_log_has_no_widget_state_warning(page, app_url: str, server_log: Path):
    page.goto(f"{app_url}/study_viewer")
    _watch_until_ready(page, "Study viewer")
    page.get_by_role("link", name="Validation").first.click()
    _watch_until_ready(page, "Validation")
    page.get_by_role("link", name="Study viewer").first.click()
    _watch_until_ready(page, "Study viewer")
    assert WIDGET_STATE_WARNING not in server_log.read_text()
