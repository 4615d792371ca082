"""Binary classification metrics for abnormality scores, with bootstrap intervals and threshold fitting.

Conventions used everywhere in this module:

- label 1 = abnormal (positive), 0 = normal;
- a probability ``p`` is called abnormal when ``p >= threshold`` (the same rule as scikit-learn's
  ``roc_curve`` thresholds, so a fitted threshold reproduces the chosen ROC point exactly);
- a metric that is undefined on the data (AUC or kappa with one class in the truth, sensitivity without
  positives...) is ``None``, never NaN, so reports stay valid JSON.

Point estimates use scikit-learn (``confusion_matrix``, ``cohen_kappa_score``, ``roc_auc_score``).
Bootstrap intervals are vectorised: each resample is a row of multinomial counts, so the confusion
matrix of 1000 resamples is one matrix product and the AUC of every resample is one cumulative sum
over the scores sorted once (the Mann-Whitney form, ties counted half). Percentile intervals, seeded.

Example:
    >>> m = binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], threshold=0.5, n_bootstrap=0)
    >>> m["sensitivity"], m["specificity"], m["auc"]
    (0.5, 0.5, 0.75)
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score, roc_curve

from mura_core.data.studies import part_key, threshold_for

__all__ = [
    "METRIC_NAMES",
    "binary_metrics",
    "calibration_bins",
    "bootstrap_intervals",
    "confusion_counts",
    "fit_threshold",
    "fit_thresholds",
    "grouped_metrics",
    "roc_points",
    "threshold_for",
]

METRIC_NAMES: tuple[str, ...] = (
    "accuracy", "sensitivity", "specificity", "precision", "f1", "kappa", "auc",
)
"""The metrics `binary_metrics` reports (besides counts and the confusion matrix)."""

_CHUNK = 200
"""Bootstrap resamples processed at once (bounds memory at about _CHUNK x n floats)."""


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

def _as_arrays(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int 0/1 and probabilities as float64, same length, no missing values."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and probabilities ({p.size}) differ in length")
    if np.isnan(y).any() or np.isnan(p).any():
        raise ValueError("labels and probabilities must not contain missing values")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (abnormal)")
    return y.astype(np.int64), p


def _thresholds_per_row(threshold: float | Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    """A scalar threshold broadcast to every row, or one threshold per row."""
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        return np.full(n, float(t))
    t = t.ravel()
    if t.size != n:
        raise ValueError(f"{t.size} thresholds for {n} rows")
    return t


def _ratio(num: float, den: float) -> float | None:
    """num/den as a float, None when the denominator is zero."""
    return float(num) / float(den) if den else None


def _clean(value: Any) -> float | None:
    """A float, or None for NaN/inf/None (JSON-safe)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------------------------
# point estimates
# ----------------------------------------------------------------------------------------------

def confusion_counts(labels: Any, predictions: Any) -> dict[str, int]:
    """The 2x2 confusion matrix as ``{"tn", "fp", "fn", "tp"}`` counts (abnormal = positive)."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    yhat = np.asarray(predictions, dtype=np.int64).ravel()
    if y.size == 0:
        return {"tn": 0, "fp": 0, "fn": 0, "tp": 0}
    tn, fp, fn, tp = confusion_matrix(y, yhat, labels=[0, 1]).ravel()
    return {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}


def _from_counts(tn: float, fp: float, fn: float, tp: float) -> dict[str, float | None]:
    """Threshold metrics from confusion counts; None where a denominator is zero."""
    n = tn + fp + fn + tp
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(tp + tn, n),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def _kappa(y: np.ndarray, yhat: np.ndarray) -> float | None:
    """Cohen's kappa between labels and decisions; None when the truth has one class: agreement with a constant
    truth is 0 whatever the decisions (scikit-learn's answer), which says nothing. With both classes in the
    truth, chance agreement is below 1 and kappa is defined."""
    if y.size == 0 or y.min() == y.max():
        return None
    return _clean(cohen_kappa_score(y, yhat, labels=[0, 1]))


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC, None unless both classes are present."""
    if y.size == 0 or y.min() == y.max():
        return None
    return _clean(roc_auc_score(y, p))


def binary_metrics(
    labels: Any,
    probs: Any,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Confusion matrix, accuracy, sensitivity, specificity, precision, F1, kappa and AUC.

    Args:
        labels: 0/1 ground truth (1 = abnormal).
        probs: abnormality probabilities.
        threshold: one threshold, or one per row (per-body-part thresholds); ``p >= t`` is abnormal.
        n_bootstrap: resamples for percentile intervals (0 = no intervals; ``"ci"`` then holds Nones).
        seed: seed of the resampling, so reports are reproducible.
        confidence: interval coverage (0.95 = 2.5th..97.5th percentiles).

    Returns:
        ``{"n", "n_abnormal", "n_normal", "confusion": {tn, fp, fn, tp}, <METRIC_NAMES>...,
        "ci": {metric: [low, high] | None}, "n_bootstrap", "confidence"}``; JSON-safe (None for
        undefined values, plain Python numbers otherwise).
    """
    y, p = _as_arrays(labels, probs)
    t = _thresholds_per_row(threshold, y.size)
    yhat = (p >= t).astype(np.int64)
    counts = confusion_counts(y, yhat)
    out: dict[str, Any] = {
        "n": int(y.size),
        "n_abnormal": int(y.sum()),
        "n_normal": int(y.size - y.sum()),
        "confusion": counts,
    }
    out.update(_from_counts(counts["tn"], counts["fp"], counts["fn"], counts["tp"]))
    out["kappa"] = _kappa(y, yhat)
    out["auc"] = _auc(y, p)
    out["ci"] = (bootstrap_intervals(y, p, t, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
                 if n_bootstrap > 0 and y.size > 0 else {name: None for name in METRIC_NAMES})
    out["n_bootstrap"] = int(n_bootstrap)
    out["confidence"] = float(confidence)
    return out


# ----------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------

def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num/den with NaN where den == 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _resample_metrics(weights: np.ndarray, y: np.ndarray, yhat: np.ndarray,
                      order: np.ndarray, group_starts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of multinomial ``weights`` (B, n); NaN where undefined."""
    pos, neg = y.astype(np.float64), 1.0 - y
    dec, nodec = yhat.astype(np.float64), 1.0 - yhat
    tp = weights @ (pos * dec)
    fn = weights @ (pos * nodec)
    fp = weights @ (neg * dec)
    tn = weights @ (neg * nodec)
    n = tp + fn + fp + tn
    out = {
        "accuracy": _safe_div(tp + tn, n),
        "sensitivity": _safe_div(tp, tp + fn),
        "specificity": _safe_div(tn, tn + fp),
        "precision": _safe_div(tp, tp + fp),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
    }
    observed = _safe_div(tp + tn, n)
    chance = _safe_div((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), n * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = (observed - chance) / (1.0 - chance)
    out["kappa"] = np.where((tp + fn > 0) & (tn + fp > 0), kappa, np.nan)  # both classes: chance < 1
    # AUC (Mann-Whitney): scores sorted once; per tie group, positives beat the negatives below
    # and tie half of those in the group.
    w_sorted = weights[:, order]
    pos_w = np.add.reduceat(w_sorted * pos[order], group_starts, axis=1)
    neg_w = np.add.reduceat(w_sorted * neg[order], group_starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    wins = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    out["auc"] = _safe_div(wins, pos_w.sum(axis=1) * neg_w.sum(axis=1))
    return out


def bootstrap_intervals(
    labels: Any,
    probs: Any,
    threshold: float | Sequence[float] | np.ndarray = 0.5,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals ``{metric: [low, high]}`` for every metric in `METRIC_NAMES`.

    Rows are resampled with replacement (each row keeps its own threshold). Resamples where a metric
    is undefined (e.g. no positives drawn) are left out of that metric's percentiles; a metric
    undefined in every resample gets None.
    """
    y, p = _as_arrays(labels, probs)
    t = _thresholds_per_row(threshold, y.size)
    if y.size == 0 or n_bootstrap <= 0:
        return {name: None for name in METRIC_NAMES}
    yhat = (p >= t).astype(np.int64)
    order = np.argsort(p, kind="stable")
    sorted_p = p[order]
    group_starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    rng = np.random.default_rng(seed)
    uniform = np.full(y.size, 1.0 / y.size)
    values: dict[str, list[np.ndarray]] = defaultdict(list)
    for start in range(0, n_bootstrap, _CHUNK):
        size = min(_CHUNK, n_bootstrap - start)
        weights = rng.multinomial(y.size, uniform, size=size).astype(np.float64)
        for name, arr in _resample_metrics(weights, y, yhat, order, group_starts).items():
            values[name].append(arr)
    alpha = (1.0 - confidence) / 2.0
    out: dict[str, list[float] | None] = {}
    for name in METRIC_NAMES:
        arr = np.concatenate(values[name])
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            out[name] = None
            continue
        low, high = np.quantile(arr, [alpha, 1.0 - alpha])
        out[name] = [float(low), float(high)]
    return out


# ----------------------------------------------------------------------------------------------
# ROC and thresholds
# ----------------------------------------------------------------------------------------------

def roc_points(labels: Any, probs: Any) -> dict[str, list[float]] | None:
    """ROC curve as ``{"fpr", "tpr", "thresholds"}`` lists (thresholds capped at 1.0), None with one class."""
    y, p = _as_arrays(labels, probs)
    if y.size == 0 or y.min() == y.max():
        return None
    fpr, tpr, thr = roc_curve(y, p)
    thr = np.minimum(thr, 1.0)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}


def fit_threshold(labels: Any, probs: Any, method: str = "youden",
                  target_sensitivity: float | None = None) -> float:
    """One operating threshold from labelled validation scores (both classes required).

    ``method="youden"`` maximises sensitivity + specificity - 1 (ties: the higher threshold, i.e.
    the more specific one). ``method="sensitivity"`` (implied when `target_sensitivity` is given)
    takes the highest threshold whose sensitivity reaches the target, i.e. the most specific one.
    The returned value is a score that occurs in the data (``p >= t`` reproduces the ROC point),
    clipped to 0..1.
    """
    y, p = _as_arrays(labels, probs)
    if y.size == 0 or y.min() == y.max():
        raise ValueError("fitting a threshold needs both normal and abnormal rows")
    if target_sensitivity is not None:
        method = "sensitivity"
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    if method == "youden":
        index = int(np.argmax(tpr - fpr))  # argmax takes the first, i.e. highest threshold
    elif method == "sensitivity":
        if target_sensitivity is None or not 0.0 < target_sensitivity <= 1.0:
            raise ValueError("method 'sensitivity' needs target_sensitivity in (0, 1]")
        index = int(np.flatnonzero(tpr >= target_sensitivity - 1e-12)[0])
    else:
        raise ValueError(f"unknown threshold method {method!r} (use 'youden' or 'sensitivity')")
    return float(np.clip(thr[index], 0.0, 1.0))


def fit_thresholds(
    labels: Any,
    probs: Any,
    body_parts: Any,
    method: str = "youden",
    target_sensitivity: float | None = None,
    min_per_class: int = 5,
) -> dict[str, float]:
    """Per-body-part thresholds plus ``"default"``, fitted on the rows given (a validation split).

    ``"default"`` is fitted on all rows (0.5 if they lack a class). A body part gets its own key only
    when it has at least `min_per_class` normal AND abnormal rows; otherwise it is omitted and the
    caller falls back to ``"default"`` (see `threshold_for`). Body parts are keyed by their string
    value (``BodyPart.WRIST`` -> ``"WRIST"``); empty/None parts are grouped as ``"UNKNOWN"``.
    """
    y, p = _as_arrays(labels, probs)
    parts = np.asarray([part_key(b) for b in body_parts], dtype=object)
    if parts.size != y.size:
        raise ValueError(f"{parts.size} body parts for {y.size} rows")
    both = y.size > 0 and 0 < y.sum() < y.size
    out = {"default": fit_threshold(y, p, method, target_sensitivity) if both else 0.5}
    for part in sorted(set(parts.tolist())):
        mask = parts == part
        n_pos = int(y[mask].sum())
        n_neg = int(mask.sum() - n_pos)
        if part != "default" and n_pos >= min_per_class and n_neg >= min_per_class:
            out[part] = fit_threshold(y[mask], p[mask], method, target_sensitivity)
    return out


def grouped_metrics(
    labels: Any,
    probs: Any,
    body_parts: Any,
    thresholds: Mapping[str, float] | float = 0.5,
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Metrics overall and per body part: ``{"overall": {...}, "by_body_part": {part: {...}}}``.

    Each row is judged at its own body part's threshold (`threshold_for`), so "overall" measures the
    operating points a user actually sees.
    """
    y, p = _as_arrays(labels, probs)
    parts = np.asarray([part_key(b) for b in body_parts], dtype=object)
    if parts.size != y.size:
        raise ValueError(f"{parts.size} body parts for {y.size} rows")
    if isinstance(thresholds, Mapping):
        t = np.asarray([threshold_for(thresholds, part) for part in parts], dtype=np.float64)
    else:
        t = np.full(y.size, float(thresholds))
    kw = dict(n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
    by_part = {}
    for part in sorted(set(parts.tolist())):
        mask = parts == part
        by_part[part] = binary_metrics(y[mask], p[mask], t[mask], **kw)
        by_part[part]["threshold"] = float(t[mask][0])
    return {"overall": binary_metrics(y, p, t, **kw), "by_body_part": by_part}


def calibration_bins(labels: Any, probs: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data: per equal-width probability bin the mean predicted probability, the
    observed abnormal fraction and the count, plus the expected calibration error (ECE)."""
    y, p = _as_arrays(labels, probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    bins, ece = [], 0.0
    for k in range(n_bins):
        mask = index == k
        if not mask.any():
            continue
        predicted, observed = float(p[mask].mean()), float(y[mask].mean())
        bins.append({"low": float(edges[k]), "high": float(edges[k + 1]), "predicted": predicted,
                     "observed": observed, "n": int(mask.sum())})
        ece += mask.sum() / max(y.size, 1) * abs(predicted - observed)
    return {"bins": bins, "ece": float(ece) if y.size else None, "n": int(y.size)}
