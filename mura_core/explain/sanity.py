"""Sanity check for heat maps (Adebayo et al. 2018, "Sanity checks for saliency maps").

A heat map that explains the model must change when the model's learned weights are destroyed. The
check re-initialises the weights of a copy of the model -- cascading from the top (the logit layer
first, then ever deeper) or all at once -- recomputes every method's map on the same image and compares
it with the trained model's map by Spearman rank correlation. High similarity after randomisation
means the method shows the image (edges, bright bone), not what the model learned.

Levels (`CASCADE_LEVELS`): the fraction of parameterised layers re-initialised, counted from the
output: ``0`` none, a small fraction = the top layers only, ``1.0`` all at once. Re-initialisation
uses each layer's own `reset_parameters` (PyTorch's default initialisation) under a fixed seed, and
batch-norm running statistics are reset too.

Example:
    >>> scores = sanity_check(model, spec, x, ["cam", "gradcam"], level=1.0)  # doctest: +SKIP
    >>> scores["gradcam"].similarity  # doctest: +SKIP
    0.08
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mura_core.explain.cams import explain_many

__all__ = ["CASCADE_LEVELS", "SanityResult", "parameterised_layers", "randomised_copy", "rank_correlation",
           "sanity_check"]

CASCADE_LEVELS: dict[str, float] = {
    "top layer only": 0.0,      # the logit layer alone (see `randomised_copy`: at least one layer)
    "top 25% of layers": 0.25,
    "top 50% of layers": 0.5,
    "all layers at once": 1.0,
}
"""The randomisation levels the app offers: label -> fraction of layers re-initialised from the top."""


@dataclass(frozen=True)
class SanityResult:
    """One method's maps from the trained and the randomised model and their rank correlation."""

    method: str
    trained: np.ndarray
    randomised: np.ndarray
    similarity: float
    """Spearman rank correlation of the two maps (1 = identical ranking: the map ignores the weights)."""


def parameterised_layers(model: nn.Module) -> list[nn.Module]:
    """Leaf modules that own parameters, from the OUTPUT backwards (registration order reversed)."""
    leaves = [m for m in model.modules()
              if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    return leaves[::-1]


def randomised_copy(model: nn.Module, level: float = 1.0, seed: int = 0) -> nn.Module:
    """A deep copy with the top `level` fraction of its layers re-initialised (at least the top layer).

    The original model is untouched. Layers without `reset_parameters` get normal noise (std 0.02).
    """
    if not 0.0 <= level <= 1.0:
        raise ValueError("level must be within 0..1")
    clone = copy.deepcopy(model).eval()
    layers = parameterised_layers(clone)
    count = max(1, int(round(level * len(layers))))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for layer in layers[:count]:
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()  # BatchNorm's also resets its running statistics
                else:
                    for p in layer.parameters(recurse=False):
                        p.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(generator_state)
    return clone


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of the same shape; 0.0 when either is constant."""
    from scipy.stats import spearmanr

    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def sanity_check(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, methods: Sequence[str], *,
                 level: float = 1.0, target: str = "abnormal", seed: int = 0,
                 trained_maps: dict[str, np.ndarray] | None = None) -> dict[str, SanityResult]:
    """Each method's map for ONE image from the trained model and from a randomised copy, compared.

    Args:
        inputs: (1, 3, S, S) model input.
        level: fraction of layers re-initialised from the top (`CASCADE_LEVELS`).
        trained_maps: the trained model's (S, S) maps when already computed (e.g. cached by the app).
    """
    if inputs.shape[0] != 1:
        raise ValueError("the sanity check explains one image at a time")
    methods = list(dict.fromkeys(methods))
    if trained_maps is None or any(m not in trained_maps for m in methods):
        maps, _ = explain_many(model, arch_spec, inputs, methods, target)
        trained_maps = {m: maps[m][0] for m in methods}
    random_model = randomised_copy(model, level, seed)
    random_maps, _ = explain_many(random_model, arch_spec, inputs, methods, target)
    return {m: SanityResult(m, trained_maps[m], random_maps[m][0],
                            rank_correlation(trained_maps[m], random_maps[m][0])) for m in methods}
