"""The shipped model card file (`weights/NAME.md`): the checkpoint's card with its metrics quoted from
the shipped evaluate report and the leave-one-source-out summary, so the file, the app and the README
show the same figures.
"""
from __future__ import annotations

from pathlib import Path

from mura_core.evaluation.reports import load_report, metrics_markdown, shipped_report
from mura_core.models.checkpoints import render_card_markdown
from mura_core.models.weights import load_weights, weights_folder

__all__ = ["card_text", "write_card"]


def card_text(name: str, weights_dir: str | Path | None = None) -> str:
    """The card markdown of indexed weights `name` (sha256-checked), quoting `NAME.report/report.json`."""
    from mura_core.training.loso import read_loso

    folder = weights_folder(weights_dir)
    loaded = load_weights(name, device="cpu", weights_dir=folder)
    ref = shipped_report(name, folder)
    if ref is None:
        section = (f"## Metrics\n\nNo evaluate report ships with these weights; run `python -m mura_core evaluate "
                   f"... --out {folder.name}/{name}.report` to measure them.\n")
    else:
        report, _ = load_report(ref)
        section = metrics_markdown(report, f"{ref.folder.name}/{ref.report.name}", read_loso(folder / f"{name}.loso.json"))
    return render_card_markdown(loaded.card, loaded.sha256, metrics_section=section)


def write_card(name: str, weights_dir: str | Path | None = None) -> Path:
    """Write `card_text` to ``<weights folder>/<name>.md``, keeping the scope/body-part section that
    `fit-heads` wrote beside the checkpoint (``<name>.heads.md``); returns the path."""
    from mura_core.explain.fit_heads import update_card_section

    folder = weights_folder(weights_dir)
    path = folder / f"{name}.md"
    path.write_text(card_text(name, weights_dir), encoding="utf-8")
    heads = folder / f"{name}.heads.md"
    if heads.is_file():
        update_card_section(path, heads.read_text(encoding="utf-8"))
    return path
