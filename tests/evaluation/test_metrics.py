"""Tests for mura_core.evaluation.metrics: hand-computed values, undefined cases, bootstrap, thresholds, studies."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mura_core.evaluation import metrics as M

# A hand-made case: 5 abnormal (4 caught, 1 missed), 5 normal (3 cleared, 2 flagged), threshold 0.5.
# tp=4 fn=1 fp=2 tn=3, n=10
#   accuracy    = (4+3)/10            = 0.7
#   sensitivity = 4/5                 = 0.8
#   specificity = 3/5                 = 0.6
#   precision   = 4/6                 = 0.6667
#   F1          = 2*4/(2*4+2+1)       = 8/11 = 0.72727
#   kappa: p_o = 0.7, p_e = (6*5 + 4*5)/100 = 0.5 -> (0.7-0.5)/(1-0.5) = 0.4
#   AUC: positives 0.9 0.8 0.7 0.6 0.3 vs negatives 0.55 0.52 0.4 0.2 0.1:
#        0.9/0.8/0.7/0.6 beat all 5 (20 wins), 0.3 beats 0.2 and 0.1 (2 wins) -> 22/25 = 0.88
HAND_LABELS = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
HAND_PROBS = [0.9, 0.8, 0.7, 0.6, 0.3, 0.55, 0.52, 0.4, 0.2, 0.1]


def test_hand_computed_confusion_and_metrics():
    m = M.binary_metrics(HAND_LABELS, HAND_PROBS, 0.5, n_bootstrap=0)
    assert m["confusion"] == {"tn": 3, "fp": 2, "fn": 1, "tp": 4}
    assert m["n"] == 10 and m["n_abnormal"] == 5 and m["n_normal"] == 5
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(8 / 11)
    assert m["kappa"] == pytest.approx(0.4)
    assert m["auc"] == pytest.approx(0.88)


def test_threshold_is_inclusive():
    m = M.binary_metrics([0, 1], [0.5, 0.5], 0.5, n_bootstrap=0)
    assert m["confusion"] == {"tn": 0, "fp": 1, "fn": 0, "tp": 1}


def test_per_row_thresholds():
    m = M.binary_metrics([1, 1], [0.3, 0.3], [0.2, 0.4], n_bootstrap=0)
    assert m["confusion"]["tp"] == 1 and m["confusion"]["fn"] == 1


def test_one_class_gives_none_not_nan_and_is_json_safe():
    m = M.binary_metrics([1, 1, 1, 1], [0.2, 0.7, 0.9, 0.8], 0.5, n_bootstrap=200)
    assert m["auc"] is None and m["specificity"] is None
    assert m["ci"]["auc"] is None and m["ci"]["specificity"] is None
    assert m["sensitivity"] == pytest.approx(0.75)
    text = json.dumps(m, allow_nan=False)  # raises on NaN
    assert "NaN" not in text


def test_constant_agreeing_raters_kappa_none():
    m = M.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5, n_bootstrap=0)
    assert m["kappa"] is None and m["f1"] is None and m["precision"] is None
    assert m["specificity"] == 1.0


def test_empty_input():
    m = M.binary_metrics([], [], 0.5, n_bootstrap=100)
    assert m["n"] == 0 and m["accuracy"] is None and m["auc"] is None


def test_input_validation():
    with pytest.raises(ValueError):
        M.binary_metrics([0, 1], [0.5], 0.5)
    with pytest.raises(ValueError):
        M.binary_metrics([0, 2], [0.5, 0.5], 0.5)


def test_bootstrap_seeded_and_brackets_point_estimate():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.clip(0.35 * y + 0.65 * rng.random(400), 0, 1).round(2)
    a = M.binary_metrics(y, p, 0.5, n_bootstrap=300, seed=7)
    b = M.binary_metrics(y, p, 0.5, n_bootstrap=300, seed=7)
    c = M.binary_metrics(y, p, 0.5, n_bootstrap=300, seed=8)
    assert a["ci"] == b["ci"]
    assert a["ci"] != c["ci"]
    for name in M.METRIC_NAMES:
        low, high = a["ci"][name]
        assert low <= a[name] <= high, name
        assert high - low < 0.25


def test_vectorised_resamples_match_sklearn():
    """The matrix form of each resample equals scikit-learn on the materialised resample (ties too)."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 150)
    p = rng.integers(0, 10, 150) / 10.0  # many ties
    yhat = (p >= 0.5).astype(np.int64)
    order = np.argsort(p, kind="stable")
    sp = p[order]
    starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
    for _ in range(5):
        idx = rng.integers(0, y.size, y.size)
        w = np.bincount(idx, minlength=y.size)[None].astype(float)
        got = M._resample_metrics(w, y, yhat, order, starts)
        assert got["auc"][0] == pytest.approx(roc_auc_score(y[idx], p[idx]))
        assert got["kappa"][0] == pytest.approx(cohen_kappa_score(y[idx], yhat[idx]))
        ref = M.binary_metrics(y[idx], p[idx], 0.5, n_bootstrap=0)
        for name in ("accuracy", "sensitivity", "specificity", "precision", "f1"):
            assert got[name][0] == pytest.approx(ref[name])


def test_fit_threshold_youden_and_sensitivity():
    # Perfect separation between 0.4 and 0.6: Youden picks the lowest abnormal score.
    labels = [0, 0, 0, 1, 1, 1]
    probs = [0.1, 0.2, 0.4, 0.6, 0.7, 0.9]
    assert M.fit_threshold(labels, probs) == pytest.approx(0.6)
    # Sensitivity target 1.0 on the hand case must include the 0.3 positive.
    t = M.fit_threshold(HAND_LABELS, HAND_PROBS, target_sensitivity=1.0)
    assert t == pytest.approx(0.3)
    m = M.binary_metrics(HAND_LABELS, HAND_PROBS, t, n_bootstrap=0)
    assert m["sensitivity"] == 1.0
    # 0.8 target: 0.6 is the highest threshold reaching it.
    assert M.fit_threshold(HAND_LABELS, HAND_PROBS, target_sensitivity=0.8) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        M.fit_threshold([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError):
        M.fit_threshold(labels, probs, method="nope")


def test_fit_thresholds_per_body_part_and_fallback():
    rng = np.random.default_rng(0)
    # WRIST: separable at 0.7; ELBOW: separable at 0.3; FINGER: too few normals -> omitted.
    rows = []
    for part, cut in (("WRIST", 0.7), ("ELBOW", 0.3)):
        for _ in range(10):
            rows.append((part, 0, cut - 0.05 - 0.2 * rng.random()))
            rows.append((part, 1, cut + 0.2 * rng.random()))
    rows += [("FINGER", 1, 0.9)] * 6 + [("FINGER", 0, 0.1)] * 2
    parts, labels, probs = zip(*rows)
    t = M.fit_thresholds(labels, probs, parts, min_per_class=5)
    assert set(t) == {"default", "WRIST", "ELBOW"}
    assert 0.65 <= t["WRIST"] <= 0.9 and 0.25 <= t["ELBOW"] <= 0.5
    assert M.threshold_for(t, "FINGER") == t["default"]
    assert M.threshold_for(t, "wrist") == t["WRIST"]


def test_fit_thresholds_uses_only_given_rows():
    """Thresholds depend on the rows passed (validation split) and nothing else: adding rows changes them."""
    labels = [0] * 5 + [1] * 5
    probs = [0.1, 0.2, 0.3, 0.35, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9]
    t1 = M.fit_thresholds(labels, probs, ["WRIST"] * 10)
    assert t1 == M.fit_thresholds(labels, probs, ["WRIST"] * 10)
    t2 = M.fit_thresholds(labels + [1, 1], probs + [0.4, 0.42], ["WRIST"] * 12)
    assert t1["WRIST"] == pytest.approx(0.5) and t2["WRIST"] == pytest.approx(0.4)


def test_fit_thresholds_one_class_default_half():
    assert M.fit_thresholds([1, 1, 1], [0.2, 0.5, 0.9], ["", None, "UNKNOWN"]) == {"default": 0.5}


def test_grouped_metrics_uses_part_thresholds():
    labels = [1, 1, 0, 0]
    probs = [0.6, 0.6, 0.3, 0.3]
    parts = ["WRIST", "ELBOW", "WRIST", "ELBOW"]
    g = M.grouped_metrics(labels, probs, parts, {"default": 0.5, "WRIST": 0.7}, n_bootstrap=50)
    assert g["by_body_part"]["WRIST"]["threshold"] == 0.7
    assert g["by_body_part"]["WRIST"]["confusion"]["fn"] == 1
    assert g["by_body_part"]["ELBOW"]["confusion"]["tp"] == 1
    assert g["overall"]["confusion"] == {"tn": 2, "fp": 0, "fn": 1, "tp": 1}
    json.dumps(g, allow_nan=False)


def test_roc_points():
    r = M.roc_points(HAND_LABELS, HAND_PROBS)
    assert r["fpr"][0] == 0 and r["tpr"][-1] == 1 and max(r["thresholds"]) <= 1.0
    assert M.roc_points([1, 1], [0.1, 0.2]) is None
