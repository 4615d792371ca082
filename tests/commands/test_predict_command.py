"""Tests for `python -m mura_core predict`: JSON schema, unreadable files, exit codes, overlays."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from fixtures.score import grey_image, weights_folder, write_png

from mura_core.commands import predict as predict_cli
from mura_core.explain.cams import DEFAULT_CAM

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return weights_folder(tmp_path_factory.mktemp("w"), {"tiny": "mobilenet_v2", "tiny_shallow": "shallow_cnn"},
                          default="tiny", thresholds={"default": 0.5, "WRIST": 0.1})


@pytest.fixture
def study(tmp_path) -> list[Path]:
    good = [write_png(tmp_path / f"view{i}.png", grey_image(40 + i * 9, 44, seed=i, square=(8, 8, 10)))
            for i in range(2)]
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return good + [bad]


def _run(capsys, argv) -> tuple[int, str, str]:
    code = predict_cli.cli_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_schema_with_one_corrupt_file(capsys, weights, study, tmp_path):
    out_dir = tmp_path / "overlays"
    code, out, err = _run(capsys, [*map(str, study), "--weights-dir", str(weights), "--json", "--out",
                                   str(out_dir), "--device", "cpu", "--body-part", "wrist"])
    assert code == 0
    data = json.loads(out)  # stdout is exactly one JSON object
    assert set(data) >= {"model", "study", "images"}
    assert data["model"] == "tiny" and data["cam"] == DEFAULT_CAM
    s = data["study"]
    assert set(s) >= {"probability", "abnormal", "threshold", "body_part"}
    assert s["body_part"] == "WRIST" and s["threshold"] == 0.1
    assert isinstance(s["abnormal"], bool) and 0 < s["probability"] < 1
    assert [i["file"] for i in data["images"]] == [str(p) for p in study]
    for img in data["images"]:
        assert set(img) >= {"file", "probability", "error", "overlay", "peak"}
    good, bad = data["images"][:2], data["images"][2]
    for img in good:
        assert img["error"] is None and 0 < img["probability"] < 1
        assert len(img["peak"]) == 2 and all(0 <= v <= 1 for v in img["peak"])
        overlay = cv2.imread(img["overlay"])
        assert overlay is not None and overlay.shape[2] == 3
    assert bad["probability"] is None and bad["overlay"] is None and bad["peak"] is None
    assert bad["error"]
    assert "corrupt.png" in err  # listed with its reason on stderr
    assert s["probability"] == pytest.approx(sum(i["probability"] for i in good) / 2, abs=1e-5)


def test_overlay_has_original_size(capsys, weights, study, tmp_path):
    code, out, _ = _run(capsys, [str(study[1]), "--weights-dir", str(weights), "--json", "--out", str(tmp_path / "o"),
                                 "--cam", "gradcam", "--device", "cpu", "--colormap", "inferno"])
    assert code == 0
    img = json.loads(out)["images"][0]
    assert cv2.imread(img["overlay"]).shape[:2] == (49, 44)


def test_all_corrupt_exits_nonzero(capsys, weights, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"nope")
    code, out, _ = _run(capsys, [str(bad), str(tmp_path / "missing.jpg"), "--weights-dir", str(weights), "--json"])
    assert code != 0
    data = json.loads(out)
    assert data["study"]["probability"] is None and data["study"]["abnormal"] is None
    assert all(i["error"] for i in data["images"])


def test_text_output_and_options(capsys, weights, study):
    code, out, _ = _run(capsys, [*map(str, study), "--weights-dir", str(weights), "--weights", "tiny_shallow",
                                 "--tta", "--aggregate", "max", "--cam", "none"])
    assert code == 0
    assert "UNREADABLE" in out and "P(abnormal)=" in out and "max of 2 images" in out


def test_cam_not_available_for_arch(capsys, weights, study):
    code, _, err = _run(capsys, [str(study[0]), "--weights-dir", str(weights), "--weights", "tiny_shallow",
                                 "--cam", "cam"])
    assert code == 2 and "not available" in err


def test_missing_weights_is_usage_error(capsys, tmp_path, study):
    code, _, err = _run(capsys, [str(study[0]), "--weights-dir", str(tmp_path / "none"), "--json"])
    assert code == 2 and "weights" in err


def test_dicom_tags_never_printed(capsys, weights, tmp_path, dicom_factory):
    path = tmp_path / "study.dcm"
    path.write_bytes(dicom_factory())
    raw = path.read_bytes()
    code, out, err = _run(capsys, [str(path), "--weights-dir", str(weights), "--json"])
    data = json.loads(out)
    assert code == 0 and data["images"][0]["probability"] is not None
    assert data["study"]["body_part"] == "WRIST" and data["study"]["threshold"] == 0.1  # from BodyPartExamined
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "AccessionNumber"):
        value = str(ds.get(keyword, "") or "")
        if len(value) >= 3:
            assert value not in out and value not in err, keyword
    assert raw  # the file really held the tags above


def test_module_entry_point_json_only_on_stdout(weights, study):
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mura_core", "predict", str(study[0]), str(study[2]),
                           "--weights-dir", str(weights), "--json"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["images"][1]["error"] and data["images"][0]["probability"] is not None
