"""Attention rollout: the formula, maps from a tiny random hybrid, and who is offered the method."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.score import grey_image, tiny_checkpoint

from mura_core.explain import cams as E
from mura_core.explain.rollout import attention_layers, layer_attention, pooled_token_map, rollout
from mura_core.models.registry import HybridCNNTransformer, get_arch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HYBRID = get_arch("hybrid")


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture()
def hybrid() -> HybridCNNTransformer:
    torch.manual_seed(0)
    return HybridCNNTransformer(dim=32, depth=2, heads=2, base_grid=3).eval()


@pytest.fixture()
def batch() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 96, 96)  # a 3x3 token grid (stride 32) plus the class token


def test_rollout_formula_on_hand_made_attention():
    uniform = torch.full((1, 3, 3), 1 / 3)
    one = rollout([uniform])
    expected = (uniform[0] + torch.eye(3)) / 2  # rows of A + I sum to 2
    torch.testing.assert_close(one[0].float(), expected)
    two = rollout([uniform, torch.eye(3)[None]])  # the identity layer leaves the rollout unchanged
    torch.testing.assert_close(two, one)
    three = rollout([uniform, uniform])
    torch.testing.assert_close(three[0], one[0] @ one[0])  # later layers multiply from the left
    torch.testing.assert_close(three.sum(-1), torch.ones(1, 3, dtype=three.dtype))


def test_pooled_token_reads_the_class_row_or_the_mean():
    joint = torch.arange(25, dtype=torch.float64).reshape(1, 5, 5)  # class token + 2x2 grid
    torch.testing.assert_close(pooled_token_map(joint), joint[:, 0, 1:].reshape(1, 2, 2))
    no_cls = torch.arange(16, dtype=torch.float64).reshape(1, 4, 4)  # 2x2 grid, mean pooled
    torch.testing.assert_close(pooled_token_map(no_cls), no_cls.mean(1).reshape(1, 2, 2))


def test_layer_attention_matches_a_hand_computed_softmax(hybrid, batch):
    layer = hybrid.blocks[0]
    torch.manual_seed(2)
    tokens = torch.randn(2, 10, 32)
    attn = layer.self_attn
    x = layer.norm1(tokens)
    q, k, _ = torch.nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    heads, d = attn.num_heads, 32 // attn.num_heads
    q = q.reshape(2, 10, heads, d).transpose(1, 2)
    k = k.reshape(2, 10, heads, d).transpose(1, 2)
    manual = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1).mean(dim=1)
    torch.testing.assert_close(layer_attention(layer, tokens), manual, atol=1e-5, rtol=1e-4)


def test_layer_attention_is_the_same_in_training_mode_and_keeps_gradients(hybrid):
    """No attention dropout in the recomputed weights (the box loss reads them while the model trains), bf16
    input read in the projections' float32, and a gradient path to the projections."""
    layer = hybrid.blocks[0]
    assert layer.self_attn.dropout > 0
    torch.manual_seed(3)
    tokens = torch.randn(2, 10, 32)
    reference = layer_attention(layer.eval(), tokens)
    layer.train()
    first, second = layer_attention(layer, tokens), layer_attention(layer, tokens)
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(second, reference)
    torch.testing.assert_close(first.sum(-1), torch.ones(2, 10))
    half = layer_attention(layer, tokens.bfloat16())
    assert half.dtype == torch.float32 and (half - reference).abs().max() < 0.05
    first[:, 0, 1:].sum().backward()
    assert layer.self_attn.in_proj_weight.grad is not None and layer.self_attn.in_proj_weight.grad.abs().sum() > 0


def test_rollout_map_on_a_tiny_hybrid(hybrid, batch):
    assert "rollout" in E.available_methods(hybrid, HYBRID)
    maps, logits = E.explain_batch(hybrid, HYBRID, batch, "rollout")
    assert maps.shape == (2, 96, 96) and logits.shape == (2,)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    with torch.inference_mode():
        plain = hybrid(batch).reshape(-1).numpy()
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-6)  # scores come from the same forward
    assert _hooks(hybrid) == 0
    same, _ = E.explain_batch(hybrid, HYBRID, batch, "rollout", target="normal")
    np.testing.assert_array_equal(same, maps)  # class-agnostic


def test_rollout_changes_when_an_attention_layer_changes(hybrid, batch):
    before, _ = E.explain_batch(hybrid, HYBRID, batch, "rollout")
    with torch.no_grad():
        weight = attention_layers(hybrid)[0].self_attn.in_proj_weight
        weight.mul_(8.0).add_(torch.randn_like(weight))
    after, _ = E.explain_batch(hybrid, HYBRID, batch, "rollout")
    assert np.abs(after - before).max() > 0.05


def test_rollout_map_has_the_image_shape_through_the_predictor(tmp_path: Path):
    from mura_core.explain.predictor import Predictor
    from mura_core.models.checkpoints import load_checkpoint

    tiny_checkpoint(tmp_path / "hyb.pt", "hybrid", size=96)
    predictor = Predictor(load_checkpoint(tmp_path / "hyb.pt"), device="cpu")
    assert "rollout" in predictor.cam_methods()
    image = grey_image(70, 90, seed=3)
    prob, heatmaps = predictor.predict_images([image], cam="rollout")
    assert heatmaps[0].shape == (70, 90) and np.isfinite(heatmaps[0]).all() and heatmaps[0].min() >= 0
    assert 0.0 < prob[0] < 1.0


@pytest.mark.parametrize("arch", ["shallow_cnn", "mobilenet_v2"])
def test_models_without_attention_do_not_offer_rollout(arch: str):
    from mura_core.models.registry import create_model

    model = create_model(arch).eval()
    spec = get_arch(arch)
    assert "rollout" not in E.available_methods(model, spec)
    with pytest.raises(E.ExplainError, match="not available"):
        E.explain_batch(model, spec, torch.zeros(1, 3, 32, 32), "rollout")


def test_rollout_is_fast_and_listed_once():
    row = next(m for m in E.CAM_TABLE if m.name == "rollout")
    assert row.family == "attention" and not row.slow and not row.default
    assert E.ATTENTION_METHODS == {"rollout"}
