"""Tests for mura_core.imaging.preprocess: model input tensors and the seeded training augmentation."""
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
    train_augment,
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


def test_augment_is_reproducible_with_seed():
    x = torch.rand(3, 32, 32)
    a = train_augment(x, torch.Generator().manual_seed(7))
    b = train_augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.shape == x.shape
    c = train_augment(x, torch.Generator().manual_seed(8))
    assert not torch.equal(a, c)


def test_augment_zero_rotation_is_flip_or_identity():
    x = torch.rand(1, 16, 16)
    seen = set()
    for seed in range(20):
        y = train_augment(x, np.random.default_rng(seed), max_degrees=0.0)
        if torch.allclose(y, x):
            seen.add("same")
        elif torch.allclose(y, x.flip(-1)):
            seen.add("flipped")
        else:
            pytest.fail("with no rotation the output must be the image or its mirror")
    assert seen == {"same", "flipped"}


def test_augment_numpy_in_numpy_out_and_black_corners():
    pixels = np.ones((32, 32), dtype=np.float32)
    outputs = [train_augment(pixels, np.random.default_rng(seed), max_degrees=30.0) for seed in range(10)]
    assert all(isinstance(o, np.ndarray) and o.shape == (32, 32) and o.dtype == np.float32 for o in outputs)
    assert all(o.min() >= -1e-6 and o.max() <= 1 + 1e-6 for o in outputs)
    assert any(min(o[0, 0], o[0, -1], o[-1, 0], o[-1, -1]) < 0.2 for o in outputs)  # black corners


def test_augment_normalised_tensor_fills_with_normalised_black():
    config = PreprocessConfig(image_size=32)
    x = to_model_input(np.ones((32, 32), dtype=np.float32), config)
    # find a seed whose rotation is large enough to uncover the corner
    for seed in range(50):
        y = train_augment(x, torch.Generator().manual_seed(seed), config=config)
        if y[0, 0, 0] < x[0, 0, 0] - 0.5:
            black = (0.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
            assert y[0, 0, 0].item() == pytest.approx(black, abs=0.05)
            return
    pytest.fail("no seed rotated the corner out")
