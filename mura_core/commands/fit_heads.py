"""``python -m mura_core fit-heads``: fit a checkpoint's scope check and body-part suggester (`explain.fit_heads`).

Writes ``<stem>.heads.npz`` (the heads), ``<stem>.heads.json`` (report with their sha256) and ``<stem>.heads.md``
into ``--out`` (default: the checkpoint's folder, where the app and ``predict`` look for them), and records
the sha256 in that folder's ``index.json`` when it indexes the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mura_core.imaging.synthetic import CATEGORIES

__all__ = ["build_parser", "cli_main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mura_core fit-heads",
                                     description="Fit the scope check and body-part suggestion heads of a model.")
    parser.add_argument("--weights", default=None, help="indexed weights name or a checkpoint path (default: the default)")
    parser.add_argument("--weights-dir", type=Path, default=None, help="folder holding index.json")
    parser.add_argument("--data", action="append", default=None,
                        help="data folder (repeat): FracAtlas and bone-fracture-xr (default: both under ../shared/data)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the checkpoint's folder)")
    parser.add_argument("--max-per-group", type=int, default=250,
                        help="at most this many images per (source, split, region), stable pick (default 250)")
    parser.add_argument("--synthetic", type=int, default=40,
                        help="held-out generated images per category, never fitted on (default 40)")
    parser.add_argument("--synthetic-fit", type=int, default=60,
                        help="generated images per category the image-kind head is fitted on (default 60)")
    parser.add_argument("--leave-out-kind", choices=CATEGORIES, default=None,
                        help="fit without this generated kind (a check of kinds never seen; write to another --out)")
    parser.add_argument("--false-alarm", type=float, default=0.05,
                        help="share of upper-limb calibration images the scope check may flag (default 0.05)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    return parser


def cli_main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for unusable weights or data)."""
    args = build_parser().parse_args(argv)
    from mura_core.explain.fit_heads import collect_items, fit_heads, write_outputs
    from mura_core.imaging.preprocess import PreprocessConfig
    from mura_core.models.checkpoints import CheckpointError
    from mura_core.models.devices import pick_device
    from mura_core.models.weights import load_weights

    try:
        loaded = load_weights(args.weights, device="cpu", weights_dir=args.weights_dir)
    except (CheckpointError, ValueError) as error:
        print(f"cannot load weights: {error}", file=sys.stderr)
        return 2
    data = args.data or ["../shared/data/FracAtlas", "../shared/data/bone-fracture-xr"]
    try:
        items = collect_items(data, args.max_per_group, args.synthetic, args.synthetic_fit, args.leave_out_kind)
    except (OSError, ValueError) as error:
        print(f"cannot read the data: {error}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    card = loaded.card
    config = PreprocessConfig(image_size=int(card.image_size), mean=tuple(card.mean), std=tuple(card.std))
    print(f"{len(items)} images; extracting features with {card.name} ({card.arch}, {card.image_size} px)",
          file=sys.stderr)
    result = fit_heads(loaded.model.to(device).eval(), card.arch, config, loaded.sha256, items,
                       false_alarm=args.false_alarm, device=str(device),
                       progress=lambda text: print(text, file=sys.stderr, flush=True))
    paths = write_outputs(result, Path(loaded.path), args.out or Path(loaded.path).parent, card_name=card.name)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    print(paths["markdown"].read_text(), file=sys.stderr)
    return 0
