"""Tests for mura_core.train on tiny generated data sets (CPU, shallow_cnn at 32 px, a few seconds each)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mura_core.train as train_module
from mura_core.models.checkpoints import load_checkpoint
from mura_core.models.weights import read_index
from mura_core.evaluation.metrics import fit_thresholds
from mura_core.train import (
    TrainConfig,
    augment_batch,
    class_weight_table,
    cli_main,
    default_last_path,
    focal_loss,
    load_split,
    predict_probs,
    sample_weights,
    train,
    weighted_bce,
)

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


def make_tiny_set(folder: Path, n_train: int = 24, n_valid: int = 16, *, seed: int = 0,
                  valid_brightness: float = 0.0, size: int = 40) -> Path:
    """A manifest data set: abnormal images carry a bright square, normals are plain noise.

    Like bone-fracture-xr, most normal images have no body part. `valid_brightness` shifts every
    valid image so the validation score distribution differs from the training one.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in (("train", n_train), ("valid", n_valid)):
        for i in range(n):
            label = i % 2
            img = rng.normal(80, 20, (size, size))
            if label:
                cx, cy = rng.integers(8, size - 8, 2)
                img[cy - 5:cy + 5, cx - 5:cx + 5] += 130
            if split == "valid":
                img += valid_brightness
            name = f"images/{split}_{i}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name)
            part = ("WRIST" if i % 4 < 2 else "ELBOW") if label else ("WRIST" if i % 6 == 0 else "")
            rows.append({"image": name, "split": split, "label": label, "body_part": part,
                         "group": f"{split}{i}", "boxes": "[]"})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_set(tmp_path_factory.mktemp("tiny") / "data")


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    settings = {"arch": "shallow_cnn", "image_size": 32, "epochs": 2, "batch_size": 8, "lr": 3e-3,
                "progress": False, "threads": 2, **kw}
    return TrainConfig(data=str(data), out=str(out), **settings)


# ----------------------------------------------------------------------------------------------
# pieces
# ----------------------------------------------------------------------------------------------


def test_class_weights_follow_mura_per_body_part_with_global_fallback() -> None:
    labels = [1, 1, 1, 0, 1, 0, 0, 0, 1]
    parts = ["WRIST", "WRIST", "WRIST", "WRIST", "ELBOW", "UNKNOWN", "UNKNOWN", "UNKNOWN", "HAND"]
    table, fallbacks = class_weight_table(labels, parts)
    # WRIST: |A| = 3, |N| = 1 -> w1 = 1/4, w0 = 3/4
    assert table["WRIST"] == pytest.approx((0.75, 0.25))
    # global: |A| = 5, |N| = 4 -> w1 = 4/9, w0 = 5/9
    assert table["default"] == pytest.approx((5 / 9, 4 / 9))
    assert sorted(fallbacks) == ["ELBOW", "HAND", "UNKNOWN"]
    w = sample_weights(torch.tensor([1.0, 0.0, 1.0]), ["WRIST", "UNKNOWN", "ELBOW"], table)
    torch.testing.assert_close(w, torch.tensor([0.25, 5 / 9, 4 / 9]))
    none, _ = class_weight_table(labels, parts, "none")
    assert none == {"default": (1.0, 1.0)}


def test_losses() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5])
    labels = torch.tensor([1.0, 0.0, 0.0])
    weights = torch.tensor([0.2, 0.8, 1.0])
    expected = (weights * torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels, reduction="none")).mean()
    torch.testing.assert_close(weighted_bce(logits, labels, weights), expected)
    torch.testing.assert_close(focal_loss(logits, labels, weights, gamma=0.0), expected)
    assert focal_loss(logits, labels, weights, gamma=2.0) < expected  # easy examples down-weighted


def test_augmentation_is_seeded_per_image_and_epoch() -> None:
    images = (torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    a = augment_batch(images, [0, 1, 2], seed=1, epoch=0)
    b = augment_batch(images, [0, 1, 2], seed=1, epoch=0)
    c = augment_batch(images, [0, 1, 2], seed=1, epoch=1)
    assert a.shape == (3, 1, 24, 24) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(augment_batch(images[1:2], [1], seed=1, epoch=0), a[1:2])


def test_last_checkpoint_stays_out_of_weights(tmp_path: Path) -> None:
    assert default_last_path(REPO / "weights" / "x.pt") == REPO / "runs" / "x.last.pt"
    assert default_last_path(tmp_path / "y.pt") == tmp_path / "y.last.pt"


def test_load_split_caches_uint8_images(tiny_data: Path, tmp_path: Path) -> None:
    cache = load_split(tiny_data, "train", 16, cache_dir=tmp_path)
    assert cache.images.shape == (24, 16, 16) and cache.images.dtype == torch.uint8
    assert cache.labels.sum() == 12 and "UNKNOWN" in cache.body_parts
    again = load_split(tiny_data, "train", 16, cache_dir=tmp_path)
    assert torch.equal(again.images, cache.images) and again.names == cache.names


# ----------------------------------------------------------------------------------------------
# whole runs
# ----------------------------------------------------------------------------------------------


def test_training_smoke_writes_a_complete_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "w" / "tiny.pt"
    result = train(_config(tiny_data, out, epochs=4, register=True))
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 4 and min(losses[1:]) < losses[0]
    loaded = load_checkpoint(out, expected_sha256=result.sha256)
    card = loaded.card
    assert card.arch == "shallow_cnn" and card.image_size == 32 and "default" in card.thresholds
    for key in ("epochs", "lr", "optimizer", "loss", "image_size", "seed", "seconds_per_epoch", "best_epoch"):
        assert key in card.recipe, key
    for key in ("auc", "kappa", "f1", "sensitivity", "specificity", "auc_float32", "auc_float16"):
        assert key in card.metrics, key
    assert card.metrics["per_body_part"]["WRIST"]["n"] > 0
    assert "split 'valid'" in card.training_data and card.created and card.code_version
    assert "global weights" in card.notes  # the UNKNOWN-normals fallback is documented
    assert out.with_suffix(".md").read_text().startswith("# Model card: tiny")
    log = list(csv.DictReader(out.with_name("tiny.log.csv").open()))
    assert [int(r["epoch"]) for r in log] == [1, 2, 3, 4] and "val_auc" in log[0] and "val_kappa" in log[0]
    assert read_index(out.parent)["models"]["tiny"]["sha256"] == result.sha256
    assert result.last == tmp_path / "w" / "tiny.last.pt" and result.last.is_file()


def test_same_seed_same_run(tiny_data: Path, tmp_path: Path) -> None:
    a = train(_config(tiny_data, tmp_path / "a.pt", epochs=1, half="no"))
    b = train(_config(tiny_data, tmp_path / "b.pt", epochs=1, half="no"))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]


def test_resume_continues_exactly(tiny_data: Path, tmp_path: Path) -> None:
    full = train(_config(tiny_data, tmp_path / "full.pt", epochs=3, half="no"))
    train(_config(tiny_data, tmp_path / "part.pt", epochs=2, half="no"))
    resumed = train(_config(tiny_data, tmp_path / "part.pt", epochs=3, half="no", resume=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[2]["train_loss"] == pytest.approx(full.history[2]["train_loss"], rel=1e-5)
    assert resumed.history[2]["val_loss"] == pytest.approx(full.history[2]["val_loss"], rel=1e-5)


def test_resume_without_last_checkpoint_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no last checkpoint"):
        train(_config(tiny_data, tmp_path / "none.pt", resume=True))


def test_ctrl_c_leaves_a_usable_last_checkpoint(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = train_module.weighted_bce

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # second epoch (3 training batches + 1 validation loss per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "weighted_bce", interrupting)
    result = train(_config(tiny_data, tmp_path / "stop.pt", epochs=3))
    assert result.interrupted and not (tmp_path / "stop.pt").exists()
    loaded = load_checkpoint(result.last)
    assert loaded.card.arch == "shallow_cnn"
    monkeypatch.setattr(train_module, "weighted_bce", real)
    resumed = train(_config(tiny_data, tmp_path / "stop.pt", epochs=2, resume=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2] and (tmp_path / "stop.pt").is_file()


def test_thresholds_come_from_the_validation_split(tmp_path: Path) -> None:
    data = make_tiny_set(tmp_path / "shifted", valid_brightness=60.0, seed=3)
    out = tmp_path / "thr.pt"
    train(_config(data, out, epochs=2))
    loaded = load_checkpoint(out)
    spec_mean, spec_std = loaded.card.mean, loaded.card.std
    valid = load_split(data, "valid", 32)
    train_split = load_split(data, "train", 32)
    p_valid = predict_probs(loaded.model, valid.images, spec_mean, spec_std)
    p_train = predict_probs(loaded.model, train_split.images, spec_mean, spec_std)
    on_valid = fit_thresholds(valid.labels.numpy(), p_valid, valid.body_parts)
    on_train = fit_thresholds(train_split.labels.numpy(), p_train, train_split.body_parts)
    assert loaded.card.thresholds == pytest.approx(on_valid, abs=1e-6)
    assert loaded.card.thresholds["default"] != pytest.approx(on_train["default"], abs=1e-6)
    assert loaded.card.recipe["threshold_fitted_on"] == "valid"


def test_cli_rejects_unknown_arch(tiny_data: Path, tmp_path: Path, capsys) -> None:
    rc = cli_main(["--data", str(tiny_data), "--arch", "nope", "--out", str(tmp_path / "x.pt")])
    assert rc == 2 and "unknown architecture" in capsys.readouterr().err


def test_cli_runs_under_torchrun_with_two_gloo_processes(tiny_data: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    out = tmp_path / "ddp" / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mura_core", "train",
         "--data", str(tiny_data), "--arch", "shallow_cnn", "--image-size", "32", "--epochs", "1",
         "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = load_checkpoint(out)
    assert loaded.card.recipe["world_size"] == 2
    assert len(list(csv.DictReader(out.with_name("ddp.log.csv").open()))) == 1
    shutil.rmtree(out.parent)
