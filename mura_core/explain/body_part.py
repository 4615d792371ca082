"""Suggest a study's body part from its images (or take DICOM BodyPartExamined when a view has it).

The head (`explain.heads`, fitted by ``fit-heads``) knows MURA's parts where the data labels them
(bone-fracture-xr abnormal images: ELBOW, FINGER, FOREARM, HUMERUS, SHOULDER, WRIST) and FracAtlas's
coarser regions (HAND_WRIST_FOREARM, SHOULDER_HUMERUS). The study's suggestion is the class with the
highest mean probability over its in-scope views. A region is not one of the seven parts and picks no
per-part threshold; the viewer shows it and leaves the choice to the reader.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mura_core.data.studies import BodyPart

__all__ = ["MIN_CONFIDENCE", "BodyPartSuggestion", "suggest_body_part"]

MIN_CONFIDENCE = 0.5
"""Below this mean probability a suggested part is shown but neither pre-filled nor used for the threshold."""


@dataclass(frozen=True)
class BodyPartSuggestion:
    """A study's suggested body part (a MURA part or a FracAtlas region) and how sure it is."""

    part: str
    confidence: float
    """Mean probability of `part` over the views used (1.0 for a DICOM tag)."""
    source: str
    """'dicom' (BodyPartExamined) or 'image' (the feature head)."""

    @property
    def is_mura_part(self) -> bool:
        """True when `part` is one of MURA's seven (so it has its own threshold)."""
        return BodyPart.parse(self.part) in BodyPart.known()

    @property
    def usable(self) -> bool:
        """True when the suggestion may pick the threshold: a MURA part at `MIN_CONFIDENCE` or more."""
        return self.is_mura_part and self.confidence >= MIN_CONFIDENCE

    def as_json(self) -> dict[str, Any]:
        return {"part": self.part, "confidence": round(float(self.confidence), 4), "source": self.source}


def _from_tags(metas: Sequence[Any]) -> BodyPartSuggestion | None:
    parts = Counter(BodyPart.parse(getattr(m, "body_part", None)) for m in metas
                    if m is not None and getattr(m, "body_part", None))
    known = [(p, n) for p, n in parts.most_common() if p in BodyPart.known()]
    return BodyPartSuggestion(known[0][0].value, 1.0, "dicom") if known else None


def suggest_body_part(heads: Any | None, features: np.ndarray | None, metas: Sequence[Any],
                      use: Sequence[bool] | None = None) -> BodyPartSuggestion | None:
    """DICOM BodyPartExamined (a MURA part) when present, else the head's pick over the views in `use`
    (the in-scope ones); None when no view may be used."""
    tagged = _from_tags(metas)
    if tagged is not None:
        return tagged
    if heads is None or features is None or not len(features):
        return None
    rows = np.asarray(use if use is not None else [True] * len(features), dtype=bool)
    if not rows.any():
        return None  # no view is an upper-limb radiograph: nothing to name
    probs = heads.parts(features[rows]).mean(axis=0)
    best = int(np.argmax(probs))
    return BodyPartSuggestion(heads.part_classes[best], float(probs[best]), "image")
