"""Attention rollout (Abnar & Zuidema 2020): which image tokens a transformer's pooled token draws on.

For each encoder layer l the self-attention matrix is averaged over heads (A_l, T x T). The residual
connection around attention is taken into account by adding the identity and renormalising every row,
Â_l = (A_l + I) / rowsum(A_l + I); the rollout is the product Â_L ... Â_1 (the last layer on the left).
Its row of the token the head reads (the class token at index 0 for the `hybrid`, which classifies from
``tokens[:, 0]``; the mean over all rows for a model without a class token) gives each input token's
share, and the patch tokens' shares, laid back on their h x w grid, are the map.

The method is class-agnostic (no gradient, no target): the same map explains "abnormal" and "normal".
It is offered only for models with `nn.TransformerEncoderLayer` blocks (`has_attention`): today the
`hybrid` and `hybrid_lite2` CNN-transformers (`models.registry.HybridCNNTransformer`), such as the shipped
`hybrid_lite2_box`, whose default map it is.

The attention weights are recomputed from each block's own input (captured by a forward pre-hook, as seen
by the calling thread only) from the block's query and key projections: PyTorch's fused encoder path never
materialises them, and the recomputation costs one attention per layer. It applies no attention dropout, so
the map is the same in training and inference mode, and it keeps gradients outside inference mode: the
training loop's box loss (`training.box_loss.RolloutCapture`) pulls the rollout of an abnormal image into its
finding boxes.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionInputs", "attention_layers", "attention_rollout", "has_attention", "layer_attention",
           "pooled_token_map", "recording", "rollout"]


def attention_layers(model: nn.Module) -> list[nn.TransformerEncoderLayer]:
    """The model's transformer encoder layers, in forward order (empty for a CNN)."""
    return [m for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)]


def has_attention(model: nn.Module) -> bool:
    """True when the model has self-attention layers a rollout can follow."""
    return bool(attention_layers(model))


def layer_attention(layer: nn.TransformerEncoderLayer, tokens: torch.Tensor) -> torch.Tensor:
    """The layer's self-attention for its input `tokens` (N, T, C), averaged over heads: (N, T, T).

    softmax(q k^T / sqrt(d)) per head from the layer's own projections, without attention dropout (the
    weights the layer's forward would use at inference), in the projections' dtype (so a bf16 activation
    captured under autocast is read in float32), differentiable outside inference mode.
    """
    attention = layer.self_attn
    weight = attention.in_proj_weight
    x = tokens.to(weight.dtype)
    x = layer.norm1(x) if layer.norm_first else x
    if not attention.batch_first:
        x = x.transpose(0, 1)
    q, k, _ = F.linear(x, weight, attention.in_proj_bias).chunk(3, dim=-1)
    n, t, channels = q.shape
    heads = attention.num_heads
    q = q.reshape(n, t, heads, channels // heads).transpose(1, 2)
    k = k.reshape(n, t, heads, channels // heads).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(channels // heads)
    return torch.softmax(scores, dim=-1).mean(dim=1)


def rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema's rollout of per-layer (N, T, T) head-averaged attentions (first layer first).

    Each layer's matrix gets the identity added (the residual path) and its rows renormalised to sum to
    one; the result is their product, last layer on the left. Rows of the result sum to one.
    """
    if not attentions:
        raise ValueError("rollout needs at least one attention matrix")
    joint: torch.Tensor | None = None
    for attention in attentions:
        a = attention.double()
        a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


def pooled_token_map(joint: torch.Tensor) -> torch.Tensor:
    """The rollout's row for what the head reads, on the token grid: (N, h, w).

    T - 1 tokens forming a square grid: a leading class token (its row, patch columns). Otherwise T
    tokens forming a square grid: no class token, mean-pooled (the mean of all rows).
    """
    tokens = joint.shape[-1]
    side = math.isqrt(tokens - 1)
    if side * side == tokens - 1:
        row = joint[:, 0, 1:]
    else:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"{tokens} tokens form no square grid, with or without a class token")
        row = joint.mean(dim=1)
    return row.reshape(row.shape[0], side, side)


class AttentionInputs:
    """Each attention layer's input from the forwards inside `recording`, as seen by the registering thread
    only; `token_maps` rolls out the latest forward's."""

    def __init__(self, layer_count: int) -> None:
        self.owner = threading.get_ident()
        self.layer_count = layer_count
        self.seen: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(self, module: nn.Module, args: Any) -> None:
        if threading.get_ident() == self.owner and args and isinstance(args[0], torch.Tensor):
            self.seen.append((module, args[0]))

    def token_maps(self) -> torch.Tensor:
        """The rollout maps (N, h, w, float64) of the forward recorded since the last call, which they clear:
        with gradients when that forward kept them. ValueError when not every attention layer ran."""
        seen, self.seen = self.seen, []
        if len(seen) != self.layer_count:
            raise ValueError(f"{len(seen)} of {self.layer_count} attention layers ran in the forward")
        return pooled_token_map(rollout([layer_attention(layer, tokens) for layer, tokens in seen]))


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[AttentionInputs]:
    """Pre-hooks on every attention layer of `model` for the block; always removed afterwards.
    ValueError for a model without attention layers."""
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layers to roll out")
    inputs = AttentionInputs(len(layers))
    handles = [layer.register_forward_pre_hook(inputs.hook) for layer in layers]
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


def attention_rollout(model: nn.Module, inputs: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """One forward: the logits and each image's rollout map on the token grid.

    Returns (maps float32 (N, h, w), unnormalised shares of the pooled token; logits (N, 1)).
    Raises ValueError for a model without attention layers.
    """
    with torch.inference_mode(), recording(model) as recorded:
        logits = model(inputs)
        maps = recorded.token_maps()
    return maps.float().cpu().numpy(), logits.detach()
