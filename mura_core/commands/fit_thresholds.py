"""`python -m mura_core fit-thresholds ENSEMBLE [--report DIR]`: fit an indexed ensemble's own decision thresholds
on its evaluate report's valid study predictions and record them in weights/index.json ("ensemble_thresholds").

Argument parsing only: the fit is `evaluation.ensemble_thresholds`. Run evaluate again afterwards, so that the
shipped report (and the card, the Home page and the Validation page quoting it) decide at the new thresholds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["cli_main"]


def cli_main(argv: Sequence[str] | None = None) -> int:
    """0 when the thresholds were written, 2 when the ensemble or its report is unusable."""
    parser = argparse.ArgumentParser(prog="python -m mura_core fit-thresholds", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="an ensemble named in weights/index.json")
    parser.add_argument("--report", type=Path, default=None,
                        help="evaluate report folder (default: <weights folder>/<name>.report)")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--min-per-class", type=int, default=5,
                        help="a body part gets its own threshold with at least this many normal and abnormal studies")
    args = parser.parse_args(list(argv) if argv is not None else None)
    from mura_core.evaluation.ensemble_thresholds import fit_from_report
    from mura_core.models.weights import list_ensembles, report_folder, set_ensemble_thresholds

    if args.name not in list_ensembles(args.weights_dir):
        print(f"fit-thresholds: error: {args.name!r} is not an ensemble in the weights index (a checkpoint's "
              "thresholds are fitted by train and live in its card)", file=sys.stderr)
        return 2
    try:
        thresholds = fit_from_report(args.report or report_folder(args.name, args.weights_dir), args.min_per_class)
        set_ensemble_thresholds(args.name, thresholds, args.weights_dir)
    except (ValueError, OSError) as exc:
        print(f"fit-thresholds: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(thresholds.items())))
    return 0
