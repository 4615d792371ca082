"""Tests for mura_core.evaluation.heatmap_bench: per-method pointing game, energy share, runtime, baselines."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mura_core.data.studies import View
from mura_core.evaluation.heatmap_bench import measure_methods
from mura_core.imaging.preprocess import PreprocessConfig
from mura_core.models.registry import ArchSpec
from torch import nn


class _BrightSpot(nn.Module):
    """Logit = mean of a 1x1 conv of the input: every map peaks on the brightest region."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 4, 1), nn.ReLU())
        self.head = nn.Linear(4, 1)
        with torch.no_grad():
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    m.weight.fill_(0.1)
                    m.bias.zero_()
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


SPEC = ArchSpec(name="spot", builder=lambda **kw: _BrightSpot(), default_image_size=32, mean=(0.5,) * 3,
                std=(0.25,) * 3, description="test", cam_target_layer=lambda m: m.features[-1],
                classic_cam=lambda m: (m.features[-1], m.head.weight[0]))


def _view(corner: tuple[int, int]) -> View:
    img = np.zeros((128, 128), dtype=np.uint8)
    r, c = corner
    img[r:r + 16, c:c + 16] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    box = (c / 128, r / 128, (c + 16) / 128, (r + 16) / 128)
    return View(name=f"v{r}_{c}.png", data=buf.getvalue(), boxes=(box,))


def test_measure_methods_finds_the_bright_box_and_reports_baselines():
    torch.manual_seed(0)
    views = [_view((8, 8)), _view((100, 10)), _view((12, 96))]
    rows = measure_methods(_BrightSpot().eval(), SPEC, PreprocessConfig(image_size=32, mean=(0.5,) * 3,
                                                                          std=(0.25,) * 3),
                           views, ["cam", "layercam-fused"])
    for method in ("cam", "layercam-fused"):
        assert rows[method]["pointing_game"] == 1.0, method
        assert rows[method]["energy_share"] > rows["baseline: random point / uniform map"]["energy_share"]
        assert rows[method]["seconds_per_image"] > 0 and rows[method]["images"] == 3
    assert rows["baseline: centre point"]["pointing_game"] == 0.0  # no box near the centre
    assert rows["baseline: random point / uniform map"]["energy_share"] == pytest.approx(256 / 16384, rel=0.05)
