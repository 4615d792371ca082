"""An ensemble's own decision thresholds, fitted on the study predictions of its evaluate report.

Without them an ensemble decides at its members' thresholds averaged key by key, which ignores that the averaged
probability has a distribution of its own (the shipped default's FracAtlas kappa was 0.55 there, against 0.62 for
its Lite2 member alone). Fitting applies the members' own rule (Youden's J, a body part's own threshold only with
at least 5 normal and 5 abnormal studies) to the score the viewer actually thresholds, on the same valid split that
chose the members' thresholds: no more and no less optimistic than theirs.
"""
from __future__ import annotations

from pathlib import Path

from mura_core.evaluation.metrics import fit_thresholds
from mura_core.evaluation.reports import STUDY_PREDICTIONS, read_predictions

__all__ = ["CSV_HALF_STEP", "STUDY_PREDICTIONS", "fit_from_report"]

CSV_HALF_STEP = 5e-7
"""Half the resolution of the report's probabilities (written with 6 decimals). A fitted threshold is a score in
the data; lowered by this much, the study whose rounded score it is stays abnormal at its unrounded score."""


def fit_from_report(report_dir: str | Path, min_per_class: int = 5) -> dict[str, float]:
    """Thresholds (body part -> threshold, with "default") fitted on the labelled, scored, in-scope studies of
    an evaluate report folder; ValueError when it has no study predictions or lacks a class."""
    path = Path(report_dir) / STUDY_PREDICTIONS
    if not path.is_file():
        raise ValueError(f"{path} not found: run evaluate on the ensemble first")
    studies = [s for s in read_predictions(path)
               if s.in_scope and s.label is not None and s.probability is not None]
    labels = [s.label for s in studies]
    if not studies or len(set(labels)) < 2:
        raise ValueError(f"{path}: fitting thresholds needs normal and abnormal in-scope studies")
    fitted = fit_thresholds(labels, [s.probability for s in studies], [s.body_part for s in studies],
                            min_per_class=min_per_class)
    return {part: max(0.0, value - CSV_HALF_STEP) for part, value in fitted.items()}
