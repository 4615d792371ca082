"""`python -m mura_core index PATH [--split S] [--json]`: count studies and images, list problems.

Argument parsing only: the counting is `data.summary`. Never imports torch: it must stay fast.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from mura_core.data.sources import DatasetError, open_dataset
from mura_core.data.summary import format_summary, summarise

__all__ = ["cli_main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mura_core index",
                                     description="Count studies and images in a MURA folder or a manifest.")
    parser.add_argument("path", type=Path, help="MURA-v1.1 folder (or its parent), manifest.csv or its folder")
    parser.add_argument("--split", default=None, help="only this split (e.g. train, valid)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON (all problems)")
    parser.add_argument("--max-problems", type=int, default=20, help="problems listed in the text report")
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Run the `index` subcommand; 0 on success, 2 when the path is not a data set."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        index = open_dataset(args.path, split=args.split)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        summary = summarise(index, max_problems=len(index.problems))
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summarise(index, max_problems=args.max_problems)))
    return 0
