"""Knowledge distillation (Hinton et al., 2015): a student also learns the teacher's soft probabilities.

Used to give the DenseNet the mission names a start it cannot get otherwise: no ImageNet DenseNet
weights are reachable offline, and a randomly initialised DenseNet-169 trained on a few thousand
labelled radiographs stays near chance. The teacher (a shipped checkpoint, sha256-checked) scores the
same augmented batch the student sees, in float32 and without gradients ("consistent" teaching in the
sense of Beyer et al., 2022), and the student's loss becomes

    (1 - alpha) * weighted BCE(student, labels) + alpha * T^2 * weighted BCE(student / T, sigmoid(teacher / T)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mura_core.imaging.preprocess import normalise
from mura_core.models.checkpoints import CheckpointError
from mura_core.training.weighting import weighted_bce

__all__ = ["Teacher", "load_teacher", "teacher_logits", "distillation_loss"]


@dataclass
class Teacher:
    """A frozen model whose logits the student learns, with the input size and normalisation it expects."""

    model: nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sha256: str


def load_teacher(name_or_path: str, device: torch.device) -> Teacher:
    """The teacher checkpoint (an indexed name, sha256-checked, or a file), frozen, in eval mode."""
    from mura_core.models.weights import load_weights

    try:
        loaded = load_weights(name_or_path, device=device)
    except (OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"--teacher {name_or_path}: {exc}") from exc
    model = loaded.model.float().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    card = loaded.card
    return Teacher(model, int(card.image_size), tuple(card.mean), tuple(card.std), loaded.sha256)


@torch.no_grad()
def teacher_logits(teacher: Teacher, grey: torch.Tensor) -> torch.Tensor:
    """(B,) float32 teacher logits for a (B, 1, S, S) batch of 0-1 grey images, resized to the teacher's
    input size when the student trains at another; always float32 (a teacher need not survive bf16)."""
    if grey.shape[-1] != teacher.image_size or grey.shape[-2] != teacher.image_size:
        grey = F.interpolate(grey, size=(teacher.image_size, teacher.image_size), mode="bilinear",
                             align_corners=False, antialias=True)
    x = normalise(grey.float(), teacher.mean, teacher.std)
    with torch.autocast(device_type=grey.device.type, enabled=False):
        return teacher.model(x).float()[:, 0]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T^2 x weighted BCE between the student's and the teacher's probabilities softened by T; smallest
    where the student's logits equal the teacher's. T^2 keeps the gradient's size independent of T."""
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    soft_targets = torch.sigmoid(teacher.float() / temperature)
    return temperature ** 2 * weighted_bce(student.float() / temperature, soft_targets, weights)
