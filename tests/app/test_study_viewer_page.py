"""AppTest: the study viewer scores an uploaded study, shows overlays, survives a corrupt file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from fixtures.app import REPO_ROOT, build_tiny_weights, metric_values, open_page, real_views, upload_views

APP = str(REPO_ROOT / "app.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_tiny_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def viewer(weights: Path, monkeypatch) -> AppTest:
    return open_page(weights, monkeypatch, "pages/study_viewer.py")


_upload = upload_views
_metrics = metric_values


def test_viewer_waits_for_upload(viewer: AppTest):
    assert viewer.title[0].value == "Study viewer"
    assert not viewer.metric and not viewer.error
    assert any("Upload the views" in m.value for m in viewer.markdown)


def test_upload_real_study_shows_probabilities_and_overlays(viewer: AppTest):
    paths = real_views(3)
    if len(paths) < 3:
        pytest.skip("real radiographs not available")
    at = _upload(viewer, [(p.name, p.read_bytes()) for p in paths])
    assert not at.exception, at.exception
    metrics = _metrics(at)
    assert metrics["Study probability (abnormal)"].endswith("%")
    assert metrics["Decision"] in {"Abnormal", "Normal"}
    captions = [c for img in at.image for c in img.captions]
    overlays = [c for c in captions if "heat map" in c]
    assert len(overlays) == 3 and all("P(abnormal)" in c and "%" in c for c in overlays)
    assert len(captions) == 6                      # image + overlay per view
    per_view = [float(m.value.rstrip("%")) for m in at.metric if m.label == "P(abnormal)"]
    assert len(per_view) == 3
    study = float(metrics["Study probability (abnormal)"].rstrip("%"))
    assert study == pytest.approx(sum(per_view) / 3, abs=0.1)   # MURA: the mean of the views
    assert any("The view that drove it" in m.value for m in at.markdown)
    assert not at.error


def test_corrupt_upload_is_an_error_card_and_others_score(viewer: AppTest):
    paths = real_views(2)
    if len(paths) < 2:
        pytest.skip("real radiographs not available")
    files = [(paths[0].name, paths[0].read_bytes()), ("broken.png", b"\x89PNG\r\n\x1a\nnot really a png"),
             (paths[1].name, paths[1].read_bytes())]
    at = _upload(viewer, files)
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "broken.png" in errors[0] and "could not be read" in errors[0]
    assert "Traceback" not in errors[0]
    overlays = [c for img in at.image for c in img.captions if "heat map" in c]
    assert len(overlays) == 2
    assert _metrics(at)["Study probability (abnormal)"].endswith("%")
    assert any("1 file was unreadable" in m.value for m in at.markdown)


def test_display_settings_do_not_rerun_the_model(viewer: AppTest):
    from mura_core.app import services as app_state

    paths = real_views(1)
    if not paths:
        pytest.skip("real radiographs not available")
    at = _upload(viewer, [(paths[0].name, paths[0].read_bytes())])
    cache = app_state.result_cache()
    misses = cache.misses
    at.slider(key="viewer_alpha").set_value(0.8).run()
    at.selectbox(key="viewer_colormap").set_value("inferno").run()
    at.slider(key="viewer_zoom").set_value(2.0).run()
    assert not at.exception, at.exception
    assert cache.misses == misses                  # every rerun was a cache hit
    at.selectbox(key="viewer_cam").set_value("hirescam").run()
    assert cache.misses == misses + 1              # a new CAM method scores again
    assert "hirescam heat map" in " ".join(c for img in at.image for c in img.captions)


def test_body_part_selector_sets_threshold(viewer: AppTest):
    paths = real_views(1)
    if not paths:
        pytest.skip("real radiographs not available")
    viewer.selectbox(key="viewer_part").set_value("WRIST").run()
    at = _upload(viewer, [(paths[0].name, paths[0].read_bytes())])
    metrics = _metrics(at)
    assert metrics["Body part"] == "WRIST" and metrics["Threshold"] == "45.0%"   # the card's wrist threshold


def test_no_weights_says_so(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(tmp_path / "empty"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception, at.exception
    assert any("No trained weights" in e.value for e in at.error)
    at.switch_page("pages/study_viewer.py").run()
    assert not at.exception
    at.file_uploader(key="viewer_upload").set_value([("x.png", b"junk", "image/png")])
    at.run()
    assert not at.exception
    assert any("No trained weights" in e.value for e in at.error)


def _all_text(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "error", "info", "warning") for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value}" for m in at.metric]
    parts += [c for img in at.image for c in img.captions]
    parts += [str(df.value.to_dict()) for df in at.dataframe]
    return "\n".join(str(p) for p in parts)


def test_dicom_upload_body_part_from_tag_and_no_identifying_tags(viewer: AppTest):
    from fixtures.build import dicom_bytes

    data = dicom_bytes(rows=96, cols=80, body_part="ELBOW", window=(2000.0, 4000.0))
    at = _upload(viewer, [("study.dcm", data)])
    assert not at.exception, at.exception
    assert _metrics(at)["Body part"] == "ELBOW"               # read from BodyPartExamined
    text = _all_text(at)
    assert "SECRET" not in text and "19000101" not in text     # no identifying tag anywhere
    assert "DICOM" in text and "CR" in text                    # technical facts are shown
    from mura_core.app.view_controls import view_key

    before = _metrics(at)["Study probability (abnormal)"]
    at.checkbox(key=view_key("viewer_window_on", 0, "study.dcm")).check().run()
    at.number_input(key=view_key("viewer_wc", 0, "study.dcm")).set_value(1000.0).run()
    assert not at.exception, at.exception
    assert "P(abnormal)" in " ".join(c for img in at.image for c in img.captions)
    assert _metrics(at)["Study probability (abnormal)"] == before   # window/level is display only


# ---- slow heat maps (ScoreCAM, AblationCAM): an estimate, a button, progress per view, the server's cap --------

def _slow_runs(monkeypatch) -> list[str]:
    """Record every slow heat-map run (pytorch-grad-cam's ScoreCAM / AblationCAM) from now on."""
    from mura_core.explain import cams

    calls: list[str] = []
    original = cams._library

    def counting(model, spec, inputs, method, target):
        calls.append(method)
        return original(model, spec, inputs, method, target)

    monkeypatch.setattr(cams, "_library", counting)
    return calls


def _slow_study(viewer: AppTest, method: str, seed: int) -> AppTest:
    """The viewer on `method` with a fresh two-view study (its slow maps not cached yet)."""
    from fixtures.build import png_bytes

    viewer.selectbox(key="viewer_cam").set_value(method).run()
    return _upload(viewer, [("a.png", png_bytes(72, 56, seed=seed)), ("b.png", png_bytes(48, 64, seed=seed + 1))])


def _overlays(at: AppTest, method: str) -> list[str]:
    return [c for img in at.image for c in img.captions if f"{method} heat map" in c]


def test_slow_method_shows_an_estimate_and_runs_only_on_the_button(viewer: AppTest, monkeypatch, capfd):
    runs = _slow_runs(monkeypatch)
    at = _slow_study(viewer, "scorecam", seed=11)
    assert not at.exception, at.exception
    assert runs == []                                          # nothing slow before the button
    assert _metrics(at)["Study probability (abnormal)"].endswith("%")   # the scores are there at once
    notice = " ".join(i.value for i in at.info)
    assert "scorecam is slow" in notice and "about" in notice and "2 views" in notice
    button = at.button(key="viewer_slow_run")
    assert "2 views" in button.label and "(about " in button.label
    assert not _overlays(at, "scorecam")
    assert sum("No scorecam map yet" in i.value for i in at.info) == 2
    capfd.readouterr()

    at = button.click().run()
    assert not at.exception, at.exception
    assert runs == ["scorecam", "scorecam"]                   # one run per view
    assert len(_overlays(at, "scorecam")) == 2
    assert any(s.value.startswith("scorecam: 2 views in ") for s in at.success)   # the panel gave way
    printed = capfd.readouterr()
    assert "it/s" not in printed.err + printed.out and "%|" not in printed.err + printed.out  # no tqdm bars

    at.slider(key="viewer_alpha").set_value(0.7).run()        # a display change: maps from the cache
    assert not at.exception, at.exception
    assert runs == ["scorecam", "scorecam"] and len(_overlays(at, "scorecam")) == 2
    assert not [b for b in at.button if b.key == "viewer_slow_run"]


def test_slow_run_waits_its_turn_while_another_holds_the_server(viewer: AppTest, monkeypatch):
    from mura_core.explain import cams

    runs = _slow_runs(monkeypatch)
    at = _slow_study(viewer, "ablationcam", seed=21)
    assert cams._SLOW_GATE.acquire(blocking=False)             # another session's slow run
    try:
        at = at.button(key="viewer_slow_run").click().run()
    finally:
        cams._SLOW_GATE.release()
    assert not at.exception, at.exception
    assert any("another slow heat map is running" in w.value for w in at.warning)
    assert runs == ["ablationcam"] and not _overlays(at, "ablationcam")   # refused at once, not queued
    assert _metrics(at)["Study probability (abnormal)"].endswith("%")


def test_fast_methods_never_show_the_slow_panel(viewer: AppTest, monkeypatch):
    offered = viewer.selectbox(key="viewer_cam").options
    assert "scorecam (slow)" in offered and not [o for o in offered if o.startswith("rollout")]  # a CNN: no attention
    runs = _slow_runs(monkeypatch)
    at = _slow_study(viewer, "gradcam", seed=31)
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.key == "viewer_slow_run"] and runs == []
    assert len(_overlays(at, "gradcam")) == 2


def test_slow_maps_are_laid_into_a_copy_of_the_study():
    from mura_core.app.slow_maps import format_seconds, with_slow_maps
    from mura_core.explain.predictor import StudyResult, ViewResult

    views = [ViewResult("a", 0.4, image=np.zeros((30, 40), np.float32)),
             ViewResult("b", 0.6, image=np.zeros((20, 20), np.float32))]
    result = StudyResult(0.5, 0.5, True, "UNKNOWN", "mean", views, 1, "m")
    heat = np.zeros((8, 8), np.float32)
    heat[2, 6] = 1.0
    out = with_slow_maps(result, {0: heat}, "scorecam")
    assert out.views[0].heatmap.shape == (30, 40) and out.views[0].peak[0] > 0.5   # resized, peak on the right
    assert out.views[1].heatmap is None and result.views[0].heatmap is None       # the cached result untouched
    assert out.cam == "scorecam" and result.cam is None and with_slow_maps(result, {}, "scorecam").cam is None
    assert [format_seconds(s) for s in (0.2, 42.4, 250)] == ["under 1 s", "42 s", "4 min"]


def test_flip_switch_starts_at_the_models_own_default(tmp_path: Path, monkeypatch):
    """A model whose index entry scores with test-time flip starts the viewer's switch on; the reader's choice then
    stays while that model stays selected, and the caption says which way the study was scored."""
    import json

    import cv2

    from fixtures.app import TINY_NAME

    weights = build_tiny_weights(tmp_path / "weights")
    index = json.loads((weights / "index.json").read_text())
    index["default_tta"] = {TINY_NAME: True}
    (weights / "index.json").write_text(json.dumps(index))
    at = open_page(weights, monkeypatch, "pages/study_viewer.py")
    assert at.checkbox(key="viewer_tta").value is True
    image = (60 + 80 * np.random.default_rng(3).random((70, 90))).astype(np.uint8)
    at = _upload(at, [("view.png", cv2.imencode(".png", image)[1].tobytes())])
    assert not at.exception and not at.error
    assert any("with test-time flip" in c.value for c in at.caption)
    at.checkbox(key="viewer_tta").uncheck().run()
    assert at.checkbox(key="viewer_tta").value is False
    assert not any("with test-time flip" in c.value for c in at.caption)


def test_a_map_no_better_than_the_centre_guess_carries_a_caution(tmp_path: Path, monkeypatch):
    """When the model's shipped report finds the chosen map no better than always pointing at the image centre,
    the viewer says so beside the heat maps; a map the report does not cover gets no caution."""
    import json

    import cv2

    from fixtures.app import TINY_NAME

    weights = build_tiny_weights(tmp_path / "weights")
    report_file = weights / f"{TINY_NAME}.report" / "report.json"
    report = json.loads(report_file.read_text())
    report["pointing_game"] = {"methods": {"gradcam": {"n": 40, "hit_rate": 0.2, "ci95": [0.1, 0.35],
                                                       "centre_baseline": 0.3}}}
    report_file.write_text(json.dumps(report))
    at = open_page(weights, monkeypatch, "pages/study_viewer.py")
    at.selectbox(key="viewer_cam").set_value("gradcam").run()
    image = (60 + 80 * np.random.default_rng(4).random((70, 90))).astype(np.uint8)
    at = _upload(at, [("view.png", cv2.imencode(".png", image)[1].tobytes())])
    assert not at.exception and not at.error
    cautions = [w.value for w in at.warning if "image centre" in w.value]
    assert len(cautions) == 1 and "`gradcam`" in cautions[0] and "0.20 [0.10–0.35] against 0.30" in cautions[0]
    at.selectbox(key="viewer_cam").set_value("hirescam").run()
    assert not any("image centre" in w.value for w in at.warning)
