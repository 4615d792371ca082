"""Tests for mura_core.imaging.preprocess: model input tensors and the one normalisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_core.imaging.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    batch_inputs,
    to_model_input,
)


def test_default_config_is_the_paper():
    config = PreprocessConfig()
    assert config.image_size == 320 and config.mean == IMAGENET_MEAN and config.std == IMAGENET_STD


def test_to_model_input_shape_and_normalisation():
    pixels = np.full((50, 70), 0.5, dtype=np.float32)
    x = to_model_input(pixels, PreprocessConfig(image_size=32))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    for channel in range(3):
        expected = (0.5 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(x[channel], torch.full((32, 32), expected), atol=1e-5)


def test_squash_keeps_left_right_layout():
    pixels = np.zeros((40, 100), dtype=np.float32)
    pixels[:, 50:] = 1.0
    x = to_model_input(pixels, PreprocessConfig(image_size=16, mean=(0, 0, 0), std=(1, 1, 1)))
    assert x[0, :, :7].max() < 0.05 and x[0, :, 9:].min() > 0.95


def test_rejects_non_grey_input():
    with pytest.raises(ValueError, match="2-D"):
        to_model_input(np.zeros((4, 4, 3), dtype=np.float32))


def test_batch_inputs():
    batch = batch_inputs([np.random.rand(20, 30), np.random.rand(40, 10)], PreprocessConfig(image_size=24))
    assert batch.shape == (2, 3, 24, 24)
    assert batch_inputs([], PreprocessConfig(image_size=8)).shape == (0, 3, 8, 8)


def test_training_batches_and_serving_share_one_normalisation():
    """A cached training image (uint8, no augmentation) normalises to what serving feeds the model."""
    from mura_core.imaging.preprocess import normalise

    config = PreprocessConfig(image_size=16)
    pixels = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    served = to_model_input(pixels, config)
    cached = torch.from_numpy(np.round(pixels * 255).astype(np.uint8)).float().div(255).view(1, 1, 16, 16)
    torch.testing.assert_close(normalise(cached, config.mean, config.std)[0], served, atol=0.01, rtol=0)
