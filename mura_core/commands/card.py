"""`python -m mura_core card NAME [NAME ...]`: rewrite weights/NAME.md from the checkpoint, its shipped
evaluate report and its leave-one-source-out summary (`evaluation.cards.write_card`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["cli_main"]


def cli_main(argv: Sequence[str] | None = None) -> int:
    """0 when every card was written, 2 when a name is unknown or its checkpoint fails its check."""
    parser = argparse.ArgumentParser(prog="python -m mura_core card", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="indexed weights names")
    parser.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args(list(argv) if argv is not None else None)
    from mura_core.evaluation.cards import write_card
    from mura_core.models.checkpoints import CheckpointError

    try:
        for name in args.names:
            print(f"wrote {write_card(name, args.weights_dir)}")
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"card: error: {exc}", file=sys.stderr)
        return 2
    return 0
