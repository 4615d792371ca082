"""Training: sources -> decoded uint8 cache -> augmented batches -> model -> checkpoint + card.

Modules, in the order the data meets them: `config` (every setting), `cache` (decode once),
`augment` (per-image seeded warps and jitter), `weighting` (class weights, losses, source-balanced
sampling), `loop` (epochs, EMA, model selection), `evaluation` (valid scoring, calibration),
`outputs` (log, resumable checkpoint, card), `distributed` (torchrun helpers), `cli` (arguments).
"""
from __future__ import annotations

from mura_core.training.cache import ImageCache, load_sources, load_split
from mura_core.training.config import TrainConfig
from mura_core.training.loop import train
from mura_core.training.outputs import TrainResult

__all__ = ["TrainConfig", "TrainResult", "ImageCache", "load_split", "load_sources", "train"]
