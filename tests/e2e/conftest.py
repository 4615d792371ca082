"""Browser end-to-end fixtures: a real `streamlit run app.py` server and headless Debian Chromium.

The server uses the shipped weights when weights/index.json exists, else a tiny random-weight
checkpoint built for the session (MURA_WEIGHTS_DIR). Screenshots go to test-output/ (git-ignored).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from fixtures.app import REPO_ROOT, build_tiny_weights  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = REPO_ROOT / "test-output"
FIRST_LOAD_S = 120.0
"""Generous: the first model load and scoring on a slow 2-core CI machine."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"streamlit did not become healthy at {url} within {timeout:.0f} s")


@pytest.fixture(scope="session")
def e2e_weights(tmp_path_factory) -> Path:
    """MURA_WEIGHTS_DIR when set; else the shipped weights folder when it has weights and an evaluate
    report (the real product); else a tiny random-weight checkpoint with a synthetic report."""
    from mura_core.evaluation.reports import find_reports

    if os.environ.get("MURA_WEIGHTS_DIR"):
        return Path(os.environ["MURA_WEIGHTS_DIR"])
    shipped = REPO_ROOT / "weights"
    if (shipped / "index.json").is_file() and find_reports([shipped]):
        return shipped
    return build_tiny_weights(tmp_path_factory.mktemp("e2e_weights"))


@contextlib.contextmanager
def streamlit_server(weights: Path, log_path: Path):
    """A fresh `streamlit run app.py` on a free local port, its output in `log_path`; yields its URL."""
    port = _free_port()
    env = dict(os.environ, MURA_WEIGHTS_DIR=str(weights), PYTHONUNBUFFERED="1")
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, proc, FIRST_LOAD_S)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


WIDGET_STATE_WARNING = "was created with a default value but also had its value set via the Session State API"
"""Streamlit's warning for a widget given a value and also set through st.session_state: never allowed."""


@pytest.fixture(scope="session")
def server_log(tmp_path_factory) -> Path:
    """The shared server's log file (read by tests that check for warnings)."""
    return tmp_path_factory.mktemp("e2e_server") / "streamlit.log"


@pytest.fixture(scope="session")
def app_url(e2e_weights: Path, server_log: Path) -> str:
    """One `streamlit run app.py` for the session; yields its URL; stops it afterwards."""
    with streamlit_server(e2e_weights, server_log) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (skips when either is missing)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not executable:
        pytest.skip("chromium is not installed (see tests/install_chromium.sh)")
    with sync_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    """A fresh browser page (1440x1000) with generous timeouts."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(FIRST_LOAD_S * 1000)
    yield pg
    context.close()


@pytest.fixture
def shot():
    """`shot(page, name)` saves a full-page screenshot under test-output/."""
    SCREENSHOTS.mkdir(exist_ok=True)

    def save(pg, name: str) -> Path:
        # Streamlit scrolls inside its own container, so grow the viewport to the content's height.
        size = pg.viewport_size
        height = pg.evaluate("() => Math.max(...Array.from(document.querySelectorAll('section, div'))"
                             ".map(e => e.scrollHeight))")
        pg.set_viewport_size({"width": size["width"], "height": int(min(max(height, size["height"]), 6000))})
        pg.wait_for_timeout(500)
        path = SCREENSHOTS / f"{name}.png"
        pg.screenshot(path=str(path), full_page=True)
        pg.set_viewport_size(size)
        return path

    return save
