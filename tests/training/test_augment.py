"""Seeded per-image augmentation."""
from __future__ import annotations

import pytest
import torch

from mura_core.training.augment import augment_batch, draw_params


@pytest.mark.parametrize("mode", ["paper", "strong"])
def test_augmentation_is_seeded_per_image_and_epoch(mode: str) -> None:
    images = (torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    a = augment_batch(images, [0, 1, 2], seed=1, epoch=0, mode=mode)
    b = augment_batch(images, [0, 1, 2], seed=1, epoch=0, mode=mode)
    c = augment_batch(images, [0, 1, 2], seed=1, epoch=1, mode=mode)
    assert a.shape == (3, 1, 24, 24) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(augment_batch(images[1:2], [1], seed=1, epoch=0, mode=mode), a[1:2])


def test_identity_draw_leaves_the_image_alone_and_flip_mirrors_it() -> None:
    images = (torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    same = augment_batch(images, [0], seed=0, epoch=0, max_rotation=0.0, hflip=False)
    torch.testing.assert_close(same[0, 0], images[0].float() / 255, atol=1e-5, rtol=0)


def test_strong_draws_crop_inside_the_image_and_jitter_intensity() -> None:
    params = [draw_params(torch.Generator().manual_seed(i), "strong", 15.0, True) for i in range(200)]
    assert all(0.5 < p.crop_w <= 1.0 and 0.5 < p.crop_h <= 1.0 for p in params)
    assert all(abs(p.centre_x) <= 1.0 - p.crop_w + 1e-9 for p in params)
    assert min(p.gamma for p in params) < 0.8 and max(p.gamma for p in params) > 1.25
    assert any(p.flip for p in params) and not all(p.flip for p in params)
    with pytest.raises(ValueError):
        draw_params(torch.Generator(), "wild", 0.0, False)
