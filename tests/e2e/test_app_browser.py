"""End-to-end: upload a study in a real browser, wait for scores and overlays, switch CAM, open validation."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from fixtures.app import real_views

pytestmark = pytest.mark.e2e

LONG = 120_000  # ms: first model load + scoring on a slow CI machine


def _study_files(tmp_path: Path) -> list[Path]:
    """Three real radiographs when the shared data is present, else three generated PNGs."""
    paths = real_views(3)
    if len(paths) == 3:
        return paths
    from fixtures.build import png_bytes

    out = []
    for i in range(3):
        path = tmp_path / f"view{i + 1}.png"
        path.write_bytes(png_bytes(256, 256, seed=i))
        out.append(path)
    return out


def _wait_settled(page) -> None:
    """Wait until Streamlit has finished running the page's script."""
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(timeout=LONG)
    page.wait_for_timeout(300)


def test_upload_study_switch_cam_and_validation(page, app_url, shot, tmp_path):
    files = _study_files(tmp_path)
    page.goto(f"{app_url}/study_viewer")   # the fresh server's first visit lands on a page URL
    page.get_by_role("heading", name="Study viewer").wait_for(timeout=LONG)
    # app.py ran (not Streamlit's legacy pages/ mode): its sidebar caption and model picker are there
    page.get_by_text("not a diagnostic device").first.wait_for(timeout=LONG)
    page.locator('[data-testid="stSidebar"]').get_by_text("Model", exact=True).first.wait_for(timeout=LONG)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a real image" * 8)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(p) for p in files]
                                                                                + [str(broken)])

    page.get_by_text("Study result").wait_for(timeout=LONG)
    overlays = page.locator('[data-testid="stImage"]').filter(has_text=re.compile("heat map"))
    overlays.nth(len(files) - 1).wait_for(timeout=LONG)
    assert page.get_by_text(re.compile(r"Study probability")).count() >= 1
    error_card = page.locator('[data-testid="stAlert"]').filter(has_text="broken.png")
    assert error_card.count() == 1 and "could not be read" in error_card.inner_text()
    _wait_settled(page)
    shot(page, "02_viewer_first_method")
    first_caption = overlays.first.inner_text()
    assert "heat map, P(abnormal)" in first_caption and "%" in first_caption
    other = "gradcam" if first_caption.split(" heat map")[0].endswith("hirescam") else "hirescam"

    # switch the CAM method in the sidebar
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="CAM method").click()
    page.get_by_role("option", name=other, exact=True).click()
    page.locator('[data-testid="stImage"]').filter(has_text=f"{other} heat map").nth(len(files) - 1).wait_for(
        timeout=LONG)
    _wait_settled(page)
    shot(page, f"03_viewer_{other}")

    # open the validation page from the navigation
    sidebar.get_by_role("link", name="Validation").click()
    page.get_by_role("heading", name="Validation").wait_for(timeout=LONG)
    page.get_by_text("Confusion matrices per body part").wait_for(timeout=LONG)
    page.locator(".js-plotly-plot").first.wait_for(timeout=LONG)
    _wait_settled(page)
    shot(page, "04_validation")
    assert page.locator(".js-plotly-plot").count() >= 3


def test_dataset_browser_opens_a_study(page, app_url, shot):
    from fixtures.app import SHARED_DATA

    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip("real data not available")
    page.goto(f"{app_url}/dataset_browser")
    page.get_by_role("heading", name="Dataset browser").wait_for(timeout=LONG)
    page.locator('[data-testid="stImage"]').nth(23).wait_for(timeout=LONG)   # a full page of thumbnails
    _wait_settled(page)
    # landing straight on a page URL still runs app.py: our navigation and the model picker are there
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert sidebar.get_by_role("link", name="Dataset browser").count() == 1
    assert sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Model").count() == 1
    shot(page, "05_browser")
    page.locator('[data-testid="stButton"] button').filter(has_text=re.compile(r"^Open$")).first.click()
    page.get_by_role("heading", name="Study viewer").wait_for(timeout=LONG)
    page.get_by_text("Study result").wait_for(timeout=LONG)
    page.get_by_text("from the dataset browser").wait_for(timeout=LONG)
    _wait_settled(page)
    shot(page, "06_viewer_from_browser")


def test_home_page(page, app_url, shot):
    page.goto(app_url)
    page.get_by_role("heading", name="Bone X-ray abnormality viewer").wait_for(timeout=LONG)
    page.get_by_text("not a diagnostic device").first.wait_for()
    page.get_by_text("Models run on").wait_for(timeout=LONG)
    _wait_settled(page)
    shot(page, "01_home")
