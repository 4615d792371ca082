"""`predict --json` reports each image's scope and the study's suggested body part (issue #13)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.app import build_tiny_weights
from fixtures.build import dicom_bytes, png_bytes
from fixtures.heads import write_heads
from mura_core.commands import predict as predict_cli


def _predict(capsys, folder: Path, files: list[Path], *extra: str) -> dict:
    code = predict_cli.cli_main([*map(str, files), "--weights-dir", str(folder), "--json", "--device", "cpu",
                                 "--cam", "none", *extra])
    out, _ = capsys.readouterr()
    assert code == 0
    return json.loads(out)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    png = tmp_path / "view.png"
    png.write_bytes(png_bytes(64, 64))
    hip = tmp_path / "hip.dcm"
    hip.write_bytes(dicom_bytes(rows=64, cols=64, body_part="HIP"))
    return [png, hip]


def test_without_heads_only_dicom_tags_decide(capsys, tmp_path, files) -> None:
    folder = build_tiny_weights(tmp_path / "w", with_report=False)
    data = _predict(capsys, folder, files)
    png, hip = data["images"]
    assert png["scope"] is None                                         # nothing can tell: no claim
    assert hip["scope"]["in_scope"] is False and hip["scope"]["label"] == "lower-limb radiograph"
    assert data["study"]["excluded_images"] == [1]
    assert data["study"]["probability"] == pytest.approx(png["probability"], abs=1e-6)
    assert data["study"]["body_part_suggested"] is None


def test_heads_give_scope_and_suggested_part_that_picks_the_threshold(capsys, tmp_path, files) -> None:
    folder = build_tiny_weights(tmp_path / "w", with_report=False)
    write_heads(folder, part="WRIST")
    data = _predict(capsys, folder, files[:1])
    scope = data["images"][0]["scope"]
    assert set(scope) == {"in_scope", "label", "score"} and scope["in_scope"] is True
    assert isinstance(scope["score"], float) and scope["score"] < 1
    suggested = data["study"]["body_part_suggested"]
    assert suggested["part"] == "WRIST" and suggested["source"] == "image" and suggested["confidence"] > 0.9
    assert data["study"]["body_part"] == "WRIST" and data["study"]["threshold"] == pytest.approx(0.45)
    explicit = _predict(capsys, folder, files[:1], "--body-part", "elbow")
    assert explicit["study"]["body_part"] == "ELBOW" and explicit["study"]["body_part_suggested"]["part"] == "WRIST"


def test_out_of_scope_kept_on_request(capsys, tmp_path, files) -> None:
    folder = build_tiny_weights(tmp_path / "w", with_report=False)
    write_heads(folder, out_of_scope=True)
    data = _predict(capsys, folder, files[:1])
    assert data["images"][0]["scope"]["in_scope"] is False and data["images"][0]["scope"]["score"] >= 1
    assert data["study"]["probability"] is None and data["study"]["excluded_images"] == [0]
    assert data["images"][0]["probability"] is not None                 # the image's own score is still given
    kept = _predict(capsys, folder, files[:1], "--keep-out-of-scope")
    assert kept["study"]["excluded_images"] == [] and kept["study"]["probability"] is not None


def test_tampered_heads_are_not_used(capsys, tmp_path, files) -> None:
    folder = build_tiny_weights(tmp_path / "w", with_report=False)
    path = write_heads(folder, part="WRIST")
    data = bytearray(path.read_bytes())
    data[-40] ^= 1
    path.write_bytes(bytes(data))
    code = predict_cli.cli_main([str(files[0]), "--weights-dir", str(folder), "--json", "--device", "cpu",
                                 "--cam", "none"])
    out, err = capsys.readouterr()
    assert code == 0 and "sha256 mismatch" in err
    assert json.loads(out)["images"][0]["scope"] is None


def test_real_jpeg_extended_dicom_scores_and_its_tags_decide_scope(capsys, tmp_path) -> None:
    from fixtures.build import pydicom_data_file
    from mura_core.imaging import decode as decode_module

    path = pydicom_data_file("JPEG-lossy.dcm")
    if path is None or decode_module._gdcm_module() is None:
        pytest.skip("JPEG-lossy.dcm or python-gdcm not installed")
    folder = build_tiny_weights(tmp_path / "w", with_report=False)
    data = _predict(capsys, folder, [path], "--keep-out-of-scope")
    image = data["images"][0]
    assert image["error"] is None and 0.0 <= image["probability"] <= 1.0     # read through GDCM and scored
    assert image["scope"]["in_scope"] is False and "nuclear-medicine" in image["scope"]["label"]  # Modality NM
