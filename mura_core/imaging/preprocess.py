"""Decoded pixels -> model tensors, as in the MURA paper: resize to 320x320, grey copied to 3 channels,
ImageNet mean/std. The size (and mean/std) is configurable per model through `PreprocessConfig`.

`normalise` is the one normalisation: serving (`to_model_input`) and the training batches
(`mura_core.training`, whose augmentation lives in `training.augment`) share it.

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
    "normalise",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


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


def normalise(grey: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(..., 1, S, S) grey 0..1 -> (..., 3, S, S): grey copied to 3 channels, normalised per channel.

    The one normalisation of the project: serving (`to_model_input`) and training batches both use it.
    """
    shape = (3, 1, 1) if grey.ndim == 3 else (1, 3, 1, 1)
    m = torch.tensor(mean, dtype=grey.dtype, device=grey.device).view(shape)
    s = torch.tensor(std, dtype=grey.dtype, device=grey.device).view(shape)
    return (grey.expand(*grey.shape[:-3], 3, *grey.shape[-2:]) - m) / s


def to_model_input(pixels: np.ndarray | torch.Tensor, config: PreprocessConfig = PreprocessConfig()
                   ) -> torch.Tensor:
    """A (3, S, S) float32 tensor: resized (squashed), grey copied to 3 channels, normalised."""
    resized = np.clip(resize_pixels(pixels, config.image_size), 0.0, 1.0)
    grey = torch.from_numpy(np.ascontiguousarray(resized, dtype=np.float32))
    return normalise(grey.unsqueeze(0), config.mean, config.std)


def batch_inputs(images: Sequence[np.ndarray | torch.Tensor], config: PreprocessConfig = PreprocessConfig()
                 ) -> torch.Tensor:
    """Stack many grey images into one (N, 3, S, S) batch."""
    if len(images) == 0:
        return torch.empty((0, 3, config.image_size, config.image_size), dtype=torch.float32)
    return torch.stack([to_model_input(image, config) for image in images])
