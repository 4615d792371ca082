"""Command-line entry (`python -m mura_core SUBCOMMAND`): each subcommand is a module exposing
`cli_main(argv) -> int` that only parses arguments and calls library functions.

Modules are imported lazily so that `index` never pays for importing torch.
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "index": ("mura_core.commands.index", "count studies and images in a MURA folder, a manifest or a FracAtlas folder"),
    "predict": ("mura_core.commands.predict", "score one study (one or more image files) and write heat maps"),
    "evaluate": ("mura_core.commands.evaluate", "score a data split and write metrics per body part"),
    "score": ("mura_core.commands.score", "score every study of a folder into a worklist.csv, most suspicious first"),
    "bench": ("mura_core.commands.bench", "measure latency, throughput and memory (fresh subprocess per scenario)"),
    "card": ("mura_core.commands.card", "rewrite weights/NAME.md from the checkpoint, its report and loso.json"),
    "loso": ("mura_core.commands.loso", "leave-one-source-out: train without each source, then score it"),
    "int8-check": ("mura_core.commands.int8_check", "compare a model's float32 and int8 scores on the same images"),
    "fit-heads": ("mura_core.commands.fit_heads", "fit the scope check and body-part suggestion heads of a model"),
    "fit-thresholds": ("mura_core.commands.fit_thresholds", "fit an ensemble's own thresholds on its evaluate report"),
    "train": ("mura_core.commands.train", "train a model on one or more sources and write a checkpoint with its card"),
}


def usage() -> str:
    lines = ["usage: python -m mura_core SUBCOMMAND [options]", "", "subcommands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommand's module; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.cli_main(rest) or 0)
