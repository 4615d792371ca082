"""AppTest: scope warnings on out-of-scope views and the body-part suggestion in the sidebar (issue #13)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fixtures.app import build_tiny_weights, metric_values, open_page, start_app, upload_views
from fixtures.build import dicom_bytes, png_bytes
from fixtures.heads import write_heads
from mura_core.app.view_controls import view_key


def _viewer(weights: Path, monkeypatch) -> AppTest:
    return open_page(weights, monkeypatch, "pages/study_viewer.py")


_upload = upload_views
_metrics = metric_values


def test_hip_dicom_is_warned_scored_on_request_and_left_out(tmp_path, monkeypatch) -> None:
    at = _viewer(build_tiny_weights(tmp_path / "w"), monkeypatch)
    at = _upload(at, [("hand.png", png_bytes(64, 64)), ("hip.dcm", dicom_bytes(rows=64, cols=64, body_part="HIP"))])
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any("lower-limb radiograph" in w and "outside what this model was trained for" in w for w in warnings)
    captions = " ".join(c for img in at.image for c in img.captions)
    assert "not scored: outside the model's scope" in captions
    alone = _metrics(at)["Study probability (abnormal)"]
    per_view = [m.value for m in at.metric if m.label == "P(abnormal)"]
    assert len(per_view) == 1 and per_view[0] == alone      # the hip view neither shown nor counted
    summary = " ".join(m.value for m in at.markdown)
    assert "mean of 1 view" in summary and "1 view left out as outside the model's scope" in summary
    assert "unreadable" not in summary                      # a view left out of scope is not an unreadable file
    at.checkbox(key=view_key("viewer_keep", 1, "hip.dcm")).check().run()
    assert not at.exception, at.exception
    assert len([m for m in at.metric if m.label == "P(abnormal)"]) == 2
    summary = " ".join(m.value for m in at.markdown)
    assert "mean of 2 views" in summary and "left out" not in summary


def test_suggested_body_part_prefilled_and_overridable(tmp_path, monkeypatch) -> None:
    weights = build_tiny_weights(tmp_path / "w")
    write_heads(weights, part="WRIST")
    at = _viewer(weights, monkeypatch)
    at = _upload(at, [("view.png", png_bytes(64, 64))])
    assert not at.exception, at.exception
    picker = at.selectbox(key="viewer_part")
    assert picker.value == "WRIST"                             # pre-filled from the image suggestion
    assert any("Suggested from the images: **wrist**" in c.value for c in at.sidebar.caption)
    assert _metrics(at)["Body part"] == "WRIST"
    assert _metrics(at)["Threshold"].startswith("45")          # the WRIST threshold of the card
    picker.set_value("ELBOW").run()
    assert not at.exception, at.exception
    assert _metrics(at)["Body part"] == "ELBOW"
    assert at.selectbox(key="viewer_part").value == "ELBOW"     # the reader's choice is not overwritten
    at.run()
    assert at.selectbox(key="viewer_part").value == "ELBOW" and _metrics(at)["Body part"] == "ELBOW"


def test_dicom_body_part_tag_wins_over_the_image(tmp_path, monkeypatch) -> None:
    weights = build_tiny_weights(tmp_path / "w")
    write_heads(weights, part="WRIST")
    at = _viewer(weights, monkeypatch)
    at = _upload(at, [("elbow.dcm", dicom_bytes(rows=64, cols=64, body_part="ELBOW"))])
    assert not at.exception, at.exception
    assert at.selectbox(key="viewer_part").value == "ELBOW"
    assert any("DICOM tag BodyPartExamined: **elbow** (100%)" in c.value for c in at.sidebar.caption)
    assert _metrics(at)["Body part"] == "ELBOW"


def test_model_card_page_shows_the_fit_heads_report(tmp_path, monkeypatch) -> None:
    weights = build_tiny_weights(tmp_path / "w")
    (weights / "tiny_cnn.heads.md").write_text("### Scope check and body-part suggestion (tiny_cnn)\n\n"
                                               "| held-out category | images | called out of scope |\n")
    at = start_app(weights, monkeypatch)
    at.switch_page("pages/model_card.py").run()
    assert not at.exception, at.exception
    assert any("Scope check and body-part suggestion (tiny_cnn)" in m.value for m in at.markdown)


def test_unsure_suggestion_is_shown_but_not_prefilled(tmp_path, monkeypatch) -> None:
    weights = build_tiny_weights(tmp_path / "w")
    write_heads(weights, part="WRIST", logit=0.5)                # about 35%: below the 50% needed
    at = _upload(_viewer(weights, monkeypatch), [("view.png", png_bytes(64, 64))])
    assert not at.exception, at.exception
    assert at.selectbox(key="viewer_part").value == "auto"
    assert any("Best guess from the images: wrist" in c.value for c in at.sidebar.caption)
    assert _metrics(at)["Body part"] == "UNKNOWN"
