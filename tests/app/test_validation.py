"""Tests for mura_core.app.validation: report discovery, threshold recomputation, figures, kappas."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mura_core.app.validation import (MURA_PAPER_KAPPA, calibration_figure, calibration_points,
                                      confusion_by_body_part, confusion_figure, kappa_comparison, kappas_by_body_part,
                                      metrics_table, roc_figure, single_class_note,
                                      single_class_parts)
from mura_core.evaluation.reports import StudyPrediction

PREDS = [
    StudyPrediction("w1", "WRIST", 1, 0.9), StudyPrediction("w2", "WRIST", 0, 0.6),
    StudyPrediction("w3", "WRIST", 0, 0.2), StudyPrediction("w4", "WRIST", 1, 0.4),
    StudyPrediction("e1", "ELBOW", 1, 0.7), StudyPrediction("e2", "ELBOW", 0, 0.3),
    StudyPrediction("x", "ELBOW", 0, None),   # unscored: ignored
]


def test_confusion_single_threshold_and_per_part():
    at_half = confusion_by_body_part(PREDS, 0.5)
    assert at_half["WRIST"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert at_half["ELBOW"] == {"tn": 1, "fp": 0, "fn": 0, "tp": 1}
    assert at_half["overall"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert list(at_half) == ["ELBOW", "WRIST", "overall"]
    per_part = confusion_by_body_part(PREDS, {"default": 0.5, "WRIST": 0.3})
    assert per_part["WRIST"] == {"tn": 1, "fp": 1, "fn": 0, "tp": 2}
    low = confusion_by_body_part(PREDS, 0.0)
    assert low["overall"]["tn"] == 0 and low["overall"]["fp"] == 3


def test_metrics_table_has_intervals_and_moves_with_threshold():
    table = metrics_table(PREDS, 0.5, n_bootstrap=200)
    rows = {r["body part"]: r for r in table}
    assert set(rows) == {"ELBOW", "WRIST", "overall"} and rows["overall"]["n"] == 6
    assert rows["WRIST"]["sensitivity"].startswith("0.500 (")
    assert rows["ELBOW"]["threshold"] == 0.5
    assert metrics_table(PREDS, 0.1, n_bootstrap=0)[-1]["sensitivity"] == "1.000"
    assert metrics_table([], 0.5) == []


def test_kappas_and_comparison():
    kappas = kappas_by_body_part(PREDS, 0.5)
    assert kappas["ELBOW"] == pytest.approx(1.0) and kappas["WRIST"] == pytest.approx(0.0)
    rows = {r["body part"]: r for r in kappa_comparison(kappas)}
    assert rows["elbow"]["this model"] == "1.000" and rows["hand"]["this model"] == "not in this data"
    assert rows["wrist"]["radiologist (best, paper)"] == "0.931" and rows["overall"]["model (paper)"] == "0.705"
    with_regions = {r["body part"]: r for r in kappa_comparison({**kappas, "FINGER": None,
                                                                 "HAND_WRIST_FOREARM": 0.61})}
    assert with_regions["finger"]["this model"] == "one class only"
    assert with_regions["hand/wrist/forearm"]["this model"] == "0.610"
    assert with_regions["hand/wrist/forearm"]["radiologist (best, paper)"] == "not in the paper"


def test_sources_filter_and_leave_one_source_out_rows():
    from mura_core.app.validation import filter_predictions, loso_rows, source_options

    preds = [StudyPrediction("a", "HAND_WRIST_FOREARM", 1, 0.9, source="FracAtlas"),
             StudyPrediction("b", "LEG", 0, 0.2, source="FracAtlas"),
             StudyPrediction("c", "WRIST", 1, 0.7, source="bone-fracture-xr")]
    assert source_options(preds) == ["all sources", "FracAtlas", "bone-fracture-xr"]
    assert [p.study_id for p in filter_predictions(preds)] == ["a", "c"]
    assert [p.study_id for p in filter_predictions(preds, "FracAtlas", in_scope_only=False)] == ["a", "b"]
    rows = loso_rows({"runs": [{"held_out": "FracAtlas", "trained_on": ["bone-fracture-xr"], "n_images": 257,
                                "auc": 0.71, "auc_ci": [0.64, 0.78], "kappa": None}]})
    assert rows[0]["AUC on the held-out source"] == "0.710 (0.64–0.78)" and rows[0]["kappa"] == "—"
    assert "recipe of" not in rows[0]
    tagged = loso_rows({"runs": [{"held_out": "FracAtlas", "trained_on": ["x"], "auc": 0.5, "recipe": "m2"}]})
    assert tagged[0]["recipe of"] == "m2"
    assert loso_rows(None) == []


def test_single_class_parts():
    preds = PREDS + [StudyPrediction("f1", "FINGER", 1, 0.8), StudyPrediction("f2", "FINGER", 1, 0.3)]
    assert single_class_parts(preds) == ["FINGER"]
    assert single_class_parts(PREDS) == []
    kappas = kappas_by_body_part(preds, 0.5)
    assert kappas["FINGER"] is None and kappas["ELBOW"] == pytest.approx(1.0)
    rows = {r["body part"]: r for r in metrics_table(preds, 0.5, n_bootstrap=0)}
    assert rows["FINGER"]["kappa"] == "—" and rows["ELBOW"]["kappa"] == "1.000"


def test_single_class_note_names_parts_as_a_reader_would():
    note = single_class_note(["ELBOW", "SHOULDER_HUMERUS", "UNKNOWN"])
    assert "elbow, shoulder/humerus, no body part given" in note
    assert "SHOULDER_HUMERUS" not in note and "shoulder_humerus" not in note


def test_paper_kappas_are_plausible():
    for part, (radiologist, model) in MURA_PAPER_KAPPA.items():
        assert 0 < model <= 1 and 0 < radiologist <= 1, part
    # The paper's abstract: the model is at or below the best radiologist on every body part.
    assert all(model <= radiologist + 1e-9 for radiologist, model in MURA_PAPER_KAPPA.values())


def test_figures_build():
    fig = confusion_figure(confusion_by_body_part(PREDS, 0.5))
    assert len(fig.data) == 3
    assert [list(r) for r in fig.data[0].z] == [[2, 1], [1, 2]]                # overall first: [[tn, fp], [fn, tp]]
    assert fig.layout.annotations[0].text.startswith("Overall (n=6)")
    roc = roc_figure(PREDS, {"default": 0.5})
    names = [t.name for t in roc.data]
    assert any(n.startswith("Overall (AUC") for n in names)
    assert any(n == "overall operating point" for n in names)
    mean_pred, frac = calibration_points(PREDS, n_bins=2)
    assert len(mean_pred) == len(frac) == 2 and frac == pytest.approx([1 / 3, 2 / 3])
    assert len(calibration_figure(PREDS).data) == 3
    assert calibration_points([StudyPrediction("a", "WRIST", 1, 0.5)]) is None


def test_pointing_game_table_has_energy_and_baseline_rows():
    from mura_core.app.validation import pointing_game_table

    game = {"methods": {"cam": {"n": 10, "hits": 6, "hit_rate": 0.6, "ci95": [0.31, 0.83], "centre_baseline": 0.3,
                                "random_baseline": 0.12, "energy_share": 0.2, "energy_baseline": 0.05},
                        "layercam-fused": {"n": 10, "hits": 7, "hit_rate": 0.7, "ci95": [0.4, 0.9],
                                           "centre_baseline": 0.3, "random_baseline": 0.12, "energy_share": 0.3}}}
    rows = pointing_game_table({"pointing_game": game, "data": {"name": "bone-fracture-xr"}})
    assert [r["method"] for r in rows] == ["cam", "layercam-fused", "baseline: image centre",
                                           "baseline: random point / uniform map"]
    assert {r["source"] for r in rows} == {"bone-fracture-xr"}
    assert rows[0]["pointing game"] == "0.600 (0.31–0.83)" and rows[0]["energy share"] == "0.200"
    assert rows[2]["pointing game"] == "0.300" and rows[2]["energy share"] == "—"   # a point holds no mass
    assert rows[3]["pointing game"] == "0.120" and rows[3]["energy share"] == "0.050"
    by_source = {"by_source": {"a": {"pointing_game": game}, "b": {"pointing_game": game}}}
    assert {r["source"] for r in pointing_game_table(by_source)} == {"a", "b"}
    assert pointing_game_table({}) == []


def test_pointing_game_note_names_a_report_that_measured_one_method():
    from mura_core.app.validation import NOT_MEASURED, pointing_game_note, pointing_game_table

    old = {"pointing_game": {"tolerance_px": 15.0, "methods": {
        "cam": {"n": 165, "hit_rate": 0.036, "centre_baseline": 0.36, "random_baseline": 0.06}}}}
    rows = pointing_game_table(old)
    assert [r["method"] for r in rows][0] == "cam" and len(rows) == 3
    assert rows[0]["energy share"] == NOT_MEASURED and rows[2]["energy share"] == NOT_MEASURED
    note = pointing_game_note(old)
    assert "15 px" in note and "one method only (cam)" in note and NOT_MEASURED in note
    several = {"pointing_game": {"methods": {m: {"n": 5, "hit_rate": 0.2, "energy_share": 0.1}
                                             for m in ("cam", "gradcam")}}}
    assert "one method only" not in pointing_game_note(several) and NOT_MEASURED not in pointing_game_note(several)
    assert pointing_game_note({}) == ""


def test_cross_fitted_rows_show_each_source_with_its_spread():
    from mura_core.app.validation import cross_fitted_rows
    from mura_core.evaluation.cross_fitted import CrossFitted

    row = {"n": 257, "n_abnormal": 65, "kappa": 0.631, "kappa_range": [0.589, 0.654], "sensitivity": 0.818,
           "sensitivity_range": [0.738, 0.846], "specificity": None, "specificity_range": None}
    rows = cross_fitted_rows(CrossFitted(5, 20, 5, {"overall": row, "FracAtlas": row}))
    assert [r["studies"] for r in rows] == ["overall", "FracAtlas"]
    assert rows[1] == {"studies": "FracAtlas", "n": 257, "abnormal": 65, "kappa": "0.631 [0.59–0.65]",
                       "sensitivity": "0.818 [0.74–0.85]", "specificity": "—"}
    assert cross_fitted_rows(None) == []
