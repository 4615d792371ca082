"""Decision figures at thresholds fitted out of fold: what the threshold rule gives on studies it never saw.

A shipped model's thresholds are fitted on the same valid split that reports its kappa, sensitivity and
specificity, which flatters those three (AUC needs no threshold). Here the project's rule (Youden's J, a body part
its own threshold only with enough studies of both classes, as `fit-thresholds` and `train` apply) is fitted on
four fifths of the in-scope studies of every source together, as the shipped thresholds were, and decides the
remaining fifth; after five folds every study has a decision made without it. Fresh folds are drawn `repeats`
times, and each figure is given as its mean and its range over the repeats (the spread of the fold draw, not a
confidence interval).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mura_core.data.studies import part_key, threshold_for
from mura_core.evaluation.metrics import binary_metrics, fit_thresholds
from mura_core.evaluation.reports import StudyPrediction

__all__ = ["CROSS_FITTED_METRICS", "CrossFitted", "cross_fitted_figures", "cross_fitted_markdown", "format_figure",
           "out_of_fold_decisions", "stratified_folds"]

CROSS_FITTED_METRICS: tuple[str, ...] = ("kappa", "sensitivity", "specificity")
OVERALL = "overall"
N_FOLDS, REPEATS, MIN_PER_CLASS = 5, 20, 5
"""The defaults: five folds drawn 20 times; `fit-thresholds`' minimum of studies per class for a body part's own
threshold (the shipped default's rule)."""


def stratified_folds(strata: Sequence[Any], n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number (0..n_folds-1) per row, each stratum (e.g. source and label) dealt round the folds in a
    random order, so every fold holds about the same share of every stratum."""
    keys = np.asarray([str(s) for s in strata], dtype=object)
    folds = np.zeros(len(keys), dtype=int)
    for key in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == key)
        rng.shuffle(rows)
        folds[rows] = (np.arange(rows.size) + int(rng.integers(n_folds))) % n_folds
    return folds


def out_of_fold_decisions(labels: np.ndarray, probs: np.ndarray, parts: Sequence[Any], folds: np.ndarray,
                          min_per_class: int) -> np.ndarray:
    """Each row's decision (0/1) at thresholds fitted by Youden's J on the rows of the other folds."""
    parts = np.asarray([part_key(p) for p in parts], dtype=object)
    decisions = np.zeros(labels.size, dtype=int)
    for fold in np.unique(folds):
        fit_rows, held_out = folds != fold, np.flatnonzero(folds == fold)
        thresholds = fit_thresholds(labels[fit_rows], probs[fit_rows], parts[fit_rows], min_per_class=min_per_class)
        cut = np.asarray([threshold_for(thresholds, parts[i]) for i in held_out], dtype=float)
        decisions[held_out] = (probs[held_out] >= cut).astype(int)
    return decisions


@dataclass(frozen=True)
class CrossFitted:
    """Out-of-fold figures and how they were made: ``groups`` maps "overall" (and each source, when there are
    several) to ``{"n", "n_abnormal", metric: mean, metric + "_range": [min, max]}``."""

    n_folds: int
    repeats: int
    min_per_class: int
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        """How the figures were made, in words (cards and the Validation page quote it)."""
        k = self.n_folds
        return ("Thresholds fitted on the same valid split flatter kappa, sensitivity and specificity. Here the "
                f"threshold rule (Youden's J; a body part its own threshold with at least {self.min_per_class} "
                f"studies of each class) was fitted on {k - 1}/{k} of the in-scope studies, all sources together "
                f"as the shipped thresholds were, and decided the other 1/{k}; {self.repeats} draws of the {k} "
                "folds, mean [lowest–highest draw]: the spread of the draw, not a confidence interval.")


def cross_fitted_figures(predictions: Sequence[StudyPrediction], *, n_folds: int = N_FOLDS, repeats: int = REPEATS,
                         seed: int = 0, min_per_class: int = MIN_PER_CLASS) -> CrossFitted | None:
    """Kappa, sensitivity and specificity of the in-scope labelled studies at out-of-fold thresholds, overall and
    per source; None when fewer than `n_folds` studies of either class are in scope (a fold could lack a class)."""
    rows = [p for p in predictions if p.in_scope and p.label in (0, 1) and p.probability is not None]
    labels = np.asarray([p.label for p in rows], dtype=int)
    if labels.sum() < n_folds or (labels.size - labels.sum()) < n_folds:
        return None
    probs = np.asarray([p.probability for p in rows], dtype=float)
    parts = [p.body_part for p in rows]
    sources = np.asarray([p.source or OVERALL for p in rows], dtype=object)
    groups = {OVERALL: np.ones(labels.size, dtype=bool)}
    if len(set(sources.tolist())) > 1:
        groups.update({name: sources == name for name in sorted(set(sources.tolist()))})
    rng = np.random.default_rng(seed)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in groups}
    for _ in range(repeats):
        folds = stratified_folds([f"{s}|{y}" for s, y in zip(sources, labels)], n_folds, rng)
        decided = out_of_fold_decisions(labels, probs, parts, folds, min_per_class)
        for name, mask in groups.items():
            runs[name].append(binary_metrics(labels[mask], decided[mask].astype(float), 0.5, n_bootstrap=0))
    return CrossFitted(n_folds, repeats, min_per_class,
                       {name: _summary(found, int(groups[name].sum()), int(labels[groups[name]].sum()))
                        for name, found in runs.items()})


def _summary(runs: list[dict[str, Any]], n: int, n_abnormal: int) -> dict[str, Any]:
    """Mean and [min, max] over the repeats of each metric (None where a repeat left it undefined)."""
    out: dict[str, Any] = {"n": n, "n_abnormal": n_abnormal}
    for name in CROSS_FITTED_METRICS:
        values = [r[name] for r in runs if r.get(name) is not None]
        out[name] = float(np.mean(values)) if values else None
        out[f"{name}_range"] = [float(np.min(values)), float(np.max(values))] if values else None
    return out


def cross_fitted_markdown(figures: CrossFitted | None) -> str:
    """A model card's section for `cross_fitted_figures` ('' without figures)."""
    if figures is None:
        return ""
    lines = ["### Kappa at thresholds fitted out of fold", "", figures.describe(), "",
             "| studies | n | " + " | ".join(CROSS_FITTED_METRICS) + " |",
             "|---|---|" + "---|" * len(CROSS_FITTED_METRICS)]
    for name, row in figures.groups.items():
        lines.append(f"| {name} | {row['n']} | "
                     + " | ".join(format_figure(row, metric) for metric in CROSS_FITTED_METRICS) + " |")
    return "\n".join(lines + [""])


def format_figure(row: dict[str, Any], metric: str) -> str:
    """'0.631 [0.59–0.65]', or '—' when undefined."""
    value, spread = row.get(metric), row.get(f"{metric}_range")
    if value is None:
        return "—"
    return f"{value:.3f} [{spread[0]:.2f}–{spread[1]:.2f}]" if spread else f"{value:.3f}"
