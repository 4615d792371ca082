"""The shipped model card file (`weights/NAME.md`): the checkpoint's card with its metrics quoted from
the shipped evaluate report and the leave-one-source-out summary, so the file, the app and the README
show the same figures.
"""
from __future__ import annotations

from pathlib import Path

from mura_core.evaluation.cross_fitted import cross_fitted_figures, cross_fitted_markdown
from mura_core.evaluation.reports import load_report, map_caution, metrics_markdown, shipped_report
from mura_core.explain.cams import SELF_FLIPPING_METHODS
from mura_core.explain.predictor import Predictor
from mura_core.models.checkpoints import render_card_markdown
from mura_core.models.weights import (default_cam_for, default_tta_for, description_for, ensemble_maps_from,
                                     ensemble_unflipped, list_ensembles, load_weights, weights_folder)

__all__ = ["card_text", "write_card"]


def card_text(name: str, weights_dir: str | Path | None = None) -> str:
    """The card markdown of indexed weights `name` (sha256-checked), quoting `NAME.report/report.json`; for an
    ensemble of the index, its members (each with its own card file) and how they are combined."""
    folder = weights_folder(weights_dir)
    members = list_ensembles(folder).get(name)
    if members:
        return _ensemble_card(name, members, folder)
    loaded = load_weights(name, device="cpu", weights_dir=folder)
    shown_map = Predictor.from_index(name, [loaded], device="cpu", weights_dir=folder).default_cam
    return render_card_markdown(loaded.card, loaded.sha256, metrics_section=_metrics_section(name, folder, shown_map),
                                summary=description_for(name, folder))


def _metrics_section(name: str, folder: Path, shown_map: str) -> str:
    """The metrics section quoting `NAME.report`, with the model's leave-one-source-out summary; `shown_map` is the
    heat-map method the viewer starts at (`Predictor.default_cam`; the heat-map caution is about it)."""
    from mura_core.training.loso import model_loso

    ref = shipped_report(name, folder)
    if ref is None:
        return (f"## Metrics\n\nNo evaluate report ships with these weights; run `python -m mura_core evaluate "
                f"... --out {folder.name}/{name}.report` to measure them.\n")
    report, predictions = load_report(ref)
    text = metrics_markdown(report, f"{ref.folder.name}/{ref.report.name}", model_loso(name, folder))
    text += cross_fitted_markdown(cross_fitted_figures(predictions))
    method = default_cam_for(name, folder)
    if method:
        text += (f"\n**Default heat map**: `{method}` (index.json `default_cam`), chosen on these valid splits by the "
                 "pointing game above and its cost (README, Results and Speed).\n")
    caution = map_caution(report, shown_map)
    if caution:
        text += f"\n**Heat-map caution**: {caution}\n"
    if default_tta_for(name, folder):
        text += ("\n**Test-time flip**: on by default (index.json `default_tta`): each view is also scored mirrored "
                 "and the two probabilities averaged, in the viewer, the worklist and the report above (its `tta`). "
                 + _unflipped_rule(name, folder)
                 + (f"With `{method}` the flip needs no extra forward of the map model (that map already forwards "
                    "the mirror image); scores alone take two forwards.\n" if method in SELF_FLIPPING_METHODS
                    else "Scores and maps take two forwards.\n"))
    return text


def _unflipped_rule(name: str, folder: Path) -> str:
    """The sentence naming an ensemble's members scored without the flip (index ``"ensemble_unflipped"``)."""
    skipped = ensemble_unflipped(name, folder)
    return (f"Except {' and '.join(skipped)}, which scores the plain view only (index.json `ensemble_unflipped`): "
            "its flip doubled its cost and moved the ensemble's valid AUCs by less than their noise (README, Results). "
            if skipped else "")


def _ensemble_card(name: str, members: list[str], folder: Path) -> str:
    """An ensemble's card: members (sha256-checked on load), the combination rule, the thresholds its `Predictor`
    decides at (and where they came from) and the ensemble's own evaluate report."""
    loaded = [load_weights(m, device="cpu", weights_dir=folder) for m in members]
    rows = [f"| {m.card.name} | `{m.card.arch}` | {m.card.image_size} px | `{m.sha256}` | `{m.card.name}.md` |"
            for m in loaded]
    predictor = Predictor.from_index(name, loaded, device="cpu", weights_dir=folder)
    thresholds = predictor.thresholds
    lines = [f"# Model card: {name} (ensemble)", "",
             "**Members** (each has its own card with architecture, data and licence credit, recipe and sha256):", "",
             "| member | architecture | input | sha256 | card |", "|---|---|---|---|---|", *rows, "",
             "**How they are combined**: each member scores the view at its own input size; the study probability "
             f"is the mean of the members' calibrated probabilities. {_maps_rule(name, members, folder)} The scope "
             "check and body-part suggestion use the first member's fitted heads on its pooled features.", "",
             "**Licence of the data** (the members' training data): "
             + " ".join(dict.fromkeys(str(m.card.licence) for m in loaded)), "",
             "The validation split that the metrics below are on also chose each member's epoch, temperature and "
             "thresholds, and this ensemble over its members"
             + (" and its test-time flip" if predictor.tta else "") + ": the figures are optimistic.", "",
             f"**Thresholds** ({predictor.thresholds_source}): "
             + ", ".join(f"{k} {thresholds[k]:.3f}" for k in sorted(thresholds, key=lambda k: (k != "default", k)))
             + ".", "",
             _metrics_section(name, folder, predictor.default_cam),
             "## Intended use", "",
             "A second reader and teaching aid for upper-extremity radiographs. Not a medical device and "
             "not for diagnosis: every output must be checked by a qualified reader.", ""]
    return "\n".join(lines)


def _maps_rule(name: str, members: list[str], folder: Path) -> str:
    """The sentence saying whose heat maps the ensemble shows (index ``"ensemble_maps_from"``)."""
    chosen = ensemble_maps_from(name, folder)
    if not chosen or set(chosen) == set(members):
        return "Heat maps are averaged after each is resized to the image and min-max normalised."
    return (f"Heat maps come from {' and '.join(chosen)} only (index.json `ensemble_maps_from`): on the valid "
            "splits its maps pointed at expert boxes more often than the members' average (README, Results), "
            "so the map explains that member's contribution to the score, not the others'.")


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
