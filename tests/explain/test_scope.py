"""Scope check, body-part suggestion and their heads file (issue #13): storage, rules, study restriction."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fixtures.heads import constant_heads
from mura_core.explain.body_part import suggest_body_part
from mura_core.explain.heads import HeadsError, heads_for, heads_path, load_heads, save_heads, sha256_bytes
from mura_core.explain.predictor import StudyResult, ViewResult
from mura_core.explain.scope import LOWER_LIMB, UPPER_LIMB, ScopeResult, check_scope, scope_from_tags, warning_text
from mura_core.explain.triage import Triage, excluded_views, hide_excluded_scores, restrict_study
from mura_core.imaging.decode import ImageMeta

SHA = "ab" * 32


def _dicom(body_part: str | None = None, modality: str = "CR") -> ImageMeta:
    return ImageMeta(format="DICOM", width=10, height=10, modality=modality, body_part=body_part)


def test_heads_round_trip_and_tamper_checks(tmp_path: Path) -> None:
    heads = constant_heads(8, SHA, part="WRIST")
    path = tmp_path / "m.heads.npz"
    sha = save_heads(heads, path)
    loaded = load_heads(path, expected_sha256=sha, checkpoint_sha256=SHA)
    assert loaded.part_classes == heads.part_classes and loaded.checkpoint_sha256 == SHA
    np.testing.assert_allclose(loaded.part_b, heads.part_b)
    with pytest.raises(HeadsError, match="another checkpoint"):
        load_heads(path, expected_sha256=sha, checkpoint_sha256="cd" * 32)
    data = bytearray(path.read_bytes())
    data[-30] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(HeadsError, match="sha256 mismatch"):
        load_heads(path, expected_sha256=sha, checkpoint_sha256=SHA)


def test_heads_for_needs_a_recorded_sha(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")
    assert heads_for(checkpoint, SHA) == (None, None)           # no heads: no problem, no check
    sha = save_heads(constant_heads(4, SHA), heads_path(checkpoint))
    heads, problem = heads_for(checkpoint, SHA)
    assert heads is None and "no sha256 recorded" in problem
    (tmp_path / "index.json").write_text(json.dumps(
        {"models": {"m": {"file": "model.pt", "sha256": SHA, "heads_sha256": sha}}}))
    heads, problem = heads_for(checkpoint, SHA)
    assert problem is None and heads is not None


@pytest.mark.parametrize("tag,modality,in_scope,label", [
    ("HIP", "CR", False, LOWER_LIMB), ("LEG", "DX", False, LOWER_LIMB), ("KNEE", "CR", False, LOWER_LIMB),
    ("CHEST", "CR", False, "chest radiograph"), (None, "CT", False, "CT slice"), (None, "MR", False, "MR slice"),
    ("WRIST", "CR", True, UPPER_LIMB), ("ELBOW", "DX", True, UPPER_LIMB),
])
def test_explicit_dicom_tags_decide_scope(tag, modality, in_scope, label) -> None:
    scope = scope_from_tags(_dicom(tag, modality))
    assert scope is not None and scope.in_scope is in_scope and scope.label == label and scope.source == "dicom"


def test_vague_or_missing_tags_leave_it_to_the_image() -> None:
    assert scope_from_tags(_dicom("EXTREMITY")) is None
    assert scope_from_tags(_dicom(None)) is None
    assert scope_from_tags(ImageMeta(format="PNG", width=10, height=10)) is None


def test_feature_heads_flag_by_threshold_ratio() -> None:
    feats = np.zeros((2, 6))
    inside = check_scope(constant_heads(6, SHA), feats, [None, None])
    assert all(s.in_scope and s.label == UPPER_LIMB and s.score < 1 for s in inside)
    outside = check_scope(constant_heads(6, SHA, out_of_scope=True), feats, [None, _dicom("WRIST")])
    assert not outside[0].in_scope and outside[0].label == LOWER_LIMB and outside[0].score >= 1
    assert outside[1].in_scope and outside[1].source == "dicom"      # the explicit tag wins
    assert "outside what this model was trained for" in warning_text(outside[0])
    assert "lower-limb radiograph" in warning_text(outside[0])


def test_kind_head_names_the_likeliest_other_kind() -> None:
    classes = ("chest", "document", "lower_limb", "upper_limb")
    heads = replace(constant_heads(2, SHA), kind_classes=classes, kind_w=np.array([[4.0, 0], [0, 4.0], [0, 0], [0, 0]]),
                    kind_b=np.array([0.0, 0.0, 1.0, 3.0]), kind_threshold=0.5)
    feats = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    plain, chest, document = check_scope(heads, feats, [None, None, None])
    assert plain.in_scope and plain.label == UPPER_LIMB
    assert not chest.in_scope and chest.label == "chest radiograph"
    assert not document.in_scope and document.label == "document"
    np.testing.assert_allclose(heads.kinds(feats).sum(axis=1), 1.0)
    np.testing.assert_allclose(heads.outside(feats), 1.0 - heads.kinds(feats)[:, 3])


def test_heads_file_from_an_older_fit_is_refused_with_the_reason(tmp_path: Path) -> None:
    heads = constant_heads(3, SHA)
    arrays = {"checkpoint_sha256": np.asarray(SHA), "part_classes": np.asarray(heads.part_classes),
              "lower_w": np.zeros(3)}
    path = tmp_path / "old.heads.npz"
    np.savez(path, **arrays)
    with pytest.raises(HeadsError, match="older fit-heads"):
        load_heads(path, expected_sha256=sha256_bytes(path.read_bytes()), checkpoint_sha256=SHA)


def test_density_head_flags_far_features() -> None:
    heads = replace(constant_heads(3, SHA), components=np.eye(3)[:, :2], residual_var=1.0, density_threshold=2.0)
    near, far = heads.density(np.array([[0.1, 0.1, 0.1], [9.0, 9.0, 9.0]]))
    assert near < 2.0 < far
    result = check_scope(heads, np.array([[9.0, 9.0, 9.0]]), [None])[0]
    assert not result.in_scope and "unlike" in result.label


def test_body_part_dicom_tag_wins_over_image() -> None:
    heads = constant_heads(4, SHA, part="FINGER")
    feats = np.zeros((2, 4))
    by_image = suggest_body_part(heads, feats, [None, None])
    assert by_image.part == "FINGER" and by_image.source == "image" and by_image.confidence > 0.9
    assert by_image.is_mura_part and by_image.usable
    unsure = replace(by_image, confidence=0.3)
    assert unsure.is_mura_part and not unsure.usable          # shown, never pre-filled or used
    by_tag = suggest_body_part(heads, feats, [_dicom("ELBOW"), None])
    assert by_tag.part == "ELBOW" and by_tag.source == "dicom"
    region = suggest_body_part(constant_heads(4, SHA, part="HAND_WRIST_FOREARM"), feats, [None, None])
    assert region.part == "HAND_WRIST_FOREARM" and not region.is_mura_part
    assert suggest_body_part(None, None, [None]) is None
    assert suggest_body_part(heads, feats, [None, None], use=[False, False]) is None   # all out of scope


def _result(probs: list[float]) -> StudyResult:
    views = [ViewResult(name=f"v{i}", probability=p) for i, p in enumerate(probs)]
    return StudyResult(probability=float(np.mean(probs)), threshold=0.5, abnormal=None, body_part="UNKNOWN",
                       aggregate="mean", views=views, driving_view=int(np.argmax(probs)), model_name="m")


def test_out_of_scope_view_left_out_of_study_unless_kept() -> None:
    result = _result([0.2, 0.9])
    triage = Triage((ScopeResult(True, UPPER_LIMB, 0.3), ScopeResult(False, LOWER_LIMB, 1.7)), None)
    assert excluded_views(triage) == [1] and excluded_views(triage, keep={1}) == []
    restricted = restrict_study(result, triage, {"default": 0.5, "WRIST": 0.1})
    assert restricted.probability == pytest.approx(0.2) and restricted.abnormal is False
    assert restricted.driving_view == 0 and restricted.views[1].scope.label == LOWER_LIMB
    kept = restrict_study(result, triage, {"default": 0.5}, keep={1})
    assert kept.probability == pytest.approx(0.55) and kept.abnormal is True
    by_part = restrict_study(result, triage, {"default": 0.5, "WRIST": 0.1}, body_part="WRIST")
    assert by_part.threshold == pytest.approx(0.1) and by_part.abnormal is True and by_part.body_part == "WRIST"
    hidden = hide_excluded_scores(restricted, triage)
    assert hidden.views[1].probability is None and hidden.views[0].probability == pytest.approx(0.2)


def test_warning_reads_with_the_right_article():
    def text(label: str, source: str = "image") -> str:
        return warning_text(ScopeResult(False, label, 1.5, source))

    assert text(LOWER_LIMB).startswith("Looks like a lower-limb radiograph:")
    assert text("MR slice", "dicom").startswith("Looks like an MR slice (from the DICOM tags):")
    assert text("ultrasound image", "dicom").startswith("Looks like an ultrasound image")
    assert text("CT slice", "dicom").startswith("Looks like a CT slice")
