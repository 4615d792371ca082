"""Pooled penultimate features of any registered model: the input of the scope and body-part heads.

The feature map is the output of the architecture's CAM layer (`ArchSpec.cam_target_layer`, turned into
(N, C, h, w) by its `reshape_transform` for token models), averaged over space: (N, C). This works for
every registered model without knowing its head, so the heads fitted on top (`explain.heads`) are
model-agnostic. One forward per batch, under the model's lock (the Predictor shares the model).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mura_core.explain.cams import model_lock
from mura_core.imaging.preprocess import PreprocessConfig, to_model_input

__all__ = ["pooled_features", "predictor_features"]


def pooled_features(model: torch.nn.Module, spec: Any, config: PreprocessConfig, images: Sequence[np.ndarray], *,
                    device: torch.device | str = "cpu", batch_size: int = 32) -> np.ndarray:
    """(N, C) float32 spatially averaged features of decoded 2-D images (0..1, any size)."""
    layer = spec.cam_target_layer(model)
    reshape = getattr(spec, "reshape_transform", None)
    captured: list[torch.Tensor] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        captured.append(output.detach())

    chunks: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([to_model_input(img, config) for img in images[start:start + batch_size]])
        captured.clear()
        with model_lock(model), torch.inference_mode():
            handle = layer.register_forward_hook(hook)
            try:
                model(batch.to(device, dtype=torch.float32))
            finally:
                handle.remove()
        maps = captured[-1]
        if reshape is not None:
            maps = reshape(maps)
        chunks.append(maps.float().mean(dim=(2, 3)).cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


def predictor_features(predictor: Any, images: Sequence[np.ndarray]) -> np.ndarray:
    """Pooled features of a `Predictor`'s first model (an ensemble's heads belong to its first member)."""
    member = predictor.members[0]
    return pooled_features(member.model, member.spec, member.config, images, device=predictor.device)
