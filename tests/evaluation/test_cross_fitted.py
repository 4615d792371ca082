"""Out-of-fold thresholds: folds, decisions made without the study, the figures per source and their card text."""
from __future__ import annotations

import numpy as np
import pytest

from mura_core.evaluation.cross_fitted import (cross_fitted_figures, cross_fitted_markdown, format_figure,
                                               out_of_fold_decisions, stratified_folds)
from mura_core.evaluation.metrics import binary_metrics, fit_thresholds
from mura_core.evaluation.reports import StudyPrediction


def _studies(n: int, signal: float, seed: int, source: str = "", part: str = "WRIST") -> list[StudyPrediction]:
    """`n` studies, half abnormal, whose probabilities separate the classes by `signal` (0 = pure noise)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    probs = np.clip(0.5 + signal * (labels - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    return [StudyPrediction(f"{source}{i}", part, int(y), float(p), source=source)
            for i, (y, p) in enumerate(zip(labels, probs))]


def test_folds_deal_every_stratum_evenly_and_repeat_with_the_seed() -> None:
    strata = ["a|0"] * 23 + ["a|1"] * 7 + ["b|1"] * 11
    folds = stratified_folds(strata, 5, np.random.default_rng(3))
    for key in set(strata):
        counts = np.bincount(folds[np.asarray(strata) == key], minlength=5)
        assert counts.max() - counts.min() <= 1, (key, counts)
    assert np.array_equal(folds, stratified_folds(strata, 5, np.random.default_rng(3)))
    assert not np.array_equal(folds, stratified_folds(strata, 5, np.random.default_rng(4)))


def test_each_fold_is_decided_at_thresholds_fitted_on_the_other_folds_only(monkeypatch) -> None:
    import mura_core.evaluation.cross_fitted as cross_fitted

    studies = _studies(60, 0.3, seed=1)
    labels = np.asarray([s.label for s in studies])
    probs = np.arange(60) / 60.0                        # unique scores name the rows a fit saw
    folds = stratified_folds(labels, 5, np.random.default_rng(0))
    fitted_on = []
    real = cross_fitted.fit_thresholds

    def spy(y, p, parts, **kw):
        fitted_on.append(set(np.round(np.asarray(p) * 60).astype(int).tolist()))
        return real(y, p, parts, **kw)

    monkeypatch.setattr(cross_fitted, "fit_thresholds", spy)
    out_of_fold_decisions(labels, probs, ["WRIST"] * 60, folds, 5)
    assert fitted_on == [set(np.flatnonzero(folds != k).tolist()) for k in range(5)]


def test_scores_without_signal_flatter_kappa_in_sample_but_not_out_of_fold() -> None:
    in_sample, out_of_fold = [], []
    for seed in range(8):                               # pure noise, eight times: averages, not one lucky draw
        studies = _studies(200, 0.0, seed=seed)
        labels = [s.label for s in studies]
        probs = [s.probability for s in studies]
        cut = fit_thresholds(labels, probs, ["WRIST"] * 200)["default"]
        in_sample.append(binary_metrics(labels, probs, cut, n_bootstrap=0)["kappa"])
        out_of_fold.append(cross_fitted_figures(studies, repeats=5).groups["overall"]["kappa"])
    assert np.mean(in_sample) > 0.08                    # Youden's J finds lucky cuts in the noise
    assert abs(np.mean(out_of_fold)) < 0.05 and np.mean(out_of_fold) < np.mean(in_sample) - 0.05


def test_figures_per_source_count_in_scope_labelled_studies_only() -> None:
    studies = (_studies(40, 0.6, seed=2, source="A") + _studies(30, 0.6, seed=3, source="B")
               + [StudyPrediction("leg", "LEG", 1, 0.9, source="A"),
                  StudyPrediction("unlabelled", "WRIST", None, 0.4, source="A"),
                  StudyPrediction("unread", "WRIST", 0, None, source="B")])
    found = cross_fitted_figures(studies, repeats=4)
    figures = found.groups
    assert (found.n_folds, found.repeats, found.min_per_class) == (5, 4, 5)
    assert list(figures) == ["overall", "A", "B"]
    assert (figures["overall"]["n"], figures["A"]["n"], figures["B"]["n"]) == (70, 40, 30)
    assert figures["A"]["n_abnormal"] == 20
    for row in figures.values():
        for metric in ("kappa", "sensitivity", "specificity"):
            low, high = row[f"{metric}_range"]
            assert low <= row[metric] <= high and 0.5 < row[metric] <= 1.0
    assert cross_fitted_figures(studies, repeats=4) == found                            # seeded
    assert list(cross_fitted_figures(_studies(30, 0.6, seed=2)).groups) == ["overall"]  # one source: one row


def test_too_few_of_a_class_gives_no_figures() -> None:
    studies = [StudyPrediction(f"s{i}", "WRIST", int(i < 4), 0.1 * (i % 10)) for i in range(40)]
    assert cross_fitted_figures(studies) is None
    assert cross_fitted_markdown(None) == ""


def test_the_card_section_states_the_rule_and_each_row() -> None:
    text = cross_fitted_markdown(cross_fitted_figures(_studies(40, 0.6, seed=2, source="A")
                                                      + _studies(30, 0.6, seed=3, source="B"), repeats=3))
    assert "### Kappa at thresholds fitted out of fold" in text and "4/5" in text and "3 draws of the 5" in text
    assert text.count("\n| ") == 4                     # header + overall, A, B
    assert "not a confidence interval" in text


@pytest.mark.parametrize("row, shown", [({"kappa": 0.6312, "kappa_range": [0.5887, 0.654]}, "0.631 [0.59–0.65]"),
                                        ({"kappa": None, "kappa_range": None}, "—"),
                                        ({"kappa": 0.5}, "0.500")])
def test_format_figure(row: dict, shown: str) -> None:
    assert format_figure(row, "kappa") == shown
