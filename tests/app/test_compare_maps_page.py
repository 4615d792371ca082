"""AppTest: the Compare heat maps page renders every method on an upload, runs a slow one and the sanity check."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fixtures.app import build_tiny_weights, open_page, real_views, start_app
from mura_core.explain.cams import SLOW_METHODS


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def page(weights: Path, monkeypatch) -> AppTest:
    return open_page(weights, monkeypatch, "pages/compare_maps.py")


def _upload(at: AppTest, png: bytes) -> AppTest:
    at.file_uploader(key="compare_upload").set_value([("xray.png", png, "image/png")])
    return at.run()


def test_page_waits_for_an_upload(page: AppTest):
    assert page.title[0].value == "Compare heat maps"
    assert any("Upload a radiograph" in m.value for m in page.markdown)
    assert not page.image


def test_every_fast_method_renders_with_runtime(page: AppTest, grey_png: bytes, weights: Path):
    from mura_core.explain.predictor import Predictor

    at = _upload(page, grey_png)
    assert not at.exception, at.exception
    methods = Predictor.from_weights(weights_dir=weights, device="cpu").cam_methods()
    fast = [m for m in methods if m not in SLOW_METHODS]
    captions = [c for img in at.image for c in img.captions]
    assert len(captions) == len(fast) and len(fast) >= 5
    for method in fast:
        assert any(c.startswith(f"{method}: ") and c.endswith(" s") for c in captions), method
    slow_buttons = [b for b in at.button if b.key and b.key.startswith("compare_run_")]
    assert {b.key.removeprefix("compare_run_") for b in slow_buttons} == set(methods) & SLOW_METHODS
    assert all("about" in b.label for b in slow_buttons)


def test_slow_method_and_sanity_check_render(page: AppTest, grey_png: bytes):
    at = _upload(page, grey_png)
    at.button(key="compare_run_scorecam").click().run()
    assert not at.exception, at.exception
    assert any(c.startswith("scorecam: ") for img in at.image for c in img.captions)
    at.button(key="compare_sanity").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert "similarity (Spearman)" in table.columns and len(table) >= 5
    assert table["similarity (Spearman)"].between(-1, 1).all()
    assert any("randomised model" in c for img in at.image for c in img.captions)


def test_shared_scale_is_named(page: AppTest, grey_png: bytes):
    at = _upload(page, grey_png)
    at.radio(key="compare_scale").set_value("shared").run()
    assert not at.exception, at.exception
    assert any("Shared scale" in c.value for c in at.caption)


def test_real_radiograph_renders(page: AppTest):
    paths = real_views(1)
    if not paths:
        pytest.skip("real radiographs not available")
    at = _upload(page, paths[0].read_bytes())
    assert not at.exception, at.exception
    assert len(at.image) >= 5


def test_boxed_example_scores_hit_or_miss(weights: Path, monkeypatch):
    from fixtures.app import SHARED_DATA

    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip("real data not available")
    at = start_app(weights, monkeypatch)
    monkeypatch.setenv("MURA_DATA", str(SHARED_DATA))
    at.switch_page("pages/compare_maps.py").run()
    box = at.selectbox(key="compare_example")
    at = box.set_value(box.options[1]).run()
    assert not at.exception, at.exception
    verdicts = [m.value for m in at.markdown if "**hit**" in m.value or "miss" in m.value]
    assert len(verdicts) >= 5
    assert any("ground-truth box" in c.value for c in at.caption)
