"""Training augmentation on cached uint8 batches: one affine warp per image, then intensity jitter.

'paper' is MURA's: a random lateral flip and a rotation of up to `max_rotation` degrees. 'strong' adds
a random resized crop (60-100% of the area, aspect 3:4-4:3, anywhere in the image) and brightness,
contrast and gamma jitter, which keeps a model from learning one source's exposure and framing. 'domain' is
'strong' plus the look of another scanner or archive (`DOMAIN_CHANCE` each): lost resolution (shrunk to 35-100%
of the side and enlarged back), detector noise, a histogram-equalised display, and wider gamma and contrast;
meant for models that must hold up on a source they never saw (leave-one-source-out).
Every draw comes from a generator seeded by (seed, epoch, image index), so a run is reproducible
whatever the batch composition or number of workers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["AUGMENT_MODES", "AugmentParams", "DOMAIN_CHANCE", "draw_params", "augment_batch", "box_masks",
           "sample_generator"]

AUGMENT_MODES: tuple[str, ...] = ("paper", "strong", "domain")

_AREA = (0.6, 1.0)
_LOG_ASPECT = (math.log(3 / 4), math.log(4 / 3))
_BRIGHTNESS = 0.1
_CONTRAST = 0.2
_LOG_GAMMA = (math.log(0.7), math.log(1.4))
_DOMAIN_LOG_GAMMA = (math.log(0.5), math.log(2.0))
_DOMAIN_CONTRAST = 0.35
_DOMAIN_SCALE = (0.35, 1.0)
_DOMAIN_NOISE = 0.04
DOMAIN_CHANCE = 0.3
"""How often 'domain' applies each of its look changes (resolution loss, noise, equalisation) to an image."""


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
    scale: float = 1.0
    """'domain': shrink factor of the resolution loss (1 = none)."""
    noise: float = 0.0
    """'domain': standard deviation of the added noise (0..1 grey scale)."""
    noise_seed: int = 0
    equalize: bool = False
    """'domain': histogram-equalise the image (before the exposure jitter)."""


def sample_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, epoch, image index); another `stream` gives independent draws for
    another purpose (stream 0 is the augmentation's)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 100_003 + index + stream * 7_919_000_003)
                                         % (2 ** 63))


def draw_params(generator: torch.Generator, mode: str, max_rotation: float, hflip: bool,
                crop: bool = True) -> AugmentParams:
    """Draw one image's augmentation (mode 'paper', 'strong' or 'domain'); `crop` False keeps the whole image
    (the draws stay the same), for inputs already cut from a larger image (`training.windows`)."""
    u = torch.rand(9, generator=generator).tolist()
    flip = hflip and u[0] < 0.5
    angle = (u[1] * 2.0 - 1.0) * max_rotation
    if mode == "paper":
        return AugmentParams(flip=flip, angle=angle)
    if mode not in AUGMENT_MODES:
        raise ValueError(f"augment must be one of {', '.join(AUGMENT_MODES)}, got {mode!r}")
    area = _AREA[0] + u[2] * (_AREA[1] - _AREA[0])
    aspect = math.exp(_LOG_ASPECT[0] + u[3] * (_LOG_ASPECT[1] - _LOG_ASPECT[0]))
    crop_w = min(1.0, math.sqrt(area * aspect))
    crop_h = min(1.0, math.sqrt(area / aspect))
    domain = mode == "domain"
    log_gamma, contrast = (_DOMAIN_LOG_GAMMA, _DOMAIN_CONTRAST) if domain else (_LOG_GAMMA, _CONTRAST)
    centre_x, centre_y = (u[4] * 2.0 - 1.0) * (1.0 - crop_w), (u[5] * 2.0 - 1.0) * (1.0 - crop_h)
    if not crop:
        crop_w = crop_h = 1.0
        centre_x = centre_y = 0.0
    params = AugmentParams(
        flip=flip, angle=angle, crop_w=crop_w, crop_h=crop_h, centre_x=centre_x, centre_y=centre_y,
        brightness=(u[6] * 2.0 - 1.0) * _BRIGHTNESS, contrast=1.0 + (u[7] * 2.0 - 1.0) * contrast,
        gamma=math.exp(log_gamma[0] + u[8] * (log_gamma[1] - log_gamma[0])))
    if not domain:
        return params
    v = torch.rand(6, generator=generator).tolist()  # drawn after 'strong''s nine: its draws stay the same
    return replace(
        params,
        scale=_DOMAIN_SCALE[0] + v[1] * (_DOMAIN_SCALE[1] - _DOMAIN_SCALE[0]) if v[0] < DOMAIN_CHANCE else 1.0,
        noise=v[3] * _DOMAIN_NOISE if v[2] < DOMAIN_CHANCE else 0.0, noise_seed=int(v[5] * 2 ** 31),
        equalize=v[4] < DOMAIN_CHANCE)


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


def _equalized(image: torch.Tensor) -> torch.Tensor:
    """(1, S, S) 0..1 -> its histogram-equalised copy (256 grey levels mapped through their cumulative share)."""
    levels = (image.clamp(0.0, 1.0) * 255.0).round().long()
    cdf = torch.bincount(levels.flatten(), minlength=256).cumsum(0).float()
    lowest = cdf[cdf > 0][0]
    table = ((cdf - lowest) / (cdf[-1] - lowest).clamp(min=1.0)).clamp(0.0, 1.0)
    return table[levels].to(image.dtype)


def _look(x: torch.Tensor, params: Sequence[AugmentParams]) -> torch.Tensor:
    """'domain': each image's resolution loss, equalisation and noise (images without any are untouched)."""
    out = []
    for image, p in zip(x, params):
        image = image.unsqueeze(0)
        if p.scale < 1.0:
            side = image.shape[-1]
            small = F.interpolate(image, size=max(8, round(side * p.scale)), mode="area")
            image = F.interpolate(small, size=side, mode="bilinear", align_corners=False)
        if p.equalize:
            image = _equalized(image[0]).unsqueeze(0)
        if p.noise > 0.0:
            noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(p.noise_seed))
            image = image + p.noise * noise.to(image.dtype)
        out.append(image[0].clamp(0.0, 1.0))
    return torch.stack(out)


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
                  masks: torch.Tensor | None = None, crop: bool = True
                  ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(B, S, S) uint8 -> (B, 1, S, S) float 0..1, each image warped and jittered by its own draw.

    With `masks` ((B, S, S) box masks), returns (images, masks) with the masks warped the same way,
    so finding boxes follow their image through crops, flips and rotations. `crop` False: no random resized crop.
    """
    x = images.float().div_(255.0).unsqueeze(1)
    params = [draw_params(sample_generator(seed, epoch, int(i)), mode, max_rotation, hflip, crop) for i in indices]
    if masks is not None:
        both = _warp(torch.cat([x, masks.float().unsqueeze(1)], dim=1), params)
        x, warped_masks = both[:, :1], both[:, 1:]
    else:
        x, warped_masks = _warp(x, params), None
    if mode == "domain":
        x = _look(x, params)
    if mode in ("strong", "domain"):
        x = _intensity(x, params)
    x = x.clamp_(0.0, 1.0)
    return x if warped_masks is None else (x, warped_masks)
