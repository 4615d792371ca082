"""View helpers for the pages: study text, tables, panels and the scored-study cache (no Streamlit needed).

The pages only arrange widgets; everything they display about a scored study is built here from
SCORE's `StudyResult` (duck-typed, so this module can be tested with plain objects):
the study summary sentence, the per-view results table, the image/overlay pair (zoomed and with
ground-truth boxes), PNG bytes for display, a short model-card summary, and a small thread-safe
LRU that caches scored studies by image hash so that changing opacity, colour map or zoom never
re-runs the model.

Example:
    >>> key = score_key("densenet169", [b"abc"], ["a.png"], body_part="WRIST", cam="gradcam")
    >>> cache = ResultCache(max_entries=2); cache.put(key, "result"); cache.get(key)
    'result'
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mura_core.data.studies import BodyPart, Box, Study
from mura_core.evaluation.reports import report_unflipped

__all__ = [
    "DISCLAIMER",
    "BOX_COLOUR",
    "ResultCache",
    "result_nbytes",
    "with_body_part",
    "ScoreKey",
    "image_sha256",
    "score_key",
    "study_summary",
    "left_out_of_scope",
    "view_status",
    "decision_label",
    "results_table",
    "to_uint8",
    "to_png_bytes",
    "zoom_crop",
    "draw_boxes",
    "thumbnail",
    "view_panels",
    "card_summary",
    "report_source",
    "meta_rows",
    "format_probability",
    "HEAT_SCALES",
    "scaled_heatmap",
    "colour_legend",
    "mark_peak",
    "with_legend",
    "compare_panel",
    "map_hit",
    "scaled_view",
]

DISCLAIMER = (
    "This is a **second-reader and teaching aid**, not a diagnostic device. Its scores come from "
    "models trained on small public data sets; they can be wrong, and the heat maps show where the "
    "model looked, not where a finding is. Every study needs a qualified reader."
)
"""What the tool is and is not, shown on the home page and under every result."""

BOX_COLOUR: tuple[int, int, int] = (255, 0, 255)
"""Ground-truth boxes are drawn in magenta: visible on grey film and on every offered colour map."""

# ----------------------------------------------------------------------------------------------
# caching scored studies
# ----------------------------------------------------------------------------------------------

def image_sha256(data: bytes) -> str:
    """Hex sha256 of a file's bytes: the identity of an image for caching."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ScoreKey:
    """Everything that changes a scored study: images (by hash), model and explanation settings.

    Display settings (opacity, colour map, zoom) are deliberately absent: they never re-run the model.
    """

    model: str
    images: tuple[tuple[str, str], ...]
    """(name, sha256) per view, in order."""
    body_part: str
    cam: str | None
    target: str
    tta: bool
    window: tuple[float, float] | None


def score_key(
    model: str,
    datas: Sequence[bytes | None],
    names: Sequence[str],
    *,
    body_part: BodyPart | str | None = None,
    cam: str | None = None,
    target: str = "abnormal",
    tta: bool = False,
    window: tuple[float, float] | None = None,
) -> ScoreKey:
    """The cache key of one scoring request; a view without bytes is keyed by its name only."""
    images = tuple(
        (str(name), image_sha256(data) if data is not None else "unreadable")
        for name, data in zip(names, datas, strict=True)
    )
    part = BodyPart.parse(getattr(body_part, "value", body_part)).value
    win = None if window is None else (float(window[0]), float(window[1]))
    return ScoreKey(str(model), images, part, cam, str(target), bool(tta), win)


def result_nbytes(result: Any) -> int:
    """Bytes held by a scored study's arrays (decoded images and heat maps of its views)."""
    total = 0
    for view in getattr(result, "views", []) or []:
        for attr in ("image", "heatmap"):
            arr = getattr(view, attr, None)
            total += int(getattr(arr, "nbytes", 0) or 0)
    return total


class ResultCache:
    """A thread-safe least-recently-used map from `ScoreKey` to a scored study.

    Shared by every browser session of one server process; values must be treated as read-only.
    Bounded by entry count and by the bytes its values hold (`sizeof`, default `result_nbytes`), so
    a few huge DICOMs cannot exhaust memory. `hits` and `misses` count lookups (the tests use them
    to prove the model is not re-run).
    """

    def __init__(self, max_entries: int = 32, max_bytes: int = 512 * 1024 * 1024,
                 sizeof: Any = result_nbytes) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._sizeof = sizeof
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any | None:
        """The cached value (marked most recently used), or None."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
            return None

    def put(self, key: Any, value: Any) -> None:
        """Store a value, evicting least recently used entries beyond the count or byte budget.

        The newest entry is always kept, even when it alone exceeds the byte budget.
        """
        size = int(self._sizeof(value))
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self._bytes += size
            while len(self._items) > 1 and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
                self._bytes -= self._items.popitem(last=False)[1][1]

    @property
    def nbytes(self) -> int:
        """Bytes currently held (as measured by `sizeof`)."""
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        """Forget every entry (and release the images they hold)."""
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items


def with_body_part(study: Study, body_part: BodyPart | str) -> Study:
    """The same study with the body part the user chose (it picks the decision threshold)."""
    return dataclasses.replace(study, body_part=BodyPart.parse(getattr(body_part, "value", body_part)))


# ----------------------------------------------------------------------------------------------
# text and tables
# ----------------------------------------------------------------------------------------------

def format_probability(p: float | None) -> str:
    """A probability as a percentage with one decimal, or an em dash when missing."""
    return "—" if p is None else f"{100.0 * float(p):.1f}%"


def decision_label(result: Any) -> str:
    """'Abnormal', 'Normal' or 'Not scored' for a StudyResult."""
    if getattr(result, "probability", None) is None or getattr(result, "abnormal", None) is None:
        return "Not scored"
    return "Abnormal" if result.abnormal else "Normal"


def _part_name(part: Any) -> str:
    value = getattr(part, "value", part)
    return str(value) if value else BodyPart.UNKNOWN.value


def left_out_of_scope(view: Any) -> bool:
    """True for a readable view whose score was hidden because the scope check put it outside the model's
    scope (`explain.triage.hide_excluded_scores`)."""
    scope = getattr(view, "scope", None)
    return (getattr(view, "error", None) is None and getattr(view, "probability", None) is None
            and scope is not None and not scope.in_scope)


def view_status(view: Any) -> str:
    """A view's status in words: "ok", "unreadable: <reason>" or left out as outside the model's scope."""
    error = getattr(view, "error", None)
    if error is not None:
        return f"unreadable: {error}"
    return "left out: outside the model's scope" if left_out_of_scope(view) else "ok"


def study_summary(result: Any) -> str:
    """One or two sentences a reader can act on: decision, probability vs threshold, driving view, and which
    views were left out and why (unreadable files, views outside the model's scope), each counted once.

    Works on SCORE's StudyResult (fields probability, threshold, abnormal, body_part, aggregate,
    views, driving_view).
    """
    views = list(getattr(result, "views", []) or [])
    n_ok = sum(1 for v in views if getattr(v, "probability", None) is not None)
    n_bad = sum(1 for v in views if getattr(v, "error", None) is not None)
    n_out = sum(1 for v in views if left_out_of_scope(v))
    unreadable = f"{n_bad} file{'s were' if n_bad != 1 else ' was'} unreadable and left out."
    out_of_scope = f"{n_out} view{'s' if n_out != 1 else ''} left out as outside the model's scope."
    if result.probability is None:
        if n_out:
            return ("Every readable view is outside the model's scope, so there is no study result; tick "
                    "*Score this view anyway* under a view to include it." + (f" {unreadable}" if n_bad else ""))
        return (f"No view could be scored ({n_bad} unreadable file{'s' if n_bad != 1 else ''}); "
                "there is no study result.")
    part = _part_name(result.body_part)
    part_text = "default" if part == BodyPart.UNKNOWN.value else BodyPart.parse(part).label
    relation = "at or above" if result.abnormal else "below"
    reason = getattr(result, "threshold_reason", "") or f"{part_text} threshold {format_probability(result.threshold)}"
    text = (f"**{decision_label(result)}**: study probability {format_probability(result.probability)} "
            f"({getattr(result, 'aggregate', 'mean')} of {n_ok} view{'s' if n_ok != 1 else ''}) is "
            f"{relation} the {reason}.")
    index = getattr(result, "driving_view", None)
    if index is not None and 0 <= index < len(views):
        view = views[index]
        text += (f" The view that drove it: **{view.name}** "
                 f"({format_probability(view.probability)}).")
    if n_bad:
        text += f" {unreadable}"
    if n_out:
        text += f" {out_of_scope}"
    return text


def results_table(result: Any) -> list[dict[str, Any]]:
    """One row per view: name, probability (%), whether it drove the study, heat-map peak, status."""
    rows = []
    for i, view in enumerate(getattr(result, "views", []) or []):
        peak = getattr(view, "peak", None)
        rows.append({
            "view": view.name,
            "probability": None if view.probability is None else round(100.0 * float(view.probability), 1),
            "drives study": i == getattr(result, "driving_view", None),
            "heat-map peak (x, y)": "" if peak is None else f"({peak[0]:.2f}, {peak[1]:.2f})",
            "status": view_status(view),
        })
    return rows


_META_FIELDS = (
    ("format", "Format"), ("width", "Width (px)"), ("height", "Height (px)"), ("modality", "Modality"),
    ("body_part", "Body part (file)"), ("view_position", "View position"),
    ("pixel_spacing", "Pixel spacing (mm)"), ("photometric", "Photometric"), ("bits_stored", "Bits stored"),
    ("window", "Window (centre, width)"),
)


def meta_rows(meta: Any) -> list[tuple[str, str]]:
    """Technical, non-identifying image facts (ImageMeta) as (label, text) pairs; empty fields left out."""
    if meta is None:
        return []
    rows = []
    for attr, label in _META_FIELDS:
        value = getattr(meta, attr, None)
        if value is None or value == "" or value == ():
            continue
        if isinstance(value, (tuple, list)):
            value = ", ".join(f"{float(v):g}" if isinstance(v, (int, float)) else str(v) for v in value)
        rows.append((label, str(value)))
    return rows


def _training_sources(card: Any) -> list[str]:
    """The card's training sources by folder name (its recipe's `data`), else its training-data text."""
    data = (getattr(card, "recipe", None) or {}).get("data")
    if isinstance(data, str):
        data = [d.strip() for d in data.split(",")]
    if data:
        return [Path(str(d)).name for d in data if str(d).strip()]
    text = str(getattr(card, "training_data", "") or "").strip().rstrip(".")
    return [text] if text else []


def report_source(folder: str, report: Mapping[str, Any] | None) -> str:
    """How Home names the figures it quotes: the evaluate report's folder, and whether that report scored with the
    model's test-time flip (the viewer and the worklist then score the same way)."""
    if not (report and report.get("tta")):
        return f"evaluate report {folder}"
    unflipped = report_unflipped(report)
    return (f"evaluate report {folder}; each view also scored mirrored (test-time flip"
            + (f"; {', '.join(unflipped)} on the view as it is" if unflipped else "") + "), as the viewer does")


def card_summary(card: Any, figures: Mapping[str, float] | None = None, source: str = "model card",
                 by_source: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """A few markdown lines about a ModelCard: name, architecture, input size, data, key figures, threshold.

    `figures` are the metrics to quote (the app passes the shipped evaluate report's, with `source` naming
    it); without them the card's own metrics are quoted and labelled as the card's. `by_source` (data source
    -> n, auc, kappa) adds one line per source: a pooled AUC over sources hides how each one fares.
    """
    if card is None:
        return "No model card."
    lines = [f"**{card.name}** — architecture `{card.arch}`, input {card.image_size} px."]
    sources = _training_sources(card)
    if sources:
        lines.append(f"Trained on: {', '.join(sources)} (data, counts and split rules in the model card).")
    if figures is None:
        metrics = getattr(card, "metrics", None) or {}
        figures = metrics.get("overall", metrics) if isinstance(metrics, dict) else {}
    return "  \n".join(lines + _figure_lines(figures, source, by_source)
                       + _threshold_lines(getattr(card, "thresholds", None) or {}))


def ensemble_summary(name: str, members: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float],
                     figures: Mapping[str, float], source: str,
                     by_source: Mapping[str, Mapping[str, float]] | None = None,
                     maps_from: Sequence[str] = ()) -> str:
    """`card_summary` for an ensemble, from what its evaluate report records (members, the thresholds
    it decided at, the members whose heat maps it shows), so Home describes it without loading torch."""
    parts = " and ".join(f"{m.get('name')} (`{m.get('arch')}`, {m.get('image_size')} px)" for m in members)
    names = [str(m.get("name")) for m in members]
    shown = [m for m in maps_from if m in names]
    how = ("probabilities and heat maps averaged" if not shown or set(shown) == set(names)
           else f"probabilities averaged; heat maps from {' and '.join(shown)} only (the maps that point at "
                "findings most often on the valid splits)")
    lines = [f"**{name}** — ensemble of {parts}: {how}.",
             "Each member's data, recipe and sha256 are in its model card."]
    return "  \n".join(lines + _figure_lines(figures, source, by_source) + _threshold_lines(thresholds))


def _figure_lines(figures: Mapping[str, float], source: str,
                  by_source: Mapping[str, Mapping[str, float]] | None) -> list[str]:
    shown = [f"{key} {figures[key]:.3f}" for key in ("auc", "kappa", "sensitivity", "specificity")
             if isinstance(figures.get(key), (int, float))]
    pooled = " pooled over sources" if by_source and len(by_source) > 1 else ""
    lines = [f"Validation{pooled} ({source}): " + ", ".join(shown) + "." if shown
             else f"No validation figures ({source})."]
    if by_source:
        lines.append("Per source: " + "; ".join(
            f"{name} auc {row['auc']:.3f}" + (f", kappa {row['kappa']:.3f}" if "kappa" in row else "")
            + f" ({int(row.get('n', 0))} in-scope images)" for name, row in by_source.items()) + ".")
    return lines


def _threshold_lines(thresholds: Mapping[str, float]) -> list[str]:
    if "default" not in thresholds:
        return []
    return [f"Default threshold {format_probability(thresholds['default'])}"
            f" ({len(thresholds) - 1} body-part specific)."]


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------

def to_uint8(image: np.ndarray) -> np.ndarray:
    """A 0..1 float image (2-D grey or H x W x 3) or a uint8 one as uint8, same shape."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        return arr
    return (np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_png_bytes(image: np.ndarray) -> bytes:
    """PNG bytes of a grey (H, W) or RGB (H, W, 3) image (float 0..1 or uint8), kept in memory."""
    import cv2  # here, not at the top: Home draws without loading OpenCV

    arr = to_uint8(image)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return buf.tobytes()


def zoom_crop(image: np.ndarray, zoom: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """The part of `image` seen at magnification `zoom` around `centre` (x, y in 0..1).

    The window keeps the aspect ratio, has side 1/zoom of the image and is shifted to stay inside it;
    zoom <= 1 returns the image unchanged.
    """
    if zoom <= 1.0:
        return image
    h, w = image.shape[:2]
    cx, cy = centre if centre is not None else (0.5, 0.5)
    ch, cw = max(1, int(round(h / zoom))), max(1, int(round(w / zoom)))
    y0 = int(round(cy * h - ch / 2))
    x0 = int(round(cx * w - cw / 2))
    y0 = min(max(y0, 0), h - ch)
    x0 = min(max(x0, 0), w - cw)
    return image[y0:y0 + ch, x0:x0 + cw]


def draw_boxes(image: np.ndarray, boxes: Sequence[Box], colour: tuple[int, int, int] = BOX_COLOUR,
               thickness: int | None = None) -> np.ndarray:
    """An RGB uint8 copy of `image` with the normalised (x0, y0, x1, y1) boxes outlined."""
    import cv2  # here, not at the top: Home draws without loading OpenCV

    arr = to_uint8(image)
    rgb = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr.copy()
    if not boxes:
        return rgb
    h, w = rgb.shape[:2]
    t = thickness or max(1, round(min(h, w) / 200))
    for x0, y0, x1, y1 in boxes:
        p0 = (int(round(x0 * (w - 1))), int(round(y0 * (h - 1))))
        p1 = (int(round(x1 * (w - 1))), int(round(y1 * (h - 1))))
        cv2.rectangle(rgb, p0, p1, colour, t)
    return rgb


def thumbnail(image: np.ndarray, size: int = 160, *, square: bool = False) -> np.ndarray:
    """The image shrunk so its longer side is at most `size` pixels (area interpolation), as uint8.

    With `square`, it is centred on a black `size` x `size` canvas, so a grid of thumbnails lines up.
    """
    import cv2  # here, not at the top: Home draws without loading OpenCV

    arr = to_uint8(image)
    h, w = arr.shape[:2]
    scale = size / max(h, w)
    if scale < 1.0:
        arr = cv2.resize(arr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    if not square:
        return arr
    h, w = arr.shape[:2]
    canvas = np.zeros((size, size) + arr.shape[2:], dtype=np.uint8)
    y0, x0 = (size - h) // 2, (size - w) // 2
    canvas[y0:y0 + h, x0:x0 + w] = arr
    return canvas


def view_panels(
    view: Any,
    overlay_fn: Any,
    *,
    colormap: str = "jet",
    alpha: float = 0.4,
    zoom: float = 1.0,
    boxes: Sequence[Box] = (),
) -> tuple[np.ndarray, np.ndarray | None]:
    """The (image, overlay) pair shown for one scored view, both RGB uint8 and identically cropped.

    `overlay_fn(image, heatmap, colormap=..., alpha=...)` is SCORE's `explain.overlay`; it runs on
    the cached heat map, so display settings never touch the model. Ground-truth boxes are drawn on
    both panels; zoom centres on the heat-map peak (or the image centre without one).
    """
    image = np.asarray(view.image)
    heatmap = getattr(view, "heatmap", None)
    plain = draw_boxes(image, boxes)
    over = None
    if heatmap is not None:
        over = draw_boxes(np.asarray(overlay_fn(image, heatmap, colormap=colormap, alpha=alpha)), boxes)
    centre = getattr(view, "peak", None)
    plain = zoom_crop(plain, zoom, centre)
    if over is not None:
        over = zoom_crop(over, zoom, centre)
    return plain, over


# ----------------------------------------------------------------------------------------------
# heat-map scale, legend and peak marker
# ----------------------------------------------------------------------------------------------

HEAT_SCALES: dict[str, str] = {
    "own": "Each map scaled to its own maximum (shows where, not how much)",
    "shared": "Shared scale: map x P(class shown), comparable across views and methods",
}
"""Heat-map colour scales the pages offer: key -> what the legend and caption say."""


def scaled_heatmap(heatmap: np.ndarray, probability: float | None, target: str = "abnormal",
                   scale: str = "own") -> np.ndarray:
    """The map to colour: as computed (0..1, own maximum) or, with ``scale="shared"``, times the
    probability of the class shown (P(abnormal), or 1 - P for "normal"), so a view the model calls 3%
    abnormal stays dark instead of glowing red."""
    if scale not in HEAT_SCALES:
        raise ValueError(f"unknown heat-map scale {scale!r}; choose from {', '.join(HEAT_SCALES)}")
    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    if scale == "own" or probability is None:
        return heat
    p = float(probability) if target == "abnormal" else 1.0 - float(probability)
    return heat * np.float32(min(max(p, 0.0), 1.0))


def colour_legend(colormap: str, *, height: int = 240, width: int = 90, scale: str = "own") -> np.ndarray:
    """A vertical colour bar (RGB uint8) for `colormap`, 1 at the top and 0 at the bottom, with ticks.

    The top tick reads "max" for the own-maximum scale and "1.0" (= certain) for the shared scale.
    """
    import cv2  # here, not at the top: Home draws without loading OpenCV

    from mura_core.explain.cams import COLORMAPS

    key = colormap.lower().removeprefix("colormap_")
    if key not in COLORMAPS:
        raise ValueError(f"unknown colour map {colormap!r}")
    bar_w = max(8, width // 3)
    ramp = np.linspace(255, 0, height).astype(np.uint8)[:, None].repeat(bar_w, axis=1)
    bar = cv2.cvtColor(cv2.applyColorMap(ramp, COLORMAPS[key]), cv2.COLOR_BGR2RGB)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    canvas[:, :bar_w] = bar
    top = "max" if scale == "own" else "1.0"
    mid = "half" if scale == "own" else "0.5"
    for text, y in ((top, 12), (mid, height // 2 + 4), ("0", height - 4)):
        cv2.putText(canvas, text, (bar_w + 4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def mark_peak(image: np.ndarray, peak: tuple[float, float] | None, colour: tuple[int, int, int] = (0, 255, 0)
              ) -> np.ndarray:
    """An RGB uint8 copy of `image` with a cross at `peak` (x, y in 0..1); unchanged without a peak."""
    import cv2  # here, not at the top: Home draws without loading OpenCV

    arr = to_uint8(image)
    rgb = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr.copy()
    if peak is None:
        return rgb
    h, w = rgb.shape[:2]
    x, y = int(round(peak[0] * w - 0.5)), int(round(peak[1] * h - 0.5))
    size = max(6, min(h, w) // 25)
    cv2.drawMarker(rgb, (x, y), colour, cv2.MARKER_CROSS, size, max(1, min(h, w) // 150))
    return rgb


def with_legend(image: np.ndarray, legend: np.ndarray) -> np.ndarray:
    """The RGB image with the colour legend beside it (legend resized to the image's height)."""
    import cv2  # here, not at the top: Home draws without loading OpenCV

    rgb = to_uint8(image)
    rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb
    h = rgb.shape[0]
    scale = h / legend.shape[0]
    bar = cv2.resize(legend, (max(1, int(round(legend.shape[1] * scale))), h), interpolation=cv2.INTER_NEAREST)
    return np.concatenate([rgb, bar], axis=1)


def compare_panel(image: np.ndarray, heatmap: np.ndarray, overlay_fn: Any, *, colormap: str, alpha: float,
                  boxes: Sequence[Box] = (), peak: tuple[float, float] | None = None, scale: str = "own",
                  max_side: int = 512) -> np.ndarray:
    """One tile of the compare page: the image (shrunk to `max_side`) with the heat map, the boxes, the
    map's peak and the colour legend beside it."""
    small = thumbnail(image, max_side)
    over = draw_boxes(np.asarray(overlay_fn(small, heatmap, colormap=colormap, alpha=alpha)), boxes)
    return with_legend(mark_peak(over, peak), colour_legend(colormap, scale=scale))


def map_hit(heatmap: np.ndarray, shape: tuple[int, ...], boxes: Sequence[Box]) -> bool | None:
    """Pointing-game verdict of a heat map (any size) on an image of `shape` with `boxes`; None without boxes."""
    from mura_core.explain.cams import resize_heatmap
    from mura_core.explain.localization import pointing_game_hit

    if not boxes:
        return None
    return pointing_game_hit(resize_heatmap(heatmap, tuple(shape[:2])), boxes)


def scaled_view(view: Any, target: str = "abnormal", scale: str = "own") -> Any:
    """A shallow copy of a scored view whose heat map is on `scale` (`scaled_heatmap`); the cached view is untouched."""
    heatmap = getattr(view, "heatmap", None)
    if heatmap is None or scale == "own":
        return view
    return dataclasses.replace(view, heatmap=scaled_heatmap(heatmap, view.probability, target, scale))
