"""``python -m mura_core bench``: the speed and memory bench (`mura_core.bench`, also ``python -m mura_core.bench``)."""
from __future__ import annotations

from typing import Sequence

__all__ = ["cli_main"]


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Run the bench with these arguments; returns the exit code."""
    from mura_core.bench import main

    return main(list(argv) if argv is not None else None)
