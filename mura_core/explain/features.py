"""Pooled penultimate features of any registered model: the input of the scope and body-part heads.

The feature map is the output of the architecture's CAM layer (`ArchSpec.cam_target_layer`, turned into
(N, C, h, w) by its `reshape_transform` for token models), averaged over space: (N, C). This works for
every registered model without knowing its head, so the heads fitted on top (`explain.heads`) are
model-agnostic. `capture_pooled` takes them from a forward that runs anyway (the Predictor's scoring pass,
so the scope check costs no second forward); `pooled_features` runs one forward per batch for them alone.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Sequence

import numpy as np
import torch

from mura_core.explain.cams import model_lock
from mura_core.imaging.preprocess import PreprocessConfig, to_model_input

__all__ = ["capture_pooled", "pooled_features", "predictor_features"]


@contextmanager
def capture_pooled(model: torch.nn.Module, spec: Any, rows: int = 1) -> Iterator[list[np.ndarray]]:
    """While open, this thread's forwards through `model` leave their float32 pooled features in the yielded list
    until `rows` rows are captured (default: the first forward); on closing, the list holds one (N, C) array, the
    captured forwards' rows in order (a batch the CPU scored in chunks, `models.devices.forward_chunks`, comes back
    whole). Later forwards, and other threads', are ignored. Hold `model_lock(model)` around it when the model is
    shared."""
    layer = spec.cam_target_layer(model)
    reshape = getattr(spec, "reshape_transform", None)
    owner = threading.get_ident()
    found: list[np.ndarray] = []

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if (sum(len(f) for f in found) >= rows or threading.get_ident() != owner
                or not isinstance(output, torch.Tensor)):
            return
        with torch.no_grad():
            maps = output.detach()
            maps = reshape(maps) if reshape is not None else maps
            found.append(maps.float().mean(dim=(2, 3)).cpu().numpy())

    handle = layer.register_forward_hook(hook)
    try:
        yield found
    finally:
        handle.remove()
        if len(found) > 1:
            found[:] = [np.concatenate(found)]


def pooled_features(model: torch.nn.Module, spec: Any, config: PreprocessConfig, images: Sequence[np.ndarray], *,
                    device: torch.device | str = "cpu", batch_size: int = 32) -> np.ndarray:
    """(N, C) float32 spatially averaged features of decoded 2-D images (0..1, any size)."""
    chunks: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([to_model_input(img, config) for img in images[start:start + batch_size]])
        with model_lock(model), capture_pooled(model, spec) as found, torch.inference_mode():
            model(batch.to(device, dtype=torch.float32))
        chunks.append(found[0])
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


def predictor_features(predictor: Any, images: Sequence[np.ndarray]) -> np.ndarray:
    """Pooled features of a `Predictor`'s first model (an ensemble's heads belong to its first member)."""
    member = predictor.members[0]
    return pooled_features(member.model, member.spec, member.config, images, device=predictor.device)
