"""``python -m mura_core int8-check``: float32 vs int8 scores of one model on the same images (`evaluation.int8_check`).

Prints the largest and mean probability change, AUC in float32 and int8, decisions that flip at the model's
threshold and scope-check agreement; the int8 ranges are calibrated on the data's TRAIN split, never on the
compared images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mura_core.explain.quantize import DEFAULT_CALIBRATION_IMAGES, OBSERVERS

__all__ = ["build_parser", "cli_main"]


def build_parser() -> argparse.ArgumentParser:
    """The accuracy-check argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m mura_core int8-check",
        description="Compare float32 and int8 scores of one model on the same images (int8 calibrated on the "
                    "train split).")
    parser.add_argument("--weights", default=None, help="indexed weights name or checkpoint path (default: "
                                                        "the index's default)")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--data", required=True, type=Path, help="data source with train and valid splits")
    parser.add_argument("--split", default="valid", help="the compared split (default valid)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N studies")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help=f"train images that set the int8 ranges (default {DEFAULT_CALIBRATION_IMAGES})")
    parser.add_argument("--observer", default="histogram", choices=OBSERVERS, help="activation range observer")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    """Run the accuracy check and print it; 2 on a usage error (unknown weights, data, architecture)."""
    args = build_parser().parse_args(argv)
    import torch

    from mura_core.data.sources import DatasetError
    from mura_core.evaluation.int8_check import compare_float_int8
    from mura_core.explain.quantize import QuantizeError
    from mura_core.models.checkpoints import CheckpointError
    from mura_core.models.weights import load_weights

    if args.threads:
        torch.set_num_threads(int(args.threads))
    try:
        loaded = load_weights(args.weights, device="cpu", weights_dir=args.weights_dir)
        result = compare_float_int8(loaded, args.data, split=args.split, limit=args.limit,
                                    calibration_count=args.calibration_images, observer=args.observer,
                                    progress=not args.no_progress)
    except (QuantizeError, CheckpointError, DatasetError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{loaded.card.name} ({loaded.card.arch}, {loaded.card.image_size} px) on {args.data} {args.split}:")
    for line in result.lines():
        print("  " + line)
    return 0
