"""Tests for the fused multi-stage methods in mura_core.explain.cams (layercam-fused, gradcam-fused)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mura_core.explain import cams as E
from mura_core.models.registry import create_model, get_arch
from tests.explain.test_cams import SIZE, SQUARE, TOY_SPEC, ToyCNN, _hooks, _square_batch, trained_toy  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fused_methods_in_the_table():
    assert {"layercam-fused", "gradcam-fused"} == set(E.MULTILAYER_METHODS)
    assert not E.MULTILAYER_METHODS & E.SLOW_METHODS


def test_fusion_layers_of_efficientnet_lite0_are_7_14_28():
    model = create_model("efficientnet_lite0").eval()
    layers = E.fusion_layers(model, get_arch("efficientnet_lite0"), torch.zeros(1, 3, 224, 224), 3)
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(m)] for m in layers] == ["_head_act", "_blocks.10", "_blocks.4"]
    assert _hooks(model) == 0


def test_fusion_layers_of_the_toy_add_the_full_resolution_stage():
    model = ToyCNN().eval()
    layers = E.fusion_layers(model, TOY_SPEC, torch.zeros(1, 3, SIZE, SIZE), 3)
    assert layers[0] is model.features[-1]
    assert layers[1] is model.features[3]  # last block at 32x32 (before the pool)
    assert len(layers) == 2  # only two resolutions exist


@pytest.mark.parametrize("method", sorted(E.MULTILAYER_METHODS))
def test_fused_peak_lands_in_planted_square(trained_toy, method):
    gen = torch.Generator().manual_seed(321)
    x, y, corners = _square_batch(30, gen)
    positives = [i for i in range(30) if y[i] > 0]
    maps, _ = E.explain_batch(trained_toy, TOY_SPEC, x[positives], method)
    hits = 0
    for k, i in enumerate(positives):
        px, py = E.heatmap_peak(maps[k])
        r, c = corners[i]
        hits += (c - 1 <= px * SIZE <= c + SQUARE + 1) and (r - 1 <= py * SIZE <= r + SQUARE + 1)
    assert hits / len(positives) >= 0.8, f"{method}: only {hits}/{len(positives)} peaks in the square"


@pytest.mark.parametrize("method", sorted(E.MULTILAYER_METHODS))
def test_fused_leaves_model_untouched_and_logits_right(trained_toy, method):
    x = torch.randn(2, 3, SIZE, SIZE)
    flags = [p.requires_grad for p in trained_toy.parameters()]
    with torch.inference_mode():
        ref = trained_toy(x)[:, 0].numpy()
        maps, logits = E.explain_batch(trained_toy, TOY_SPEC, x, method)  # a caller in inference mode
    assert maps.shape == (2, SIZE, SIZE) and 0 <= maps.min() and maps.max() <= 1
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    assert _hooks(trained_toy) == 0 and torch.is_grad_enabled()
    assert [p.requires_grad for p in trained_toy.parameters()] == flags
    assert all(p.grad is None for p in trained_toy.parameters())


def test_fused_map_is_finer_than_the_last_layer_on_lite0():
    """The fused map has structure below the 7x7 grid: its 32x32 blocks are not all flat."""
    torch.manual_seed(3)
    model = create_model("efficientnet_lite0").eval()
    spec = get_arch("efficientnet_lite0")
    x = torch.randn(1, 3, 224, 224)
    maps = E.explain_many(model, spec, x, ["gradcam", "layercam-fused"])[0]

    def within_cell_spread(m: np.ndarray) -> float:
        cells = m.reshape(7, 32, 7, 32).transpose(0, 2, 1, 3).reshape(49, -1)
        return float(np.mean(cells.std(axis=1)))

    assert within_cell_spread(maps["layercam-fused"][0]) > within_cell_spread(maps["gradcam"][0])


def test_fused_runs_on_the_hybrid_tokens():
    torch.manual_seed(4)
    model = create_model("hybrid").eval()
    maps, _ = E.explain_batch(model, get_arch("hybrid"), torch.randn(1, 3, 96, 96), "layercam-fused")
    assert maps.shape == (1, 96, 96) and maps.max() == pytest.approx(1.0, abs=1e-5)
    assert _hooks(model) == 0
