"""Knowledge distillation (Hinton et al., 2015): a student also learns the teacher's soft probabilities.

Used to give the DenseNet the mission names a start it cannot get otherwise: no ImageNet DenseNet
weights are reachable offline, and a randomly initialised DenseNet-169 trained on a few thousand
labelled radiographs stays near chance. The teacher (a shipped checkpoint, sha256-checked) scores the
same augmented batch the student sees, in float32 and without gradients ("consistent" teaching in the
sense of Beyer et al., 2022), and the student's loss becomes

    (1 - alpha) * weighted BCE(student, labels) + alpha * T^2 * weighted BCE(student / T, sigmoid(teacher / T)).

A probability is one number per image. The feature hint (FitNets, Romero et al., 2015) hands over far more:
the student's last feature map, through a learned 1x1 convolution, regresses the teacher's whole map
(where on the image the teacher sees what), added to the loss with its own weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mura_core.imaging.preprocess import normalise
from mura_core.models.checkpoints import CheckpointError
from mura_core.models.registry import get_arch
from mura_core.training.box_loss import FeatureCapture
from mura_core.training.weighting import weighted_bce

__all__ = ["Teacher", "TeacherOutput", "FeatureHint", "load_teacher", "teach", "distillation_loss"]


@dataclass
class Teacher:
    """A frozen model whose logits the student learns, with the input size and normalisation it expects."""

    model: nn.Module
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sha256: str
    feature_layer: nn.Module | None = None
    """The layer whose map the head pools (pooled + Linear heads only): the map the feature hint copies."""
    feature_channels: int = 0
    """Channels of that map (0 without a pooled + Linear head)."""


@dataclass
class TeacherOutput:
    """The teacher's float32 logits (B,) and, when asked for, its last feature map (B, C, h, w)."""

    logits: torch.Tensor
    features: torch.Tensor | None = None


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
    found = get_arch(card.arch).classic_cam(model)
    layer, channels = (None, 0) if found is None else (found[0], int(found[1].numel()))
    return Teacher(model, int(card.image_size), tuple(card.mean), tuple(card.std), loaded.sha256, layer, channels)


@torch.no_grad()
def teach(teacher: Teacher, grey: torch.Tensor, with_features: bool = False) -> TeacherOutput:
    """The teacher's view of a (B, 1, S, S) batch of 0-1 grey images, resized to the teacher's input size
    when the student trains at another; always float32 (a teacher need not survive bf16). `with_features`
    also keeps its last feature map (needs a pooled + Linear head)."""
    if with_features and teacher.feature_layer is None:
        raise ValueError("this teacher has no pooled + Linear head, so no feature map to copy")
    if grey.shape[-1] != teacher.image_size or grey.shape[-2] != teacher.image_size:
        grey = F.interpolate(grey, size=(teacher.image_size, teacher.image_size), mode="bilinear",
                             align_corners=False, antialias=True)
    x = normalise(grey.float(), teacher.mean, teacher.std)
    with torch.autocast(device_type=grey.device.type, enabled=False):
        if not with_features:
            return TeacherOutput(teacher.model(x).float()[:, 0])
        capture = FeatureCapture()
        with capture.on(teacher.feature_layer):
            logits = teacher.model(x).float()[:, 0]
    return TeacherOutput(logits, capture.features.float())


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """T^2 x weighted BCE between the student's and the teacher's probabilities softened by T; smallest
    where the student's logits equal the teacher's. T^2 keeps the gradient's size independent of T."""
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    soft_targets = torch.sigmoid(teacher.float() / temperature)
    return temperature ** 2 * weighted_bce(student.float() / temperature, soft_targets, weights)


class FeatureHint(nn.Module):
    """FitNets' regressor: a 1x1 convolution maps the student's last feature map onto the teacher's.

    The loss is the mean squared error relative to the teacher map's mean square (1.0 for a student that
    outputs zeros, whatever the teacher's scale), that mean square floored at `MIN_TEACHER_POWER` so that a
    near-blank teacher map (a random-init network in eval mode gives about 1e-17) cannot blow the loss up.
    A student map on another grid is average-pooled to the teacher's. The regressor trains with the student
    and is dropped afterwards: it never ships. Under torchrun each rank keeps its own regressor (outside the
    DistributedDataParallel module); the student's gradients are averaged across ranks as usual.
    """

    MIN_TEACHER_POWER = 0.01

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)

    def forward(self, student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:  # noqa: D102
        projected = self.project(student_map.float())
        if projected.shape[-2:] != teacher_map.shape[-2:]:
            projected = F.adaptive_avg_pool2d(projected, teacher_map.shape[-2:])
        target = teacher_map.float()
        return ((projected - target) ** 2).mean() / target.pow(2).mean().clamp_min(self.MIN_TEACHER_POWER)
