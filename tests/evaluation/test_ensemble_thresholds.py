"""An ensemble's own thresholds from its evaluate report's study predictions."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mura_core.evaluation.ensemble_thresholds import STUDY_PREDICTIONS, fit_from_report


def _write_studies(folder: Path, rows: list[tuple[str, str, int, float]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / STUDY_PREDICTIONS).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_id", "body_part", "label", "probability"])
        writer.writerows(rows)
    return folder


def test_fits_in_scope_studies_with_a_part_threshold_only_where_both_classes_suffice(tmp_path: Path) -> None:
    wrist = [(f"w{k}", "WRIST", 0, 0.10 + 0.04 * k) for k in range(6)]        # normals 0.10 .. 0.30
    wrist += [(f"W{k}", "WRIST", 1, 0.60 + 0.05 * k) for k in range(6)]       # abnormals 0.60 .. 0.85
    elbow = [(f"e{k}", "ELBOW", 1, 0.45 + 0.01 * k) for k in range(3)]        # one class only: no own key
    leg = [(f"l{k}", "LEG", 1, 0.01) for k in range(10)]                      # out of scope: must not count
    folder = _write_studies(tmp_path / "pair.report", wrist + elbow + leg)
    fitted = fit_from_report(folder)
    assert set(fitted) == {"default", "WRIST"}
    assert fitted["WRIST"] == pytest.approx(0.60, abs=1e-6)    # the highest threshold keeping every abnormal wrist
    assert fitted["default"] == pytest.approx(0.45, abs=1e-6)  # the elbows count; the legs would drag it to 0.01
    assert fitted["WRIST"] < 0.60 and fitted["default"] < 0.45  # just below the rounded score: a tie stays abnormal


def test_a_missing_report_or_one_class_is_refused_with_the_file_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="evaluate on the ensemble first"):
        fit_from_report(tmp_path / "none.report")
    folder = _write_studies(tmp_path / "one.report", [(f"s{k}", "WRIST", 1, 0.5) for k in range(8)])
    with pytest.raises(ValueError, match=str(folder / STUDY_PREDICTIONS)):
        fit_from_report(folder)
