"""End-to-end: the Compare heat maps page renders every fast method and the sanity check in Chromium."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fixtures.app import real_views

pytestmark = pytest.mark.e2e

LONG = 180_000  # ms: first model load and every fast method on a slow 2-core machine


def _wait_settled(page) -> None:
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=LONG)
    page.wait_for_timeout(300)


def test_compare_maps_page_in_chromium(page, app_url, shot, tmp_path: Path):
    paths = real_views(1)
    if not paths:
        from fixtures.build import png_bytes

        paths = [tmp_path / "xray.png"]
        paths[0].write_bytes(png_bytes(256, 256, seed=3))
    page.goto(f"{app_url}/compare_maps")
    page.get_by_role("heading", name="Compare heat maps").wait_for(timeout=LONG)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(paths[0])])
    tiles = page.locator('[data-testid="stImage"]').filter(has_text=re.compile(r": \d+\.\d\d s"))
    tiles.nth(4).wait_for(timeout=LONG)  # at least five methods drawn
    _wait_settled(page)
    captions = tiles.all_inner_texts()
    assert any(c.startswith("layercam-fused:") for c in captions), captions
    shot(page, "10_compare_maps")

    page.get_by_role("button", name="Run the sanity check").click()
    page.locator('[data-testid="stImage"]').filter(has_text="randomised model").first.wait_for(timeout=LONG)
    _wait_settled(page)
    shot(page, "11_compare_maps_sanity")
