"""Whole training runs on tiny generated sources (CPU, shallow_cnn at 32 px)."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mura_core.training.loop as loop_module
from mura_core.models.checkpoints import load_checkpoint
from mura_core.models.weights import read_index
from mura_core.evaluation.metrics import fit_thresholds
from mura_core.training import TrainConfig, load_split, train
from mura_core.commands.train import cli_main
from mura_core.training.evaluation import predict_logits
from mura_core.training.outputs import default_last_path
from tests.training.conftest import make_tiny_set

REPO = Path(__file__).resolve().parents[2]


def _config(data, out: Path, **kw) -> TrainConfig:
    settings = {"arch": "shallow_cnn", "image_size": 32, "epochs": 2, "batch_size": 8, "lr": 3e-3,
                "progress": False, "threads": 2, **kw}
    return TrainConfig(data=data if isinstance(data, list) else [str(data)], out=str(out), **settings)


def test_last_checkpoint_stays_out_of_weights(tmp_path: Path) -> None:
    assert default_last_path(REPO / "weights" / "x.pt") == REPO / "runs" / "x.last.pt"
    assert default_last_path(tmp_path / "y.pt") == tmp_path / "y.last.pt"


def test_training_smoke_writes_a_complete_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "w" / "tiny.pt"
    result = train(_config(tiny_data, out, epochs=4, register=True))
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 4 and min(losses[1:]) < losses[0]
    loaded = load_checkpoint(out, expected_sha256=result.sha256)
    card = loaded.card
    assert card.arch == "shallow_cnn" and card.image_size == 32 and "default" in card.thresholds
    for key in ("epochs", "lr", "optimizer", "loss", "image_size", "seed", "seconds_per_epoch", "best_epoch",
                "augment", "ema_decay", "source_balance"):
        assert key in card.recipe, key
    for key in ("auc", "per_source_auc", "auc_float32", "auc_float16"):
        assert key in card.metrics, key
    assert "split 'valid'" in card.training_data and card.created and card.code_version
    assert card.temperature > 0
    assert out.with_suffix(".md").read_text().startswith("# Model card: tiny")
    log = list(csv.DictReader(out.with_name("tiny.log.csv").open()))
    assert [int(r["epoch"]) for r in log] == [1, 2, 3, 4] and "val_auc" in log[0] and "auc_data" in log[0]
    assert read_index(out.parent)["models"]["tiny"]["sha256"] == result.sha256
    assert result.last == tmp_path / "w" / "tiny.last.pt" and result.last.is_file()


def test_two_sources_with_the_multi_source_recipe(tiny_data: Path, second_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "multi.pt"
    result = train(_config([str(tiny_data), str(second_source)], out, epochs=2, augment="strong",
                           source_balance=1.0, ema_decay=0.9, label_smoothing=0.1, select="source_auc",
                           backbone_lr_scale=0.3))
    card = load_checkpoint(out).card
    assert set(card.metrics["per_source_auc"]) == {"data", "other"}
    assert "data:" in card.training_data and "other:" in card.training_data
    assert {"auc_data", "auc_other"} <= set(result.history[0])


def test_same_seed_same_run(tiny_data: Path, tmp_path: Path) -> None:
    a = train(_config(tiny_data, tmp_path / "a.pt", epochs=1, half="no"))
    b = train(_config(tiny_data, tmp_path / "b.pt", epochs=1, half="no"))
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]


def test_amp_on_a_bf16_cpu_trains_under_bf16_autocast(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    import torch

    from mura_core.models import devices

    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    layer, x, cpu = torch.nn.Linear(2, 2), torch.randn(1, 2), torch.device("cpu")
    with loop_module._mixed_precision(cpu, True):
        assert layer(x).dtype == torch.bfloat16
    with loop_module._mixed_precision(cpu, False):
        assert layer(x).dtype == torch.float32
    amp = train(_config(tiny_data, tmp_path / "amp.pt", epochs=1, half="no", amp=True))
    plain = train(_config(tiny_data, tmp_path / "plain.pt", epochs=1, half="no"))
    loss_amp, loss_plain = amp.history[0]["train_loss"], plain.history[0]["train_loss"]
    assert loss_amp != loss_plain and abs(loss_amp - loss_plain) < 0.1 * loss_plain  # bf16 maths, same run


def test_amp_on_a_cpu_still_validates_in_float32(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The epoch is chosen in the precision the app scores in: bf16 moves a Lite0's probabilities too far."""
    import torch

    from mura_core.models import devices

    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    seen: list[bool] = []

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return predict_logits(*args, **kwargs)

    monkeypatch.setattr(loop_module, "predict_logits", recording)
    train(_config(tiny_data, tmp_path / "amp.pt", epochs=1, half="no", amp=True))
    assert seen and not any(seen)


def test_resume_continues_exactly(tiny_data: Path, tmp_path: Path) -> None:
    kw = {"half": "no", "ema_decay": 0.9}
    full = train(_config(tiny_data, tmp_path / "full.pt", epochs=3, **kw))
    train(_config(tiny_data, tmp_path / "part.pt", epochs=2, **kw))
    resumed = train(_config(tiny_data, tmp_path / "part.pt", epochs=3, resume=True, **kw))
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[2]["train_loss"] == pytest.approx(full.history[2]["train_loss"], rel=1e-5)
    assert resumed.history[2]["val_loss"] == pytest.approx(full.history[2]["val_loss"], rel=1e-5)


def test_fine_tuning_starts_from_the_given_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    first = train(_config(tiny_data, tmp_path / "first.pt", epochs=3, half="no"))
    fresh = train(_config(tiny_data, tmp_path / "fresh.pt", epochs=1, half="no"))
    tuned = train(_config(tiny_data, tmp_path / "tuned.pt", epochs=1, half="no", lr=1e-5,
                          init_from=str(tmp_path / "first.pt")))
    # a tiny learning rate keeps the fine-tuned model near its start: far below a fresh model's loss
    assert tuned.history[0]["train_loss"] < fresh.history[0]["train_loss"]
    assert tuned.history[0]["val_loss"] == pytest.approx(min(r["val_loss"] for r in first.history[-1:]), rel=0.1)
    assert load_checkpoint(tmp_path / "tuned.pt").card.recipe["init_from_sha256"] == first.sha256
    with pytest.raises(Exception, match="not 'densenet121'"):
        train(_config(tiny_data, tmp_path / "x.pt", arch="densenet121", init_from=str(tmp_path / "first.pt")))


def test_a_resumed_card_counts_the_time_of_the_epochs_before_the_resume(tiny_data: Path, tmp_path: Path) -> None:
    """A run finished by --resume reports its whole training time, not only the resumed process's."""
    first = train(_config(tiny_data, tmp_path / "long.pt", epochs=1))
    payload = torch.load(first.last, map_location="cpu", weights_only=True)
    payload["resume"]["history"][0]["epoch_s"] = 1000.0  # as if the first epoch had taken 1000 s
    torch.save(payload, first.last)
    train(_config(tiny_data, tmp_path / "long.pt", epochs=2, resume=True))
    assert load_checkpoint(tmp_path / "long.pt").card.recipe["seconds_total"] >= 1000.0


def test_resume_without_last_checkpoint_is_an_error(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no last checkpoint"):
        train(_config(tiny_data, tmp_path / "none.pt", resume=True))


def test_ctrl_c_leaves_a_usable_last_checkpoint(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    calls = {"n": 0}
    real = loop_module.weighted_bce

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # second epoch (3 training batches + 1 validation loss per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "weighted_bce", interrupting)
    result = train(_config(tiny_data, tmp_path / "stop.pt", epochs=3))
    assert result.interrupted and not (tmp_path / "stop.pt").exists()
    assert load_checkpoint(result.last).card.arch == "shallow_cnn"
    monkeypatch.setattr(loop_module, "weighted_bce", real)
    resumed = train(_config(tiny_data, tmp_path / "stop.pt", epochs=2, resume=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2] and (tmp_path / "stop.pt").is_file()


def test_thresholds_and_temperature_come_from_the_validation_split(tmp_path: Path) -> None:
    import numpy as np

    from mura_core.training.evaluation import fit_temperature

    data = make_tiny_set(tmp_path / "shifted", n_valid=40, valid_brightness=60.0, seed=3)
    out = tmp_path / "thr.pt"
    train(_config(data, out, epochs=2, half="no"))
    loaded = load_checkpoint(out)
    card = loaded.card
    valid, train_split = load_split(data, "valid", 32), load_split(data, "train", 32)
    z_valid = predict_logits(loaded.model, valid.images, card.mean, card.std).numpy()
    z_train = predict_logits(loaded.model, train_split.images, card.mean, card.std).numpy()
    assert card.temperature == pytest.approx(fit_temperature(z_valid, valid.labels.numpy()), rel=1e-4)
    p_valid = 1 / (1 + np.exp(-z_valid / card.temperature))
    p_train = 1 / (1 + np.exp(-z_train / card.temperature))
    on_valid = fit_thresholds(valid.labels.numpy(), p_valid, valid.body_parts, min_per_class=10)
    on_train = fit_thresholds(train_split.labels.numpy(), p_train, train_split.body_parts, min_per_class=10)
    assert card.thresholds == pytest.approx(on_valid, abs=1e-5)
    assert card.thresholds["default"] != pytest.approx(on_train["default"], abs=1e-6)
    assert card.recipe["threshold_fitted_on"].startswith("valid")


def test_cli_rejects_unknown_arch(tiny_data: Path, tmp_path: Path, capsys) -> None:
    rc = cli_main(["--data", str(tiny_data), "--arch", "nope", "--out", str(tmp_path / "x.pt")])
    assert rc == 2 and "unknown architecture" in capsys.readouterr().err


def test_cli_runs_under_torchrun_with_two_gloo_processes(tiny_data: Path, second_source: Path,
                                                         tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    out = tmp_path / "ddp" / "ddp.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "mura_core", "train",
         "--data", str(tiny_data), "--data", str(second_source), "--arch", "shallow_cnn", "--image-size", "32",
         "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--no-progress", "--source-balance", "1",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = load_checkpoint(out)
    assert loaded.card.recipe["world_size"] == 2
    assert len(list(csv.DictReader(out.with_name("ddp.log.csv").open()))) == 1
    shutil.rmtree(out.parent)


def test_leave_one_source_out_scores_each_source_with_a_model_that_never_saw_it(
        tiny_data: Path, second_source: Path, tmp_path: Path) -> None:
    import json

    from mura_core.commands.loso import cli_main as loso_main

    rc = loso_main(["--data", str(tiny_data), "--data", str(second_source), "--arch", "shallow_cnn",
                    "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--no-progress",
                    "--out", str(tmp_path)])
    assert rc == 0
    summary = json.loads((tmp_path / "loso.json").read_text())
    assert [(r["held_out"], r["trained_on"]) for r in summary["runs"]] == [("data", ["other"]), ("other", ["data"])]
    for run in summary["runs"]:
        card = load_checkpoint(tmp_path / run["checkpoint"]).card
        assert run["held_out"] not in card.training_data.split(":")[0]
        report = json.loads((tmp_path / run["report"] / "report.json").read_text())
        assert list(report["by_source"]) == [run["held_out"]]
    assert loso_main(["--data", str(tiny_data), "--arch", "shallow_cnn", "--out", str(tmp_path / "x")]) == 2
    # resumable: existing checkpoints and reports are reused, --only restricts the held-out sources
    before = (tmp_path / "without_data.pt").stat().st_mtime
    assert loso_main(["--data", str(tiny_data), "--data", str(second_source), "--arch", "shallow_cnn",
                      "--image-size", "32", "--no-progress", "--only", "data", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "without_data.pt").stat().st_mtime == before
    assert [r["held_out"] for r in json.loads((tmp_path / "loso.json").read_text())["runs"]] == ["data"]


@pytest.mark.parametrize("hybrid_arch, backbone_arch", [("hybrid", "efficientnet_lite0"),
                                                         ("hybrid_lite2", "efficientnet_lite2")])
def test_a_hybrid_starts_its_backbone_from_a_lite_checkpoint(tmp_path: Path, hybrid_arch: str,
                                                             backbone_arch: str) -> None:
    """`--init-from` a Lite checkpoint for the hybrid on that Lite: its backbone takes every Lite weight but the
    classifier, the encoder and head keep their fresh start; a state dict that does not fit the backbone is
    refused, and so is the other Lite."""
    import torch

    from mura_core.models.checkpoints import ModelCard, save_checkpoint
    from mura_core.models.registry import create_model, get_arch
    from mura_core.training.loop import initial_weights, load_initial

    torch.manual_seed(0)
    lite = create_model(backbone_arch)
    spec = get_arch(backbone_arch)
    card = ModelCard(name="lite", arch=backbone_arch, image_size=64, mean=spec.mean, std=spec.std)
    sha = save_checkpoint(tmp_path / "l0.pt", lite, card)
    state, got_sha = initial_weights(str(tmp_path / "l0.pt"), hybrid_arch)
    assert got_sha == sha and all(k.startswith("backbone.") for k in state) and not any("_fc." in k for k in state)
    hybrid = create_model(hybrid_arch)
    head_before = hybrid.head.weight.detach().clone()
    load_initial(hybrid, state)
    for key, value in lite.state_dict().items():
        if not key.startswith("_fc."):
            torch.testing.assert_close(hybrid.state_dict()[f"backbone.{key}"], value)
    torch.testing.assert_close(hybrid.head.weight, head_before)
    with pytest.raises(Exception, match="do not fit"):
        load_initial(create_model(hybrid_arch), {k: v for k, v in list(state.items())[1:]})
    other = "hybrid_lite2" if hybrid_arch == "hybrid" else "hybrid"
    with pytest.raises(Exception):
        load_initial(create_model(other), state)
    with pytest.raises(Exception, match="not 'densenet121'"):
        initial_weights(str(tmp_path / "l0.pt"), "densenet121")


def test_training_on_windows_sees_box_labelled_windows_and_scores_valid_whole(tiny_data: Path, tmp_path: Path,
                                                                             monkeypatch) -> None:
    """--windows: every training input is a window at the window size with the window's own label (some windows of
    abnormal images are normal), while validation scores the whole images at the image size."""
    seen: list[tuple[int, float, float]] = []
    real_draw = loop_module.draw_window

    def recording(image, label, boxes, generator, size):
        window, window_label = real_draw(image, label, boxes, generator, size)
        seen.append((int(window.shape[-1]), label, window_label))
        return window, window_label

    monkeypatch.setattr(loop_module, "draw_window", recording)
    sizes: list[int] = []
    real_predict = loop_module.predict_logits
    monkeypatch.setattr(loop_module, "predict_logits",
                        lambda model, images, *a, **k: sizes.append(int(images.shape[-1])) or real_predict(
                            model, images, *a, **k))
    result = train(_config(tiny_data, tmp_path / "win.pt", arch="efficientnet_lite2_windows", pretrained=False,
                           image_size=64, windows=32, epochs=1, half="no", augment="strong", max_rotation=0.0))
    assert len(seen) == 24 and {size for size, _, _ in seen} == {32}
    assert any(label == 1.0 and got == 0.0 for _, label, got in seen)        # a window beside the finding
    assert all(got == 0.0 for _, label, got in seen if label == 0.0)
    assert sizes == [64]
    card = load_checkpoint(tmp_path / "win.pt", expected_sha256=result.sha256).card
    assert card.recipe["windows"] == 32 and card.image_size == 64


def test_windows_refuse_the_box_loss_and_the_window_model_starts_from_a_lite2(tmp_path: Path) -> None:
    import torch

    from mura_core.models.checkpoints import ModelCard, save_checkpoint
    from mura_core.models.registry import create_model, get_arch
    from mura_core.training.loop import initial_weights, load_initial

    with pytest.raises(ValueError, match="do not combine"):
        TrainConfig(data=["x"], arch="efficientnet_lite2_windows", out="x.pt", windows=384, box_loss_weight=0.1)
    assert cli_main(["--data", "x", "--arch", "efficientnet_lite2_windows", "--out", str(tmp_path / "x.pt"),
                     "--windows", "384", "--box-loss-weight", "0.1"]) == 2
    torch.manual_seed(0)
    lite2 = create_model("efficientnet_lite2")
    spec = get_arch("efficientnet_lite2")
    sha = save_checkpoint(tmp_path / "l2.pt", lite2, ModelCard(name="l2", arch="efficientnet_lite2", image_size=64,
                                                                  mean=spec.mean, std=spec.std))
    state, got_sha = initial_weights(str(tmp_path / "l2.pt"), "efficientnet_lite2_windows")
    windows = create_model("efficientnet_lite2_windows")
    load_initial(windows, state)
    assert got_sha == sha
    for key, value in lite2.state_dict().items():
        torch.testing.assert_close(windows.state_dict()[key], value)
