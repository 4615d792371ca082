"""Attention rollout (Abnar & Zuidema 2020): which image tokens a transformer's pooled token draws on.

For each encoder layer l the self-attention matrix is averaged over heads (A_l, T x T). The residual
connection around attention is taken into account by adding the identity and renormalising every row,
Â_l = (A_l + I) / rowsum(A_l + I); the rollout is the product Â_L ... Â_1 (the last layer on the left).
Its row of the token the head reads (the class token at index 0 for the `hybrid`, which classifies from
``tokens[:, 0]``; the mean over all rows for a model without a class token) gives each input token's
share, and the patch tokens' shares, laid back on their h x w grid, are the map.

The method is class-agnostic (no gradient, no target): the same map explains "abnormal" and "normal".
It is offered only for models with `nn.TransformerEncoderLayer` blocks (`has_attention`): today the
`hybrid` CNN-transformer (`models.registry.HybridCNNTransformer`). No hybrid checkpoint ships in
`weights/`; the method appears for hybrid checkpoints a user trains (``train --arch hybrid``).

The attention weights are recomputed from each block's own input (captured by a forward pre-hook, as seen
by the calling thread only) with the block's `self_attn` and ``need_weights=True``: PyTorch's fused
encoder path never materialises them, and the recomputation costs one attention per layer.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["attention_layers", "attention_rollout", "has_attention", "layer_attention", "pooled_token_map",
           "rollout"]


def attention_layers(model: nn.Module) -> list[nn.TransformerEncoderLayer]:
    """The model's transformer encoder layers, in forward order (empty for a CNN)."""
    return [m for m in model.modules() if isinstance(m, nn.TransformerEncoderLayer)]


def has_attention(model: nn.Module) -> bool:
    """True when the model has self-attention layers a rollout can follow."""
    return bool(attention_layers(model))


def layer_attention(layer: nn.TransformerEncoderLayer, tokens: torch.Tensor) -> torch.Tensor:
    """The layer's self-attention for its input `tokens` (N, T, C), averaged over heads: (N, T, T)."""
    x = layer.norm1(tokens) if layer.norm_first else tokens
    if not layer.self_attn.batch_first:
        x = x.transpose(0, 1)
    _, weights = layer.self_attn(x, x, x, need_weights=True, average_attn_weights=True)
    return weights


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


class _Inputs:
    """Forward pre-hook state: each attention layer's input, as seen by the registering thread only."""

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.seen: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(self, module: nn.Module, args: Any) -> None:
        if threading.get_ident() == self.owner and args and isinstance(args[0], torch.Tensor):
            self.seen.append((module, args[0]))


@contextlib.contextmanager
def _recording(layers: Sequence[nn.Module]) -> Iterator[_Inputs]:
    """Pre-hooks on every layer for the block; always removed afterwards."""
    inputs = _Inputs()
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
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no attention layers to roll out")
    with torch.inference_mode(), _recording(layers) as recorded:
        logits = model(inputs)
        attentions = [layer_attention(layer, tokens) for layer, tokens in recorded.seen]
    if len(attentions) != len(layers):
        raise ValueError(f"{len(attentions)} of {len(layers)} attention layers ran in the forward")
    maps = pooled_token_map(rollout(attentions))
    return maps.float().cpu().numpy(), logits.detach()
