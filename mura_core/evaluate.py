"""``python -m mura_core evaluate``: score a data split and report metrics, figures and the pointing game.

Works on a MURA folder or a manifest (`datasets.open_dataset`). Writes to ``--out``:

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

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mura_core.metrics import aggregate_studies, grouped_metrics, roc_points, threshold_for
from mura_core.studies import Box, DatasetIndex, View

__all__ = [
    "ImageRow",
    "build_parser",
    "cli_main",
    "default_workers",
    "evaluate_dataset",
    "image_rows",
    "metrics_report",
    "write_figures",
    "write_predictions",
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


def image_rows(index: DatasetIndex, limit: int | None = None) -> list[ImageRow]:
    """One row per view of the index's studies (the first `limit` studies when given)."""
    studies = index.studies if limit is None else index.studies[: max(0, int(limit))]
    rows = []
    for study in studies:
        part = getattr(study.body_part, "value", str(study.body_part))
        for view in study.views:
            rows.append(ImageRow(view.name, study.study_id, part, study.label, study.split,
                                 tuple(view.boxes), view))
    return rows


def default_workers() -> int:
    """DataLoader workers: 1 on <= 2 cores (decode beside the model), else up to 4."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else min(4, cores - 1)


# ----------------------------------------------------------------------------------------------
# decoding in workers
# ----------------------------------------------------------------------------------------------

class _ViewDataset(Dataset):
    """Decodes a view and preprocesses it for every configuration the predictor needs."""

    def __init__(self, views: Sequence[View], configs: Sequence[Any]) -> None:
        self.views = list(views)
        self.configs = list(configs)

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from mura_core.decode import DecodeError, decode_view
        from mura_core.preprocess import to_model_input

        try:
            pixels = decode_view(self.views[i]).pixels
        except DecodeError as error:
            return {"index": i, "error": error.reason}
        except Exception as error:  # noqa: BLE001 - one bad file never stops an evaluation
            return {"index": i, "error": f"could not read ({type(error).__name__})"}
        inputs = [to_model_input(pixels, c) for c in self.configs]
        return {"index": i, "error": None, "inputs": inputs, "shape": tuple(pixels.shape[:2])}


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

def write_predictions(rows: Sequence[ImageRow], thresholds: dict[str, float], out: Path,
                      aggregate: str = "mean") -> tuple[Path, Path]:
    """predictions.csv (per image) and study_predictions.csv (per study)."""
    out.mkdir(parents=True, exist_ok=True)
    image_path, study_path = out / "predictions.csv", out / "study_predictions.csv"
    with image_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "study", "body_part", "label", "probability", "abnormal", "threshold",
                         "split", "error"])
        for r in rows:
            t = threshold_for(thresholds, r.body_part)
            p = r.probability
            writer.writerow([r.image, r.study, r.body_part, "" if r.label is None else r.label,
                             "" if p is None else f"{p:.6f}", "" if p is None else int(p >= t), f"{t:.6f}",
                             r.split or "", r.error or ""])
    study_split = {}
    for r in rows:
        study_split.setdefault(r.study, r.split)
    with study_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study", "body_part", "label", "probability", "abnormal", "threshold", "n_images",
                         "split", "level"])
        for s in aggregate_studies(((r.study, r.body_part, r.label, r.probability) for r in rows), aggregate):
            t = threshold_for(thresholds, s.body_part)
            p = s.probability
            writer.writerow([s.study_id, s.body_part, "" if s.label is None else s.label,
                             "" if p is None else f"{p:.6f}", "" if p is None else int(p >= t), f"{t:.6f}",
                             s.n_images, study_split.get(s.study_id) or "", "study"])
    return image_path, study_path


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
            from mura_core.explain import SLOW_METHODS

            out += [m for m in predictor.cam_methods() if m not in SLOW_METHODS]
            continue
        if name not in predictor.cam_methods():
            raise ValueError(f"heat-map method {name!r} not available for {predictor.name}; "
                             f"choose from {', '.join(predictor.cam_methods())}")
        out.append(name)
    return list(dict.fromkeys(out))


def evaluate_dataset(
    data: str | Path,
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
    tta: bool = False,
    n_bootstrap: int = 1000,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    weights_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score every image of `data` (one split, or all rows) and build the report (written if `out`).

    Args:
        data: MURA folder or manifest (file or folder).
        split: e.g. "valid"; None evaluates every row.
        weights: indexed name, ensemble name or checkpoint path (ignored when `predictor` is given).
        cam: heat-map method(s) for the pointing game on images with boxes ("auto", a name, a comma
            list, "all" for every fast method, None/"none" to skip).
        batch_size, workers: DataLoader settings (workers None -> `default_workers()`).
        limit: evaluate only the first N studies.
        tolerance: pointing-game tolerance in original-image pixels (default 15).
        aggregate: study probability rule, "mean" (MURA) or "max".
    """
    from tqdm import tqdm

    from mura_core.checkpoints import utc_now
    from mura_core.datasets import open_dataset
    from mura_core.localization import (
        DEFAULT_TOLERANCE_PX, REPORT_TOLERANCES_PX, centre_hit, covered_fraction, hit_rates_by_tolerance,
        peak_distance, pointing_game_summary,
    )
    from mura_core.predict import Predictor

    started = time.perf_counter()
    tolerance = DEFAULT_TOLERANCE_PX if tolerance is None else float(tolerance)
    if predictor is None:
        predictor = Predictor.from_weights(weights, device=device, weights_dir=weights_dir)
    methods = _methods(predictor, cam)
    index = open_dataset(data, split)
    rows = image_rows(index, limit)
    configs = predictor.input_configs
    workers = default_workers() if workers is None else max(0, int(workers))
    loader = DataLoader(_ViewDataset([r.view for r in rows], configs), batch_size=max(1, int(batch_size)),
                        shuffle=False, num_workers=workers, collate_fn=_keep_list)
    pg_dist: dict[str, list[float | None]] = {m: [] for m in methods}
    centre, chance = [], []
    bar = tqdm(total=len(rows), desc=f"evaluate {predictor.name}", unit="img", file=sys.stderr,
               disable=not progress)
    for batch in loader:
        good = []
        for item in batch:
            if item["error"] is not None:
                rows[item["index"]].error = item["error"]
            else:
                good.append(item)
        boxed = [it for it in good if rows[it["index"]].boxes]
        plain = [it for it in good if not rows[it["index"]].boxes]
        if plain:
            prob, _ = predictor.run_batches(_stack(plain, configs), tta=tta)
            for it, p in zip(plain, prob):
                rows[it["index"]].probability = float(p)
        if boxed:
            prob, maps = predictor.run_batches_many(_stack(boxed, configs), methods, tta=tta)
            for method in methods:
                for j, it in enumerate(boxed):
                    heat = predictor.combine_maps(maps[method], j, it["shape"])
                    pg_dist[method].append(peak_distance(heat, rows[it["index"]].boxes))
            for it, p in zip(boxed, prob):
                row = rows[it["index"]]
                row.probability = float(p)
                if methods:
                    h, w = it["shape"]
                    centre.append(centre_hit(row.boxes, h, w, tolerance))
                    chance.append(covered_fraction(row.boxes, h, w, tolerance))
        bar.update(len(batch))
    bar.close()
    thresholds = dict(predictor.thresholds)
    report: dict[str, Any] = {
        "model": {"name": predictor.name, "sha256": predictor.sha256,
                  "members": [{"name": m.name, "arch": m.spec.name, "image_size": m.config.image_size,
                               "sha256": m.sha256} for m in predictor.members],
                  "card": predictor.card.to_dict() if not predictor.is_ensemble else None},
        "data": {"name": str(data), "kind": index.kind, "split": split, "limit": limit,
                 "n_studies": len({r.study for r in rows}), "n_images": len(rows),
                 "problems": list(index.problems)},
        "split": split or "all",
        "created": utc_now(),
        "n_studies": len({r.study for r in rows}),
        "thresholds": thresholds,
        "thresholds_source": ("model card (fitted on the model's validation split)" if not predictor.is_ensemble
                              else "mean of the ensemble members' model-card thresholds"),
        "aggregate": aggregate,
        "tta": tta,
        "bootstrap": {"n": n_bootstrap, "seed": seed, "confidence": 0.95, "method": "percentile"},
    }
    report.update(metrics_report(rows, thresholds, aggregate=aggregate, n_bootstrap=n_bootstrap, seed=seed))
    report["unreadable"] = [{"image": r.image, "study": r.study, "error": r.error} for r in rows if r.error]
    report["n_scored"] = sum(r.probability is not None for r in rows)
    report["pointing_game"] = {
        "description": "hit when the heat-map maximum (target: abnormal) lies within tolerance_px "
                       "original-image pixels of a finding box; images with boxes only",
        "tolerance_px": tolerance,
        "methods": {m: pointing_game_summary([None if d is None else d <= tolerance + 1e-9 for d in pg_dist[m]],
                                             centre_hits=centre, random_chance=chance, tolerance=tolerance)
                    for m in methods},
        "hit_rate_by_tolerance_px": {m: hit_rates_by_tolerance(pg_dist[m], sorted({*REPORT_TOLERANCES_PX, tolerance}))
                                     for m in methods},
    } if any(r.boxes for r in rows) and methods else None
    report["device"] = str(predictor.device)
    report["seconds"] = round(time.perf_counter() - started, 2)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_predictions(rows, thresholds, out, aggregate)
        write_figures(report, out)
        (out / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return report


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The `evaluate` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m mura_core evaluate",
        description="Score a data split; write report.json, predictions.csv, figures and the pointing game.")
    parser.add_argument("--data", required=True, type=Path, help="MURA folder or manifest (file or folder)")
    parser.add_argument("--split", default=None, help="e.g. valid (default: every row)")
    parser.add_argument("--weights", default=None, help="indexed weights/ensemble name or checkpoint path")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="folder holding index.json (default: $MURA_WEIGHTS_DIR, else the repo's weights/)")
    parser.add_argument("--cam", default="auto",
                        help="pointing-game heat-map method(s): auto (model default), a name, a comma list, "
                             "all (every fast method) or none")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: 1 on 2 cores)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N studies")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--tolerance", type=float, default=None, help="pointing-game tolerance in pixels (15)")
    parser.add_argument("--aggregate", default="mean", choices=["mean", "max"])
    parser.add_argument("--tta", action="store_true", help="average with horizontally flipped images")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _summary_line(report: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    img, study = report["image_level"]["overall"], report["study_level"]["overall"]
    line = (f"{report['model']['name']}: {report['n_scored']}/{report['data']['n_images']} images scored; "
            f"image AUC {fmt(img['auc'])}, study AUC {fmt(study['auc'])}, study kappa {fmt(study['kappa'])}")
    pg = report.get("pointing_game")
    if pg:
        line += "; pointing game " + ", ".join(f"{m} {fmt(s['hit_rate'])}" for m, s in pg["methods"].items())
    return line


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mura_core evaluate``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from mura_core.checkpoints import CheckpointError
    from mura_core.datasets import DatasetError
    from mura_core.devices import DeviceError

    try:
        report = evaluate_dataset(
            args.data, split=args.split, weights=args.weights, cam=args.cam, batch_size=args.batch_size,
            workers=args.workers, limit=args.limit, out=args.out, tolerance=args.tolerance,
            aggregate=args.aggregate, tta=args.tta, n_bootstrap=args.bootstrap, seed=args.seed,
            device=args.device, progress=not args.no_progress, weights_dir=args.weights_dir)
    except (CheckpointError, DatasetError, DeviceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(_summary_line(report))
    print(f"wrote {args.out / 'report.json'}, predictions.csv, study_predictions.csv, figures.html")
    return 0 if report["n_scored"] > 0 else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_main())
