"""Training on windows: a model that must find a small fracture learns from close-up windows labelled by the boxes.

Most draws cut one square window (a side of `WINDOW_SHARE` of the image) from a cached image and enlarge it to the
training size. The expert boxes label it: a window of an abnormal image is abnormal only when it holds a finding
(`window_label`), so the windows away from the fracture teach what normal bone looks like up close. Most windows of
a boxed image (`ON_BOX_CHANCE`) are placed over one of its boxes, since a random window would rarely hold one. The
other draws (`WHOLE_CHANCE`) show the whole image with its own label, so the same network also scores the whole view
(`models.registry.EfficientNetLite2Windows` averages both); an abnormal image without boxes cannot say which window
holds the finding and is always shown whole. Draws are seeded by (seed, epoch, image index) like the rest of the
augmentation.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["WINDOW_SHARE", "ON_BOX_CHANCE", "WHOLE_CHANCE", "window_label", "place_window", "draw_window"]

WINDOW_SHARE: tuple[float, float] = (0.42, 0.62)
"""A window's side as a share of the image's side, drawn uniformly: around the 0.5 the scoring windows have."""
ON_BOX_CHANCE = 0.7
"""How often a boxed image's window is placed over one of its boxes (else anywhere)."""
WHOLE_CHANCE = 0.3
"""How often a draw is the whole image (with the image's label) instead of a window."""
_HALF = 0.5

Box = Sequence[float]


def window_label(boxes: Sequence[Box], x0: float, y0: float, side: float) -> float:
    """1.0 when half of some box lies inside the window (or a box covers half of it), else 0.0; all in 0..1."""
    for bx0, by0, bx1, by1 in boxes:
        inter_w = max(0.0, min(bx1, x0 + side) - max(bx0, x0))
        inter_h = max(0.0, min(by1, y0 + side) - max(by0, y0))
        inter = inter_w * inter_h
        if inter >= _HALF * max(1e-9, (bx1 - bx0) * (by1 - by0)) or inter >= _HALF * side * side:
            return 1.0
    return 0.0


def place_window(u: Sequence[float], boxes: Sequence[Box]) -> tuple[float, float, float]:
    """(x0, y0, side) in 0..1 from five uniform draws `u`: the side, whether to aim at a box, which box, and where
    the box falls inside the window (20-80% of the side), or the window's place when not aiming; kept in the image."""
    side = WINDOW_SHARE[0] + u[0] * (WINDOW_SHARE[1] - WINDOW_SHARE[0])
    if boxes and u[1] < ON_BOX_CHANCE:
        bx0, by0, bx1, by1 = boxes[min(int(u[2] * len(boxes)), len(boxes) - 1)]
        x0 = (bx0 + bx1) / 2 - side * (0.2 + 0.6 * u[3])
        y0 = (by0 + by1) / 2 - side * (0.2 + 0.6 * u[4])
    else:
        x0, y0 = u[3] * (1.0 - side), u[4] * (1.0 - side)
    return min(max(0.0, x0), 1.0 - side), min(max(0.0, y0), 1.0 - side), side


def draw_window(image: torch.Tensor, label: float, boxes: Sequence[Box], generator: torch.Generator,
                size: int) -> tuple[torch.Tensor, float]:
    """One training draw from a (S, S) uint8 image: a (size, size) uint8 window and its label. A normal image's
    windows are normal. The whole image (resized) with its own label: in `WHOLE_CHANCE` of the draws, and always
    for an abnormal image without boxes."""
    u = torch.rand(6, generator=generator).tolist()
    if u[5] < WHOLE_CHANCE or (label >= _HALF and not boxes):
        return _resized(image, size), label
    x0, y0, side = place_window(u, boxes)
    full = image.shape[-1]
    c0, r0, pixels = int(x0 * full), int(y0 * full), max(8, int(side * full))
    window = _resized(image[r0:r0 + pixels, c0:c0 + pixels], size)
    return window, window_label(boxes, x0, y0, side) if label >= _HALF else 0.0


def _resized(image: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W) uint8 -> (size, size) uint8, bilinear (antialiased when shrinking)."""
    if tuple(image.shape) == (size, size):
        return image
    out = F.interpolate(image[None, None].float(), size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out[0, 0].round_().clamp_(0, 255).to(torch.uint8)
