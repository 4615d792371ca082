"""The weights folder and its index: where shipped checkpoints live, resolved in ONE place.

The folder is ``$MURA_WEIGHTS_DIR`` when set, else the repository's ``weights/``; every function
below takes an explicit ``weights_dir`` or falls back to `weights_folder()`. ``index.json`` names each
checkpoint's file and sha256 (checked on every load), the default model and the ensembles.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mura_core.data.roots import REPO_ROOT
from mura_core.models.card import CheckpointError, ModelCard

if TYPE_CHECKING:  # torch loads only with a model: the app's pages read the index without it
    import torch

    from mura_core.models.checkpoints import LoadedModel

__all__ = [
    "INDEX_NAME",
    "MURA_WEIGHTS_ENV",
    "WEIGHTS_DIR",
    "default_cam_for",
    "default_name",
    "default_tta_for",
    "description_for",
    "ensemble_maps_from",
    "ensemble_thresholds",
    "ensemble_unflipped",
    "list_ensembles",
    "list_weights",
    "load_weights",
    "read_index",
    "register_weights",
    "report_folder",
    "resolve_weights",
    "set_ensemble_thresholds",
    "weights_folder",
    "write_index",
]

MURA_WEIGHTS_ENV = "MURA_WEIGHTS_DIR"
"""Environment setting that points the app, the commands and `Predictor` at another weights folder."""

WEIGHTS_DIR = REPO_ROOT / "weights"
"""The repository's shipped weights folder."""

INDEX_NAME = "index.json"


def weights_folder(weights_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """`weights_dir` when given, else ``$MURA_WEIGHTS_DIR`` when set, else the repository's ``weights/``."""
    if weights_dir is not None:
        return Path(weights_dir)
    env = os.environ if env is None else env
    if env.get(MURA_WEIGHTS_ENV):
        return Path(env[MURA_WEIGHTS_ENV]).expanduser()
    return WEIGHTS_DIR


def report_folder(name: str, weights_dir: str | Path | None = None) -> Path:
    """Where the evaluate report of indexed weights `name` lives: ``<weights folder>/<name>.report``."""
    return weights_folder(weights_dir) / f"{name}.report"


def read_index(weights_dir: str | Path | None = None) -> dict[str, Any]:
    """The index of shipped weights ({"default": None, "models": {}} when there is none)."""
    weights_dir = weights_folder(weights_dir)
    path = Path(weights_dir) / INDEX_NAME
    if not path.is_file():
        return {"default": None, "models": {}, "ensembles": {}}
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable weights index: {exc}") from exc
    index.setdefault("default", None)
    index.setdefault("models", {})
    index.setdefault("ensembles", {})
    return index


def write_index(index: dict[str, Any], weights_dir: str | Path | None = None) -> Path:
    """Write `index.json` (sorted, indented) and return its path."""
    weights_dir = weights_folder(weights_dir)
    path = Path(weights_dir) / INDEX_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def register_weights(path: str | Path, card: ModelCard, sha256: str, *, description: str = "",
                     default: bool = False, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """Add (or replace) one checkpoint in the index; `default` makes it the app's default."""
    weights_dir = weights_folder(weights_dir)
    index = read_index(weights_dir)
    from mura_core.models.registry import get_arch

    path = Path(path)
    try:
        file = str(path.resolve().relative_to(Path(weights_dir).resolve()))
    except ValueError:
        file = str(path)
    index["models"][card.name] = {"file": file, "sha256": sha256, "arch": card.arch,
                                  "description": description or get_arch(card.arch).description}
    if default or not index.get("default"):
        index["default"] = card.name
    write_index(index, weights_dir)
    return index


def list_weights(weights_dir: str | Path | None = None) -> list[str]:
    """Names of the indexed checkpoints, the default first (when the default is a checkpoint)."""
    weights_dir = weights_folder(weights_dir)
    index = read_index(weights_dir)
    names = sorted(index["models"])
    default = index.get("default")
    return ([default] if default in names else []) + [n for n in names if n != default]


def list_ensembles(weights_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Ensembles named in the index: name -> member checkpoint names (probabilities are averaged)."""
    weights_dir = weights_folder(weights_dir)
    return {k: list(v) for k, v in read_index(weights_dir).get("ensembles", {}).items()}


def _model_entry(key: str, name: str | None, weights_dir: str | Path | None) -> Any:
    """What the index's per-model table `key` (e.g. ``"default_cam"``) says of model or ensemble `name`; None when
    it says nothing (or no name is given)."""
    return read_index(weights_folder(weights_dir)).get(key, {}).get(str(name)) if name else None


def ensemble_maps_from(name: str, weights_dir: str | Path | None = None) -> list[str] | None:
    """The members whose heat maps an ensemble shows (index key ``"ensemble_maps_from"``), None for all.

    Scores average every member; the maps can come from the members that point at findings best, measured
    on the valid splits (an ensemble's averaged map is only as sharp as its coarsest member)."""
    chosen = _model_entry("ensemble_maps_from", name, weights_dir)
    return [str(m) for m in chosen] if chosen else None


def ensemble_unflipped(name: str | None, weights_dir: str | Path | None = None) -> list[str]:
    """The members an ensemble scores without its test-time flip (index key ``"ensemble_unflipped"``), none by
    default: a member whose mirrored forward costs much and, on the valid splits, moves the AUCs by less than their
    noise."""
    chosen = _model_entry("ensemble_unflipped", name, weights_dir)
    return [str(m) for m in chosen] if chosen else []


def ensemble_thresholds(name: str | None, weights_dir: str | Path | None = None) -> dict[str, float] | None:
    """An ensemble's own thresholds (index key ``"ensemble_thresholds"``, written by ``fit-thresholds`` from the
    ensemble's valid predictions); None: the members' thresholds averaged (`models.card.mean_thresholds`)."""
    chosen = _model_entry("ensemble_thresholds", name, weights_dir)
    return {str(k): float(v) for k, v in chosen.items()} if chosen else None


def set_ensemble_thresholds(name: str, thresholds: Mapping[str, float],
                            weights_dir: str | Path | None = None) -> dict[str, Any]:
    """Record an indexed ensemble's own thresholds (body part -> threshold, "default" required)."""
    folder = weights_folder(weights_dir)
    index = read_index(folder)
    if name not in index.get("ensembles", {}):
        raise ValueError(f"{name!r} is not an ensemble in {folder / INDEX_NAME}")
    if "default" not in thresholds:
        raise ValueError("thresholds need a 'default' key")
    index.setdefault("ensemble_thresholds", {})[name] = {str(k): float(v) for k, v in thresholds.items()}
    write_index(index, folder)
    return index


def default_cam_for(name: str | None, weights_dir: str | Path | None = None) -> str | None:
    """The heat-map method the index names as a model's or ensemble's default (key ``"default_cam"``), chosen
    by its pointing game on the valid splits; None: the library default (`explain.cams.DEFAULT_CAM`)."""
    chosen = _model_entry("default_cam", name, weights_dir)
    return str(chosen) if chosen else None


def default_tta_for(name: str | None, weights_dir: str | Path | None = None) -> bool:
    """Whether the index has a model or ensemble score with test-time flip by default (key ``"default_tta"``),
    chosen on its valid splits; False when the index says nothing."""
    return bool(_model_entry("default_tta", name, weights_dir))


def description_for(name: str | None, weights_dir: str | Path | None = None) -> str | None:
    """The index's one-line description of checkpoint `name` (what it is and how it was made; the card's first
    line), None when the index has none."""
    entry = _model_entry("models", name, weights_dir)
    return str(entry["description"]) if entry and entry.get("description") else None


def default_name(weights_dir: str | Path | None = None) -> str | None:
    """The index's default: a checkpoint or an ensemble name (None when the index names none)."""
    default = read_index(weights_folder(weights_dir)).get("default")
    return str(default) if default else None


def resolve_weights(name_or_path: str | Path | None = None,
                    weights_dir: str | Path | None = None) -> tuple[Path, str | None]:
    """(file, expected sha256) for an indexed name (None -> the default) or (path, None) for a file.

    A default that names an ensemble resolves to its first member: the checkpoint whose card, scope heads and
    pooled features the ensemble uses (commands that need one checkpoint, such as `fit-heads`, take it)."""
    weights_dir = weights_folder(weights_dir)
    index = read_index(weights_dir)
    name = name_or_path if name_or_path is not None else index.get("default")
    if name_or_path is None and name in index.get("ensembles", {}):
        name = index["ensembles"][name][0]
    if name is None:
        raise CheckpointError(f"no default weights: {Path(weights_dir) / INDEX_NAME} is missing or empty")
    entry = index["models"].get(str(name))
    if entry is not None:
        return Path(weights_dir) / entry["file"], entry.get("sha256")
    path = Path(name)
    if path.is_file():
        return path, None
    known = ", ".join(sorted(index["models"])) or "none"
    raise CheckpointError(f"no weights named {str(name)!r} and no such file; indexed weights: {known}")


def load_weights(name: str | Path | None = None, device: str | torch.device = "cpu",
                 weights_dir: str | Path | None = None) -> LoadedModel:
    """Load indexed weights by name (sha256 verified) or a checkpoint file by path."""
    from mura_core.models.checkpoints import load_checkpoint

    weights_dir = weights_folder(weights_dir)
    path, sha = resolve_weights(name, weights_dir)
    return load_checkpoint(path, expected_sha256=sha, device=device)
