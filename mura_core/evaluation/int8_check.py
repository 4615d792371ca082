"""How far an int8 copy's scores move from float32 on the same images (`explain.quantize`); the accuracy check
behind ``python -m mura_core int8-check``.

The int8 ranges are calibrated on the data's TRAIN split (`explain.quantize.calibration_images`), never on the
compared images. Reported: the largest and mean change of probability, AUC in both, decisions that flip at the
model's threshold, scope-check agreement and the time of each forward.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mura_core.data.sources import open_dataset
from mura_core.evaluation.metrics import binary_metrics
from mura_core.explain.heads import predictor_heads
from mura_core.explain.predictor import Predictor
from mura_core.explain.scope import check_scope
from mura_core.imaging.decode import DecodeError, decode_view
from mura_core.explain.quantize import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_MAX_DELTA, QuantizeError,
                                       calibration_images)

__all__ = ["Comparison", "compare_float_int8"]


@dataclass
class Comparison:
    """Float32 vs int8 on the same images: what changes for a reader of the scores."""

    images: int
    max_abs_diff: float
    """Largest |p_int8 - p_float| over the images."""
    mean_abs_diff: float
    auc_float: float | None
    auc_int8: float | None
    flips: int
    """Images whose decision (p >= the model's threshold for their body part) differs."""
    scope_checked: int
    scope_agree: int
    """Images whose in-scope verdict (the fitted heads on the pooled features) is the same."""
    float_s: float
    int8_s: float
    """Forward time of each path over all images (decoding excluded; noisy on a shared CPU)."""
    build_s: float
    calibration: int
    calibration_delta: float
    """Largest |delta probability| on the calibration (train) images, what `quantize_for_scoring` checks."""
    observer: str

    def lines(self) -> list[str]:
        """The comparison in words."""
        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        out = [f"images compared: {self.images} (int8 calibrated on {self.calibration} train images with the "
               f"{self.observer} observer, built in {self.build_s:.1f} s; max |delta p| on those "
               f"{self.calibration_delta:.4f}, {'passes' if self.calibration_delta <= DEFAULT_MAX_DELTA else 'FAILS'} "
               f"the {DEFAULT_MAX_DELTA} check score/evaluate apply)",
               f"|delta probability|: max {self.max_abs_diff:.4f}, mean {self.mean_abs_diff:.4f}",
               f"AUC float32 {fmt(self.auc_float)}, int8 {fmt(self.auc_int8)}",
               f"decisions flipped at the model's threshold: {self.flips}/{self.images} "
               f"({self.flips / max(1, self.images):.1%})"]
        out.append(f"scope verdicts agreeing: {self.scope_agree}/{self.scope_checked}" if self.scope_checked
                   else "scope verdicts: not checked (the model has no fitted heads)")
        out.append(f"forward time: float32 {self.float_s:.1f} s ({self.images / max(self.float_s, 1e-9):.1f} img/s), "
                   f"int8 {self.int8_s:.1f} s ({self.images / max(self.int8_s, 1e-9):.1f} img/s)")
        return out


def compare_float_int8(loaded: Any, data: str | Path, *, split: str = "valid", limit: int | None = None,
                       calibration: Sequence[np.ndarray] | None = None, calibration_count: int =
                       DEFAULT_CALIBRATION_IMAGES, observer: str = "histogram", batch_size: int = 8,
                       progress: bool = True) -> Comparison:
    """Score the same `split` images of `data` with the float32 model and its int8 copy and compare.

    Args:
        loaded: a `models.checkpoints.LoadedModel`.
        limit: only the first N studies.
        calibration: decoded images for the int8 ranges (default: `calibration_images(data, split="train")`,
            never the compared images).
    """
    if split == "train":
        raise QuantizeError("compare on a split other than train: int8 calibration images come from train")
    studies = open_dataset(data, split).studies
    studies = studies if limit is None else studies[: max(0, int(limit))]
    items = [(v, s) for s in studies for v in s.views]
    exact = Predictor(loaded, device="cpu")
    fast = Predictor(loaded, device="cpu")
    images = calibration if calibration is not None else calibration_images(data, count=calibration_count)
    started = time.perf_counter()
    fast.enable_int8(images, observer=observer, max_delta=None)  # measured here, not refused
    build_s = time.perf_counter() - started
    heads, _ = predictor_heads(exact)
    scored = _score_both(exact, fast, heads, items, batch_size, progress)
    p_float, p_int8, labels, thresholds = scored.p_float, scored.p_int8, scored.labels, scored.thresholds
    if not p_float:
        raise QuantizeError(f"{data}: no readable {split} images to compare")
    a, b, t = np.array(p_float), np.array(p_int8), np.array(thresholds)
    diff = np.abs(a - b)
    known = [i for i, y in enumerate(labels) if y is not None]

    def auc(p: np.ndarray) -> float | None:
        if not known:
            return None
        y = np.array([int(labels[i]) for i in known])
        return binary_metrics(y, p[known], 0.5, n_bootstrap=0)["auc"]

    return Comparison(images=len(a), max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
                      auc_float=auc(a), auc_int8=auc(b), flips=int(np.sum((a >= t) != (b >= t))),
                      scope_checked=scored.scope_checked, scope_agree=scored.scope_agree, float_s=scored.float_s,
                      int8_s=scored.int8_s,
                      build_s=build_s, calibration=len(images),
                      calibration_delta=max(s.calibration_delta for s in fast.int8 or []), observer=observer)


@dataclass
class _Scored:
    """Both predictors' probabilities over the readable images, with labels, thresholds and timings."""

    p_float: list[float] = field(default_factory=list)
    p_int8: list[float] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)
    scope_checked: int = 0
    scope_agree: int = 0
    float_s: float = 0.0
    int8_s: float = 0.0


def _score_both(exact: Predictor, fast: Predictor, heads: Any, items: Sequence[tuple[Any, Any]], batch_size: int,
                progress: bool) -> _Scored:
    """Score (view, study) pairs in batches with the float and the int8 predictor; unreadable views skipped."""
    out = _Scored()
    done = 0
    for start in range(0, len(items), batch_size):
        chunk, decoded = [], []
        for view, study in items[start:start + batch_size]:
            try:
                decoded.append(decode_view(view))
                chunk.append(study)
            except (DecodeError, OSError):
                continue
        if not decoded:
            continue
        batches = exact.prepare([d.pixels for d in decoded])
        t0 = time.perf_counter()
        pf, _, ff = exact.run_batches_features(batches)
        t1 = time.perf_counter()
        pq, _, fq = fast.run_batches_features(batches)
        out.int8_s += time.perf_counter() - t1
        out.float_s += t1 - t0
        out.p_float += [float(p) for p in pf]
        out.p_int8 += [float(p) for p in pq]
        out.labels += [study.label for study in chunk]
        out.thresholds += [exact.threshold_for(study.body_part) for study in chunk]
        if heads is not None and ff is not None and fq is not None:
            metas = [d.meta for d in decoded]
            for a, b in zip(check_scope(heads, ff, metas), check_scope(heads, fq, metas)):
                if a is not None and b is not None:
                    out.scope_checked += 1
                    out.scope_agree += int(a.in_scope == b.in_scope)
        done += len(decoded)
        if progress:
            print(f"\r{done}/{len(items)} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return out
