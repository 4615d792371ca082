"""AppTest: home, dataset browser, validation and model-card pages render without tracebacks."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fixtures.app import SHARED_DATA, TINY_NAME, build_tiny_weights, start_app


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def app(weights: Path, monkeypatch) -> AppTest:
    return start_app(weights, monkeypatch)


def test_home_explains_tool_model_and_device(app: AppTest):
    from mura_core.app import services

    first = " ".join(m.value for m in app.markdown) + " ".join(w.value for w in app.warning)
    assert "not a diagnostic device" in first                  # drawn at once, never waiting for the model
    assert services.model_ready(TINY_NAME, wait=120)            # app.py started the background load
    app.run()
    assert not app.exception, app.exception
    text = " ".join(m.value for m in app.markdown) + " ".join(w.value for w in app.warning)
    assert TINY_NAME in text and "shallow_cnn" in text
    assert "Models run on" in text
    assert app.selectbox(key="sidebar_model").value == TINY_NAME
    assert len(app.main.get("page_link")) == 6                 # Home's links: every page but Home
    assert [link.proto.label for link in app.sidebar.get("page_link")] == [
        "Home", "Study viewer", "Compare heat maps", "Dataset browser", "Worklist", "Validation",
        "Model card"]                                           # the app's own navigation


def test_validation_page_renders_matrices_and_moves_with_slider(app: AppTest):
    at = app.switch_page("pages/validation.py").run()
    assert not at.exception, at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 3                                   # confusion, ROC, calibration
    tables = at.dataframe
    metrics = tables[0].value
    assert set(metrics["body part"]) >= {"WRIST", "ELBOW", "overall"}
    assert "(" in metrics.loc[metrics["body part"] == "overall", "auc"].item()   # 95% interval shown
    out_of_fold = tables[1].value                              # kappa at thresholds the studies never chose
    assert list(out_of_fold.columns) == ["studies", "n", "abnormal", "kappa", "sensitivity", "specificity"]
    assert out_of_fold["studies"].tolist() == ["overall"] and "[" in out_of_fold["kappa"].item()
    assert any("fitted on 4/5" in c.value and "not a confidence interval" in c.value for c in at.caption)
    kappas = tables[2].value
    assert kappas.loc[kappas["body part"] == "wrist", "radiologist (best, paper)"].item() == "0.931"
    assert all(isinstance(v, str) and v for v in kappas["this model"])  # every blank cell says why
    assert any("splits" in c.value and "differ" in c.value for c in at.caption)
    before = metrics.loc[metrics["body part"] == "overall", "sensitivity"].item()
    at.radio(key="validation_mode").set_value("slider").run()
    at.slider(key="validation_threshold").set_value(0.05).run()
    assert not at.exception, at.exception
    after = at.dataframe[0].value
    assert after.loc[after["body part"] == "overall", "sensitivity"].item().startswith("1.000")
    assert after.loc[after["body part"] == "overall", "sensitivity"].item() != before


def test_model_card_page_renders_card(app: AppTest):
    at = app.switch_page("pages/model_card.py").run()
    assert not at.exception, at.exception
    text = " ".join(m.value for m in at.markdown)
    assert f"Model card: {TINY_NAME}" in text and "CC BY 4.0" in text and "Intended use" in text


def test_a_single_models_card_page_is_the_card_file_text(tmp_path: Path, monkeypatch):
    """The Model card page shows what `python -m mura_core card` writes (one text): the index's default map and
    flip, not only the metrics, for a single checkpoint as for an ensemble."""
    import json

    from mura_core.evaluation.cards import card_text

    weights = build_tiny_weights(tmp_path / "weights")
    index = json.loads((weights / "index.json").read_text())
    index.update(default_tta={TINY_NAME: True}, default_cam={TINY_NAME: "hirescam"})
    (weights / "index.json").write_text(json.dumps(index))
    at = start_app(weights, monkeypatch).switch_page("pages/model_card.py").run()
    assert not at.exception, at.exception
    text = at.markdown[0].value
    assert text.strip() == card_text(TINY_NAME, weights).strip()
    assert "**Default heat map**: `hirescam`" in text and "**Test-time flip**: on by default" in text


def test_browser_filters_and_opens_study_in_viewer(app: AppTest):
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip("real data not available")
    at = app.switch_page("pages/dataset_browser.py").run()
    assert not at.exception, at.exception
    assert at.text_input(key="browser_path").value == str(SHARED_DATA.resolve())
    assert len(at.image) == 24                                 # one page of thumbnails
    at.selectbox(key="browser_split").set_value("valid").run()
    at.multiselect(key="browser_parts").set_value(["WRIST"]).run()
    assert not at.exception, at.exception
    assert any(m.value.startswith("**16** studies") for m in at.markdown)
    assert len(at.image) == 16
    first = next(b for b in at.button if b.key and b.key.startswith("open_"))
    first.click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Study viewer"
    assert any("from the dataset browser" in i.value for i in at.info)
    assert any("Study probability" in m.label for m in at.metric)
    assert any("ground-truth boxes" in c for img in at.image for c in img.captions)


def test_browser_page_number_follows_the_filter(app: AppTest):
    if not (SHARED_DATA / "manifest.csv").is_file():
        pytest.skip("real data not available")
    at = app.switch_page("pages/dataset_browser.py").run()
    at.number_input(key="browser_page").set_value(10).run()
    assert any("Page 10 of" in c.value for c in at.caption)
    at.multiselect(key="browser_parts").set_value(["WRIST"]).run()       # 65 studies: 3 pages
    assert not at.exception, at.exception
    assert at.number_input(key="browser_page").value == 3
    assert any("Page 3 of 3" in c.value for c in at.caption)


def test_browser_refuses_unreadable_path(app: AppTest, tmp_path: Path):
    at = app.switch_page("pages/dataset_browser.py").run()
    at.text_input(key="browser_path").set_value(str(tmp_path / "nowhere")).run()
    assert not at.exception, at.exception
    assert any("Cannot read" in e.value for e in at.error)


def test_linked_study_outside_roots_is_refused(app: AppTest, tmp_path: Path):
    app.query_params["data"] = str(tmp_path)
    app.query_params["study"] = "g0001"
    at = app.switch_page("pages/study_viewer.py").run()
    assert not at.exception, at.exception
    assert any("not inside a configured data folder" in e.value for e in at.error)


def test_browser_scores_filtered_studies_on_demand(app: AppTest, manifest_folder: Path):
    at = app.switch_page("pages/dataset_browser.py").run()
    at.text_input(key="browser_path").set_value(str(manifest_folder)).run()
    assert not at.exception, at.exception
    assert any(m.value.startswith("**3** studies") for m in at.markdown)
    assert any("magenta" in c.value.lower() for c in at.caption)
    at.selectbox(key="browser_prediction").set_value("uncertain").run()
    assert any("have no prediction" in w.value for w in at.warning)
    at.button(key="browser_score").click().run()
    assert not at.exception, at.exception
    assert not any("have no prediction" in w.value for w in at.warning)
    assert any(m.value.startswith("**3** studies") for m in at.markdown)
    assert any("p=0." in c.value for c in at.caption)          # the scores are shown under thumbnails


def test_validation_runs_model_on_a_data_folder(app: AppTest, manifest_folder: Path):
    at = app.switch_page("pages/validation.py").run()
    at.radio(key="validation_source").set_value("run").run()
    at.text_input(key="validation_path").set_value(str(manifest_folder)).run()
    at.selectbox(key="validation_split").set_value("all").run()
    assert any("Press the button" in i.value for i in at.info)
    at.button(key="validation_run").click().run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) == 3
    table = at.dataframe[0].value
    assert table.loc[table["body part"] == "overall", "n"].item() == 3


def test_settings_survive_a_visit_to_another_page(app: AppTest):
    at = app.switch_page("pages/study_viewer.py").run()
    at.slider(key="viewer_alpha").set_value(0.75).run()
    at.switch_page("pages/dataset_browser.py").run()
    at.selectbox(key="browser_label").set_value("normal").run()
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/study_viewer.py").run()
    assert at.slider(key="viewer_alpha").value == 0.75
    at.switch_page("pages/dataset_browser.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="browser_label").value == "normal"


@pytest.mark.parametrize("report,methods", [
    ("lite0_multisource_box", {"cam-ms", "cam-zoom", "layercam-fused", "cam", "gradcam", "layercam"}),
    ("lite2_windows_768_cycle5", {"cam"}),
    ("lite0_windows_hybrid", {"rollout", "gradcam"}),
    ("hybrid_lite2_box", {"rollout", "gradcam", "eigencam"})])
def test_validation_pointing_game_table_from_a_shipped_report(report: str, methods: set, tmp_path: Path,
                                                               monkeypatch):
    """The shipped report's pointing game: one row per measured method and source, the two baselines beside."""
    shipped = Path(__file__).resolve().parents[2] / "weights" / f"{report}.report"
    assert (shipped / "report.json").is_file(), f"{report}'s report is not shipped: rename this case's model"
    folder = build_tiny_weights(tmp_path / "weights", with_report=False)
    copy = folder / f"{report}.report"
    copy.mkdir()
    for name in ("report.json", "study_predictions.csv"):
        shutil.copyfile(shipped / name, copy / name)
    at = start_app(folder, monkeypatch).switch_page("pages/validation.py").run()
    assert not at.exception, at.exception
    table = next(t.value for t in at.dataframe if "pointing game" in t.value.columns)
    assert set(table.columns) >= {"source", "method", "images with boxes", "pointing game", "energy share"}
    for source, rows in table.groupby("source"):
        listed = list(rows["method"])
        assert set(listed[:-2]) == methods, source
        assert listed[-2:] == ["baseline: image centre", "baseline: random point / uniform map"]
        assert all(0.0 <= float(v.split()[0]) <= 1.0 for v in rows["pointing game"])
    caption = " ".join(c.value for c in at.caption)
    assert "15 px" in caption
    assert ("one method only (cam)" in caption) == (methods == {"cam"})
    assert set(table["source"]) == {"FracAtlas", "bone-fracture-xr"}
    measured = table[table["method"].isin(methods)]["energy share"]
    assert all(0.0 < float(v) < 1.0 for v in measured)                # every method's energy share is shown
