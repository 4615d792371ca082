"""Tests for mura_core.app.browser: data roots and path safety, filters, paging, predictions.csv."""
from __future__ import annotations

from pathlib import Path

import pytest

from mura_core.data.studies import BodyPart, Study, View
from mura_core.app.browser import (body_part_options, filter_studies, find_study, page_slice, predictions_match,
                                   split_options, study_caption)
from mura_core.evaluation.reports import StudyPrediction


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


def test_predictions_match_fraction():
    preds = [StudyPrediction("a", "WRIST", 1, 0.9), StudyPrediction("b", "UNKNOWN", 1, 0.2),  # b: label differs
             StudyPrediction("zz", "UNKNOWN", 0, 0.2), StudyPrediction("c", "ELBOW", 1, None)]
    assert predictions_match(preds, STUDIES) == pytest.approx(1 / 3)
    assert predictions_match([], STUDIES) == 0.0
