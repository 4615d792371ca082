"""Tests for `mura_core.explain.quantize`: the int8 scoring copy, its wiring in `Predictor`, `score --int8` and
`evaluate --int8`. Tiny random-weight models at 64 px on the CPU (seconds); no timing assertions."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.score import grey_image, tiny_manifest

from mura_core.commands import evaluate as evaluate_cli
from mura_core.commands import score as score_cli
from mura_core.explain.cams import ExplainError
from mura_core.explain.predictor import Predictor
from mura_core.explain.quantize import (
    Int8Scorer, QuantizeError, calibration_images, engine_available, quantize_for_scoring,
)
from mura_core.models.registry import create_model, get_arch
from mura_core.models.weights import load_weights

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not engine_available("x86"), reason="this torch build has no x86 (fbgemm) quantised engine"),
]

SIZE = 64


def _batches(seed: int, count: int = 2, n: int = 4) -> list[torch.Tensor]:
    """Image-like (N, 3, S, S) batches: smooth grey images with a bright square, normalised like ImageNet."""
    spec = get_arch("shallow_cnn")
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    out = []
    for b in range(count):
        grey = np.stack([grey_image(SIZE, SIZE, seed=seed + 10 * b + i, square=(8 * i, 10, 16)) for i in range(n)])
        x = torch.from_numpy(grey.astype(np.float32) / 255.0).unsqueeze(1).repeat(1, 3, 1, 1)
        out.append((x - mean) / std)
    return out


@pytest.fixture(scope="module")
def shallow() -> torch.nn.Module:
    torch.manual_seed(3)
    return create_model("shallow_cnn").eval()


@pytest.fixture(scope="module")
def weights(int8_weights: Path) -> Path:
    return int8_weights


@pytest.fixture(scope="module")
def data(int8_data: Path) -> Path:
    return int8_data


def test_int8_copy_scores_close_to_float32_with_features(shallow: torch.nn.Module):
    scorer = quantize_for_scoring(shallow, "shallow_cnn", _batches(0))
    assert isinstance(scorer, Int8Scorer) and scorer.image_size == (SIZE, SIZE)
    x = torch.cat(_batches(100))  # images the copy was not calibrated on
    with torch.no_grad():
        logits_f = shallow(x)
        features_f = shallow.features(x).mean(dim=(2, 3))  # the CAM layer's pooled output (features[-1])
        logits_q, features_q = scorer(x)
    assert logits_q.shape == (len(x), 1) and features_q.shape == features_f.shape == (len(x), 64)
    p_f, p_q = torch.sigmoid(logits_f), torch.sigmoid(logits_q)
    assert (p_f - p_q).abs().max().item() < 0.02
    assert ((features_q - features_f).abs().mean() / features_f.abs().mean()).item() < 0.1
    assert scorer.calibration_delta < 0.02
    assert any(isinstance(m, torch.nn.Module) and "quantized" in type(m).__module__ for m in scorer.modules())


def test_model_is_left_untouched_and_other_sizes_are_refused(shallow: torch.nn.Module):
    before = {k: v.clone() for k, v in shallow.state_dict().items()}
    scorer = quantize_for_scoring(shallow, "shallow_cnn", _batches(0, count=1))
    assert all(torch.equal(before[k], v) for k, v in shallow.state_dict().items())
    assert all(p.dtype == torch.float32 for p in shallow.parameters())
    with pytest.raises(QuantizeError, match="built for 64x64"):
        scorer(torch.zeros(1, 3, 32, 32))


def test_same_padding_model_is_traced_with_its_pooled_features():
    """EfficientNet-Lite0's TensorFlow SAME padding is frozen for the input size, so FX can trace it."""
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0").eval()
    scorer = quantize_for_scoring(model, "efficientnet_lite0", _batches(0, count=1, n=2), max_delta=None)
    logits, features = scorer(_batches(7, count=1, n=2)[0])
    assert logits.shape == (2, 1) and features.shape == (2, 1280)


def test_unsupported_architecture_names_itself():
    torch.manual_seed(0)
    with pytest.raises(QuantizeError, match="'hybrid'"):
        quantize_for_scoring(create_model("hybrid").eval(), "hybrid", _batches(0, count=1))


def test_inaccurate_copy_is_refused(shallow: torch.nn.Module):
    with pytest.raises(QuantizeError, match="not accurate enough"):
        quantize_for_scoring(shallow, "shallow_cnn", _batches(0, count=1), max_delta=0.0)


def test_no_calibration_batches_is_an_error(shallow: torch.nn.Module):
    with pytest.raises(QuantizeError, match="at least one"):
        quantize_for_scoring(shallow, "shallow_cnn", [])


def test_predictor_int8_scores_keep_features_and_refuse_heat_maps(weights: Path, data: Path):
    exact = Predictor(load_weights("tiny", weights_dir=weights), device="cpu")
    fast = Predictor(load_weights("tiny", weights_dir=weights), device="cpu")
    fast.enable_int8(calibration_images(data, split="train", count=4))
    assert fast.int8 is not None and "int8" in fast.name and fast.sha256.endswith(":int8")
    images = [grey_image(60, 50, seed=s, square=(5, 5, 20)).astype(np.float32) / 255.0 for s in range(3)]
    batches = exact.prepare(images)
    p_f, _, f_f = exact.run_batches_features(batches)
    p_q, maps, f_q = fast.run_batches_features(batches)
    assert maps == {} and f_q is not None and f_f is not None and f_q.shape == f_f.shape
    assert np.abs(p_f - p_q).max() < 0.05
    p_tta, _ = fast.run_batches(batches, tta=True)
    assert p_tta.shape == (3,)
    assert fast.cam_methods() == []
    for cam in ("auto", "cam", "gradcam"):
        with pytest.raises(ExplainError, match="not available on the int8 scoring path"):
            fast.predict_images(images, cam=cam)
    with pytest.raises(ExplainError, match="int8"):
        fast.run_batches_many(batches, ["cam"])


def test_score_int8_writes_a_worklist(capsys, weights: Path, data: Path, tmp_path: Path):
    code = score_cli.cli_main([str(data), "--out", str(tmp_path / "o"), "--weights-dir", str(weights),
                               "--device", "cpu", "--workers", "0", "--no-progress", "--int8",
                               "--calibration-images", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    with (tmp_path / "o" / "worklist.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and sum(bool(r["probability"]) for r in rows) == 7
    assert all(r["model"] == "tiny (int8)" and r["sha256"].endswith(":int8") for r in rows)


def test_score_int8_unsupported_architecture_exits_2(capsys, weights: Path, data: Path, tmp_path: Path):
    code = score_cli.cli_main([str(data), "--out", str(tmp_path / "o"), "--weights-dir", str(weights),
                               "--weights", "tok", "--device", "cpu", "--workers", "0", "--no-progress", "--int8",
                               "--calibration-images", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "'hybrid'" in err and "Traceback" not in err


def test_score_int8_without_train_images_exits_2(capsys, weights: Path, tmp_path: Path):
    folder = tiny_manifest(tmp_path / "d", n_studies=2, corrupt=0)
    rows = (folder / "manifest.csv").read_text().replace(",train,", ",valid,")
    (folder / "manifest.csv").write_text(rows)
    code = score_cli.cli_main([str(folder), "--out", str(tmp_path / "o"), "--weights-dir", str(weights),
                               "--device", "cpu", "--workers", "0", "--no-progress", "--int8"])
    err = capsys.readouterr().err
    assert code == 2 and "--calibration" in err


def test_evaluate_int8_needs_cam_none(capsys, weights: Path, data: Path, tmp_path: Path):
    base = ["--data", str(data), "--split", "valid", "--weights-dir", str(weights), "--device", "cpu",
            "--workers", "0", "--no-progress", "--bootstrap", "0", "--out", str(tmp_path / "e"), "--int8",
            "--calibration-images", "4"]
    assert evaluate_cli.cli_main(base) == 2
    assert "--cam none" in capsys.readouterr().err
    assert evaluate_cli.cli_main(base + ["--cam", "none"]) == 0
    out = capsys.readouterr().out
    assert "tiny (int8)" in out and (tmp_path / "e" / "report.json").is_file()
