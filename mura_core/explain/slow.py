"""Slow heat maps (ScoreCAM, AblationCAM) on a shared server: estimate, progress, cancel, one at a time.

Both methods run one extra forward per channel of the target layer (1280 for EfficientNet-Lite0), in
batches (`cams._library` uses batches of 64, as fast as pytorch-grad-cam allows on a CPU). Here:

- `estimate_seconds` times one batch of forwards and scales it to the method's number of forwards;
- `run_slow` counts the forwards as they happen (a forward pre-hook on the model) and reports the
  fraction done to `progress`; the callback may raise to cancel (Streamlit's stop on a rerun does),
  and `cancel` (a threading.Event) stops the run at the next batch;
- `cams` itself lets ONE slow run at a time per process (`cams.SlowBusy` for a second one, at once,
  instead of queueing), so one session cannot starve the others on a 2-core server, and silences
  pytorch-grad-cam's tqdm bars, so nothing prints into the server log.

The app's two pages with slow maps (Compare heat maps, the Study viewer via `app.slow_maps`) both run them
through `app.services.slow_map` -> `run_slow`, so the estimate, progress, cancel and cap are the same.
"""
from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mura_core.explain.cams import SLOW_METHODS, SlowBusy, explain_many, model_lock

__all__ = ["SlowBusy", "SlowCancelled", "estimate_seconds", "forward_count", "run_slow"]

class SlowCancelled(RuntimeError):
    """The run was cancelled."""


def _channels(model: nn.Module, arch_spec: Any, inputs: torch.Tensor) -> int:
    """Channels of the target layer (the number of masks / ablations per image)."""
    seen: list[int] = []
    layer = arch_spec.cam_target_layer(model)

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            mapped = arch_spec.reshape_transform(out) if arch_spec.reshape_transform is not None else out
            seen.append(int(mapped.shape[1]))

    handle = layer.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(inputs[:1])
    finally:
        handle.remove()
    return seen[0]


def forward_count(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, method: str) -> int:
    """Image forwards the method runs: one per target-layer channel per image, plus the plain pass."""
    if method not in SLOW_METHODS:
        return int(inputs.shape[0])
    return int(inputs.shape[0]) * (_channels(model, arch_spec, inputs) + 1)


def estimate_seconds(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, method: str,
                     probe: int = 8) -> float:
    """Seconds the method will take: one timed forward of `probe` images, scaled to `forward_count`."""
    x = inputs[:1].expand(probe, -1, -1, -1).contiguous()
    with torch.inference_mode():
        start = time.perf_counter()
        model(x)
        per_image = (time.perf_counter() - start) / probe
    return per_image * forward_count(model, arch_spec, inputs, method)


def run_slow(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, method: str, target: str = "abnormal", *,
             progress: Callable[[float], None] | None = None, cancel: threading.Event | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """`explain_many` for one slow method with progress and cancel (and `cams`' one-at-a-time gate).

    Raises `SlowBusy` when another slow run holds the gate, `SlowCancelled` when `cancel` is set.
    Returns (heatmaps (N, S, S), logits (N,)).
    """
    with model_lock(model):
        model = copy.deepcopy(model)  # counted privately; the shared model stays free for other sessions
    total = forward_count(model, arch_spec, inputs, method)
    done = [0]

    def count(_m: nn.Module, args: Any) -> None:
        if cancel is not None and cancel.is_set():
            raise SlowCancelled(f"{method} cancelled")
        if args and isinstance(args[0], torch.Tensor):
            done[0] += int(args[0].shape[0])
        if progress is not None:
            progress(min(1.0, done[0] / max(total, 1)))

    handle = model.register_forward_pre_hook(count)
    try:
        maps, logits = explain_many(model, arch_spec, inputs, [method], target)
    finally:
        handle.remove()
    if progress is not None:
        progress(1.0)
    return maps[method], logits
