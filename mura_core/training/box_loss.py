"""Box supervision: pull the class activation map of an abnormal image into its finding boxes.

In the spirit of "right for the right reasons" (Ross et al., 2017) and GAIN (Li et al., 2018): for
abnormal training images with boxes, the CAM of the pooled + Linear head (weights . feature map) is
turned into a distribution over map cells (softmax), and the loss is -log of the share that falls
inside the boxes. Added to the classification loss with a small weight, it teaches the model to put
its evidence where the radiologist drew the box, without asking for a segmentation.

A transformer without a pooled + Linear head (the hybrids) has no CAM; its map is the attention rollout
(`explain.rollout`), the class token's share of each patch token. `RolloutCapture` rolls out every training
forward's attention with gradients and hands the box loss the log of those shares, whose softmax is the shares
renormalised over the patches: the same loss then pulls the class token's attention into the boxes.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mura_core.explain.rollout import AttentionInputs, recording

__all__ = ["FeatureCapture", "RolloutCapture", "box_attention_loss", "cam_from_features"]

_EPS = 1e-6


class FeatureCapture:
    """Holds the output of the CAM layer from the latest forward pass (a forward hook)."""

    def __init__(self) -> None:
        self.features: torch.Tensor | None = None

    @contextmanager
    def on(self, layer: nn.Module) -> Iterator["FeatureCapture"]:
        def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self.features = output

        handle = layer.register_forward_hook(keep)
        try:
            yield self
        finally:
            handle.remove()


class RolloutCapture:
    """Records the attention layers' inputs during each forward (pre-hooks) to roll out that forward's attention."""

    def __init__(self) -> None:
        self.recorded: AttentionInputs | None = None

    @contextmanager
    def on(self, model: nn.Module) -> Iterator["RolloutCapture"]:
        with recording(model) as recorded:
            self.recorded = recorded
            try:
                yield self
            finally:
                self.recorded = None

    def log_shares(self) -> torch.Tensor:
        """(B, h, w) log of the latest forward's rollout shares of the patch tokens, for `box_attention_loss`."""
        if self.recorded is None:
            raise RuntimeError("RolloutCapture.log_shares outside its `on` block")
        return torch.log(self.recorded.token_maps().float().clamp_min(_EPS))


def cam_from_features(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) features and the head's (C,) weight -> (B, h, w) class activation map (abnormal)."""
    return torch.einsum("bchw,c->bhw", features.float(), weight.float())


def box_attention_loss(cam: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
    """Mean over abnormal images with a box of -log(share of softmax(CAM) inside the boxes).

    `masks` are (B, 1, S, S) or (B, S, S) warped box masks at input resolution; each map cell counts as
    inside by the fraction of its pixels covered. Images without boxes or labelled normal add nothing;
    a batch without any gives 0 (with a gradient path, so DDP stays in step).
    """
    masks = masks.unsqueeze(1) if masks.ndim == 3 else masks
    cover = F.adaptive_avg_pool2d(masks.float(), cam.shape[-2:]).flatten(1)
    share_of = torch.softmax(cam.flatten(1) / temperature, dim=1)
    inside = (share_of * cover).sum(dim=1)
    used = (labels > 0.5) & (cover.sum(dim=1) > 0)
    if not bool(used.any()):
        return cam.sum() * 0.0
    return -torch.log(inside[used] + _EPS).mean()
