"""evaluate over several sources: per-source figures, calibration, out-of-scope rows kept apart."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from fixtures.score import tiny_checkpoint, tiny_manifest

from mura_core.commands import evaluate as evaluate_command
from mura_core.evaluation import evaluate as ev
from mura_core.evaluation.metrics import calibration_bins
from mura_core.evaluation.reports import read_predictions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _with_a_leg_row(folder: Path) -> Path:
    """Relabel one valid abnormal study's body part as LEG (a lower-limb region: out of scope)."""
    path = folder / "manifest.csv"
    rows = list(csv.DictReader(path.open()))
    leg = next(r for r in rows if r["split"] == "valid" and r["label"] == "1" and r["image"].startswith("images/s"))
    leg["body_part"] = "LEG"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("sources")
    first = tiny_manifest(root / "first", n_studies=6, corrupt=0)
    second = _with_a_leg_row(tiny_manifest(root / "second", n_studies=8, corrupt=1))
    ckpt = root / "tiny.pt"
    tiny_checkpoint(ckpt, "mobilenet_v2", thresholds={"default": 0.5})
    return first, second, ckpt


def test_report_breaks_every_figure_down_by_source(two_sources, tmp_path: Path) -> None:
    first, second, ckpt = two_sources
    report = ev.evaluate_dataset([first, second], split="valid", weights=str(ckpt), cam="cam", out=tmp_path,
                                 n_bootstrap=0, workers=0, batch_size=4, progress=False)
    assert [s["name"] for s in report["data"]["sources"]] == ["first", "second"]
    assert report["data"]["name"] == "first + second"
    by_source = report["by_source"]
    n_first, n_second = by_source["first"]["n_images"], by_source["second"]["n_images"]
    assert n_first + n_second == report["data"]["n_images"]
    # same study ids in both sources stay two studies
    assert report["n_studies"] == len({(s, r["study"]) for s in ("first", "second")
                                       for r in csv.DictReader((tmp_path / "predictions.csv").open())
                                       if r["source"] == s})
    # the LEG study is out of scope: left out of the headline and of its source's in-scope figures
    assert by_source["second"]["n_in_scope"] == n_second - 1
    assert "LEG" in by_source["second"]["out_of_scope"]["by_body_part"]
    assert "LEG" not in report["image_level"]["by_body_part"]
    in_scope_scored = sum(1 for r in csv.DictReader((tmp_path / "predictions.csv").open())
                          if r["probability"] and r["in_scope"] == "1")
    assert report["image_level"]["overall"]["n"] == in_scope_scored
    for name in ("first", "second"):
        assert by_source[name]["calibration"]["n"] == by_source[name]["image_level"]["overall"]["n"]
        assert by_source[name]["pointing_game"]["methods"]["cam"]["n"] >= 1
    studies = read_predictions(tmp_path / "study_predictions.csv")
    assert {s.source for s in studies} == {"first", "second"}
    assert [s.in_scope for s in studies].count(False) == 1


def test_cli_takes_several_sources(two_sources, tmp_path: Path, capsys) -> None:
    first, second, ckpt = two_sources
    rc = evaluate_command.cli_main(["--data", str(first), "--data", str(second), "--split", "valid",
                                    "--weights", str(ckpt), "--cam", "none", "--out", str(tmp_path),
                                    "--bootstrap", "0", "--workers", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "first AUC" in out and "second AUC" in out


def test_calibration_bins_measure_the_gap_between_said_and_seen() -> None:
    perfect = calibration_bins([0, 1, 0, 1], [0.05, 0.95, 0.05, 0.95])
    assert perfect["ece"] == pytest.approx(0.05) and sum(b["n"] for b in perfect["bins"]) == 4
    overconfident = calibration_bins([0, 1, 1, 0], [0.95, 0.95, 0.95, 0.95])
    assert overconfident["ece"] == pytest.approx(0.45)
    assert overconfident["bins"][0]["observed"] == 0.5
