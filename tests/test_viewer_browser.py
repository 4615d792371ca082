"""Tests for mura_core.viewer_browser: data roots and path safety, filters, paging, predictions.csv."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mura_core.studies import BodyPart, Study, View
from mura_core.viewer_browser import (StudyPrediction, body_part_options, configured_roots, default_data_root,
                                      filter_studies, find_study, is_within, page_slice, predictions_match,
                                      read_predictions, root_for, safe_study, split_options, study_caption)


def _study(sid: str, label: int | None, part: BodyPart = BodyPart.UNKNOWN, split: str = "valid",
           paths: tuple[Path | None, ...] = (None,)) -> Study:
    views = tuple(View(f"{sid}/{i}.png", p) for i, p in enumerate(paths))
    return Study(sid, views, part, label, split=split, source="manifest")


STUDIES = [
    _study("a", 1, BodyPart.WRIST, "train"),
    _study("b", 0, BodyPart.UNKNOWN, "valid"),
    _study("c", 1, BodyPart.ELBOW, "valid"),
    _study("d", 0, BodyPart.UNKNOWN, "valid"),
    _study("e", 1, BodyPart.WRIST, "valid"),
]


def test_is_within_refuses_dotdot_and_symlink_escapes(tmp_path: Path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    assert is_within(root / "images" / "a.png", [root])
    assert is_within(root, [root])
    assert not is_within(root / ".." / "secret.txt", [root])
    assert not is_within(tmp_path / "data2" / "x.png", [root])     # prefix is not containment
    link = root / "images" / "escape"
    os.symlink(tmp_path, link)
    assert not is_within(link / "secret.txt", [root])


def test_safe_study_drops_views_outside_root(tmp_path: Path):
    root = tmp_path / "data"
    root.mkdir()
    study = _study("s", 1, paths=(root / "a.png", root / ".." / "b.png", None))
    safe, refused = safe_study(study, root)
    assert [v.name for v in safe.views] == ["s/0.png", "s/2.png"]
    assert len(refused) == 1 and "s/1.png" in refused[0]
    same, none = safe_study(_study("t", 0, paths=(root / "x.png",)), root)
    assert none == [] and same.study_id == "t"


def test_configured_roots_default_env_and_typed(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shared = tmp_path / "shared" / "data" / "bone-fracture-xr"
    shared.mkdir(parents=True)
    manifest = tmp_path / "other" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text("image\n")
    env = {"MURA_DATA": str(tmp_path / "mura")}
    roots = configured_roots(str(manifest), repo_root=repo, env=env)
    assert roots == [shared.resolve(), (tmp_path / "mura").resolve(), manifest.parent.resolve()]
    assert default_data_root(repo, env) == tmp_path / "mura"
    assert default_data_root(repo, {}) == shared.resolve()
    assert root_for(shared / "images" / "a.jpg", roots) == shared.resolve()
    assert root_for(tmp_path / "elsewhere", roots) is None


def test_filters_split_part_label():
    assert [s.study_id for s in filter_studies(STUDIES, split="valid")] == ["b", "c", "d", "e"]
    assert [s.study_id for s in filter_studies(STUDIES, body_parts=["wrist"])] == ["a", "e"]
    assert [s.study_id for s in filter_studies(STUDIES, label=0)] == ["b", "d"]
    assert [s.study_id for s in filter_studies(STUDIES, split="valid", label=1, body_parts=["ELBOW"])] == ["c"]
    assert split_options(STUDIES) == ["train", "valid"]
    assert body_part_options(STUDIES) == ["ELBOW", "WRIST", "UNKNOWN"]


def test_prediction_filters_use_thresholds():
    probs = {"a": 0.2, "b": 0.7, "c": 0.55, "d": 0.1, "e": 0.95}
    thr = {"default": 0.5, "ELBOW": 0.6}
    fn = filter_studies(STUDIES, prediction="fn", probabilities=probs, thresholds=thr)
    assert [s.study_id for s in fn] == ["a", "c"]            # c: 0.55 below the elbow's 0.6
    fp = filter_studies(STUDIES, prediction="fp", probabilities=probs, thresholds=thr)
    assert [s.study_id for s in fp] == ["b"]
    unc = filter_studies(STUDIES, prediction="uncertain", probabilities=probs, thresholds=thr, uncertain_count=2)
    assert [s.study_id for s in unc] == ["c", "b"]           # |0.55-0.6|=0.05, |0.7-0.5|=0.2
    assert filter_studies(STUDIES, prediction="fn", probabilities={}) == []
    with pytest.raises(ValueError):
        filter_studies(STUDIES, prediction="bogus")


def test_page_slice_clamps():
    items = list(range(50))
    assert page_slice(items, 1) == (list(range(24)), 3)
    assert page_slice(items, 3) == ([48, 49], 3)
    assert page_slice(items, 99)[0] == [48, 49]
    assert page_slice([], 1) == ([], 1)


def test_study_caption_and_find():
    s = _study("x", 1, BodyPart.WRIST, paths=(None, None))
    assert study_caption(s, 0.873) == "abnormal · wrist · 2 views · p=0.87"
    assert study_caption(_study("y", None)) == "unlabelled"

    class Index:
        studies = STUDIES

    assert find_study(Index, "c") is STUDIES[2] and find_study(Index, "zz") is None


def test_read_predictions_image_rows_averaged(tmp_path: Path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("study_id,image,body_part,label,probability,split\n"
                   "s1,a.png,WRIST,1,0.8,valid\n"
                   "s1,b.png,WRIST,1,0.4,valid\n"
                   "s2,c.png,,0,0.1,valid\n"
                   "s3,d.png,,0,,valid\n")
    preds = {p.study_id: p for p in read_predictions(csv)}
    assert preds["s1"].probability == pytest.approx(0.6) and preds["s1"].body_part == "WRIST"
    assert preds["s2"].body_part == "UNKNOWN" and preds["s2"].label == 0
    assert preds["s3"].probability is None


def test_read_predictions_study_level_rows_preferred(tmp_path: Path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("level,study_id,label,probability\n"
                   "image,s1,1,0.1\nimage,s1,1,0.3\nstudy,s1,1,0.9\n")
    (pred,) = read_predictions(csv)
    assert pred.probability == pytest.approx(0.9)


def test_read_predictions_rejects_unknown_columns(tmp_path: Path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="study id"):
        read_predictions(csv)


def test_predictions_match_fraction():
    preds = [StudyPrediction("a", "WRIST", 1, 0.9), StudyPrediction("b", "UNKNOWN", 1, 0.2),  # b: label differs
             StudyPrediction("zz", "UNKNOWN", 0, 0.2), StudyPrediction("c", "ELBOW", 1, None)]
    assert predictions_match(preds, STUDIES) == pytest.approx(1 / 3)
    assert predictions_match([], STUDIES) == 0.0
