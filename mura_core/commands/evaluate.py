"""``python -m mura_core evaluate``: parse the arguments and call `evaluation.evaluate.evaluate_dataset`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mura_core.commands.score import add_int8_options, add_precision_option, bf16_wanted, int8_predictor

__all__ = ["build_parser", "cli_main"]


def build_parser() -> argparse.ArgumentParser:
    """The `evaluate` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m mura_core evaluate",
        description="Score a data split; write report.json, predictions.csv, figures and the pointing game.")
    parser.add_argument("--data", required=True, type=Path, action="append",
                        help="a source: MURA folder, manifest (file or folder) or FracAtlas folder; repeat the "
                             "option to evaluate several sources in one report, broken down by source")
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
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average with horizontally flipped images (default: the model's own, index.json "
                             "default_tta; the report's tta says which)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    add_precision_option(parser, "float32, the precision the viewer scores in; bf16 needs --cam none")
    add_int8_options(parser)
    return parser


def _summary_line(report: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    img, study = report["image_level"]["overall"], report["study_level"]["overall"]
    line = (f"{report['model']['name']}: {report['n_scored']}/{report['data']['n_images']} images scored; "
            f"in-scope image AUC {fmt(img['auc'])}, study AUC {fmt(study['auc'])}, study kappa {fmt(study['kappa'])}")
    per_source = report.get("by_source") or {}
    if len(per_source) > 1:
        line += "; " + ", ".join(f"{name} AUC {fmt(r['image_level']['overall']['auc'])}"
                                 for name, r in per_source.items())
    pg = report.get("pointing_game")
    if pg:
        line += "; pointing game " + ", ".join(f"{m} {fmt(s['hit_rate'])}" for m, s in pg["methods"].items())
    return line


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mura_core evaluate``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from mura_core.data.sources import DatasetError
    from mura_core.evaluation.evaluate import evaluate_dataset
    from mura_core.models.checkpoints import CheckpointError
    from mura_core.models.devices import DeviceError

    for flag, asked in (("--int8", args.int8), ("--precision bf16", args.precision == "bf16")):
        if asked and str(args.cam).strip().lower() != "none":
            print(f"error: {flag} scores only (no heat maps for the pointing game); add --cam none", file=sys.stderr)
            return 2
    try:
        predictor = int8_predictor(args, args.data) if args.int8 else None
        report = evaluate_dataset(
            args.data[0] if len(args.data) == 1 else args.data, split=args.split, weights=args.weights,
            predictor=predictor, cam=args.cam, batch_size=args.batch_size,
            workers=args.workers, limit=args.limit, out=args.out, tolerance=args.tolerance,
            aggregate=args.aggregate, tta=args.tta, n_bootstrap=args.bootstrap, seed=args.seed,
            device=args.device, progress=not args.no_progress, weights_dir=args.weights_dir,
            bf16=bool(bf16_wanted(args.precision)))
    except (CheckpointError, DatasetError, DeviceError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(_summary_line(report))
    print(f"wrote {args.out / 'report.json'}, predictions.csv, study_predictions.csv, figures.html")
    return 0 if report["n_scored"] > 0 else 1
