"""Decoded pixels -> model tensors, as in the MURA paper: resize to 320x320, grey copied to 3 channels,
ImageNet mean/std. The size (and mean/std) is configurable per model through `PreprocessConfig`.

Training augmentation (`train_augment`) is the paper's: random lateral (horizontal) flip and a random
rotation of up to 30 degrees, seeded by a torch.Generator or a numpy Generator so runs are reproducible.
Apply it to the 0..1 grey image (before normalisation), where the fill value 0 is black; for an already
normalised tensor pass `config=` so the corners are filled with the normalised black.

Usage:
    >>> x = to_model_input(decoded.pixels, PreprocessConfig(image_size=320))  # doctest: +SKIP
    >>> x.shape                                                              # doctest: +SKIP
    torch.Size([3, 320, 320])
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PreprocessConfig",
    "resize_pixels",
    "to_model_input",
    "batch_inputs",
    "train_augment",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
MAX_ROTATION_DEGREES = 30.0


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its input: square side in pixels and per-channel mean/std."""

    image_size: int = 320
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")


def _as_grey_array(pixels: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 2-D float32 numpy array from a 2-D array or a (1, H, W) tensor."""
    if isinstance(pixels, torch.Tensor):
        pixels = pixels.detach().cpu().numpy()
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {array.shape}")
    return array


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """Squash a 2-D image to size x size (area filter when shrinking, bilinear when enlarging)."""
    import cv2

    array = _as_grey_array(pixels)
    if array.shape == (size, size):
        return array.copy()
    shrinking = array.shape[0] * array.shape[1] > size * size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, (size, size), interpolation=interpolation)


def to_model_input(pixels: np.ndarray | torch.Tensor, config: PreprocessConfig = PreprocessConfig()
                   ) -> torch.Tensor:
    """A (3, S, S) float32 tensor: resized (squashed), grey copied to 3 channels, normalised."""
    resized = np.clip(resize_pixels(pixels, config.image_size), 0.0, 1.0)
    grey = torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32))
    mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
    return (grey.unsqueeze(0).expand(3, -1, -1) - mean) / std


def batch_inputs(images: Sequence[np.ndarray | torch.Tensor], config: PreprocessConfig = PreprocessConfig()
                 ) -> torch.Tensor:
    """Stack many grey images into one (N, 3, S, S) batch."""
    if len(images) == 0:
        return torch.empty((0, 3, config.image_size, config.image_size), dtype=torch.float32)
    return torch.stack([to_model_input(image, config) for image in images])


def _draw(generator: torch.Generator | np.random.Generator | None) -> tuple[bool, float]:
    """(flip?, angle in degrees) from the given random source."""
    if isinstance(generator, np.random.Generator):
        return bool(generator.random() < 0.5), float(generator.uniform(-1.0, 1.0))
    flip = bool(torch.rand((), generator=generator).item() < 0.5)
    return flip, float(torch.rand((), generator=generator).item() * 2.0 - 1.0)


def train_augment(image: torch.Tensor | np.ndarray, generator: torch.Generator | np.random.Generator | None = None,
                  *, max_degrees: float = MAX_ROTATION_DEGREES, config: PreprocessConfig | None = None
                  ) -> torch.Tensor | np.ndarray:
    """Random lateral flip (p = 0.5) and rotation in [-max_degrees, max_degrees], bilinear.

    Accepts a (C, H, W) or (H, W) tensor, or a 2-D numpy array (returned as numpy). Corners uncovered
    by the rotation are black: 0 for 0..1 pixels, or the normalised black of `config` when given.
    """
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    as_numpy = isinstance(image, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)) if as_numpy else image
    squeeze = tensor.ndim == 2
    if squeeze:
        tensor = tensor.unsqueeze(0)
    flip, unit = _draw(generator)
    if flip:
        tensor = F.horizontal_flip(tensor)
    fill: list[float] | float = 0.0
    if config is not None:
        fill = [(0.0 - m) / s for m, s in zip(config.mean, config.std)][: tensor.shape[0]]
    tensor = F.rotate(tensor, unit * max_degrees, interpolation=InterpolationMode.BILINEAR, fill=fill)
    if squeeze:
        tensor = tensor[0]
    return tensor.numpy() if as_numpy else tensor
