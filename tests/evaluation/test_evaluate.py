"""Tests for mura_core.evaluation.evaluate: outputs on a generated manifest, unreadable images, the CLI."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from fixtures.score import tiny_checkpoint, tiny_manifest

from mura_core.commands import evaluate as evaluate_command
from mura_core.evaluation import evaluate as ev
from mura_core.data.studies import BodyPart, DatasetIndex, Study, View

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ev")
    data = tiny_manifest(root / "data", n_studies=6, corrupt=1)
    ckpt = root / "tiny.pt"
    tiny_checkpoint(ckpt, "mobilenet_v2", thresholds={"default": 0.5, "WRIST": 0.4})
    return data, ckpt


@pytest.fixture(scope="module")
def report(setup, tmp_path_factory) -> tuple[dict, Path]:
    data, ckpt = setup
    out = tmp_path_factory.mktemp("out")
    rep = ev.evaluate_dataset(data, split="valid", weights=str(ckpt), cam="cam,hirescam", out=out,
                              n_bootstrap=100, workers=0, batch_size=3, progress=False)
    return rep, out


def test_report_json_contents(report):
    rep, out = report
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["model"]["name"] == "tiny" and len(on_disk["model"]["sha256"]) == 64
    assert on_disk["thresholds"] == {"default": 0.5, "WRIST": 0.4}
    assert "model card" in on_disk["thresholds_source"]
    assert on_disk["data"]["n_images"] == 8 and on_disk["split"] == "valid"
    assert on_disk["n_scored"] == 7
    for level in ("image_level", "study_level"):
        overall = on_disk[level]["overall"]
        assert set(overall) >= {"confusion", "accuracy", "sensitivity", "specificity", "precision", "f1",
                                "kappa", "auc", "ci"}
        assert "UNKNOWN" in on_disk[level]["by_body_part"]
        # body parts with one class only: AUC undefined -> None, never NaN
        assert on_disk[level]["by_body_part"]["UNKNOWN"]["auc"] is None
    assert on_disk["image_level"]["overall"]["n"] == 7
    assert on_disk["study_level"]["overall"]["n"] == 5  # 5 valid studies scored (broken one unreadable)
    assert on_disk["unreadable"] == [{"image": "images/broken0.png", "study": "gb0",
                                      "error": on_disk["unreadable"][0]["error"]}]
    pg = on_disk["pointing_game"]
    assert set(pg["methods"]) == {"cam", "hirescam"} and pg["tolerance_px"] == 15.0
    assert pg["methods"]["cam"]["n"] == 3  # the 3 readable abnormal images with boxes
    assert 0 <= pg["methods"]["cam"]["hit_rate"] <= 1
    by_tol = pg["hit_rate_by_tolerance_px"]["cam"]
    assert set(by_tol) == {"0", "15", "30", "60"} and by_tol["15"] == pg["methods"]["cam"]["hit_rate"]
    assert by_tol["0"] <= by_tol["15"] <= by_tol["60"]


def test_predictions_csv(report):
    _, out = report
    with (out / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"image", "study", "body_part", "label", "probability", "abnormal"} <= set(rows[0])
    assert len(rows) == 8
    assert rows[0]["image"] == "images/s0_v0.png"  # as the manifest names it
    broken = [r for r in rows if r["image"] == "images/broken0.png"][0]
    assert broken["probability"] == "" and broken["error"]
    good = [r for r in rows if r["probability"]]
    for r in good:
        assert r["abnormal"] == str(int(float(r["probability"]) >= float(r["threshold"])))
    assert {r["threshold"] for r in good if r["body_part"] == "WRIST"} == {"0.400000"}
    with (out / "study_predictions.csv").open(newline="") as handle:
        studies = list(csv.DictReader(handle))
    g0 = [s for s in studies if s["study"] == "g000"][0]
    assert g0["n_images"] == "2"


def test_figures_written(report):
    _, out = report
    html = (out / "figures.html").read_text()
    assert "plotly" in html.lower() and "ROC" in html
    import cv2

    assert cv2.imread(str(out / "roc.png")) is not None
    assert cv2.imread(str(out / "confusion.png")) is not None


def test_metrics_report_study_aggregation():
    def row(image, study, label, prob, part="WRIST"):
        return ev.ImageRow(image, study, part, label, "valid", (), View(image), probability=prob)

    rows = [row("a1", "a", 1, 0.9), row("a2", "a", 1, 0.3), row("b1", "b", 0, 0.2), row("c1", "c", 0, None)]
    mean = ev.metrics_report(rows, {"default": 0.5}, n_bootstrap=0)
    assert mean["study_level"]["overall"]["n"] == 2
    assert mean["study_level"]["overall"]["confusion"]["tp"] == 1  # (0.9+0.3)/2 = 0.6 >= 0.5
    assert mean["image_level"]["overall"]["n"] == 3
    high = ev.metrics_report(rows, {"default": 0.5, "WRIST": 0.7}, n_bootstrap=0)
    assert high["study_level"]["overall"]["confusion"]["fn"] == 1  # 0.6 < WRIST's 0.7
    mx = ev.metrics_report(rows, {"default": 0.5, "WRIST": 0.7}, aggregate="max", n_bootstrap=0)
    assert mx["study_level"]["overall"]["confusion"]["tp"] == 1  # max 0.9 >= 0.7
    json.dumps(mean, allow_nan=False)


def test_image_rows_limit():
    studies = [Study(f"s{i}", (View(f"s{i}a"), View(f"s{i}b")), BodyPart.WRIST, 1) for i in range(4)]
    rows = ev.image_rows(DatasetIndex(Path("."), "manifest", studies), limit=2)
    assert [r.image for r in rows] == ["s0a", "s0b", "s1a", "s1b"] and rows[0].body_part == "WRIST"


def test_cli_end_to_end_with_workers(setup, tmp_path, capsys):
    data, ckpt = setup
    out = tmp_path / "cli"
    code = evaluate_command.cli_main(["--data", str(data / "manifest.csv"), "--weights", str(ckpt), "--out", str(out),
                        "--workers", "1", "--batch-size", "4", "--bootstrap", "50", "--limit", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rep = json.loads((out / "report.json").read_text())
    assert rep["split"] == "all" and rep["data"]["n_studies"] == 3  # no --split: every row; --limit 3
    assert (out / "predictions.csv").is_file()
    assert "image AUC" in captured.out


def test_cli_bad_data_is_error(setup, tmp_path, capsys):
    _, ckpt = setup
    code = evaluate_command.cli_main(["--data", str(tmp_path / "nothing"), "--weights", str(ckpt), "--out", str(tmp_path / "o")])
    assert code == 2 and "error" in capsys.readouterr().err


def test_cli_unknown_method(setup, tmp_path, capsys):
    data, ckpt = setup
    code = evaluate_command.cli_main(["--data", str(data), "--weights", str(ckpt), "--out", str(tmp_path / "o"), "--cam", "bogus"])
    assert code == 2


SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "bone-fracture-xr"


@pytest.mark.skipif(not (SHARED / "manifest.csv").is_file(), reason="shared bone-fracture-xr data not present")
def test_real_data_smoke(setup, tmp_path):
    """A few real valid studies (read in place): boxes parsed, pointing game computed, JSON valid."""
    _, ckpt = setup
    rep = ev.evaluate_dataset(SHARED, split="valid", weights=str(ckpt), cam="cam", limit=6, out=tmp_path,
                              n_bootstrap=20, workers=0, progress=False)
    assert rep["data"]["n_studies"] == 6 and rep["n_scored"] == rep["data"]["n_images"]
    with (tmp_path / "predictions.csv").open(newline="") as handle:
        images = [r["image"] for r in csv.DictReader(handle)]
    assert all(name.startswith("images/") for name in images)  # as the manifest names them
    if rep["pointing_game"] is not None:
        assert rep["pointing_game"]["methods"]["cam"]["n"] >= 1
    json.loads((tmp_path / "report.json").read_text())


def test_bf16_scores_stay_close_to_float32_and_the_report_says_which(setup, tmp_path):
    data, ckpt = setup
    runs = {bf16: ev.evaluate_rows(data, split="valid", weights=str(ckpt), cam=None, n_bootstrap=0, workers=0,
                                   progress=False, bf16=bf16) for bf16 in (False, True)}
    assert runs[False][0]["precision"] == "float32" and runs[True][0]["precision"] == "bf16 autocast"
    exact = [r.probability for r in runs[False][1]]
    rounded = [r.probability for r in runs[True][1]]
    assert [p is None for p in exact] == [p is None for p in rounded]
    scored = [(a, b) for a, b in zip(exact, rounded) if a is not None]
    assert scored and all(abs(a - b) < 0.05 for a, b in scored)   # bf16 keeps ~3 significant digits
    assert any(a != b for a, b in scored)                          # and it really ran in bf16


def test_bf16_refuses_heat_maps(setup, tmp_path, capsys):
    data, ckpt = setup
    with pytest.raises(ValueError, match="cam none"):
        ev.evaluate_rows(data, split="valid", weights=str(ckpt), cam="cam", n_bootstrap=0, workers=0,
                         progress=False, bf16=True)
    code = evaluate_command.cli_main(["--data", str(data / "manifest.csv"), "--weights", str(ckpt),
                                      "--out", str(tmp_path / "o"), "--precision", "bf16"])
    assert code == 2 and "--precision bf16 scores only" in capsys.readouterr().err
