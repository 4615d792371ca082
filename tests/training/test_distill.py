"""Distillation: the soft-target loss, the frozen teacher's logits and feature map, the feature hint, and a
student that follows its teacher."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mura_core.commands.train import cli_main
from mura_core.models.checkpoints import load_checkpoint
from mura_core.models.registry import get_arch
from mura_core.training import load_split, train
from mura_core.training.distill import FeatureHint, distillation_loss, load_teacher, teach
from mura_core.training.evaluation import predict_probs
from tests.training.test_loop import _config


def test_soft_loss_is_smallest_where_the_student_matches_the_teacher() -> None:
    teacher = torch.tensor([-2.0, 0.5, 3.0])
    weights = torch.tensor([1.0, 0.5, 2.0])
    student = teacher.clone().requires_grad_(True)
    at_teacher = distillation_loss(student, teacher, weights, temperature=2.0)
    at_teacher.backward()
    assert torch.allclose(student.grad, torch.zeros(3), atol=1e-6)
    for shift in (-1.0, 1.0):
        assert distillation_loss(teacher + shift, teacher, weights, 2.0) > at_teacher
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(teacher, teacher, weights, 0.0)


@pytest.fixture(scope="module")
def teacher_file(tiny_data: Path, tmp_path_factory) -> tuple[Path, str]:
    """A barely trained teacher (lr 1e-6): its probabilities stay near its initial, label-blind ones."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    result = train(_config(tiny_data, out, epochs=1, lr=1e-6, half="no", seed=3))
    return out, result.sha256


def test_teacher_logits_are_float32_at_the_teachers_size(teacher_file) -> None:
    path, sha = teacher_file
    teacher = load_teacher(str(path), torch.device("cpu"))
    assert teacher.sha256 == sha and teacher.image_size == 32
    assert not any(p.requires_grad for p in teacher.model.parameters())
    grey = torch.rand(3, 1, 48, 48)
    resized = torch.nn.functional.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False,
                                              antialias=True)
    spec = get_arch("shallow_cnn")
    from mura_core.imaging.preprocess import normalise

    expected = teacher.model(normalise(resized, spec.mean, spec.std))[:, 0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = teach(teacher, grey).logits
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)
    assert teacher.feature_layer is None and teacher.feature_channels == 0
    with pytest.raises(ValueError, match="pooled"):
        teach(teacher, grey, with_features=True)


def test_a_distilled_student_follows_its_teacher_not_only_the_labels(tiny_data: Path, teacher_file,
                                                                     tmp_path: Path) -> None:
    path, sha = teacher_file
    kw = {"epochs": 4, "half": "no", "image_size": 24}
    plain = train(_config(tiny_data, tmp_path / "plain.pt", **kw))
    taught = train(_config(tiny_data, tmp_path / "taught.pt", teacher=str(path), distill_weight=1.0,
                           distill_temperature=1.0, **kw))
    card = load_checkpoint(tmp_path / "taught.pt").card
    assert card.recipe["teacher_sha256"] == sha and card.recipe["distill_weight"] == 1.0
    assert "teacher" not in load_checkpoint(tmp_path / "plain.pt").card.recipe
    valid = load_split(tiny_data, "valid", 32)
    spec = get_arch("shallow_cnn")
    teacher_p = predict_probs(load_teacher(str(path), torch.device("cpu")).model, valid.images, spec.mean, spec.std)
    valid24 = load_split(tiny_data, "valid", 24)
    gap = {name: float(np.abs(predict_probs(load_checkpoint(tmp_path / f"{name}.pt").model, valid24.images,
                                            spec.mean, spec.std) - teacher_p).mean())
           for name in ("plain", "taught")}
    assert gap["taught"] < 0.5 * gap["plain"], gap
    assert plain.sha256 != taught.sha256


def test_cli_refuses_a_missing_teacher_and_a_weight_outside_0_1(tiny_data: Path, teacher_file, tmp_path: Path,
                                                                capsys) -> None:
    base = ["--data", str(tiny_data), "--arch", "shallow_cnn", "--image-size", "32", "--epochs", "1",
            "--no-progress", "--out", str(tmp_path / "s.pt")]
    assert cli_main([*base, "--teacher", str(tmp_path / "nowhere.pt")]) == 2
    assert "nowhere.pt" in capsys.readouterr().err
    assert cli_main([*base, "--teacher", str(teacher_file[0]), "--distill-weight", "1.5"]) == 2
    assert "--distill-weight" in capsys.readouterr().err


def test_the_feature_hint_is_zero_on_the_teachers_map_and_one_for_a_blank_student() -> None:
    teacher_map = torch.rand(2, 3, 4, 4) * 5
    finer = teacher_map.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # the student's map on an 8x8 grid
    hint = FeatureHint(3, 3)
    with torch.no_grad():
        hint.project.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        hint.project.bias.zero_()
        assert float(hint(teacher_map, teacher_map)) < 1e-10
        assert float(hint(finer, teacher_map)) < 1e-10
        hint.project.weight.zero_()
        assert float(hint(teacher_map, teacher_map)) == pytest.approx(1.0)
        assert float(hint(teacher_map, 100 * teacher_map)) == pytest.approx(1.0)  # relative: the scale drops out
        blank = torch.full((1, 3, 4, 4), 1e-9)  # a near-blank teacher map: the floor keeps the loss small
        assert float(hint(torch.zeros(1, 3, 4, 4), blank)) < 1e-12


def test_a_trained_hint_regresses_the_teachers_map() -> None:
    torch.manual_seed(0)
    student_map = torch.rand(8, 4, 3, 3)
    teacher_map = torch.einsum("oc,bchw->bohw", torch.rand(6, 4), student_map)
    hint = FeatureHint(4, 6)
    optimiser = torch.optim.Adam(hint.parameters(), lr=0.05)
    first = float(hint(student_map, teacher_map).detach())
    for _ in range(200):
        optimiser.zero_grad()
        hint(student_map, teacher_map).backward()
        optimiser.step()
    assert float(hint(student_map, teacher_map).detach()) < 0.01 * first


@pytest.fixture(scope="module")
def lite_teacher(tiny_data: Path, tmp_path_factory) -> Path:
    """A barely trained random-init EfficientNet-Lite0 (a pooled + Linear head, so a feature map to copy)."""
    out = tmp_path_factory.mktemp("lite_teacher") / "lite.pt"
    train(_config(tiny_data, out, arch="efficientnet_lite0", pretrained=False, image_size=64, epochs=1, lr=1e-6,
                  half="no", seed=3))
    return out


def test_the_teacher_hands_over_its_pooled_map(lite_teacher: Path) -> None:
    teacher = load_teacher(str(lite_teacher), torch.device("cpu"))
    assert teacher.feature_channels == 1280
    out = teach(teacher, torch.rand(3, 1, 96, 96), with_features=True)  # resized to the teacher's 64 px
    assert out.logits.shape == (3,) and out.features.shape == (3, 1280, 2, 2)
    pooled = out.features.mean(dim=(2, 3))
    head = teacher.model._fc
    assert torch.allclose(head(pooled)[:, 0], out.logits, atol=1e-5)  # the very map the head pools


def test_a_student_trained_with_the_hint_ships_without_its_regressor(tiny_data: Path, lite_teacher: Path,
                                                                      tmp_path: Path) -> None:
    kw = {"arch": "efficientnet_lite0", "pretrained": False, "image_size": 64, "epochs": 2, "half": "no",
          "teacher": str(lite_teacher), "seed": 5}
    logits_only = train(_config(tiny_data, tmp_path / "logits.pt", **kw))
    hinted = train(_config(tiny_data, tmp_path / "hinted.pt", feature_distill_weight=2.0, **kw))
    card = load_checkpoint(tmp_path / "hinted.pt").card
    assert card.recipe["feature_distill_weight"] == 2.0
    saved = torch.load(tmp_path / "hinted.pt", weights_only=True)["state_dict"]
    plain = load_checkpoint(tmp_path / "logits.pt").model.state_dict()
    assert set(saved) == set(plain)  # the student's weights only: no regressor in the file
    assert any(not torch.allclose(saved[k].float(), plain[k].float()) for k in plain
               if plain[k].is_floating_point())  # the hint changed what the student learnt
    assert hinted.sha256 != logits_only.sha256


def test_the_hint_needs_a_teacher_and_pooled_heads(tiny_data: Path, teacher_file, lite_teacher: Path,
                                                   tmp_path: Path, capsys) -> None:
    base = ["--data", str(tiny_data), "--image-size", "32", "--epochs", "1", "--no-progress",
            "--feature-distill-weight", "1", "--out", str(tmp_path / "s.pt")]
    assert cli_main([*base, "--arch", "efficientnet_lite0", "--no-pretrained"]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert cli_main([*base, "--arch", "shallow_cnn", "--teacher", str(lite_teacher)]) == 2
    assert "pooled + Linear head" in capsys.readouterr().err
    assert cli_main([*base, "--arch", "efficientnet_lite0", "--no-pretrained", "--teacher", str(teacher_file[0])]) == 2
    assert "pooled + Linear head" in capsys.readouterr().err
