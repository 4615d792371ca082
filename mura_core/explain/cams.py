"""Heat maps: where in the image the model's abnormality score comes from.

One entry point, `explain_batch`, computes the logits AND the heat maps of a batch from the SAME
forward pass (plus, for gradient methods, one backward pass that only runs from the logit back to the
target layer); `explain_many` gives several methods from that one pass. Methods (`CAM_METHODS`):

- ``cam`` (the library default, `DEFAULT_CAM`): classic CAM (Zhou et al. 2016): the final Linear weights
  times the last feature maps. Forward only, so it is the cheapest; needs a "global average pool + one
  Linear" head (`ArchSpec.classic_cam(model)` not None). For the normal target the weights are negated.
- ``cam-ms``: multi-scale CAM (the shipped models' default map, named per model in ``weights/index.json``):
  classic CAM of the input at each of `MULTISCALE_FACTORS` (the input enlarged by bilinear interpolation)
  and of its mirror image, each map min-maxed, brought back to the input size (mirrored maps flipped back)
  and averaged. Four forwards instead of one; a 10x10 grid at 320 px becomes 10x10 and 14x14 grids offset
  by the mirror, so the average places a peak finer than one cell, and noise not in every pass cancels.
- ``cam-zoom``: classic CAM refined by one look closer: the map of the input (flip-averaged under the test-time
  flip, whose two forwards the scores need anyway), then ONE more forward over a window around its peak
  (`ZOOM_WINDOW` of the side) enlarged `ZOOM_FACTOR` times; the window's map, tapered to zero at its edges, is
  added where the window lies and the sum min-maxed. A finer grid where the evidence is, at the cost of a
  small forward (about 0.44 of one at 384 px): on the default ensemble's valid boxes it hits as many as
  ``cam-ms`` at about a third of its cost (README, Results and Speed).
- ``gradcam``, ``hirescam``, ``gradcam++``, ``xgradcam``, ``layercam``: gradient methods, written here
  with the weighting formulas of the pytorch-grad-cam package (tests check they match it), on
  `ArchSpec.cam_target_layer(model)`; `ArchSpec.reshape_transform` turns transformer tokens into maps.
- ``eigencam``: first principal component of the target activations (class-agnostic; the sign is
  chosen so the map agrees with the channel-summed activation).
- ``layercam-fused`` and ``gradcam-fused``: pytorch-grad-cam's LayerCAM /
  Grad-CAM over several stages (`fusion_layers`: the target layer plus the last block at each finer
  resolution, `FUSION_DEPTH` resolutions), each map ReLU'd and min-maxed, then averaged by the library.
  For EfficientNet-Lite0 at 224 px that adds a 14x14 map to the 7x7 one. One full backward (weights
  frozen for it, so no weight gradients); a fine map for hairline findings a 7x7 grid cannot place.
- ``rollout``: attention rollout (Abnar & Zuidema 2020, `explain.rollout`): the class token's share of
  every patch token, multiplied through the encoder layers. Only for models with attention layers (the
  hybrids, e.g. the shipped `hybrid_lite2_box`, whose default map it is); class-agnostic.
- ``scorecam``, ``ablationcam``: delegated to pytorch-grad-cam; they run hundreds to thousands of
  extra forward passes per image, so they are listed in `SLOW_METHODS` and never a default
  (`explain.slow` adds an estimate, progress, cancel and a one-at-a-time gate).

Target: ``"abnormal"`` explains the abnormal logit (pytorch-grad-cam's ``BinaryClassifierOutputTarget(1)``),
``"normal"`` its negation (``BinaryClassifierOutputTarget(0)``).

Normalisation: ReLU, then per-image min-max to 0..1 at the feature-map resolution (the maximum stays
the maximum, unlike MONAI's inverting normaliser), then bilinear resize to the input size. A flat map
(no positive evidence) is all zeros.

Thread safety: hooks are registered per call and removed before returning (even on errors); a lock per
model serialises calls that hook the same model, and each hook only acts on forwards run by the thread
that registered it, so unhooked forwards on other threads are never disturbed.

Coordinates: `heatmap_peak` returns (x, y) in 0..1 of the image width/height at the CENTRE of the
maximal pixel, ``x = (column + 0.5) / W``, ``y = (row + 0.5) / H`` -- the same convention as the
normalised finding boxes (x0, y0, x1, y1), so ``x0 <= x <= x1`` tests "inside the box".

Example:
    >>> maps, logits = explain_batch(model, get_arch("densenet121"), batch, "cam")  # doctest: +SKIP
    >>> rgb = overlay(image, resize_heatmap(maps[0], image.shape), colormap="inferno", alpha=0.4)  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from mura_core.explain.rollout import attention_rollout, has_attention
from mura_core.models.devices import forward_chunks

__all__ = [
    "CAM_METHODS",
    "CAM_TABLE",
    "CLASSIC_METHODS",
    "CamMethod",
    "DEFAULT_CAM",
    "FALLBACK_CAM",
    "OFFERED_COLORMAPS",
    "COLORMAPS",
    "FUSION_DEPTH",
    "GRADIENT_METHODS",
    "MULTILAYER_METHODS",
    "MULTISCALE_FACTORS",
    "MULTISCALE_METHODS",
    "SELF_FLIPPING_METHODS",
    "SLOW_METHODS",
    "TARGETS",
    "ZOOM_FACTOR",
    "ZOOM_METHODS",
    "ZOOM_WINDOW",
    "ATTENTION_METHODS",
    "ExplainError",
    "SlowBusy",
    "available_methods",
    "default_method",
    "explain_batch",
    "explain_many",
    "explain_with_flip",
    "fusion_layers",
    "heatmap_peak",
    "model_lock",
    "normalise_map",
    "overlay",
    "resize_heatmap",
    "scaled_side",
    "supports_method",
]

@dataclass(frozen=True)
class CamMethod:
    """One heat-map method: its name, how it is computed, and whether it is slow."""

    name: str
    family: str
    """'classic' (forward only), 'multiscale' (classic CAM over several input scales and mirror
    images: a few forwards), 'zoom' (classic CAM refined by one forward over a window around its peak),
    'gradient' (one backward to the target layer), 'eigen' (activations
    only), 'multilayer' (pytorch-grad-cam over several stages: one full backward), 'attention' (the
    transformer's attention weights, forward only; models with attention layers only) or 'perturbation'
    (pytorch-grad-cam: many extra forwards)."""
    description: str
    default: bool = False
    """The app's and evaluate's default map (exactly one row; see `DEFAULT_CAM`)."""

    @property
    def slow(self) -> bool:
        """Hundreds of extra forward passes per image: never a default, marked slow in the app."""
        return self.family == "perturbation"


CAM_TABLE: tuple[CamMethod, ...] = (
    CamMethod("cam-ms", "multiscale",
              "multi-scale CAM: classic CAM averaged over the input at 1x and 1.4x and their mirror images "
              "(4 forwards): a finer, steadier peak"),
    CamMethod("cam-zoom", "zoom",
              "zoomed CAM: classic CAM refined by one more forward over a window around its peak, enlarged "
              "1.6x: a finer peak where the evidence is, at a fraction of cam-ms's cost"),
    CamMethod("cam", "classic", "classic CAM: final Linear weights times the last feature maps", default=True),
    CamMethod("gradcam", "gradient", "Grad-CAM: channel weights = mean gradient"),
    CamMethod("hirescam", "gradient", "HiResCAM: gradient times activation, per position"),
    CamMethod("gradcam++", "gradient", "Grad-CAM++: higher-order gradient weights"),
    CamMethod("xgradcam", "gradient", "XGrad-CAM: activation-normalised gradient weights"),
    CamMethod("layercam", "gradient", "LayerCAM: positive gradient times activation"),
    CamMethod("eigencam", "eigen", "Eigen-CAM: first principal component of the activations"),
    CamMethod("layercam-fused", "multilayer",
              "LayerCAM fused over the last 2 resolutions (pytorch-grad-cam): finer than one 7x7 map"),
    CamMethod("gradcam-fused", "multilayer",
              "Grad-CAM fused over the last 2 resolutions (pytorch-grad-cam)"),
    CamMethod("rollout", "attention",
              "Attention rollout (Abnar & Zuidema 2020): the class token's attention, multiplied through the "
              "encoder layers; transformer models only, the same map for either target"),
    CamMethod("scorecam", "perturbation", "Score-CAM (pytorch-grad-cam)"),
    CamMethod("ablationcam", "perturbation", "Ablation-CAM (pytorch-grad-cam)"),
)
"""Every heat-map method, in the order offered; every list and set below derives from it."""

CAM_METHODS: tuple[str, ...] = tuple(m.name for m in CAM_TABLE)
"""Every heat-map method by name."""

GRADIENT_METHODS: frozenset[str] = frozenset(m.name for m in CAM_TABLE if m.family == "gradient")
"""Methods that need d(target logit)/d(activations): one extra backward through the head."""

MULTILAYER_METHODS: frozenset[str] = frozenset(m.name for m in CAM_TABLE if m.family == "multilayer")
"""Methods fused from several stages (`fusion_layers`): finer maps at the cost of a full backward."""

FUSION_DEPTH = 2
"""How many resolutions the fused methods combine: the target layer's plus the next finer ones
(2 for EfficientNet-Lite0 at 224 px: 7x7 and 14x14; 3 and 4 measured no better, see README, Results)."""

ATTENTION_METHODS: frozenset[str] = frozenset(m.name for m in CAM_TABLE if m.family == "attention")
"""Methods read from a transformer's attention weights: offered only where `rollout.has_attention`."""

SLOW_METHODS: frozenset[str] = frozenset(m.name for m in CAM_TABLE if m.slow)
"""Methods that run many extra forward passes per image (minutes on a CPU for a DenseNet)."""

CLASSIC_METHODS: frozenset[str] = frozenset(m.name for m in CAM_TABLE
                                            if m.family in ("classic", "multiscale", "zoom"))
"""Methods built from the final Linear weights: they need a "global pool + one Linear" head."""

MULTISCALE_METHODS: frozenset[str] = frozenset(m.name for m in CAM_TABLE if m.family == "multiscale")
"""Methods averaged over several input scales and mirror images (`MULTISCALE_FACTORS`)."""

ZOOM_METHODS: frozenset[str] = frozenset(m.name for m in CAM_TABLE if m.family == "zoom")
"""Methods that refine a classic CAM with one forward over a window around its peak (`ZOOM_WINDOW`)."""

SELF_FLIPPING_METHODS: frozenset[str] = MULTISCALE_METHODS | ZOOM_METHODS
"""Methods that forward the mirror images themselves under the test-time flip (`explain_with_flip`), so the
flip's logits come from their passes."""

ZOOM_WINDOW: float = 0.4
"""``cam-zoom``'s window side as a share of the input side (154 px of 384), centred on the first map's peak and
kept inside the image. 0.33-0.5 were tried on the valid boxes (README, Results)."""

ZOOM_FACTOR: float = 1.6
"""How much ``cam-zoom`` enlarges its window (side rounded to a multiple of 32 px: 154 -> 256 px at 384)."""

ZOOM_TAPER: float = 0.25
"""Share of the window's side over which its map fades to zero at each edge (a raised cosine), so the
window leaves no square edge in the overlay."""

MULTISCALE_FACTORS: tuple[float, ...] = (1.0, 1.4)
"""Input scales of ``cam-ms`` (each with its mirror image); an enlarged side is rounded to a multiple of
32 px (the CNNs' stride), so 320 px gives 320 and 448, 224 px gives 224 and 320. The first is 1.0: its
forward gives the logits."""

DEFAULT_CAM: str = next(m.name for m in CAM_TABLE if m.default)
"""The library's default method (the `CAM_TABLE` row marked default): classic CAM, one forward. A model's
index entry can name another (``weights/index.json`` "default_cam", `models.weights.default_cam_for`): the
shipped models name ``cam-ms``, which on their valid splits pointed at expert boxes more often than one-pass
classic CAM and every other fast method, on both sources (README, Results), for four forwards instead of one."""

FALLBACK_CAM = "gradcam"
"""The default method for every other architecture (works on all of them)."""

TARGETS: dict[str, str] = {
    "abnormal": "Evidence for abnormal",
    "normal": "Evidence for normal",
}
"""CAM targets: the class whose evidence the heat map shows, with its label in words."""

COLORMAPS: dict[str, int] = {
    name.removeprefix("COLORMAP_").lower(): getattr(cv2, name)
    for name in dir(cv2) if name.startswith("COLORMAP_")
}
"""Colour map names accepted by `overlay` (every cv2.COLORMAP_*: jet, inferno, viridis, magma, turbo...)."""

OFFERED_COLORMAPS: tuple[str, ...] = ("jet", "turbo", "inferno", "viridis", "hot", "bone")
"""The colour maps the app offers for overlays (a subset of `COLORMAPS`)."""

_EPS = 1e-7

_UNSUPPORTED_WHY = {**{m: "(needs a global-pool + Linear head; use gradcam)" for m in CLASSIC_METHODS},
                    "ablationcam": "(token target layer)"}


class ExplainError(ValueError):
    """An unknown method or target, or a method the architecture cannot support."""


class SlowBusy(ExplainError):
    """Another slow heat map (ScoreCAM / AblationCAM) is running in this process: one at a time."""


_SLOW_GATE = threading.BoundedSemaphore(1)
"""One slow heat map per process, so one session cannot starve the others on a 2-core server."""


# ----------------------------------------------------------------------------------------------
# method choice
# ----------------------------------------------------------------------------------------------

def supports_method(model: nn.Module, arch_spec: Any, method: str) -> bool:
    """True when `method` can run on this model (classic CAM needs a pool + Linear head)."""
    if method not in CAM_METHODS:
        return False
    if method in CLASSIC_METHODS:
        return arch_spec.classic_cam(model) is not None
    if method in ATTENTION_METHODS:
        return has_attention(model)
    if method == "ablationcam" and arch_spec.reshape_transform is not None:
        return False  # pytorch-grad-cam's channel ablation needs a (N, C, h, w) target layer
    return True


def default_method(model: nn.Module, arch_spec: Any) -> str:
    """`DEFAULT_CAM` where the model supports it, else ``"gradcam"`` (works on every architecture)."""
    return DEFAULT_CAM if supports_method(model, arch_spec, DEFAULT_CAM) else FALLBACK_CAM


def available_methods(model: nn.Module, arch_spec: Any, *, include_slow: bool = True) -> list[str]:
    """The methods this model supports, in `CAM_METHODS` order."""
    return [m for m in CAM_METHODS
            if supports_method(model, arch_spec, m) and (include_slow or m not in SLOW_METHODS)]


# ----------------------------------------------------------------------------------------------
# locking and hooks
# ----------------------------------------------------------------------------------------------

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises hooked (and, in `Predictor`, all) forwards through one model."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


class _Capture:
    """Forward hook state: the target layer's output, as seen by the registering thread only."""

    def __init__(self, with_grad: bool) -> None:
        self.owner = threading.get_ident()
        self.with_grad = with_grad
        self.activation: torch.Tensor | None = None

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if threading.get_ident() != self.owner or not isinstance(output, torch.Tensor):
            return None
        if not self.with_grad:
            self.activation = output.detach().clone()
            return None
        # Gradient methods: the layers before the target ran without autograd; from here on the
        # graph is recorded with the target output as a leaf, so the backward pass stops here.
        torch.set_grad_enabled(True)
        leaf = output.detach().requires_grad_(True)
        self.activation = leaf
        return leaf.clone()


@contextlib.contextmanager
def _hooked(layer: nn.Module, capture: _Capture) -> Iterator[_Capture]:
    """Register the capture hook for the duration of the block; always removed afterwards."""
    handle = layer.register_forward_hook(capture)
    try:
        yield capture
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------
# map arithmetic (numpy, per batch)
# ----------------------------------------------------------------------------------------------

def normalise_map(cam: np.ndarray) -> np.ndarray:
    """Per-image min-max to 0..1 over the last two axes (max stays max); flat maps become zeros."""
    cam = np.asarray(cam, dtype=np.float64)
    low = cam.min(axis=(-2, -1), keepdims=True)
    high = cam.max(axis=(-2, -1), keepdims=True)
    span = high - low
    # Relative flatness test: raw maps of untrained models can be ~1e-9 yet well structured.
    flat = ~(span > 1e-6 * np.maximum(np.abs(high), np.abs(low))) | ~np.isfinite(span) | (span <= 1e-30)
    safe = np.where(flat, 1.0, span)
    return np.where(flat, 0.0, (cam - low) / safe).astype(np.float32)


def resize_heatmap(heatmap: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size = (H, W)`` (e.g. ``image.shape``), clipped to 0..1."""
    h, w = int(size[0]), int(size[1])
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape == (h, w):
        return heatmap.copy()
    out = cv2.resize(heatmap, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _weighted_maps(method: str, acts: np.ndarray, grads: np.ndarray | None) -> np.ndarray:
    """Raw (N, h, w) maps from activations (N, C, h, w) and gradients by the method's formula."""
    if method == "gradcam":
        weights = grads.mean(axis=(2, 3))
        return np.einsum("nc,nchw->nhw", weights, acts)
    if method == "hirescam":
        return (grads * acts).sum(axis=1)
    if method == "gradcam++":
        g2 = grads ** 2
        g3 = g2 * grads
        sum_acts = acts.sum(axis=(2, 3), keepdims=True)
        alpha = g2 / (2 * g2 + sum_acts * g3 + 1e-6)
        alpha = np.where(grads != 0, alpha, 0.0)
        weights = (np.maximum(grads, 0) * alpha).sum(axis=(2, 3))
        return np.einsum("nc,nchw->nhw", weights, acts)
    if method == "xgradcam":
        sum_acts = acts.sum(axis=(2, 3), keepdims=True)
        weights = (grads * acts / (sum_acts + _EPS)).sum(axis=(2, 3))
        return np.einsum("nc,nchw->nhw", weights, acts)
    if method == "layercam":
        return (np.maximum(grads, 0) * acts).sum(axis=1)
    if method == "eigencam":
        return _eigen_maps(acts)
    raise ExplainError(f"no formula for {method!r}")


def _eigen_maps(acts: np.ndarray) -> np.ndarray:
    """Projection of each position's (centred) channel vector on the first principal direction."""
    n, c, h, w = acts.shape
    out = np.zeros((n, h, w), dtype=np.float32)
    for i in range(n):
        flat = acts[i].reshape(c, h * w).T.astype(np.float64)
        flat = flat - flat.mean(axis=0)
        if not np.any(flat):
            continue
        _, _, vt = np.linalg.svd(flat, full_matrices=False)
        proj = flat @ vt[0]
        strength = acts[i].sum(axis=0).ravel()
        if np.dot(proj - proj.mean(), strength - strength.mean()) < 0:
            proj = -proj  # SVD's sign is arbitrary: point it where the activations are strong
        out[i] = proj.reshape(h, w)
    return out


def _to_input_size(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """ReLU, min-max per image at map resolution, bilinear resize to the input size (N, H, W).

    The resized maps are min-maxed again so the peak is exactly 1 (interpolation can lower it).
    """
    maps = normalise_map(np.maximum(raw, 0.0))
    if not len(maps):
        return np.zeros((0, *size), dtype=np.float32)
    return normalise_map(np.stack([resize_heatmap(m, size) for m in maps]))


# ----------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------

def _check(method: str, target: str) -> None:
    if method not in CAM_METHODS:
        raise ExplainError(f"unknown CAM method {method!r}; choose from {', '.join(CAM_METHODS)}")
    if target not in TARGETS:
        raise ExplainError(f"unknown target {target!r}; choose 'abnormal' or 'normal'")


def _as_maps(tensor: torch.Tensor, reshape: Callable[[torch.Tensor], torch.Tensor] | None) -> np.ndarray:
    """Target-layer tensor -> float32 numpy (N, C, h, w), through the arch's reshape for tokens."""
    if reshape is not None:
        tensor = reshape(tensor)
    if tensor.ndim != 4:
        raise ExplainError(f"target layer gives a {tensor.ndim}-D output; a (N, C, h, w) map is needed "
                           "(set ArchSpec.reshape_transform for token outputs)")
    return tensor.detach().float().cpu().numpy()


def _classic_raw(acts: np.ndarray, weight: torch.Tensor, target: str) -> np.ndarray:
    """Classic CAM from feature maps (N, C, h, w): sum_c w_c * A_c, weights negated for 'normal'."""
    w = weight.detach().float().reshape(-1).cpu().numpy()
    sign = 1.0 if target == "abnormal" else -1.0
    return np.einsum("c,nchw->nhw", sign * w, acts)


def _forward_capture(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, target: str, needs_grad: bool,
                     reshape: Callable[[torch.Tensor], torch.Tensor] | None, name: str
                     ) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor]:
    """One forward with `layer`'s output captured; with `needs_grad`, one backward from the target logit.

    Without gradients the forward runs under inference mode. With them, the layers before `layer` run
    without autograd and the graph starts at `layer`, so the backward only crosses the head.
    Returns (activations (N, C, h, w), gradients or None, logits).
    """
    capture = _Capture(with_grad=needs_grad)
    previous = torch.is_grad_enabled()
    try:
        with torch.inference_mode(False):
            inputs = inputs.clone() if inputs.is_inference() else inputs  # callers may be in inference mode
            with _hooked(layer, capture):
                if needs_grad:
                    torch.set_grad_enabled(False)  # the hook turns autograd on at the target layer
                    logits = model(inputs)
                else:
                    with torch.inference_mode():
                        logits = model(inputs)
            if capture.activation is None:
                raise ExplainError(f"the heat-map layer of {name} did not run in forward")
            grads = None
            if needs_grad:
                score = logits[:, 0] if target == "abnormal" else -logits[:, 0]
                (grad,) = torch.autograd.grad(score.sum(), capture.activation, allow_unused=True)
                if grad is None:
                    grad = torch.zeros_like(capture.activation)
                grads = _as_maps(grad, reshape)
            acts = _as_maps(capture.activation, reshape)
    finally:
        torch.set_grad_enabled(previous)
    return acts, grads, logits.detach()


def scaled_side(side: int, factor: float) -> int:
    """`side` times `factor`, rounded to a multiple of 32 px (at least 32): the CNNs' output stride."""
    return max(32, int(round(side * factor / 32.0)) * 32) if factor != 1.0 else int(side)


def _classic_pass(model: nn.Module, arch_spec: Any, rows: torch.Tensor, target: str, size: tuple[int, int]
                  ) -> tuple[np.ndarray, torch.Tensor]:
    """Classic CAM of `rows` min-maxed at `size` (N, H, W), and their logits. On the CPU one row per forward
    (batched 320-544 px forwards were cache-bound there, 2-4x slower); on a GPU one forward."""
    feature_layer, weight = arch_spec.classic_cam(model)
    n = int(rows.shape[0])
    step = n if rows.device.type != "cpu" else 1
    acts, raw = [], []
    for start in range(0, n, step):
        part_acts, _, part_logits = _forward_capture(model, feature_layer, rows[start:start + step], target,
                                                     False, None, arch_spec.name)
        acts.append(part_acts)
        raw.append(part_logits)
    return _to_input_size(_classic_raw(np.concatenate(acts), weight, target), size), torch.cat(raw)


def _multiscale_cam(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, target: str
                    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """``cam-ms``: classic CAM of the inputs at every `MULTISCALE_FACTORS` scale and of their mirror
    images, each min-maxed at the input size (mirrored maps flipped back), averaged and min-maxed again.

    The first pass is the plain inputs: its logits are returned, and a caller's feature hook
    (`explain.features.capture_pooled`, the scope check) sees its rows first. Returns (maps (N, S, S), the logits
    of the unscaled inputs, the logits of their unscaled mirror images): the second pass is the test-time
    flip's forward (`explain_with_flip`)."""
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    total = np.zeros((int(inputs.shape[0]), *size), dtype=np.float64)
    logits: list[torch.Tensor] = []
    for index, (rows, mirrored) in enumerate(_multiscale_passes(inputs)):
        maps, raw = _classic_pass(model, arch_spec, rows, target, size)
        total += maps[:, :, ::-1] if mirrored else maps
        if index < 2:  # the unscaled inputs, then their mirror images
            logits.append(raw)
    return normalise_map(total), logits[0], logits[1]


def zoom_window(heatmap: np.ndarray, share: float = ZOOM_WINDOW) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the window `share` of each side, centred on the map's peak and shifted to
    lie inside the map."""
    height, width = heatmap.shape
    x, y = heatmap_peak(heatmap)
    win_h, win_w = max(1, int(round(height * share))), max(1, int(round(width * share)))
    top = int(np.clip(round(y * height - win_h / 2.0), 0, height - win_h))
    left = int(np.clip(round(x * width - win_w / 2.0), 0, width - win_w))
    return top, left, win_h, win_w


def window_taper(height: int, width: int, share: float = ZOOM_TAPER) -> np.ndarray:
    """(height, width) weights: 1 inside, a raised cosine down to 0 over `share` of each side at the edges."""
    def ramp(n: int) -> np.ndarray:
        weights = np.ones(n)
        k = max(1, int(n * share))
        edge = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, k))
        weights[:k] = edge
        weights[n - k:] = np.minimum(weights[n - k:], edge[::-1])
        return weights
    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def _zoom_cam(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, target: str, mirror: bool
              ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
    """``cam-zoom``: classic CAM of the inputs (averaged with that of their mirror images when `mirror`: the
    test-time flip's forward), refined by one forward over each row's `zoom_window` enlarged `ZOOM_FACTOR`
    times; the window's map (min-maxed, `window_taper`ed) is added in place and the sum min-maxed.

    The plain inputs run first, so their logits are the scores and a caller's feature hook sees their rows first.
    Returns (maps (N, S, S), the inputs' logits, the mirror images' logits or None without `mirror`)."""
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    base, plain = _classic_pass(model, arch_spec, inputs, target, size)
    mirrored = None
    if mirror:
        mirror_maps, mirrored = _classic_pass(model, arch_spec, torch.flip(inputs, dims=[-1]), target, size)
        base = normalise_map((base + mirror_maps[:, :, ::-1]) / 2.0)
    windows = [zoom_window(m) for m in base]
    win_h, win_w = windows[0][2], windows[0][3]
    side = (scaled_side(win_h, ZOOM_FACTOR), scaled_side(win_w, ZOOM_FACTOR))
    crops = torch.cat([inputs[i:i + 1, :, top:top + win_h, left:left + win_w]
                       for i, (top, left, _, _) in enumerate(windows)])
    crops = torch.nn.functional.interpolate(crops, size=side, mode="bilinear", align_corners=False)
    zoomed, _ = _classic_pass(model, arch_spec, crops, target, (win_h, win_w))
    taper = window_taper(win_h, win_w)
    total = base.astype(np.float64)
    for i, (top, left, _, _) in enumerate(windows):
        total[i, top:top + win_h, left:left + win_w] += zoomed[i] * taper
    return normalise_map(total), plain, mirrored


def _self_flipping_cam(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, target: str, method: str,
                       mirror: bool) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
    """A `SELF_FLIPPING_METHODS` map: (maps, the inputs' logits, the mirror images' logits or None). ``cam-ms``
    always forwards the mirror images; ``cam-zoom`` only with `mirror` (the test-time flip)."""
    if method in MULTISCALE_METHODS:
        return _multiscale_cam(model, arch_spec, inputs, target)
    return _zoom_cam(model, arch_spec, inputs, target, mirror=mirror)


def _multiscale_passes(inputs: torch.Tensor) -> Iterator[tuple[torch.Tensor, bool]]:
    """The inputs at each `MULTISCALE_FACTORS` scale (the plain inputs first), each followed by its mirror:
    (batch, mirrored)."""
    height, width = int(inputs.shape[-2]), int(inputs.shape[-1])
    for factor in MULTISCALE_FACTORS:
        scaled = inputs
        if factor != 1.0:
            scaled = torch.nn.functional.interpolate(
                inputs, size=(scaled_side(height, factor), scaled_side(width, factor)), mode="bilinear",
                align_corners=False)
        yield scaled, False
        yield torch.flip(scaled, dims=[-1]), True


def _library(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, method: str,
             target: str) -> tuple[np.ndarray, torch.Tensor]:
    """ScoreCAM / AblationCAM through pytorch-grad-cam (slow); its maps are already min-max scaled."""
    from pytorch_grad_cam import AblationCAM, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    cls = ScoreCAM if method == "scorecam" else AblationCAM
    category = 1 if target == "abnormal" else 0
    targets = [BinaryClassifierOutputTarget(category) for _ in range(inputs.shape[0])]
    if not _SLOW_GATE.acquire(blocking=False):
        raise SlowBusy(f"another slow heat map is running on this server; try {method} again when it has "
                       "finished, or pick a fast method")
    try:
        cam = cls(model=model, target_layers=[arch_spec.cam_target_layer(model)],
                  reshape_transform=arch_spec.reshape_transform)
        try:
            cam.batch_size = 64
            with _quiet_progress_bars():
                maps = cam(input_tensor=inputs, targets=targets)
            logits = cam.outputs.detach()
        finally:
            cam.activations_and_grads.release()
    finally:
        _SLOW_GATE.release()
    return np.asarray(maps, dtype=np.float32), logits


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """pytorch-grad-cam's ScoreCAM/AblationCAM tqdm bars disabled (they would print into the server log)."""
    import tqdm as tqdm_module  # the library calls tqdm.tqdm(...) through the module at run time

    original = tqdm_module.tqdm
    tqdm_module.tqdm = lambda *a, **k: original(*a, **{**k, "disable": True})
    try:
        yield
    finally:
        tqdm_module.tqdm = original


def _stage_list(model: nn.Module) -> nn.Module | None:
    """The model's longest ModuleList / Sequential: its children are the network's stages or blocks."""
    lists = [m for m in model.modules() if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) > 1]
    return max(lists, key=len, default=None)


_FUSION_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int, int], list[nn.Module]]]" = (
    weakref.WeakKeyDictionary())


def fusion_layers(model: nn.Module, arch_spec: Any, inputs: torch.Tensor,
                  depth: int = FUSION_DEPTH) -> list[nn.Module]:
    """The layers a fused method combines: the CAM target layer, then the last block at each finer resolution.

    The blocks are the children of the model's longest ModuleList/Sequential (EfficientNet's ``_blocks``,
    a DenseNet's ``features``); one probe forward (cached per model and input size) finds each block's
    output resolution. For EfficientNet-Lite0 at 224 px: ``_head_act`` (7x7), ``_blocks[10]`` (14x14),
    then (depth 3) ``_blocks[4]`` (28x28).
    """
    key = (int(inputs.shape[-2]), int(inputs.shape[-1]), int(depth))
    cached = _FUSION_CACHE.setdefault(model, {})
    if key in cached:
        return cached[key]
    target = arch_spec.cam_target_layer(model)
    stages = _stage_list(model)
    children = list(stages.children()) if stages is not None else []
    reshape = _maps_only(arch_spec.reshape_transform)
    sizes: dict[int, tuple[int, int]] = {}

    def recorder(i: int) -> Callable[..., None]:
        def hook(_m: nn.Module, _in: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                out = reshape(out) if reshape is not None else out
                if out.ndim == 4:
                    sizes[i] = (int(out.shape[-2]), int(out.shape[-1]))
        return hook

    handles = [target.register_forward_hook(recorder(-1))]
    handles += [child.register_forward_hook(recorder(i)) for i, child in enumerate(children)]
    try:
        with torch.inference_mode():
            model(inputs[:1])
    finally:
        for handle in handles:
            handle.remove()
    target_area = sizes[-1][0] * sizes[-1][1] if -1 in sizes else 0
    last_at: dict[tuple[int, int], int] = {}
    for i, hw in sorted(sizes.items()):
        if i >= 0 and hw[0] * hw[1] > target_area:
            last_at[hw] = i  # the last block that outputs each resolution finer than the target's
    finer = sorted(last_at.items(), key=lambda kv: kv[0][0] * kv[0][1])  # coarse -> fine
    layers: list[nn.Module] = [target] + [children[i] for _hw, i in finer[:max(0, depth - 1)]]
    cached[key] = layers
    return layers


def _maps_only(reshape: Callable[[torch.Tensor], torch.Tensor] | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The arch's token reshape applied to token outputs only (fused layers mix tokens and conv maps)."""
    if reshape is None:
        return None
    return lambda t: t if t.ndim == 4 else reshape(t)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients for the block (restored after): the backward skips weight gradients."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _library_fused(model: nn.Module, arch_spec: Any, inputs: torch.Tensor, method: str,
                   target: str) -> tuple[np.ndarray, torch.Tensor]:
    """LayerCAM / Grad-CAM over `fusion_layers` through pytorch-grad-cam (per-layer ReLU + min-max, mean)."""
    from pytorch_grad_cam import GradCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    cls = LayerCAM if method == "layercam-fused" else GradCAM
    category = 1 if target == "abnormal" else 0
    targets = [BinaryClassifierOutputTarget(category) for _ in range(inputs.shape[0])]
    layers = fusion_layers(model, arch_spec, inputs, FUSION_DEPTH)
    previous = torch.is_grad_enabled()
    with torch.inference_mode(False), _frozen(model):
        torch.set_grad_enabled(True)
        x = inputs.detach().clone()
        cam = cls(model=model, target_layers=layers, reshape_transform=_maps_only(arch_spec.reshape_transform))
        cam.compute_input_gradient = True  # the graph starts at the input: no weight gradients needed
        try:
            maps = cam(input_tensor=x, targets=targets)
            logits = cam.outputs.detach()
        finally:
            cam.activations_and_grads.release()
            torch.set_grad_enabled(previous)
    return np.asarray(maps, dtype=np.float32), logits


def _logits_np(logits: torch.Tensor) -> np.ndarray:
    return logits.float().reshape(-1).cpu().numpy()


def _checked_methods(model: nn.Module, arch_spec: Any, methods: Sequence[str], target: str) -> list[str]:
    """`methods` without repeats, each known and available for the model; ExplainError otherwise."""
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ExplainError("no heat-map method given")
    for method in methods:
        _check(method, target)
        if (method in (*CLASSIC_METHODS, "ablationcam", *ATTENTION_METHODS)
                and not supports_method(model, arch_spec, method)):
            raise ExplainError(f"{method} is not available for {arch_spec.name} "
                               + _UNSUPPORTED_WHY.get(method, "(no attention layers)"))
    return methods


def explain_with_flip(
    model: nn.Module,
    arch_spec: Any,
    inputs: torch.Tensor,
    methods: Sequence[str],
    target: str = "abnormal",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Test-time flip: heat maps averaged over each input and its mirror image, and the logits of both.

    A method that forwards the mirror images itself (`SELF_FLIPPING_METHODS`) runs on the inputs alone, and the
    flip's logits come from its passes: ``cam-ms`` already averages over the mirror images; ``cam-zoom`` here
    starts from the mirror-averaged classic CAM and zooms once into the plain input. Every other method runs on
    the inputs and their mirror images stacked (2N rows, `explain_many`), and each pair of maps is averaged after
    the mirrored one is flipped back. So the flip adds no forward to a ``cam-ms`` or ``cam-zoom`` study, and
    doubles the rows of any other.

    Returns:
        ({method: heatmaps float32 (N, S, S) in 0..1}, logits float32 (2N,): the inputs', then their mirrors').
    """
    methods = _checked_methods(model, arch_spec, methods, target)
    n = int(inputs.shape[0])
    out: dict[str, np.ndarray] = {}
    logits: np.ndarray | None = None
    others = [m for m in methods if m not in SELF_FLIPPING_METHODS]
    if others:
        stacked = torch.cat([inputs, torch.flip(inputs, dims=[-1])])
        maps, logits = explain_many(model, arch_spec, stacked, others, target)
        out.update({m: normalise_map((h[:n] + h[n:, :, ::-1]) / 2.0) for m, h in maps.items()})
    for method in (m for m in methods if m in SELF_FLIPPING_METHODS):
        with model_lock(model):
            out[method], plain, mirrored = _self_flipping_cam(model, arch_spec, inputs, target, method, mirror=True)
        if logits is None:
            logits = np.concatenate([_logits_np(plain), _logits_np(mirrored)])
    assert logits is not None
    return {m: out[m] for m in methods}, logits


def explain_many(
    model: nn.Module,
    arch_spec: Any,
    inputs: torch.Tensor,
    methods: Sequence[str],
    target: str = "abnormal",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Several heat-map methods from ONE forward (and at most one short backward) where possible.

    Every fast method is a formula over the same target-layer activations (and gradients), so a batch
    explained by cam, gradcam, hirescam, gradcam++, xgradcam, layercam and eigencam costs one forward.
    Classic CAM joins that pass when its feature layer is the target layer (all registered CNNs);
    ``cam-ms`` runs its own forwards (per scale; per row on the CPU) and slow methods run on their own. The maps equal
    those of `explain_batch` per method. On the CPU the rows go a few at a time (`models.devices.forward_chunks`:
    large batches are slower there), except for slow methods, which batch on their own.

    Returns:
        ({method: heatmaps float32 (N, S, S) in 0..1}, logits float32 (N,)).
    """
    methods = _checked_methods(model, arch_spec, methods, target)
    chunks = forward_chunks(inputs)
    if len(chunks) > 1 and not any(m in SLOW_METHODS for m in methods):
        parts = [explain_many(model, arch_spec, chunk, methods, target) for chunk in chunks]
        return ({m: np.concatenate([maps[m] for maps, _ in parts]) for m in methods},
                np.concatenate([logits for _, logits in parts]))
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    out: dict[str, np.ndarray] = {}
    logits: np.ndarray | None = None
    with model_lock(model):
        layer = arch_spec.cam_target_layer(model)
        shared = [m for m in methods if m not in SLOW_METHODS and m not in MULTILAYER_METHODS
                  and m not in ATTENTION_METHODS and m not in SELF_FLIPPING_METHODS]
        if "cam" in shared:
            feature_layer, weight = arch_spec.classic_cam(model)
            if feature_layer is not layer or arch_spec.reshape_transform is not None:
                acts, _, raw_logits = _forward_capture(model, feature_layer, inputs, target, False, None,
                                                       arch_spec.name)
                out["cam"] = _to_input_size(_classic_raw(acts, weight, target), size)
                logits = _logits_np(raw_logits)
                shared.remove("cam")
        if shared:
            needs_grad = any(m in GRADIENT_METHODS for m in shared)
            acts, grads, raw_logits = _forward_capture(model, layer, inputs, target, needs_grad,
                                                       arch_spec.reshape_transform, arch_spec.name)
            logits = _logits_np(raw_logits)
            for method in shared:
                raw = (_classic_raw(acts, arch_spec.classic_cam(model)[1], target) if method == "cam"
                       else _weighted_maps(method, acts, grads))
                out[method] = _to_input_size(raw, size)
        for method in (m for m in methods if m in SELF_FLIPPING_METHODS):
            out[method], raw_logits, _ = _self_flipping_cam(model, arch_spec, inputs, target, method, mirror=False)
            logits = _logits_np(raw_logits)
        for method in (m for m in methods if m in MULTILAYER_METHODS):
            maps, raw_logits = _library_fused(model, arch_spec, inputs, method, target)
            out[method] = np.stack([resize_heatmap(m, size) for m in normalise_map(maps)])
            if logits is None:
                logits = _logits_np(raw_logits)
        for method in (m for m in methods if m in ATTENTION_METHODS):
            grid, raw_logits = attention_rollout(model, inputs)
            out[method] = _to_input_size(grid, size)
            if logits is None:
                logits = _logits_np(raw_logits)
        slow = [m for m in methods if m in SLOW_METHODS]
        private = copy.deepcopy(model) if slow else None
    # Slow methods run on a private copy, outside the model's lock: minutes of ScoreCAM must not hold
    # up other sessions' scoring on the shared model (the gate in `_library` allows one at a time).
    for method in slow:
        maps, raw_logits = _library(private, arch_spec, inputs, method, target)
        out[method] = np.stack([resize_heatmap(m, size) for m in normalise_map(maps)])
        if logits is None:
            logits = _logits_np(raw_logits)
    return {m: out[m] for m in methods}, logits


def explain_batch(
    model: nn.Module,
    arch_spec: Any,
    inputs: torch.Tensor,
    method: str = "cam",
    target: str = "abnormal",
) -> tuple[np.ndarray, np.ndarray]:
    """Heat maps and logits of a batch from one forward pass.

    ``cam`` and ``eigencam`` need only the forward (inference mode); gradient methods add one backward
    from the logit to the target layer.

    Args:
        model: an eval-mode model whose forward returns (N, 1) logits, on the inputs' device.
        arch_spec: its `ArchSpec` (target layer, reshape transform, classic-CAM pieces).
        inputs: (N, 3, S, S) model inputs.
        method: a name from `CAM_METHODS`.
        target: ``"abnormal"`` or ``"normal"``: which decision to explain.

    Returns:
        (heatmaps float32 (N, S, S) in 0..1, logits float32 (N,)).
    """
    maps, logits = explain_many(model, arch_spec, inputs, [method], target)
    return maps[method], logits


# ----------------------------------------------------------------------------------------------
# display helpers
# ----------------------------------------------------------------------------------------------

def heatmap_peak(heatmap: np.ndarray) -> tuple[float, float]:
    """The maximum of a 2-D map as (x, y) in 0..1 image coordinates, at the pixel's centre.

    ``x = (column + 0.5) / W`` and ``y = (row + 0.5) / H``, matching normalised box corners. When
    several pixels share the maximum (e.g. a flat map) the centroid of those pixels is returned, so a
    flat map points at the image centre.
    """
    h = np.asarray(heatmap, dtype=np.float32)
    if h.ndim != 2 or h.size == 0:
        raise ValueError(f"heatmap_peak needs a non-empty 2-D map, got shape {h.shape}")
    rows, cols = np.nonzero(h >= h.max())
    height, width = h.shape
    return float((cols.mean() + 0.5) / width), float((rows.mean() + 0.5) / height)


def _grey_uint8(image: np.ndarray) -> np.ndarray:
    """A 2-D image (float 0..1 or uint8) as uint8 RGB (H, W, 3); RGB/RGBA input keeps its colours."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return np.ascontiguousarray(img[:, :, :3])
    raise ValueError(f"overlay needs a 2-D grey or RGB image, got shape {img.shape}")


def overlay(image: np.ndarray, heatmap: np.ndarray, colormap: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """The heat map coloured with `colormap` and blended over the image: uint8 RGB at the image's size.

    Args:
        image: 2-D grey image (float 0..1 or uint8) or RGB; its size sets the output size.
        heatmap: 2-D map in 0..1 (any size; resized bilinearly to the image).
        colormap: a cv2 colour map name (see `COLORMAPS`: jet, inferno, viridis, magma, turbo, ...).
        alpha: heat-map opacity, 0 (image only) .. 1 (heat map only).
    """
    key = colormap.lower().removeprefix("colormap_")
    if key not in COLORMAPS:
        raise ValueError(f"unknown colour map {colormap!r}; choose from {', '.join(sorted(COLORMAPS))}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be within 0..1")
    base = _grey_uint8(image)
    heat = resize_heatmap(np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1), base.shape[:2])
    coloured = cv2.applyColorMap((heat * 255.0 + 0.5).astype(np.uint8), COLORMAPS[key])
    coloured = cv2.cvtColor(coloured, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(base, 1.0 - alpha, coloured, alpha, 0.0)
