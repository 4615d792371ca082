"""Data roots: the default data folder (typed ONCE here), ``MURA_DATA``, and the path-safety rules.

Safety rule: the app reads images only inside configured data roots — the repository's default data
folder, the ``MURA_DATA`` setting, and the folder the user typed (which becomes a root itself). Paths
are resolved (symlinks, ``..``) before they are compared, so a view whose path escapes its root is
refused rather than read.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mura_core.data.studies import Study, View

__all__ = ["DATA_ENV", "REPO_ROOT", "DEFAULT_DATA", "default_data_path", "default_data_root",
           "configured_roots", "is_within", "root_for", "safe_study"]

DATA_ENV = "MURA_DATA"
"""Environment setting naming an extra data root (a MURA folder or a manifest)."""

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository (the folder holding app.py, weights/ and mura_core/)."""

_DEFAULT_DATA_PARTS = ("..", "shared", "data", "bone-fracture-xr")
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
"""Where the public data sets sit beside a checkout (read in place, never copied into the repo)."""


def default_data_path(repo_root: Path = REPO_ROOT) -> Path:
    """The shared bone-fracture-xr folder next to the repository (it may not exist)."""
    return repo_root.joinpath(*_DEFAULT_DATA_PARTS).resolve()


DEFAULT_DATA = default_data_path()
"""The default data folder: ../shared/data/bone-fracture-xr next to the repository."""


def default_data_root(repo_root: Path = REPO_ROOT, env: Mapping[str, str] | None = None) -> Path | None:
    """The folder opened first: ``MURA_DATA`` if set, else the default data folder when it exists, else None."""
    env = os.environ if env is None else env
    if env.get(DATA_ENV):
        return Path(env[DATA_ENV]).expanduser()
    candidate = default_data_path(repo_root)
    return candidate if candidate.exists() else None


def _as_dir(path: Path) -> Path:
    """A manifest file's folder, or the path itself, fully resolved."""
    resolved = Path(path).expanduser().resolve()
    return resolved.parent if resolved.is_file() else resolved


def configured_roots(typed: str | Path | None = None, repo_root: Path = REPO_ROOT,
                     env: Mapping[str, str] | None = None) -> list[Path]:
    """Every folder the app may read images from, resolved and without duplicates.

    The default data folder, ``MURA_DATA`` and the path the user typed (a manifest's folder when a
    manifest file is typed). A typed path is a root by the user's own choice; views of a dataset
    must still lie inside it.
    """
    env = os.environ if env is None else env
    candidates: list[Path] = []
    default = default_data_path(repo_root)
    if default.exists():
        candidates.append(default)
    if env.get(DATA_ENV):
        candidates.append(Path(env[DATA_ENV]))
    if typed:
        candidates.append(Path(str(typed).strip()))
    roots: list[Path] = []
    for path in candidates:
        resolved = _as_dir(path)
        if resolved not in roots:
            roots.append(resolved)
    return roots


def is_within(path: str | Path, roots: Iterable[Path]) -> bool:
    """Whether `path`, resolved (symlinks and ``..`` followed), lies inside one of `roots`."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
    for root in roots:
        root = Path(root).resolve()
        if resolved == root or resolved.is_relative_to(root):
            return True
    return False


def root_for(path: str | Path, roots: Sequence[Path]) -> Path | None:
    """The configured root that contains `path` (the deepest one), or None."""
    matches = [Path(r).resolve() for r in roots if is_within(path, [r])]
    return max(matches, key=lambda p: len(p.parts)) if matches else None


def safe_study(study: Study, root: Path) -> tuple[Study, list[str]]:
    """The study with only the views whose files lie inside `root`, and a message per refused view.

    In-memory views (uploads, no path) are always kept.
    """
    kept: list[View] = []
    refused: list[str] = []
    for view in study.views:
        if view.path is None or is_within(view.path, [root]):
            kept.append(view)
        else:
            refused.append(f"{view.name}: outside the data folder {root}; not read")
    if not refused:
        return study, []
    return dataclasses.replace(study, views=tuple(kept)), refused
