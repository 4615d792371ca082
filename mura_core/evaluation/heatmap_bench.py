"""Which heat-map method points at the finding? Pointing game, energy share and runtime per method.

``python -m mura_core.evaluation.heatmap_bench --weights runs/efficientnet_lite0.last.pt --limit 50``

Takes the abnormal images with finding boxes from the valid splits of the given sources (the first
`limit` of each, in index order), explains each image alone (batch of one, as the app does) with every
method, and reports per method and source: the pointing game at 15 original-image pixels, the mean
share of heat-map energy inside the boxes, and the median seconds per image. Baselines come as rows:
the image centre (pointing) and a uniform map / random point (energy = box area fraction; pointing =
chance a random point lands within 15 px of a box). `--scale 2` explains at twice the model's input
size (a finer last feature map from the same weights; the score is still taken at the trained size).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mura_core.data.sources import open_dataset
from mura_core.data.studies import View
from mura_core.explain import cams
from mura_core.explain.cams import explain_many, resize_heatmap
from mura_core.explain.localization import (
    DEFAULT_TOLERANCE_PX, centre_hit, covered_fraction, energy_share, peak_distance)
from mura_core.imaging.decode import decode_view
from mura_core.imaging.preprocess import to_model_input

__all__ = ["boxed_views", "measure_methods", "main"]

DEFAULT_SOURCES = ("../shared/data/bone-fracture-xr", "../shared/data/FracAtlas")


def boxed_views(path: str | Path, split: str = "valid", limit: int | None = None) -> list[View]:
    """Views of abnormal studies that carry finding boxes, in index order (the first `limit`)."""
    index = open_dataset(path, split)
    views = [v for s in index.studies if s.label == 1 for v in s.views if v.boxes]
    return views[:limit] if limit else views


def measure_methods(model: torch.nn.Module, spec: Any, config: Any, views: Sequence[View],
                    methods: Sequence[str], *, scale: float = 1.0,
                    tolerance: float = DEFAULT_TOLERANCE_PX) -> dict[str, dict[str, float]]:
    """Per method: pointing-game hit rate, mean energy share and median seconds per image; plus baselines."""
    explain_config = replace(config, image_size=int(round(config.image_size * scale)))
    hits: dict[str, list[bool]] = {m: [] for m in methods}
    energy: dict[str, list[float]] = {m: [] for m in methods}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    centre, chance, area = [], [], []
    for view in views:
        pixels = decode_view(view).pixels
        shape = pixels.shape[:2]
        x = to_model_input(pixels, explain_config).unsqueeze(0)
        for method in methods:
            start = time.perf_counter()
            maps, _ = explain_many(model, spec, x, [method])
            seconds[method].append(time.perf_counter() - start)
            heat = resize_heatmap(maps[method][0], shape)
            distance = peak_distance(heat, view.boxes)
            hits[method].append(distance is not None and distance <= tolerance + 1e-9)
            energy[method].append(energy_share(heat, view.boxes) or 0.0)
        centre.append(centre_hit(view.boxes, *shape, tolerance))
        chance.append(covered_fraction(view.boxes, *shape, tolerance))
        area.append(covered_fraction(view.boxes, *shape, 0.0))
    rows = {m: {"pointing_game": float(np.mean(hits[m])), "energy_share": float(np.mean(energy[m])),
                "seconds_per_image": float(statistics.median(seconds[m]))} for m in methods}
    rows["baseline: centre point"] = {"pointing_game": float(np.mean(centre)), "energy_share": None,
                                      "seconds_per_image": 0.0}
    rows["baseline: random point / uniform map"] = {"pointing_game": float(np.mean(chance)),
                                                    "energy_share": float(np.mean(area)),
                                                    "seconds_per_image": 0.0}
    for row in rows.values():
        row["images"] = len(views)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, measure, print a Markdown table and write JSON."""
    from mura_core.explain.predictor import Predictor
    from mura_core.models.checkpoints import load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="a mura_core checkpoint path")
    parser.add_argument("--data", nargs="+", default=list(DEFAULT_SOURCES))
    parser.add_argument("--limit", type=int, default=50, help="boxed abnormal images per source")
    parser.add_argument("--methods", default="cam,gradcam,layercam,eigencam,layercam-fused,gradcam-fused")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--depth", type=int, default=None, help="resolutions the fused methods combine")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.depth:
        cams.FUSION_DEPTH = args.depth
    loaded = load_checkpoint(args.weights)
    member = Predictor(loaded, device="cpu").members[0]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    report: dict[str, Any] = {"weights": str(args.weights), "sha256": loaded.sha256, "scale": args.scale,
                              "fusion_depth": cams.FUSION_DEPTH,
                              "tolerance_px": DEFAULT_TOLERANCE_PX, "sources": {}}
    for source in args.data:
        views = boxed_views(source, "valid", args.limit)
        report["sources"][Path(source).name] = measure_methods(member.model, member.spec, member.config, views,
                                                               methods, scale=args.scale)
    print(f"| source | method | pointing game @15px | energy share | s/image | images |")
    print("|---|---|---|---|---|---|")
    for source, rows in report["sources"].items():
        for method, r in rows.items():
            e = "-" if r["energy_share"] is None else f"{r['energy_share']:.3f}"
            print(f"| {source} | {method} | {r['pointing_game']:.3f} | {e} | {r['seconds_per_image']:.3f} | {r['images']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
