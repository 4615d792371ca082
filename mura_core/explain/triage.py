"""Checks a scored study gets before its numbers are shown: scope per view, body part for the study.

`triage_study` takes the pooled features the scoring forward left on each view (what the model saw, never the
display window; one extra feature pass only for a result without them) and applies the model's fitted heads
(`explain.heads`) and the DICOM tags. `restrict_study` recomputes the study probability and decision over the
in-scope views plus the ones the reader keeps, at the threshold of the body part in use; the per-view
probabilities are untouched.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mura_core.data.studies import BodyPart, study_probability, threshold_for
from mura_core.explain.body_part import BodyPartSuggestion, suggest_body_part
from mura_core.explain.features import predictor_features
from mura_core.explain.heads import predictor_heads
from mura_core.explain.scope import ScopeResult, check_scope

__all__ = ["Triage", "triage_study", "restrict_study", "excluded_views", "hide_excluded_scores",
           "view_features"]


@dataclass(frozen=True)
class Triage:
    """Per-view scope results (None: unreadable view, or nothing could tell) and the body-part suggestion."""

    scopes: tuple[ScopeResult | None, ...]
    suggestion: BodyPartSuggestion | None
    problem: str | None = None
    """Why the fitted heads could not be used (changed file, other checkpoint), else None."""


def triage_study(predictor: Any, result: Any) -> Triage:
    """Scope of every decoded view of a scored study and the study's body-part suggestion."""
    heads, problem = predictor_heads(predictor)
    good = [i for i, v in enumerate(result.views) if v.input_image is not None]
    metas = [result.views[i].meta for i in good]
    features = view_features(predictor, [result.views[i] for i in good]) if heads is not None and good else None
    checked = check_scope(heads, features, metas)
    scopes: list[ScopeResult | None] = [None] * len(result.views)
    for i, scope in zip(good, checked):
        scopes[i] = scope
    use = [s is None or s.in_scope for s in checked]
    return Triage(tuple(scopes), suggest_body_part(heads, features, metas, use), problem)


def view_features(predictor: Any, views: Sequence[Any]) -> np.ndarray:
    """(N, C) pooled features of scored views: those the scoring forward kept, else one feature pass."""
    kept = [getattr(v, "features", None) for v in views]
    if all(f is not None for f in kept):
        return np.stack(kept).astype(np.float32)
    return predictor_features(predictor, [v.input_image for v in views])


def excluded_views(triage: Triage, keep: Collection[int] = ()) -> list[int]:
    """Indices of out-of-scope views the reader did not keep."""
    return [i for i, s in enumerate(triage.scopes) if s is not None and not s.in_scope and i not in keep]


def restrict_study(result: Any, triage: Triage, thresholds: dict[str, float], *, keep: Collection[int] = (),
                   body_part: BodyPart | str | None = None) -> Any:
    """A copy of `result` whose study probability, decision and driving view use only in-scope or kept views.

    `body_part` (when given and known) replaces the result's body part and so its threshold.
    """
    dropped = set(excluded_views(triage, keep))
    views = [dataclasses.replace(v, scope=triage.scopes[i]) for i, v in enumerate(result.views)]
    used = [i for i, v in enumerate(views) if v.probability is not None and i not in dropped]
    probability = study_probability([views[i].probability for i in used], result.aggregate)
    part = BodyPart.parse(getattr(body_part, "value", body_part)) if body_part else BodyPart.UNKNOWN
    part_name = part.value if part is not BodyPart.UNKNOWN else result.body_part
    threshold = threshold_for(thresholds, part_name) if part is not BodyPart.UNKNOWN else result.threshold
    return dataclasses.replace(
        result, views=views, probability=probability, threshold=threshold, body_part=part_name,
        abnormal=None if probability is None else bool(probability >= threshold),
        driving_view=max(used, key=lambda i: views[i].probability) if used else None)


def hide_excluded_scores(result: Any, triage: Triage, keep: Collection[int] = ()) -> Any:
    """A copy of `result` where out-of-scope views the reader did not keep have no probability or heat map
    (the viewer scores them only on request)."""
    dropped = set(excluded_views(triage, keep))
    views = [dataclasses.replace(v, probability=None, heatmap=None, peak=None) if i in dropped else v
             for i, v in enumerate(result.views)]
    return dataclasses.replace(result, views=views)
