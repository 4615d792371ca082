"""`python -m mura_core loso`: the train arguments plus an output folder; the work is
`mura_core.training.loso.leave_one_source_out`.
"""
from __future__ import annotations

import sys
from typing import Sequence

__all__ = ["cli_main"]


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Train without each source in turn and score it; 0 on success, 2 on bad input."""
    from mura_core.commands.train import build_parser
    from mura_core.models.checkpoints import CheckpointError
    from mura_core.training.config import TrainConfig
    from mura_core.training.loso import leave_one_source_out

    parser = build_parser()
    parser.prog = "python -m mura_core loso"
    parser.description = ("Leave-one-source-out: for each --data source, train on the others (same recipe) "
                          "and evaluate on it; --out is a folder for the models, reports and loso.json.")
    parser.add_argument("--evaluate-split", default="valid", help="split of the held-out source to score")
    parser.add_argument("--only", action="append", default=None,
                        help="hold out only this source (folder name); repeatable (default: each in turn)")
    args = vars(parser.parse_args(list(argv) if argv is not None else None))
    evaluate_split, only = args.pop("evaluate_split"), args.pop("only")
    out_dir = args["out"]
    try:
        summary = leave_one_source_out(TrainConfig(**args), out_dir, evaluate_split=evaluate_split, only=only)
    except (ValueError, CheckpointError, RuntimeError) as exc:
        print(f"loso: error: {exc}", file=sys.stderr)
        return 2
    for run in summary["runs"]:
        auc = "n/a" if run["auc"] is None else f"{run['auc']:.3f}"
        print(f"held out {run['held_out']} (trained on {', '.join(run['trained_on'])}): AUC {auc} "
              f"on {run['n_images']} in-scope images")
    return 0
