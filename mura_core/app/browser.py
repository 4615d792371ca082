"""Dataset-browser helpers: which studies a filter keeps, paging, captions, shipped predictions.

Prediction filters (false negatives, false positives, most uncertain) work on a mapping
``study_id -> probability`` that comes either from the shipped model's ``predictions.csv`` (when it
matches the data) or from scoring the filtered studies on demand. Path safety lives in
`mura_core.data.roots`; reading predictions in `mura_core.evaluation.reports`.

Example:
    >>> page_slice(list(range(50)), page=3, per_page=24)
    ([48, 49], 3)
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mura_core.data.studies import LABEL_NAMES, BodyPart, Study, label_name
from mura_core.evaluation.reports import StudyPrediction

__all__ = [
    "LABEL_FILTERS",
    "PAGE_SIZE",
    "PREDICTION_FILTERS",
    "body_part_options",
    "filter_studies",
    "find_study",
    "label_filter_value",
    "page_slice",
    "predictions_match",
    "split_options",
    "study_caption",
]

LABEL_FILTERS: tuple[str, ...] = ("all", LABEL_NAMES[1], LABEL_NAMES[0])
"""The browser's label filter choices (names from `data.studies.LABEL_NAMES`)."""

PAGE_SIZE = 24
"""Thumbnails per browser page."""

PREDICTION_FILTERS: dict[str, str] = {
    "all": "All studies",
    "fn": "False negatives (abnormal, called normal)",
    "fp": "False positives (normal, called abnormal)",
    "uncertain": "Most uncertain (closest to the threshold)",
}
"""Prediction filters offered by the browser, keyed by a short code."""

# ----------------------------------------------------------------------------------------------
# filters and paging
# ----------------------------------------------------------------------------------------------

def label_filter_value(choice: str) -> int | None:
    """The label a filter choice keeps (1, 0), or None for "all"."""
    return next((label for label, name in LABEL_NAMES.items() if name == choice and label is not None), None)


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
    label = label_name(study.label)
    part = BodyPart.parse(getattr(study.body_part, "value", study.body_part))
    bits = [label]
    if part is not BodyPart.UNKNOWN:
        bits.append(part.value.lower())
    if len(study.views) > 1:
        bits.append(f"{len(study.views)} views")
    if probability is not None and _finite(probability):
        bits.append(f"p={float(probability):.2f}")
    return " · ".join(bits)



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

