"""Leave-one-source-out: train without a source, then score that unseen source.

The honest test of "holds up on radiographs it never saw": for each source S, a model is trained with
the same recipe on every other source and evaluated on S's valid split, which it never saw in any form
(no training, no epoch choice, no threshold or temperature fitting). `loso.json` lists, per held-out
source, the training sources and the in-scope AUC (with its bootstrap interval) on S.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from mura_core.data.sources import source_name
from mura_core.training.config import TrainConfig

__all__ = ["LOSO_NAME", "LOSO_SUFFIX", "leave_one_source_out", "loso_file", "model_loso", "read_loso"]

LOSO_NAME = "loso.json"

_RECIPE_KEYS = ("arch", "epochs", "image_size", "augment", "lr", "ema_decay", "source_balance", "box_loss_weight",
                "seed")
"""The training settings `loso.json` quotes (the held-out models' cards have the whole recipe)."""


def _held_out_summary(held_out: str, trained_on: list[str], report: dict[str, Any], checkpoint: Path,
                      report_dir: Path) -> dict[str, Any]:
    overall = report["image_level"]["overall"]
    return {"held_out": held_out, "trained_on": trained_on, "split": report.get("split"),
            "n_images": overall.get("n"), "auc": overall.get("auc"), "auc_ci": (overall.get("ci") or {}).get("auc"),
            "kappa": overall.get("kappa"), "checkpoint": checkpoint.name, "report": report_dir.name}


def leave_one_source_out(config: TrainConfig, out_dir: str | Path, *, evaluate_split: str = "valid",
                         n_bootstrap: int = 1000, only: list[str] | None = None) -> dict[str, Any]:
    """Train one model per held-out source (recipe from `config`, its `out` ignored) and evaluate it there.

    Writes ``without_<source>.pt`` (+ card), ``without_<source>.report/`` and ``loso.json`` into `out_dir`;
    returns the loso.json content. Resumable: a held-out source whose checkpoint and report already exist
    is not trained again. `only` restricts the held-out sources (by folder name).
    """
    from mura_core.evaluation.evaluate import evaluate_dataset
    from mura_core.training.loop import train

    if len(config.data) < 2:
        raise ValueError("leave-one-source-out needs at least two --data sources")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    unknown = set(only or []) - {source_name(d) for d in config.data}
    if unknown:
        raise ValueError(f"--only names no --data source: {', '.join(sorted(unknown))}")
    for held in config.data:
        name = source_name(held)
        if only and name not in only:
            continue
        rest = [d for d in config.data if d != held]
        checkpoint = out_dir / f"without_{name}.pt"
        report_dir = out_dir / f"without_{name}.report"
        if not checkpoint.is_file():
            train(replace(config, data=rest, out=str(checkpoint), name=f"without_{name}", register=False,
                          default=False, resume=False, last=None))
        if (report_dir / "report.json").is_file():
            report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
        else:
            report = evaluate_dataset(held, split=evaluate_split, weights=str(checkpoint), cam=None,
                                      out=report_dir, n_bootstrap=n_bootstrap, progress=config.progress)
        runs.append(_held_out_summary(name, [source_name(d) for d in rest], report, checkpoint, report_dir))
    held = "each source held out in turn" if not only else f"held out: {', '.join(r['held_out'] for r in runs)}"
    summary = {"description": f"{held}: trained on the others with the same recipe, scored on the held-out "
                              f"source's '{evaluate_split}' split (in-scope images)",
               "recipe": {k: v for k, v in vars(config).items() if k in _RECIPE_KEYS},
               "runs": runs}
    (out_dir / LOSO_NAME).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return summary


def read_loso(path: str | Path) -> dict[str, Any] | None:
    """A loso.json (or None when the file is absent)."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


LOSO_SUFFIX = ".loso.json"


def loso_file(name: str, weights_dir: str | Path) -> Path:
    """Where indexed model `name`'s leave-one-source-out summary lives: the index entry's ``"loso"`` file when
    it names one (a model that continues another's recipe quotes that recipe's runs), else ``<name>.loso.json``."""
    from mura_core.models.weights import read_index

    folder = Path(weights_dir)
    entry = read_index(folder)["models"].get(name) or {}
    return folder / str(entry.get("loso") or f"{name}{LOSO_SUFFIX}")


def model_loso(name: str, weights_dir: str | Path) -> dict[str, Any] | None:
    """The leave-one-source-out summary shipped for a model (`loso_file`). Runs of another model's recipe (an
    index ``"loso"`` pointer, or an ensemble's members) are tagged under ``"recipe"`` with that model's name
    (the file's stem): the runs measure a recipe, not one checkpoint. An ensemble without its own summary
    quotes every member's. None when there is none."""
    from mura_core.models.weights import list_ensembles

    folder = Path(weights_dir)
    members = list_ensembles(folder).get(name, [])
    own = loso_file(name, folder)
    files = [own] if own.is_file() or not members else list(dict.fromkeys(loso_file(m, folder) for m in members))
    found = {path.name.removesuffix(LOSO_SUFFIX): read_loso(path) for path in files}
    found = {recipe: summary for recipe, summary in found.items() if summary is not None}
    if not found:
        return None
    if len(found) == 1:
        recipe, summary = next(iter(found.items()))
        return summary if recipe == name else _tagged(recipe, summary)
    tagged = [_tagged(recipe, summary) for recipe, summary in found.items()]
    return {"description": "each member's recipe held out on its own. " + "; ".join(t["description"] for t in tagged),
            "runs": [run for t in tagged for run in t["runs"]]}


def _tagged(recipe: str, summary: dict[str, Any]) -> dict[str, Any]:
    """`summary` with every run tagged as measuring `recipe`, and the description saying whose recipe it is."""
    return {**summary, "description": f"Recipe of {recipe}: {summary.get('description', '')}",
            "runs": [{**run, "recipe": recipe} for run in summary.get("runs", [])]}
