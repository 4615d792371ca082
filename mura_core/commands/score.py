"""``python -m mura_core score PATH --out DIR``: score every study into DIR/worklist.csv, most suspicious first.

Also under ``torchrun --nnodes N --nproc_per_node M -m mura_core score ...``: each rank scores its shard
and rank 0 writes the one merged worklist. Exit code: 0 when at least one study was scored (or all were
already done), 1 when nothing could be scored, 2 for usage errors (unreadable data, weights, device).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["PRECISIONS", "add_int8_options", "add_precision_option", "build_parser", "bf16_wanted", "cli_main",
           "int8_predictor"]

PRECISIONS = ("auto", "float32", "bf16")
"""``--precision`` choices of score and evaluate."""


def add_precision_option(parser: argparse.ArgumentParser, auto: str) -> None:
    """``--precision auto|float32|bf16`` for the scores-only forward; `auto` says what "auto" means there."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help=f"scores-only forward in float32 or under bf16 autocast (auto: {auto}); heat maps "
                             "always run in float32")


def bf16_wanted(precision: str) -> bool | None:
    """``--precision`` as the `amp` argument: True (bf16), False (float32), None (auto)."""
    return {"bf16": True, "float32": False}.get(precision)


def add_int8_options(parser: argparse.ArgumentParser) -> None:
    """``--int8`` (scores only, CPU), ``--calibration PATH`` and ``--calibration-images N`` (shared with evaluate)."""
    parser.add_argument("--int8", action="store_true",
                        help="score with an int8 copy of the model (CPU; faster, scores and scope check only, no "
                             "heat maps); refused when the copy moves a calibration image's probability by more "
                             "than 0.1")
    parser.add_argument("--calibration", type=Path, action="append", default=None,
                        help="with --int8: data source whose TRAIN split sets the int8 ranges (default: the "
                             "scored data's train split); repeat for several sources")
    parser.add_argument("--calibration-images", type=int, default=None,
                        help="with --int8: how many train images calibrate (default 16)")


def int8_predictor(args: argparse.Namespace, data: Path | list[Path]) -> Any:
    """The predictor the arguments ask for, switched to int8 (`Predictor.enable_int8`) with calibration images
    from the train split of ``--calibration`` (else of `data`). Raises QuantizeError, a ValueError."""
    from mura_core.explain.predictor import Predictor
    from mura_core.explain.quantize import DEFAULT_CALIBRATION_IMAGES, calibration_images

    predictor = Predictor.from_weights(args.weights, device=args.device, weights_dir=args.weights_dir)
    sources = args.calibration or data
    images = calibration_images(sources, split="train", count=args.calibration_images or DEFAULT_CALIBRATION_IMAGES)
    predictor.enable_int8(images)
    return predictor


def build_parser() -> argparse.ArgumentParser:
    """The `score` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m mura_core score",
        description="Score every study of a MURA folder, manifest, FracAtlas folder or folder of DICOM/PNG/JPEG "
                    "files into DIR/worklist.csv, most suspicious first (resumable).")
    parser.add_argument("data", type=Path, metavar="PATH", help="data folder or manifest")
    parser.add_argument("--out", required=True, type=Path, help="output folder (worklist.csv, partial/)")
    parser.add_argument("--split", default=None, help="one split only (default: every study)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N studies")
    parser.add_argument("--weights", default=None, help="indexed weights/ensemble name or checkpoint path")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="folder holding index.json (default: $MURA_WEIGHTS_DIR, else the repo's weights/)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--batch-size", type=int, default=None, help="views per forward (default: 256 on CUDA, "
                                                                     "4 on the CPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: every core but one on CUDA; 1 on a 2-core CPU)")
    add_precision_option(parser, "bf16 where it runs in hardware: CUDA GPUs, CPUs with AMX or AVX512-BF16")
    parser.add_argument("--restart", action="store_true", help="ignore partial results of an earlier run")
    add_int8_options(parser)
    parser.add_argument("--no-progress", action="store_true")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mura_core score``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from mura_core.data.sources import DatasetError
    from mura_core.evaluation.worklist import score_worklist
    from mura_core.models.checkpoints import CheckpointError
    from mura_core.models.devices import DeviceError
    from mura_core.training.distributed import init_distributed

    try:
        context = init_distributed(args.device)
        predictor = int8_predictor(args, args.data) if args.int8 else None
        worklist = score_worklist(
            args.data, predictor=predictor, out=args.out, split=args.split, limit=args.limit, weights=args.weights,
            weights_dir=args.weights_dir, device=args.device, batch_size=args.batch_size, workers=args.workers,
            amp=bf16_wanted(args.precision), restart=args.restart, progress=not args.no_progress,
            context=context)
    except (CheckpointError, DatasetError, DeviceError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if context.rank != 0:
        return 0
    rows = worklist.rows
    scored = sum(r.probability is not None for r in rows)
    unreadable = sum(bool(r.unreadable) for r in rows)
    for problem in worklist.problems[:20]:
        print(f"data problem: {problem}", file=sys.stderr)
    print(f"{len(rows)} studies ({worklist.scored_now} scored now, {worklist.resumed} from an earlier run); "
          f"{sum(r.decision == 'abnormal' for r in rows)} abnormal, {len(rows) - scored} not scored, "
          f"{unreadable} with unreadable files")
    print(f"wrote {worklist.path}")
    return 0 if scored > 0 or not rows else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(cli_main())
