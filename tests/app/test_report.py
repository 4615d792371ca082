"""Tests for mura_core.app.report: the printable study report holds scores, images and no identifying tags."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures.build import dicom_bytes, png_bytes
from fixtures.score import weights_folder

from mura_core.app.report import report_file_name, study_report_html
from mura_core.app.views import format_probability
from mura_core.data.uploads import study_from_uploads
from mura_core.explain.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    folder = weights_folder(tmp_path_factory.mktemp("w"), {"tiny": "mobilenet_v2"}, default="tiny",
                            thresholds={"default": 0.5, "WRIST": 0.2})
    return Predictor.from_weights("tiny", device="cpu", weights_dir=folder)


def test_report_has_scores_images_model_and_disclaimer_but_no_identifying_tags(predictor: Predictor):
    study = study_from_uploads([("a.dcm", dicom_bytes(rows=600, cols=700)), ("b.dcm", dicom_bytes(rle=True)),
                                ("broken.png", b"not an image")])
    result = predictor.predict_study(study, cam="auto")
    page = study_report_html(result, model_name=predictor.name, card=predictor.card, sha256=predictor.sha256,
                             study_id="upload", created="2026-11-23T12:00:00Z")
    for secret in ("SECRET", "19000101", "20200101", "SECRET HOSPITAL", "SECRET-ACC"):
        assert secret not in page
    assert "second-reader and teaching aid" in page and "not a diagnostic device" in page
    assert format_probability(result.probability) in page and format_probability(result.threshold) in page
    assert "WRIST" in page and "tiny" in page and predictor.sha256[:12] in page and "2026-11-23" in page
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 4     # 2 views x (image, overlay)
    assert "broken.png" in page and "could not be read: not an image" in page
    assert len(page) < 2_000_000                                                  # a 700 px view is scaled down


def test_report_file_name_is_safe():
    assert report_file_name("../../etc/passwd") == "report_etc_passwd.html"
    assert report_file_name("train/XR_WRIST/p1/study1") == "report_train_XR_WRIST_p1_study1.html"
    assert report_file_name(None) == "report_study.html"


def test_report_says_a_view_was_left_out_as_outside_the_scope(predictor: Predictor):
    import dataclasses

    from mura_core.explain.scope import ScopeResult

    study = study_from_uploads([("hand.png", png_bytes(64, 64)), ("hip.png", png_bytes(48, 48))])
    result = predictor.predict_study(study, cam="auto")
    hip = dataclasses.replace(result.views[1], probability=None,
                              scope=ScopeResult(False, "lower-limb radiograph", 1.5))
    result = dataclasses.replace(result, views=[result.views[0], hip])
    page = study_report_html(result, model_name=predictor.name, card=predictor.card, study_id="upload")
    assert "left out: outside the model&#x27;s scope" in page
    assert "1 view left out as outside the model&#x27;s scope." in page and "unreadable" not in page
