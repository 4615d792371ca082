"""Who counts how much: MURA's class weights per source and body part, label smoothing, the losses,
and a per-epoch sampler that keeps a small source from being drowned by a large one.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["class_weight_table", "weight_keys", "sample_weights", "smooth_labels", "weighted_bce",
           "focal_loss", "source_sampling_weights", "EpochSampler"]


def _weights(y: np.ndarray, mask: np.ndarray) -> tuple[float, float] | None:
    """(w0, w1) = (|A|, |N|) / (|A| + |N|) over `mask`, or None when a class is missing."""
    n_abn = float(y[mask].sum())
    n_norm = float(mask.sum() - n_abn)
    if n_abn == 0 or n_norm == 0:
        return None
    return n_abn / (n_abn + n_norm), n_norm / (n_abn + n_norm)


def weight_keys(source: str, part: str) -> tuple[str, str]:
    """The class-weight rows an image looks up, most specific first: 'source:part', then 'source'."""
    return f"{source}:{part}", source


def class_weight_table(labels: Sequence[float] | torch.Tensor, groups: Sequence[str | Sequence[str]],
                       mode: str = "auto") -> tuple[dict[str, tuple[float, float]], list[str]]:
    """MURA class weights per group: {group: (w0, w1)} plus "default" (global), and the fallbacks.

    w1 = |N| / (|A| + |N|), w0 = |A| / (|A| + |N|) per group, so the rarer class weighs more. A group
    is a body part, or a chain of keys from `weight_keys` (every key of the chain gets a row). A group
    lacking normals or abnormals has no row (listed in the returned fallbacks); its images use the next
    key of their chain, finally the global "default". mode "none" weighs everything 1.
    """
    if mode == "none":
        return {"default": (1.0, 1.0)}, []
    if mode != "auto":
        raise ValueError(f"class weights must be 'auto' or 'none', got {mode!r}")
    y = np.asarray(labels, dtype=np.float64)
    chains = [(g,) if isinstance(g, str) else tuple(g) for g in groups]
    table = {"default": _weights(y, np.ones_like(y, dtype=bool)) or (0.5, 0.5)}
    fallbacks = []
    for key in sorted({k for chain in chains for k in chain}):
        found = _weights(y, np.asarray([key in chain for chain in chains]))
        if found is None:
            fallbacks.append(key)
        else:
            table[key] = found
    return table, fallbacks


def sample_weights(labels: torch.Tensor, groups: Sequence[str | Sequence[str]],
                   table: dict[str, tuple[float, float]]) -> torch.Tensor:
    """Per-image loss weight: w1 for abnormal, w0 for normal, from the first key of its chain in `table`."""
    rows = []
    for group in groups:
        chain = (group,) if isinstance(group, str) else tuple(group)
        rows.append(next((table[k] for k in chain if k in table), table["default"]))
    w0 = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    w1 = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    labels = labels.float().cpu()
    return labels * w1 + (1 - labels) * w0


def smooth_labels(labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Targets pulled towards 0.5 by epsilon (label smoothing for one logit)."""
    return labels.float() * (1.0 - epsilon) + 0.5 * epsilon


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of w * BCE(sigmoid(logit), label) (MURA's loss)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return (loss * weights).mean()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
               gamma: float = 2.0) -> torch.Tensor:
    """Class-weighted focal loss: w * (1 - p_t)^gamma * BCE."""
    logits, labels = logits.float(), labels.float()
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = torch.exp(-bce)
    return (weights * (1 - p_t) ** gamma * bce).mean()


def source_sampling_weights(sources: Sequence[str], balance: float) -> torch.Tensor:
    """Per-image sampling weight n_source ** -balance: 0 = uniform, 1 = every source an equal share."""
    names, counts = np.unique(np.asarray(list(sources), dtype=object), return_counts=True)
    size = dict(zip(names.tolist(), counts.tolist()))
    return torch.tensor([size[s] ** -float(balance) for s in sources], dtype=torch.float64)


class EpochSampler(torch.utils.data.Sampler[int]):
    """Indices for one epoch: a seeded shuffle (or weighted draw) of the data, this rank's share only."""

    def __init__(self, weights: torch.Tensor | None, size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.weights, self.size, self.seed, self.rank, self.world = weights, size, seed, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_indices(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        if self.weights is None or bool(torch.all(self.weights == self.weights[0])):
            return torch.randperm(self.size, generator=generator)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[int]:
        indices = self._all_indices()
        per_rank = -(-self.size // self.world)
        padded = torch.cat([indices, indices[: per_rank * self.world - self.size]])
        return iter(padded[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return -(-self.size // self.world)
