"""Evaluate a model on a data split: metrics, figures and the pointing game (``python -m mura_core evaluate``).

Works on one or more sources (MURA folder, manifest, FracAtlas folder: `data.sources.open_dataset`), the
same split of each. Headline metrics count in-scope images only (upper limb; FracAtlas leg and hip images
are outside what the model is for); ``by_source`` breaks every metric down per source and per body part or
region, with a calibration curve per source, and ``out_of_scope`` reports the lower-limb images apart.
Writes to ``out`` (through `evaluation.reports`, the one writer of these files):

- ``report.json``: model (name, sha256, card), data, thresholds used and their source (the model
  card's, fitted on its validation split), image-level and study-level metrics overall and per body
  part with seeded bootstrap 95 % intervals (`metrics.grouped_metrics`), ROC points, unreadable images,
  and the pointing game per heat-map method where the data have finding boxes;
- ``predictions.csv``: one row per image: ``image,study,body_part,label,probability,abnormal,threshold,
  split,error`` (image names as the data names them; probability empty for unreadable images);
- ``study_predictions.csv``: one row per study (mean or max of its images);
- ``figures.html``: ROC curves and confusion matrices (plotly, offline: plotly.js embedded once);
  ``roc.png`` and ``confusion.png`` drawn with OpenCV (no kaleido needed).

Decoding runs in a torch DataLoader (``--workers``; default 1 on a 2-core machine so one core decodes
while the other runs the model). Images with boxes are scored in the same forward that makes their
heat maps (all fast methods share one forward: `Predictor.run_batches_many`); the other images are
scored under inference mode. Study body parts come from
the data (on the shared bone-fracture-xr data every normal image is UNKNOWN, so per-body-part AUC and
specificity are None there: one class only).

`evaluate_dataset(...)` does the same from code and returns the report dict.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mura_core.data.sources import source_name
from mura_core.data.studies import Box, DatasetIndex, View
from mura_core.evaluation.metrics import calibration_bins, grouped_metrics, roc_points
from mura_core.evaluation.reports import aggregate_studies, write_predictions, write_report
from mura_core.explain.cams import SLOW_METHODS

__all__ = [
    "ImageRow",
    "ViewDataset",
    "build_report",
    "default_workers",
    "evaluate_dataset",
    "evaluate_rows",
    "image_rows",
    "metrics_report",
    "source_report",
    "pointing_game_report",
    "score_rows",
    "write_figures",
    "write_outputs",
]


@dataclass
class ImageRow:
    """One image of the evaluated data and, after scoring, its probability or error."""

    image: str
    study: str
    body_part: str
    label: int | None
    split: str | None
    boxes: tuple[Box, ...]
    view: View
    probability: float | None = None
    error: str | None = None
    source: str = ""
    in_scope: bool = True


def image_rows(index: DatasetIndex, limit: int | None = None, source: str = "") -> list[ImageRow]:
    """One row per view of the index's studies (the first `limit` studies when given)."""
    studies = index.studies if limit is None else index.studies[: max(0, int(limit))]
    rows = []
    for study in studies:
        part = getattr(study.body_part, "value", str(study.body_part))
        for view in study.views:
            rows.append(ImageRow(view.name, study.study_id, part, study.label, study.split,
                                 tuple(view.boxes), view, source=source,
                                 in_scope=bool(getattr(study.body_part, "in_scope", True))))
    return rows


def default_workers() -> int:
    """DataLoader workers: 1 on <= 2 cores (decode beside the model), else up to 4."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(4, cores - 1)


# ----------------------------------------------------------------------------------------------
# decoding in workers
# ----------------------------------------------------------------------------------------------

class ViewDataset(Dataset):
    """Decodes view `i` (a bad file becomes an error item, never an exception), runs the optional
    per-view `scope` check on it, and preprocesses it for every input configuration the predictor needs.
    Shared by `evaluate` and the worklist scorer."""

    def __init__(self, views: Sequence[View], configs: Sequence[Any], scope: Any = None) -> None:
        self.views = list(views)
        self.configs = list(configs)
        self.scope = scope

    def __len__(self) -> int:
        return len(self.views)

    def _scope_warning(self, pixels: Any) -> str | None:
        if self.scope is None:
            return None
        try:
            return self.scope(pixels)
        except Exception as error:  # noqa: BLE001 - a failing check is a warning, not a crash
            return f"scope check failed ({type(error).__name__})"

    def __getitem__(self, i: int) -> dict[str, Any]:
        from mura_core.imaging.decode import DecodeError, decode_view
        from mura_core.imaging.preprocess import to_model_input

        try:
            decoded = decode_view(self.views[i])
        except DecodeError as error:
            return {"index": i, "error": error.reason}
        except Exception as error:  # noqa: BLE001 - one bad file never stops a run
            return {"index": i, "error": f"could not read ({type(error).__name__})"}
        pixels = decoded.pixels
        inputs = [to_model_input(pixels, c) for c in self.configs]
        return {"index": i, "error": None, "inputs": inputs, "shape": tuple(pixels.shape[:2]),
                "scope": self._scope_warning(pixels), "meta": decoded.meta}


def _keep_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def _stack(items: list[dict[str, Any]], configs: Sequence[Any]) -> dict[Any, torch.Tensor]:
    return {c: torch.stack([it["inputs"][k] for it in items]) for k, c in enumerate(configs)}


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------

def metrics_report(rows: Sequence[ImageRow], thresholds: dict[str, float], *, aggregate: str = "mean",
                   n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Image- and study-level metrics (overall and per body part) plus ROC points, for labelled rows."""
    scored = [r for r in rows if r.probability is not None and r.label in (0, 1)]
    kw = dict(n_bootstrap=n_bootstrap, seed=seed)
    labels = [r.label for r in scored]
    probs = [r.probability for r in scored]
    parts = [r.body_part for r in scored]
    studies = [s for s in aggregate_studies(((r.study, r.body_part, r.label, r.probability) for r in rows),
                                            aggregate) if s.probability is not None and s.label in (0, 1)]
    s_labels = [s.label for s in studies]
    s_probs = [s.probability for s in studies]
    s_parts = [s.body_part for s in studies]
    return {
        "image_level": grouped_metrics(labels, probs, parts, thresholds, **kw),
        "study_level": grouped_metrics(s_labels, s_probs, s_parts, thresholds, **kw),
        "roc": {"image": roc_points(labels, probs) if labels else None,
                "study": roc_points(s_labels, s_probs) if s_labels else None},
    }


# ----------------------------------------------------------------------------------------------
# outputs
# ----------------------------------------------------------------------------------------------

def _roc_png(curves: dict[str, dict[str, list[float]] | None], path: Path, size: int = 480) -> None:
    """A plain ROC chart drawn with OpenCV (axes, chance diagonal, one curve per level)."""
    import cv2

    img = np.full((size, size, 3), 255, np.uint8)
    m = 50
    span = size - 2 * m

    def pt(fpr: float, tpr: float) -> tuple[int, int]:
        return int(m + fpr * span), int(size - m - tpr * span)

    cv2.rectangle(img, pt(0, 0), pt(1, 1), (0, 0, 0), 1)
    cv2.line(img, pt(0, 0), pt(1, 1), (170, 170, 170), 1, cv2.LINE_AA)
    colours = [(200, 80, 30), (30, 120, 220)]
    for k, (name, curve) in enumerate(curves.items()):
        if not curve:
            continue
        pts = np.array([pt(f, t) for f, t in zip(curve["fpr"], curve["tpr"])], np.int32)
        cv2.polylines(img, [pts], False, colours[k % 2], 2, cv2.LINE_AA)
        cv2.putText(img, name, (m + 10, m + 20 + 20 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colours[k % 2], 1)
    cv2.putText(img, "false positive rate", (size // 2 - 70, size - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "TPR", (8, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def _confusion_png(confusions: dict[str, dict[str, int]], path: Path) -> None:
    """Confusion matrices (rows: truth normal/abnormal; columns: decision) drawn with OpenCV."""
    import cv2

    cell, pad = 70, 30
    items = list(confusions.items())
    width = max(1, len(items)) * (2 * cell + 2 * pad) + pad
    img = np.full((2 * cell + 3 * pad + 20, width, 3), 255, np.uint8)
    for k, (name, c) in enumerate(items):
        x0, y0 = pad + k * (2 * cell + 2 * pad), 2 * pad
        cv2.putText(img, name, (x0, pad), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        total = max(1, sum(c.values()))
        for (i, j), key in {(0, 0): "tn", (0, 1): "fp", (1, 0): "fn", (1, 1): "tp"}.items():
            shade = int(255 - 180 * c[key] / total)
            tl = (x0 + j * cell, y0 + i * cell)
            cv2.rectangle(img, tl, (tl[0] + cell, tl[1] + cell), (255, shade, shade), -1)
            cv2.rectangle(img, tl, (tl[0] + cell, tl[1] + cell), (0, 0, 0), 1)
            cv2.putText(img, f"{key} {c[key]}", (tl[0] + 6, tl[1] + cell // 2), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), img)


def write_figures(report: dict[str, Any], out: Path) -> list[Path]:
    """figures.html (plotly, offline) + roc.png and confusion.png (OpenCV); returns the written paths."""
    import plotly.graph_objects as go

    out.mkdir(parents=True, exist_ok=True)
    roc = report.get("roc") or {}
    fig_roc = go.Figure()
    for level in ("image", "study"):
        curve = roc.get(level)
        if curve:
            auc = report[f"{level}_level"]["overall"]["auc"]
            fig_roc.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines",
                                         name=f"{level} level (AUC {auc:.3f})" if auc is not None else level))
    fig_roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(dash="dot")))
    fig_roc.update_layout(title=f"ROC - {report['model']['name']}", xaxis_title="false positive rate",
                          yaxis_title="true positive rate (sensitivity)")
    confusions = {f"{level} {part}": m["confusion"]
                  for level in ("image", "study")
                  for part, m in [("overall", report[f"{level}_level"]["overall"])]}
    from plotly.subplots import make_subplots

    fig_cm = make_subplots(rows=1, cols=len(confusions), subplot_titles=list(confusions))
    for k, c in enumerate(confusions.values()):
        fig_cm.add_trace(go.Heatmap(z=[[c["tn"], c["fp"]], [c["fn"], c["tp"]]], x=["normal", "abnormal"],
                                    y=["normal", "abnormal"], text=[[c["tn"], c["fp"]], [c["fn"], c["tp"]]],
                                    texttemplate="%{text}", showscale=False, colorscale="Blues"), 1, k + 1)
    fig_cm.update_layout(title="Confusion matrices (rows: truth, columns: decision)")
    html = ("<html><head><meta charset='utf-8'><title>evaluation figures</title></head><body>"
            + fig_roc.to_html(full_html=False, include_plotlyjs=True)
            + fig_cm.to_html(full_html=False, include_plotlyjs=False) + "</body></html>")
    paths = [out / "figures.html", out / "roc.png", out / "confusion.png"]
    paths[0].write_text(html, encoding="utf-8")
    _roc_png({level: roc.get(level) for level in ("image", "study")}, paths[1])
    _confusion_png(confusions, paths[2])
    return paths


# ----------------------------------------------------------------------------------------------
# the evaluation
# ----------------------------------------------------------------------------------------------

def _methods(predictor: Any, cam: str | Sequence[str] | None) -> list[str]:
    """Heat-map methods for the pointing game: a name, a comma list, 'auto' (model default) or 'all'."""
    if cam is None or cam == "none":
        return []
    names = cam.split(",") if isinstance(cam, str) else list(cam)
    out: list[str] = []
    for name in (n.strip() for n in names):
        if name in ("auto", "default"):
            name = predictor.default_cam
        if name == "all":
            out += [m for m in predictor.cam_methods() if m not in SLOW_METHODS]
            continue
        if name not in predictor.cam_methods():
            raise ValueError(f"heat-map method {name!r} not available for {predictor.name}; "
                             f"choose from {', '.join(predictor.cam_methods())}")
        out.append(name)
    return list(dict.fromkeys(out))


@dataclass
class _Scoring:
    """What one pass over the data collects besides each row's probability: pointing-game distances per
    method, and per boxed image whether the centre point hits and the chance a random point hits."""

    distances: dict[str, list[float | None]]
    centre: list[bool] = field(default_factory=list)
    chance: list[float] = field(default_factory=list)
    energies: dict[str, list[float | None]] = field(default_factory=dict)
    """Per method, each boxed image's share of heat-map energy inside its boxes."""
    area: list[float] = field(default_factory=list)
    """Per boxed image, the boxes' area fraction (a uniform map's energy share)."""
    boxed_rows: list[int] = field(default_factory=list)
    """The row index of each boxed image, in the order of the lists above."""

    def subset(self, keep: set[int]) -> "_Scoring":
        """The same measurements restricted to rows whose index is in `keep` (e.g. one source)."""
        idx = [k for k, r in enumerate(self.boxed_rows) if r in keep]
        return _Scoring({m: [d[k] for k in idx] for m, d in self.distances.items()},
                        [self.centre[k] for k in idx], [self.chance[k] for k in idx],
                        {m: [e[k] for k in idx] for m, e in self.energies.items()},
                        [self.area[k] for k in idx], [self.boxed_rows[k] for k in idx])


def _score_boxed(predictor: Any, rows: list[ImageRow], items: list[dict[str, Any]], configs: Sequence[Any],
                 methods: list[str], scoring: _Scoring, tolerance: float, tta: bool | None) -> None:
    """Score images with finding boxes and measure each method's heat-map peak against the boxes."""
    from mura_core.explain.localization import centre_hit, covered_fraction, energy_share, peak_distance

    prob, maps = predictor.run_batches_many(_stack(items, configs), methods, tta=tta)
    for method in methods:
        for j, it in enumerate(items):
            heat = predictor.combine_maps(maps[method], j, it["shape"])
            scoring.distances[method].append(peak_distance(heat, rows[it["index"]].boxes))
            scoring.energies.setdefault(method, []).append(energy_share(heat, rows[it["index"]].boxes))
    for it, p in zip(items, prob):
        row = rows[it["index"]]
        row.probability = float(p)
        if methods:
            h, w = it["shape"]
            scoring.centre.append(centre_hit(row.boxes, h, w, tolerance))
            scoring.chance.append(covered_fraction(row.boxes, h, w, tolerance))
            scoring.area.append(covered_fraction(row.boxes, h, w, 0.0))
            scoring.boxed_rows.append(it["index"])


def score_rows(predictor: Any, rows: list[ImageRow], methods: list[str], *, batch_size: int = 16,
               workers: int | None = None, tolerance: float = 15.0, tta: bool | None = None,
               progress: bool = True, on_progress: Any = None, bf16: bool = False) -> _Scoring:
    """Fill each row's probability (or error), decoding in a DataLoader; boxed images also get heat maps.

    `bf16`: the scores-only forwards run under bf16 autocast (`models.devices.bf16_autocast`); refused with
    heat-map `methods`, whose forwards must stay float32.
    """
    from tqdm import tqdm

    from mura_core.models.devices import bf16_autocast

    if bf16 and methods:
        raise ValueError("bf16 scoring gives scores only: evaluate with cam none (no pointing game)")
    if bf16 and getattr(predictor, "int8", None) is not None:
        raise ValueError("bf16 and int8 scoring exclude each other: choose one")
    configs = predictor.input_configs
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = DataLoader(ViewDataset([r.view for r in rows], configs), batch_size=max(1, int(batch_size)),
                        shuffle=False, num_workers=workers, collate_fn=_keep_list)
    scoring = _Scoring({m: [] for m in methods})
    bar = tqdm(total=len(rows), desc=f"evaluate {predictor.name}", unit="img", file=sys.stderr,
               disable=not progress)
    for batch in loader:
        for item in batch:
            if item["error"] is not None:
                rows[item["index"]].error = item["error"]
        good = [item for item in batch if item["error"] is None]
        plain = [it for it in good if not rows[it["index"]].boxes]
        boxed = [it for it in good if rows[it["index"]].boxes]
        if plain:
            with bf16_autocast(predictor.device, bf16):
                prob, _ = predictor.run_batches(_stack(plain, configs), tta=tta)
            for it, p in zip(plain, prob):
                rows[it["index"]].probability = float(p)
        if boxed:
            _score_boxed(predictor, rows, boxed, configs, methods, scoring, tolerance, tta)
        bar.update(len(batch))
        if on_progress is not None:
            on_progress(bar.n, len(rows))
    bar.close()
    return scoring


def _model_facts(predictor: Any) -> dict[str, Any]:
    """The report's "model" entry: name, sha256, members, those giving the maps and those never flipped, and
    (single model) its card."""
    return {"name": predictor.name, "sha256": predictor.sha256,
            "members": [{"name": m.name, "arch": m.spec.name, "image_size": m.config.image_size,
                         "sha256": m.sha256} for m in predictor.members],
            "maps_from": [m.name for m in getattr(predictor, "map_members", predictor.members)],
            "unflipped": [m.name for k, m in enumerate(predictor.members)
                          if k in getattr(predictor, "unflipped_indexes", ())],
            "card": predictor.card.to_dict() if not predictor.is_ensemble else None}


def pointing_game_report(rows: Sequence[ImageRow], methods: Sequence[str], scoring: _Scoring,
                         tolerance: float) -> dict[str, Any] | None:
    """The report's pointing game per method (None when no image has boxes or no method ran)."""
    from mura_core.explain.localization import REPORT_TOLERANCES_PX, hit_rates_by_tolerance, pointing_game_summary

    if not methods or not any(r.boxes for r in rows):
        return None
    tolerances = sorted({*REPORT_TOLERANCES_PX, tolerance})
    return {
        "description": "hit when the heat-map maximum (target: abnormal) lies within tolerance_px "
                       "original-image pixels of a finding box; images with boxes only",
        "tolerance_px": tolerance,
        "methods": {m: pointing_game_summary([None if d is None else d <= tolerance + 1e-9
                                              for d in scoring.distances[m]],
                                             centre_hits=scoring.centre, random_chance=scoring.chance,
                                             tolerance=tolerance, energies=scoring.energies.get(m),
                                             area_fractions=scoring.area)
                    for m in methods},
        "energy_description": "energy_share: mean share of the heat map's mass inside the boxes; "
                              "energy_baseline: the same for a uniform map (the boxes' area fraction)",
        "hit_rate_by_tolerance_px": {m: hit_rates_by_tolerance(scoring.distances[m], tolerances) for m in methods},
    }


def _scored_labelled(rows: Sequence[ImageRow]) -> tuple[list[int], list[float]]:
    kept = [r for r in rows if r.probability is not None and r.label in (0, 1)]
    return [r.label for r in kept], [r.probability for r in kept]


def source_report(rows: Sequence[ImageRow], thresholds: dict[str, float], *, aggregate: str,
                  n_bootstrap: int, seed: int) -> dict[str, Any]:
    """One source's figures: in-scope metrics per body part/region, calibration, out-of-scope apart."""
    inside = [r for r in rows if r.in_scope]
    outside = [r for r in rows if not r.in_scope]
    report = metrics_report(inside, thresholds, aggregate=aggregate, n_bootstrap=n_bootstrap, seed=seed)
    report["calibration"] = calibration_bins(*_scored_labelled(inside))
    report["n_images"] = len(rows)
    report["n_in_scope"] = len(inside)
    if outside:
        labels, probs = _scored_labelled(outside)
        report["out_of_scope"] = grouped_metrics(labels, probs, [r.body_part for r in outside if
                                                                 r.probability is not None and r.label in (0, 1)],
                                                 thresholds, n_bootstrap=0, seed=seed) if labels else None
    return report


def build_report(predictor: Any, index: DatasetIndex, rows: Sequence[ImageRow], *, data: str | Path,
                 split: str | None, limit: int | None, aggregate: str, tta: bool, n_bootstrap: int,
                 seed: int, sources: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything report.json says about a scored run except the pointing game and timing.

    Headline metrics (`image_level`, `study_level`, `roc`) count in-scope images of every source;
    `by_source` has one `source_report` per source.
    """
    from mura_core.models.checkpoints import utc_now

    thresholds = dict(predictor.thresholds)
    n_studies = len({(r.source, r.study) for r in rows})
    sources = list(sources or [{"name": source_name(data), "path": str(data), "kind": index.kind,
                                "problems": list(index.problems)}])
    report: dict[str, Any] = {
        "model": _model_facts(predictor),
        "data": {"name": " + ".join(s["name"] for s in sources) if len(sources) > 1 else str(data),
                 "kind": index.kind, "split": split, "limit": limit, "sources": sources,
                 "n_studies": n_studies, "n_images": len(rows), "problems": list(index.problems)},
        "split": split or "all",
        "created": utc_now(),
        "n_studies": n_studies,
        "thresholds": thresholds,
        "thresholds_source": predictor.thresholds_source,
        "aggregate": aggregate,
        "tta": tta,
        "bootstrap": {"n": n_bootstrap, "seed": seed, "confidence": 0.95, "method": "percentile"},
    }
    report["scope_rule"] = ("headline metrics count in-scope images only: upper-limb body parts and regions; "
                            "lower-limb regions (leg, hip) are reported under out_of_scope")
    report.update(metrics_report([r for r in rows if r.in_scope], thresholds, aggregate=aggregate,
                                 n_bootstrap=n_bootstrap, seed=seed))
    report["by_source"] = {s["name"]: source_report([r for r in rows if r.source == s["name"]], thresholds,
                                                    aggregate=aggregate, n_bootstrap=n_bootstrap, seed=seed)
                           for s in sources}
    report["unreadable"] = [{"image": r.image, "study": r.study, "error": r.error} for r in rows if r.error]
    report["n_scored"] = sum(r.probability is not None for r in rows)
    return report


def write_outputs(report: dict[str, Any], rows: Sequence[ImageRow], out: str | Path) -> Path:
    """report.json, predictions.csv, study_predictions.csv and the figures into `out`."""
    out = Path(out)
    write_predictions(rows, report["thresholds"], out, report["aggregate"])
    write_figures(report, out)
    return write_report(report, out)


def _open_sources(data: str | Path | Sequence[str | Path], split: str | None, limit: int | None
                  ) -> tuple[DatasetIndex, list[ImageRow], list[dict[str, Any]]]:
    """Open every source; returns the first index (for its kind), all rows and the sources' facts."""
    from mura_core.data.sources import open_dataset

    paths = [data] if isinstance(data, (str, Path)) else list(data)
    if not paths:
        raise ValueError("evaluate needs at least one data source")
    indexes, rows, facts = [], [], []
    for path in paths:
        index = open_dataset(path, split)
        name = source_name(path)
        if any(f["name"] == name for f in facts):
            raise ValueError(f"two data sources are both named {name!r}; give distinct folders")
        source_rows = image_rows(index, limit, source=name)
        indexes.append(index)
        rows += source_rows
        facts.append({"name": name, "path": str(path), "kind": index.kind, "n_images": len(source_rows),
                      "problems": list(index.problems)})
    return indexes[0], rows, facts


def _pointing_games(rows: Sequence[ImageRow], methods: Sequence[str], scoring: _Scoring, tolerance: float,
                    sources: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The pointing game over every source's boxed images, and per source."""
    overall = pointing_game_report(rows, methods, scoring, tolerance)
    per_source = {}
    for fact in sources:
        keep = {k for k, r in enumerate(rows) if r.source == fact["name"]}
        per_source[fact["name"]] = pointing_game_report([rows[k] for k in sorted(keep)], methods,
                                                        scoring.subset(keep), tolerance)
    return overall, per_source


def evaluate_rows(
    data: str | Path | Sequence[str | Path],
    *,
    split: str | None = None,
    weights: str | None = None,
    predictor: Any = None,
    cam: str | Sequence[str] | None = "auto",
    batch_size: int = 16,
    workers: int | None = None,
    limit: int | None = None,
    out: str | Path | None = None,
    tolerance: float | None = None,
    aggregate: str = "mean",
    tta: bool | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    weights_dir: str | Path | None = None,
    on_progress: Any = None,
    bf16: bool = False,
) -> tuple[dict[str, Any], list[ImageRow]]:
    """Score every image of `data` (one split, or all rows) and build the report (written if `out`);
    returns the report and the scored image rows (`evaluate_dataset` returns the report only).

    Args:
        data: one source or a list of sources (MURA folder, manifest, FracAtlas folder); the same split
            of each is scored and the report breaks every figure down by source.
        split: e.g. "valid"; None evaluates every row.
        weights: indexed name, ensemble name or checkpoint path (ignored when `predictor` is given).
        cam: heat-map method(s) for the pointing game on images with boxes ("auto", a name, a comma
            list, "all" for every fast method, None/"none" to skip).
        batch_size, workers: DataLoader settings (workers None -> `default_workers()`).
        limit: evaluate only the first N studies of each source.
        tolerance: pointing-game tolerance in original-image pixels (default 15).
        aggregate: study probability rule, "mean" (MURA) or "max".
        tta: score with test-time flip; None: the model's own (`Predictor.tta`; the report's "tta" says which).
        on_progress: called as on_progress(done, total) after each batch (e.g. a progress bar).
        bf16: score under bf16 autocast (scores only: needs cam None; the report's "precision" says so).
    """
    from mura_core.explain.localization import DEFAULT_TOLERANCE_PX
    from mura_core.explain.predictor import Predictor

    started = time.perf_counter()
    tolerance = DEFAULT_TOLERANCE_PX if tolerance is None else float(tolerance)
    if predictor is None:
        predictor = Predictor.from_weights(weights, device=device, weights_dir=weights_dir)
    tta = predictor.resolve_tta(tta)
    methods = _methods(predictor, cam)
    index, rows, sources = _open_sources(data, split, limit)
    scoring = score_rows(predictor, rows, methods, batch_size=batch_size, workers=workers, tolerance=tolerance,
                         tta=tta, progress=progress, on_progress=on_progress, bf16=bf16)
    report = build_report(predictor, index, rows, data=data if isinstance(data, (str, Path)) else sources[0]["path"],
                          split=split, limit=limit, aggregate=aggregate, tta=tta, n_bootstrap=n_bootstrap,
                          seed=seed, sources=sources)
    report["pointing_game"], per_source = _pointing_games(rows, methods, scoring, tolerance, sources)
    for name, game in per_source.items():
        report["by_source"][name]["pointing_game"] = game
    report["device"] = str(predictor.device)
    report["precision"] = "bf16 autocast" if bf16 else ("int8" if getattr(predictor, "int8", None) else "float32")
    report["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        write_outputs(report, rows, out)
    return report, rows


def evaluate_dataset(data: str | Path | Sequence[str | Path], **kwargs: Any) -> dict[str, Any]:
    """`evaluate_rows` without the rows: score `data` and return (and with ``out=``, write) the report."""
    return evaluate_rows(data, **kwargs)[0]
