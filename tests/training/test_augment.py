"""Seeded per-image augmentation."""
from __future__ import annotations

import pytest
import torch

from mura_core.training.augment import DOMAIN_CHANCE, augment_batch, draw_params


@pytest.mark.parametrize("mode", ["paper", "strong", "domain"])
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


def test_domain_keeps_the_strong_draw_and_adds_another_sources_look() -> None:
    pairs = [(draw_params(torch.Generator().manual_seed(i), "strong", 15.0, True),
              draw_params(torch.Generator().manual_seed(i), "domain", 15.0, True)) for i in range(400)]
    assert all((s.flip, s.angle, s.crop_w, s.centre_x, s.brightness) == (d.flip, d.angle, d.crop_w, d.centre_x,
                                                                         d.brightness) for s, d in pairs)
    domain = [d for _, d in pairs]
    for share in (sum(d.scale < 1.0 for d in domain), sum(d.noise > 0 for d in domain), sum(d.equalize for d in domain)):
        assert abs(share / len(domain) - DOMAIN_CHANCE) < 0.08
    assert all(0.35 <= d.scale <= 1.0 for d in domain)
    assert min(d.gamma for d in domain) < 0.6 and max(d.gamma for d in domain) > 1.7   # wider than 'strong'
    assert all(s.scale == 1.0 and s.noise == 0.0 and not s.equalize for s, _ in pairs)


def test_domain_look_changes_resolution_noise_and_histogram_but_keeps_box_masks_aligned() -> None:
    from mura_core.training.augment import AugmentParams, _look

    ramp = torch.linspace(0.2, 0.4, 32).repeat(32, 1)[None, None]                  # a narrow grey range
    equalised = _look(ramp, [AugmentParams(equalize=True)])
    assert equalised.min() < 0.05 and equalised.max() > 0.95                        # stretched to the full range
    blurred = _look(torch.eye(32)[None, None], [AugmentParams(scale=0.5)])
    assert blurred.max() < 0.9                                                       # a one-pixel line is softened
    noisy = _look(ramp, [AugmentParams(noise=0.04, noise_seed=3)])
    assert 0.01 < (noisy - ramp).std() < 0.06
    torch.testing.assert_close(_look(ramp, [AugmentParams()]), ramp)               # nothing drawn: untouched
    images = (torch.rand(4, 24, 24, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    masks = torch.zeros(4, 24, 24)
    masks[:, 8:16, 8:16] = 1.0
    _, strong_masks = augment_batch(images, [0, 1, 2, 3], seed=2, epoch=0, mode="strong", masks=masks)
    _, domain_masks = augment_batch(images, [0, 1, 2, 3], seed=2, epoch=0, mode="domain", masks=masks)
    torch.testing.assert_close(strong_masks, domain_masks)                           # boxes follow the same warp


@pytest.mark.parametrize("mode", ["strong", "domain"])
def test_without_the_crop_a_draw_keeps_its_flip_and_exposure_but_the_whole_image(mode: str) -> None:
    for seed in range(50):
        cropped = draw_params(torch.Generator().manual_seed(seed), mode, 10.0, True)
        whole = draw_params(torch.Generator().manual_seed(seed), mode, 10.0, True, crop=False)
        assert (whole.crop_w, whole.crop_h, whole.centre_x, whole.centre_y) == (1.0, 1.0, 0.0, 0.0)
        assert (whole.flip, whole.angle, whole.gamma, whole.brightness, whole.noise) == (
            cropped.flip, cropped.angle, cropped.gamma, cropped.brightness, cropped.noise)
    images = (torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(4)) * 255).to(torch.uint8)
    out = augment_batch(images, [0], seed=3, epoch=0, max_rotation=0.0, hflip=False, mode="strong", crop=False)
    order = images[0].flatten().argsort()               # no warp: the output is a monotone function of each pixel
    assert (out[0, 0].flatten()[order].diff() >= -1e-6).all()
