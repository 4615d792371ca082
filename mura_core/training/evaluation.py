"""Scoring the cached valid split during training: logits, per-source AUC, the selection score,
and temperature scaling so probabilities mean the same on every source.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mura_core.imaging.preprocess import normalise

__all__ = ["normalise", "predict_logits", "predict_probs", "per_source_auc", "selection_score",
           "fit_temperature", "channels_last_on"]


def channels_last_on(device: torch.device) -> bool:
    """Channels-last runs faster for these convnets on CUDA and on x86 CPUs (oneDNN)."""
    return device.type in {"cuda", "cpu"}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   batch_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits (N,) for cached uint8 images, no augmentation, model in eval mode."""
    model.eval()
    device = torch.device(device)
    out = []
    for start in range(0, images.shape[0], batch_size):
        grey = images[start:start + batch_size].float().div_(255.0).unsqueeze(1).to(device)
        x = normalise(grey, mean, std)
        if channels_last_on(device):
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float()[:, 0].cpu())
    return torch.cat(out) if out else torch.empty(0)


def predict_probs(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                  batch_size: int = 32, device: torch.device | str = "cpu") -> np.ndarray:
    """P(abnormal) (N,) for cached uint8 images."""
    return torch.sigmoid(predict_logits(model, images, mean, std, batch_size, device)).numpy()


def per_source_auc(labels: np.ndarray, probs: np.ndarray, sources: Sequence[str],
                   in_scope: Sequence[bool]) -> dict[str, float | None]:
    """Valid AUC of each source over its in-scope images (None where a class is missing)."""
    from mura_core.evaluation.metrics import binary_metrics

    src = np.asarray(list(sources), dtype=object)
    scope = np.asarray(list(in_scope), dtype=bool)
    out: dict[str, float | None] = {}
    for name in sorted(set(src.tolist())):
        mask = (src == name) & scope
        out[name] = binary_metrics(labels[mask], probs[mask], 0.5)["auc"] if mask.any() else None
    return out


def selection_score(select: str, val_loss: float, pooled_auc: float | None,
                    source_aucs: dict[str, float | None]) -> float:
    """Lower is better: the valid loss, minus the pooled AUC, or minus the mean per-source AUC."""
    if select == "loss":
        return val_loss
    if select == "auc":
        return -float(pooled_auc or 0.0)
    if select == "source_auc":
        values = [v for v in source_aucs.values() if v is not None]
        return -float(np.mean(values)) if values else 0.0
    raise ValueError(f"select must be 'loss', 'auc' or 'source_auc', got {select!r}")


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    """The temperature T minimising the valid log loss of sigmoid(logit / T) (Guo et al., 2017)."""
    z = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    if z.numel() == 0 or y.min() == y.max():
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))

