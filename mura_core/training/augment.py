"""Training augmentation on cached uint8 batches: one affine warp per image, then intensity jitter.

'paper' is MURA's: a random lateral flip and a rotation of up to `max_rotation` degrees. 'strong' adds
a random resized crop (60-100% of the area, aspect 3:4-4:3, anywhere in the image) and brightness,
contrast and gamma jitter, which keeps a model from learning one source's exposure and framing.
Every draw comes from a generator seeded by (seed, epoch, image index), so a run is reproducible
whatever the batch composition or number of workers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["AugmentParams", "draw_params", "augment_batch", "box_masks"]

_AREA = (0.6, 1.0)
_LOG_ASPECT = (math.log(3 / 4), math.log(4 / 3))
_BRIGHTNESS = 0.1
_CONTRAST = 0.2
_LOG_GAMMA = (math.log(0.7), math.log(1.4))


@dataclass(frozen=True)
class AugmentParams:
    """One image's draw: flip, angle (degrees), crop width/height and centre (fractions), intensity."""

    flip: bool = False
    angle: float = 0.0
    crop_w: float = 1.0
    crop_h: float = 1.0
    centre_x: float = 0.0
    centre_y: float = 0.0
    brightness: float = 0.0
    contrast: float = 1.0
    gamma: float = 1.0


def _sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, image index)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 100_003 + index) % (2 ** 63))


def draw_params(generator: torch.Generator, mode: str, max_rotation: float, hflip: bool) -> AugmentParams:
    """Draw one image's augmentation (mode 'paper' or 'strong')."""
    u = torch.rand(9, generator=generator).tolist()
    flip = hflip and u[0] < 0.5
    angle = (u[1] * 2.0 - 1.0) * max_rotation
    if mode == "paper":
        return AugmentParams(flip=flip, angle=angle)
    if mode != "strong":
        raise ValueError(f"augment must be 'paper' or 'strong', got {mode!r}")
    area = _AREA[0] + u[2] * (_AREA[1] - _AREA[0])
    aspect = math.exp(_LOG_ASPECT[0] + u[3] * (_LOG_ASPECT[1] - _LOG_ASPECT[0]))
    crop_w = min(1.0, math.sqrt(area * aspect))
    crop_h = min(1.0, math.sqrt(area / aspect))
    return AugmentParams(
        flip=flip, angle=angle, crop_w=crop_w, crop_h=crop_h,
        centre_x=(u[4] * 2.0 - 1.0) * (1.0 - crop_w), centre_y=(u[5] * 2.0 - 1.0) * (1.0 - crop_h),
        brightness=(u[6] * 2.0 - 1.0) * _BRIGHTNESS, contrast=1.0 + (u[7] * 2.0 - 1.0) * _CONTRAST,
        gamma=math.exp(_LOG_GAMMA[0] + u[8] * (_LOG_GAMMA[1] - _LOG_GAMMA[0])))


def _theta(p: AugmentParams) -> list[list[float]]:
    """The affine map from output to input coordinates (both -1..1) for one draw."""
    a = math.radians(p.angle)
    sign = -1.0 if p.flip else 1.0
    return [[p.crop_w * math.cos(a) * sign, -p.crop_h * math.sin(a), p.centre_x],
            [p.crop_w * math.sin(a) * sign, p.crop_h * math.cos(a), p.centre_y]]


def _intensity(x: torch.Tensor, params: Sequence[AugmentParams]) -> torch.Tensor:
    """Gamma, contrast around each image's mean, then brightness; clipped to 0..1."""
    gamma = torch.tensor([p.gamma for p in params]).view(-1, 1, 1, 1)
    contrast = torch.tensor([p.contrast for p in params]).view(-1, 1, 1, 1)
    brightness = torch.tensor([p.brightness for p in params]).view(-1, 1, 1, 1)
    x = x.clamp(0.0, 1.0).pow(gamma)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp(0.0, 1.0)


def _warp(x: torch.Tensor, params: Sequence[AugmentParams]) -> torch.Tensor:
    theta = torch.tensor([_theta(p) for p in params], dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def box_masks(boxes: Sequence[Sequence[Sequence[float]]], size: int) -> torch.Tensor:
    """(B, S, S) float masks: 1 inside any of an image's finding boxes (0..1 coordinates), else 0."""
    masks = torch.zeros(len(boxes), size, size)
    for i, image_boxes in enumerate(boxes):
        for x0, y0, x1, y1 in image_boxes:
            c0, r0 = int(max(0.0, x0) * size), int(max(0.0, y0) * size)
            c1, r1 = max(c0 + 1, int(round(min(1.0, x1) * size))), max(r0 + 1, int(round(min(1.0, y1) * size)))
            masks[i, r0:r1, c0:c1] = 1.0
    return masks


def augment_batch(images: torch.Tensor, indices: Sequence[int], seed: int, epoch: int,
                  max_rotation: float = 30.0, hflip: bool = True, mode: str = "paper",
                  masks: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S) uint8 -> (B, 1, S, S) float 0..1, each image warped and jittered by its own draw.

    With `masks` ((B, S, S) box masks), returns (images, masks) with the masks warped the same way,
    so finding boxes follow their image through crops, flips and rotations.
    """
    x = images.float().div_(255.0).unsqueeze(1)
    params = [draw_params(_sample_generator(seed, epoch, int(i)), mode, max_rotation, hflip) for i in indices]
    if masks is not None:
        both = _warp(torch.cat([x, masks.float().unsqueeze(1)], dim=1), params)
        x, warped_masks = both[:, :1], both[:, 1:]
    else:
        x, warped_masks = _warp(x, params), None
    if mode == "strong":
        x = _intensity(x, params)
    x = x.clamp_(0.0, 1.0)
    return x if warped_masks is None else (x, warped_masks)
