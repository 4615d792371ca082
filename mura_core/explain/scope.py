"""Is a view an upper-limb radiograph at all? The scope check run before its score is shown.

MURA's model saw upper-extremity radiographs only. Two checks on the model's pooled features
(`explain.heads`), each against a threshold calibrated on valid data:

- density: how far the features lie from the upper-limb training radiographs (the catch-all for
  anything unlike the training images, of a kind nobody fitted on);
- image kind: a multinomial logistic head fitted on upper-limb radiographs against FracAtlas leg/hip
  radiographs and generated chest films, photographs, documents and CT/MR-like slices
  (`imaging.synthetic`); its ``P(outside) = 1 - P(upper limb)`` is the value checked, and its most
  likely other kind names what the view looks like.

``score`` is the larger of the two values divided by its threshold, so ``score >= 1`` means out of
scope. A DICOM tag decides before the features when it is explicit: Modality CT/MR/US/NM/PT/MG, or a
BodyPartExamined naming a lower limb, the chest, head, spine or abdomen (out of scope), or one of
MURA's parts (in scope). Out-of-scope views are left out of the study probability unless kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mura_core.data.studies import BodyPart
from mura_core.explain.heads import UPPER_KIND

__all__ = ["ScopeResult", "check_scope", "scope_from_tags", "warning_text"]

UPPER_LIMB = "upper-limb radiograph"
LOWER_LIMB = "lower-limb radiograph"
UNUSUAL = "image unlike the upper-limb radiographs the model was trained on"
KIND_LABELS = {"lower_limb": LOWER_LIMB, "chest": "chest radiograph", "photo": "photograph",
               "document": "document", "ct_mr": "CT/MR-like slice"}
"""What each out-of-scope class of the image-kind head is called on the view."""

_NON_RADIOGRAPH_MODALITIES = {"CT": "CT slice", "MR": "MR slice", "US": "ultrasound image",
                              "NM": "nuclear-medicine image", "PT": "PET image", "MG": "mammogram"}
_LOWER_TAGS = ("HIP", "PELVIS", "LEG", "KNEE", "ANKLE", "FOOT", "TOE", "FEMUR", "TIBIA", "FIBULA",
               "CALCANEUS", "LOWER")
_OTHER_TAGS = {"CHEST": "chest radiograph", "THORAX": "chest radiograph", "LUNG": "chest radiograph",
               "HEAD": "head radiograph", "SKULL": "head radiograph", "BRAIN": "head image",
               "SPINE": "spine radiograph", "ABDOMEN": "abdominal radiograph", "BREAST": "mammogram"}


@dataclass(frozen=True)
class ScopeResult:
    """One view's scope check."""

    in_scope: bool
    label: str
    """What the view looks like: 'upper-limb radiograph', 'lower-limb radiograph', 'chest radiograph'..."""
    score: float
    """Largest check value over its threshold (>= 1: out of scope); 0 or 1 when a DICOM tag decided."""
    source: str = "image"
    """'image' (the feature heads) or 'dicom' (an explicit Modality or BodyPartExamined)."""

    def as_json(self) -> dict[str, Any]:
        return {"in_scope": self.in_scope, "label": self.label, "score": round(float(self.score), 4)}


def warning_text(scope: ScopeResult) -> str:
    """The warning shown on an out-of-scope view."""
    via = " (from the DICOM tags)" if scope.source == "dicom" else ""
    return f"Looks like {_with_article(scope.label)}{via}: outside what this model was trained for."


def _with_article(label: str) -> str:
    """'a CT slice', 'an MR slice', 'an upper-limb radiograph', 'an image unlike ...'."""
    spoken_vowel = label[:1].lower() in "aeiou" or label.startswith(("MR", "NM"))
    return f"{'an' if spoken_vowel else 'a'} {label}"


def scope_from_tags(meta: Any) -> ScopeResult | None:
    """A decision from explicit DICOM tags, or None when they say nothing definite."""
    if meta is None or getattr(meta, "format", None) != "DICOM":
        return None
    modality = (getattr(meta, "modality", None) or "").upper()
    if modality in _NON_RADIOGRAPH_MODALITIES:
        return ScopeResult(False, _NON_RADIOGRAPH_MODALITIES[modality], 1.0, "dicom")
    tag = (getattr(meta, "body_part", None) or "").upper()
    if not tag:
        return None
    if any(word in tag for word in _LOWER_TAGS):
        return ScopeResult(False, LOWER_LIMB, 1.0, "dicom")
    for word, label in _OTHER_TAGS.items():
        if word in tag:
            return ScopeResult(False, label, 1.0, "dicom")
    if BodyPart.parse(tag) in BodyPart.known():
        return ScopeResult(True, UPPER_LIMB, 0.0, "dicom")
    return None


def check_scope(heads: Any | None, features: np.ndarray | None, metas: Sequence[Any]) -> list[ScopeResult | None]:
    """One result per view (None when neither heads nor tags can tell); `features` rows match `metas`."""
    out: list[ScopeResult | None] = [scope_from_tags(m) for m in metas]
    if heads is None or features is None or not len(metas):
        return out
    density = heads.density(features) / heads.density_threshold
    kinds = heads.kinds(features)
    outside = heads.outside_of(kinds) / heads.kind_threshold
    for i in range(len(metas)):
        score = float(max(density[i], outside[i]))
        if out[i] is not None:  # the tag decided; keep the image's score for the record
            out[i] = ScopeResult(out[i].in_scope, out[i].label, score, "dicom")
            continue
        if score < 1.0:
            out[i] = ScopeResult(True, UPPER_LIMB, score)
        else:
            out[i] = ScopeResult(False, UNUSUAL if density[i] >= outside[i] else _likeliest_other(heads, kinds[i]),
                                 score)
    return out


def _likeliest_other(heads: Any, kind_probabilities: np.ndarray) -> str:
    """The label of the most probable image kind other than an upper-limb radiograph."""
    ranked = sorted(zip(kind_probabilities, heads.kind_classes), reverse=True)
    name = next(kind for _, kind in ranked if kind != UPPER_KIND)
    return KIND_LABELS.get(name, UNUSUAL)
