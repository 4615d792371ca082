"""Distillation: the soft-target loss, the frozen teacher's logits, and a student that follows its teacher."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mura_core.commands.train import cli_main
from mura_core.models.checkpoints import load_checkpoint
from mura_core.models.registry import get_arch
from mura_core.training import load_split, train
from mura_core.training.distill import distillation_loss, load_teacher, teacher_logits
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
        got = teacher_logits(teacher, grey)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-6)


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
