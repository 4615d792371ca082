"""Pointing game: does the heat map's maximum fall on an annotated finding?

After Zhang et al. (2016, "Top-down neural attention by excitation backprop"): for an image with
finding boxes, the heat map "hits" when its maximum lies inside a box, allowing a tolerance of a few
pixels (they used 15 px). Here:

- boxes are ``(x0, y0, x1, y1)`` in 0..1 of the image width/height (the manifest's normalised corners);
- the maximum is `explain.heatmap_peak` (centre of the maximal pixel; the centroid when tied), in the
  heat map's own pixels, which are the ORIGINAL image's pixels when the map was resized to the image;
- `tolerance` is in those pixels: a hit when the Euclidean distance from the peak to the nearest box
  is at most `tolerance` (0 = strictly inside or on the edge). Default `DEFAULT_TOLERANCE_PX` = 15;
- a flat map (no maximum) is a miss; an image without boxes is not counted (None).

Energy-based pointing game (Wang et al. 2020, Score-CAM): `energy_share` is the share of the heat
map's total mass that falls inside the boxes (tolerance 0); a uniform map scores the boxes' area
fraction (`covered_fraction(..., tolerance=0)`), its baseline.

`pointing_game_summary` reports the hit rate with a Wilson 95 % interval and two baselines that make
the number interpretable: the hit rate of always pointing at the image centre, and the expected hit
rate of a uniformly random point (the mean fraction of the image covered by the tolerance-grown boxes).

Example:
    >>> import numpy as np
    >>> h = np.zeros((100, 100)); h[30, 40] = 1
    >>> pointing_game_hit(h, [(0.35, 0.25, 0.5, 0.4)], tolerance=0)
    True
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from mura_core.explain.cams import heatmap_peak

__all__ = [
    "DEFAULT_TOLERANCE_PX",
    "REPORT_TOLERANCES_PX",
    "box_distance",
    "centre_hit",
    "covered_fraction",
    "energy_share",
    "hit_rates_by_tolerance",
    "peak_distance",
    "pointing_game_hit",
    "pointing_game_summary",
    "wilson_interval",
]

DEFAULT_TOLERANCE_PX = 15.0
"""Tolerance in image pixels, as in Zhang et al. 2016."""

REPORT_TOLERANCES_PX: tuple[float, ...] = (0.0, 15.0, 30.0, 60.0)
"""Tolerances `evaluate` also reports hit rates at (a CNN's last map is coarse: one cell = 32 input px)."""

Box = Sequence[float]


def _pixel_box(box: Box, height: int, width: int) -> tuple[float, float, float, float]:
    """A normalised (x0, y0, x1, y1) box in pixel units (edges), corners put in order."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    return x0 * width, y0 * height, x1 * width, y1 * height


def box_distance(point_xy: tuple[float, float], box: Box, height: int, width: int) -> float:
    """Euclidean distance in pixels from a normalised point to a normalised box (0 inside or on it)."""
    px, py = point_xy[0] * width, point_xy[1] * height
    bx0, by0, bx1, by1 = _pixel_box(box, height, width)
    dx = max(bx0 - px, 0.0, px - bx1)
    dy = max(by0 - py, 0.0, py - by1)
    return math.hypot(dx, dy)


def peak_distance(heatmap: np.ndarray, boxes: Iterable[Box]) -> float | None:
    """Pixels from the heat map's maximum to the nearest box: 0 inside, inf for a flat map, None without boxes.

    Computing the distance once lets a report give hit rates at several tolerances cheaply.
    """
    boxes = [tuple(b) for b in boxes]
    if not boxes:
        return None
    h = np.asarray(heatmap, dtype=np.float32)
    if h.ndim != 2 or h.size == 0:
        raise ValueError(f"pointing game needs a 2-D heat map, got shape {h.shape}")
    if not np.isfinite(h).all() or float(h.max()) <= float(h.min()):
        return math.inf  # flat map: it points nowhere
    peak = heatmap_peak(h)
    height, width = h.shape
    return min(box_distance(peak, box, height, width) for box in boxes)


def pointing_game_hit(heatmap: np.ndarray, boxes: Iterable[Box], tolerance: float = DEFAULT_TOLERANCE_PX
                      ) -> bool | None:
    """True when the heat map's maximum lies within `tolerance` pixels of a box; None without boxes.

    Args:
        heatmap: 2-D map, ideally at the original image size (then pixels are image pixels).
        boxes: normalised (x0, y0, x1, y1) boxes.
        tolerance: allowed distance in heat-map pixels (>= 0).
    """
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0 pixels")
    distance = peak_distance(heatmap, boxes)
    return None if distance is None else bool(distance <= tolerance + 1e-9)


def hit_rates_by_tolerance(distances: Sequence[float | None], tolerances: Iterable[float]) -> dict[str, float | None]:
    """{"<t>": hit rate at tolerance t px} from `peak_distance` values (None = no boxes, skipped)."""
    counted = [d for d in distances if d is not None]
    return {f"{t:g}": (sum(d <= t + 1e-9 for d in counted) / len(counted) if counted else None)
            for t in tolerances}


def centre_hit(boxes: Iterable[Box], height: int, width: int, tolerance: float = DEFAULT_TOLERANCE_PX) -> bool:
    """Would pointing at the image centre hit a box? (a baseline any heat map should beat)."""
    return any(box_distance((0.5, 0.5), box, height, width) <= tolerance + 1e-9 for box in boxes)


def covered_fraction(boxes: Iterable[Box], height: int, width: int,
                     tolerance: float = DEFAULT_TOLERANCE_PX) -> float:
    """Fraction of the image within `tolerance` px of any box: a uniformly random point's hit chance."""
    ys = (np.arange(height) + 0.5)[:, None]
    xs = (np.arange(width) + 0.5)[None, :]
    covered = np.zeros((height, width), dtype=bool)
    for box in boxes:
        bx0, by0, bx1, by1 = _pixel_box(box, height, width)
        dx = np.maximum(np.maximum(bx0 - xs, 0.0), xs - bx1)
        dy = np.maximum(np.maximum(by0 - ys, 0.0), ys - by1)
        covered |= (dx ** 2 + dy ** 2) <= tolerance ** 2 + 1e-9
    return float(covered.mean()) if covered.size else 0.0


def _box_mask(boxes: Iterable[Box], height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies inside any box (boxes in 0..1 of width/height)."""
    ys = (np.arange(height) + 0.5)[:, None]
    xs = (np.arange(width) + 0.5)[None, :]
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        bx0, by0, bx1, by1 = _pixel_box(box, height, width)
        mask |= (xs >= bx0) & (xs <= bx1) & (ys >= by0) & (ys <= by1)
    return mask


def energy_share(heatmap: np.ndarray, boxes: Iterable[Box]) -> float | None:
    """Share of the heat map's mass (negative values clipped) inside the boxes: 0..1.

    None without boxes; 0.0 for an all-zero map (it puts no energy anywhere, so none on the finding).
    """
    boxes = [tuple(b) for b in boxes]
    if not boxes:
        return None
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if h.ndim != 2 or h.size == 0:
        raise ValueError(f"energy share needs a 2-D heat map, got shape {h.shape}")
    h = np.maximum(h, 0.0)
    total = float(h.sum())
    if total <= 0.0:
        return 0.0
    return float(h[_box_mask(boxes, *h.shape)].sum() / total)


def wilson_interval(hits: int, n: int, confidence: float = 0.95) -> list[float] | None:
    """Wilson score interval for a proportion (None when n == 0)."""
    if n <= 0:
        return None
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = hits / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def pointing_game_summary(hits: Sequence[bool | None], *, centre_hits: Sequence[bool] | None = None,
                          random_chance: Sequence[float] | None = None,
                          tolerance: float = DEFAULT_TOLERANCE_PX,
                          energies: Sequence[float | None] | None = None,
                          area_fractions: Sequence[float] | None = None) -> dict[str, Any]:
    """Aggregate per-image hits (None = no boxes, skipped) into a JSON-safe summary.

    Returns ``{"n", "hits", "hit_rate", "ci95", "tolerance_px", "centre_baseline", "random_baseline"}``;
    rates are None when no image counted. With `energies` (per-image `energy_share`) it adds
    ``"energy_share"`` (their mean) and with `area_fractions` (box area / image area) the uniform map's
    ``"energy_baseline"``.
    """
    counted = [bool(h) for h in hits if h is not None]
    n, k = len(counted), sum(counted)
    out: dict[str, Any] = {"n": n, "hits": k, "hit_rate": k / n if n else None,
                           "ci95": wilson_interval(k, n), "tolerance_px": float(tolerance)}
    out["centre_baseline"] = (sum(map(bool, centre_hits)) / len(centre_hits)) if centre_hits else None
    out["random_baseline"] = float(np.mean(random_chance)) if random_chance else None
    if energies is not None:
        kept = [float(e) for e in energies if e is not None]
        out["energy_share"] = float(np.mean(kept)) if kept else None
    if area_fractions is not None:
        out["energy_baseline"] = float(np.mean(area_fractions)) if len(area_fractions) else None
    return out
