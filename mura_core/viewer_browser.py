"""Dataset-browser helpers: which folders may be read, which studies a filter keeps, paging.

Safety rule: the app reads images only inside configured data roots — the repository's default data
folder, the ``MURA_DATA`` setting, and the folder the user typed (which becomes a root itself). Paths
are resolved (symlinks, ``..``) before they are compared, so a view whose path escapes its root is
refused rather than read.

Prediction filters (false negatives, false positives, most uncertain) work on a mapping
``study_id -> probability`` that comes either from the shipped model's ``predictions.csv`` (when it
matches the data) or from scoring the filtered studies on demand.

Example:
    >>> page_slice(list(range(50)), page=3, per_page=24)
    ([48, 49], 3)
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mura_core.studies import BodyPart, Study, View

__all__ = [
    "DATA_ENV",
    "PAGE_SIZE",
    "PREDICTION_FILTERS",
    "StudyPrediction",
    "default_data_root",
    "configured_roots",
    "is_within",
    "root_for",
    "safe_study",
    "filter_studies",
    "page_slice",
    "split_options",
    "body_part_options",
    "read_predictions",
    "predictions_match",
    "study_caption",
    "find_study",
]

DATA_ENV = "MURA_DATA"
"""Environment setting naming an extra data root (a MURA folder or a manifest)."""

PAGE_SIZE = 24
"""Thumbnails per browser page."""

PREDICTION_FILTERS: dict[str, str] = {
    "all": "All studies",
    "fn": "False negatives (abnormal, called normal)",
    "fp": "False positives (normal, called abnormal)",
    "uncertain": "Most uncertain (closest to the threshold)",
}
"""Prediction filters offered by the browser, keyed by a short code."""

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_root(repo_root: Path = REPO_ROOT, env: Mapping[str, str] | None = None) -> Path | None:
    """The folder the browser opens first: ``MURA_DATA`` if set, else ../shared/data/bone-fracture-xr
    next to the repository when it exists, else None."""
    env = os.environ if env is None else env
    if env.get(DATA_ENV):
        return Path(env[DATA_ENV]).expanduser()
    candidate = (repo_root / ".." / "shared" / "data" / "bone-fracture-xr").resolve()
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
    default = (repo_root / ".." / "shared" / "data" / "bone-fracture-xr")
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
    return Study(study.study_id, tuple(kept), study.body_part, study.label, study.patient_id,
                 study.split, study.source), refused


# ----------------------------------------------------------------------------------------------
# filters and paging
# ----------------------------------------------------------------------------------------------

def split_options(studies: Sequence[Study]) -> list[str]:
    """The splits present, sorted (train before valid by name)."""
    return sorted({s.split for s in studies if s.split})


def body_part_options(studies: Sequence[Study]) -> list[str]:
    """The body parts present, in BodyPart order (UNKNOWN last)."""
    present = {BodyPart.parse(getattr(s.body_part, "value", s.body_part)) for s in studies}
    return [p.value for p in BodyPart if p in present]


def filter_studies(
    studies: Sequence[Study],
    *,
    split: str | None = None,
    body_parts: Sequence[str] | None = None,
    label: int | None = None,
    prediction: str = "all",
    probabilities: Mapping[str, float] | None = None,
    thresholds: Mapping[str, float] | None = None,
    uncertain_count: int = 48,
) -> list[Study]:
    """The studies passing every filter, in data order (or most-uncertain-first for ``uncertain``).

    Args:
        split / body_parts / label: keep matching studies (None or empty = no filter).
        prediction: a key of `PREDICTION_FILTERS`; anything but ``all`` needs `probabilities` and
            keeps only studies that have one.
        probabilities: study_id -> abnormality probability.
        thresholds: a model card's thresholds (body part -> threshold, "default" required).
        uncertain_count: how many studies ``uncertain`` keeps (closest to their threshold).
    """
    if prediction not in PREDICTION_FILTERS:
        raise ValueError(f"unknown prediction filter {prediction!r}")
    parts = {BodyPart.parse(p).value for p in body_parts} if body_parts else None
    kept = [
        s for s in studies
        if (split is None or s.split == split)
        and (parts is None or BodyPart.parse(getattr(s.body_part, "value", s.body_part)).value in parts)
        and (label is None or s.label == label)
    ]
    if prediction == "all":
        return kept
    probs = probabilities or {}
    thr = thresholds or {"default": 0.5}

    def threshold(study: Study) -> float:
        part = BodyPart.parse(getattr(study.body_part, "value", study.body_part)).value
        return float(thr.get(part, thr.get("default", 0.5)))

    scored = [s for s in kept if s.study_id in probs and _finite(probs[s.study_id])]
    if prediction == "fn":
        return [s for s in scored if s.label == 1 and probs[s.study_id] < threshold(s)]
    if prediction == "fp":
        return [s for s in scored if s.label == 0 and probs[s.study_id] >= threshold(s)]
    scored.sort(key=lambda s: abs(probs[s.study_id] - threshold(s)))
    return scored[:uncertain_count]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def page_slice(items: Sequence[Any], page: int, per_page: int = PAGE_SIZE) -> tuple[list[Any], int]:
    """Items on 1-based `page` (clamped to the valid range) and the number of pages (at least 1)."""
    n_pages = max(1, math.ceil(len(items) / per_page))
    page = min(max(int(page), 1), n_pages)
    start = (page - 1) * per_page
    return list(items[start:start + per_page]), n_pages


def study_caption(study: Study, probability: float | None = None) -> str:
    """A short caption under a thumbnail: label, body part, view count and the model's score."""
    label = {1: "abnormal", 0: "normal"}.get(study.label, "unlabelled")
    part = BodyPart.parse(getattr(study.body_part, "value", study.body_part))
    bits = [label]
    if part is not BodyPart.UNKNOWN:
        bits.append(part.value.lower())
    if len(study.views) > 1:
        bits.append(f"{len(study.views)} views")
    if probability is not None and _finite(probability):
        bits.append(f"p={float(probability):.2f}")
    return " · ".join(bits)


# ----------------------------------------------------------------------------------------------
# predictions.csv
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyPrediction:
    """One row of an evaluate ``predictions.csv`` reduced to what the app needs."""

    study_id: str
    body_part: str
    label: int | None
    probability: float | None
    split: str | None = None


_ID_COLUMNS = ("study_id", "study", "group")
_PROB_COLUMNS = ("probability", "prob", "score", "p_abnormal")


def _pick(row: Mapping[str, str], names: Sequence[str]) -> str | None:
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return None


def read_predictions(path: str | Path) -> list[StudyPrediction]:
    """Study-level predictions from an evaluate ``study_predictions.csv`` or ``predictions.csv``.

    Accepts one row per study or per image (then rows sharing a study id are averaged, the mean
    being MURA's study rule). Needs a study id column (study_id/study/group) and a probability
    column (probability/prob/score); raises ValueError naming the file otherwise.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if not any(c in fields for c in _ID_COLUMNS) or not any(c in fields for c in _PROB_COLUMNS):
            raise ValueError(f"{path}: needs a study id column and a probability column; has {fields}")
        rows = list(reader)
    if any(r.get("level") == "study" for r in rows):  # a file mixing levels: its study rows win
        rows = [r for r in rows if r.get("level") == "study"]
    grouped: dict[str, list[Mapping[str, str]]] = {}
    for row in rows:
        sid = _pick(row, _ID_COLUMNS)
        if sid is not None:
            grouped.setdefault(sid, []).append(row)
    out = []
    for sid, group in grouped.items():
        probs = [float(p) for r in group if (p := _pick(r, _PROB_COLUMNS)) is not None and _finite(p)]
        labels = [int(float(r["label"])) for r in group if r.get("label") not in (None, "")]
        part = next((r.get("body_part") for r in group if r.get("body_part")), "") or "UNKNOWN"
        split = next((r.get("split") for r in group if r.get("split")), None)
        out.append(StudyPrediction(
            study_id=sid,
            body_part=BodyPart.parse(part).value,
            label=max(labels) if labels else None,
            probability=sum(probs) / len(probs) if probs else None,
            split=split,
        ))
    return out


def predictions_match(predictions: Sequence[StudyPrediction], studies: Sequence[Study]) -> float:
    """Fraction (0..1) of the scored predictions whose study id is in `studies` with the same label.

    The browser uses a shipped ``predictions.csv`` only when it matches the data (e.g. >= 0.9), so a
    model evaluated on other data never colours this data's filters. An evaluation usually covers one
    split, so the fraction is taken over the predictions, not over the studies.
    """
    scored = [p for p in predictions if p.probability is not None]
    if not scored:
        return 0.0
    labels = {s.study_id: s.label for s in studies}
    hits = sum(1 for p in scored if p.study_id in labels
               and (p.label is None or labels[p.study_id] is None or p.label == labels[p.study_id]))
    return hits / len(scored)


def find_study(index: Any, study_id: str) -> Study | None:
    """The study with this id in a DatasetIndex, or None."""
    return next((s for s in index.studies if s.study_id == study_id), None)
