"""Study records: the one shape every data source (MURA folder, manifest, uploads) produces.

A study is one body part of one patient on one occasion, seen in one or more views.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = ["AGGREGATES", "BodyPart", "Box", "DatasetIndex", "LABEL_NAMES", "Study", "View", "label_name",
           "part_key", "study_probability", "threshold_for"]

LABEL_NAMES: dict[int | None, str] = {1: "abnormal", 0: "normal", None: "unlabelled"}
"""A study label in words (the one label map of the project)."""

AGGREGATES: tuple[str, ...] = ("mean", "max")
"""Study probability rules: the mean of the views (MURA) or their max."""

Box = tuple[float, float, float, float]
"""A finding box as (x0, y0, x1, y1), each in 0..1 of the image width/height."""


class BodyPart(str, Enum):
    """MURA's seven upper-extremity body parts, coarser regions from other data sets, and UNKNOWN.

    `known()` lists MURA's seven only (the body-part picker offers those); `regions()` lists the
    coarser regions other sources label with (FracAtlas flags hand, shoulder, leg and hip, and an image
    can carry several). `in_scope` is False for lower-limb regions: MURA's tool scores the upper
    extremity only, so leg and hip images are out of scope for scoring.
    """

    ELBOW = "ELBOW"
    FINGER = "FINGER"
    FOREARM = "FOREARM"
    HAND = "HAND"
    HUMERUS = "HUMERUS"
    SHOULDER = "SHOULDER"
    WRIST = "WRIST"
    HAND_WRIST_FOREARM = "HAND_WRIST_FOREARM"
    """FracAtlas `hand`: hand, wrist and forearm together (often the whole limb below the elbow)."""
    SHOULDER_HUMERUS = "SHOULDER_HUMERUS"
    """FracAtlas `shoulder`: shoulder and humerus (often with the chest)."""
    UPPER_LIMB = "UPPER_LIMB"
    """FracAtlas `hand` and `shoulder` both flagged."""
    LEG = "LEG"
    HIP = "HIP"
    LOWER_LIMB = "LOWER_LIMB"
    """FracAtlas `leg` and `hip` both flagged (or leg/hip mixed with an upper-limb flag)."""
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str | None) -> "BodyPart":
        """Read a body part from a folder name (`XR_WRIST`), a DICOM tag, a region value
        (`HAND_WRIST_FOREARM`), a label (`hand/wrist/forearm`) or free text; UNKNOWN otherwise."""
        if not text:
            return cls.UNKNOWN
        upper = str(text).strip().upper()
        exact = re.sub(r"[^A-Z]+", "_", upper).strip("_")
        if exact in cls._value2member_map_:
            return cls(exact)
        labels = {part.label.upper(): part for part in cls}
        if upper in labels:
            return labels[upper]
        word = re.sub(r"^XR_", "", upper)
        word = re.sub(r"[^A-Z]", "", word)
        aliases = {"FINGERS": "FINGER", "HANDS": "HAND", "WRISTS": "WRIST", "ELBOWS": "ELBOW",
                   "THUMB": "FINGER", "UPPERARM": "HUMERUS", "ARM": "HUMERUS", "LEGS": "LEG",
                   "HIPS": "HIP"}
        word = aliases.get(word, word)
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN

    @classmethod
    def known(cls) -> list["BodyPart"]:
        """MURA's seven body parts (without the coarser regions and without UNKNOWN)."""
        return list(_MURA_PARTS)

    @classmethod
    def regions(cls) -> list["BodyPart"]:
        """The coarser regions of other data sets (FracAtlas), upper limb first."""
        return [cls.HAND_WRIST_FOREARM, cls.SHOULDER_HUMERUS, cls.UPPER_LIMB, cls.LEG, cls.HIP,
                cls.LOWER_LIMB]

    @property
    def label(self) -> str:
        """A human name: 'wrist', 'hand/wrist/forearm', 'upper limb (hand and shoulder)', 'unknown'..."""
        return _LABELS.get(self.value, self.value.lower())

    @property
    def in_scope(self) -> bool:
        """False for leg, hip and lower limb (MURA's tool scores the upper extremity); True otherwise."""
        return self.value not in ("LEG", "HIP", "LOWER_LIMB")


_MURA_PARTS = (BodyPart.ELBOW, BodyPart.FINGER, BodyPart.FOREARM, BodyPart.HAND, BodyPart.HUMERUS,
               BodyPart.SHOULDER, BodyPart.WRIST)
_LABELS = {"HAND_WRIST_FOREARM": "hand/wrist/forearm", "SHOULDER_HUMERUS": "shoulder/humerus",
           "UPPER_LIMB": "upper limb (hand and shoulder)", "LEG": "leg", "HIP": "hip",
           "LOWER_LIMB": "lower limb"}


@dataclass(frozen=True)
class View:
    """One image of a study: a file on disk or bytes held in memory (uploads)."""

    name: str
    """The image as the data names it (CSV path, manifest path or upload file name)."""
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)
    boxes: tuple[Box, ...] = ()

    def read_bytes(self) -> bytes:
        """The file's bytes; raises OSError when a file on disk is missing or unreadable."""
        if self.data is not None:
            return self.data
        if self.path is None:
            raise OSError(f"{self.name}: no file and no data")
        return Path(self.path).read_bytes()


@dataclass(frozen=True)
class Study:
    """One body part of one patient on one occasion, with its views and its label when known."""

    study_id: str
    views: tuple[View, ...]
    body_part: BodyPart = BodyPart.UNKNOWN
    label: int | None = None
    """1 abnormal, 0 normal, None unknown."""
    patient_id: str | None = None
    split: str | None = None
    source: str = "upload"
    """Where it came from: 'mura', 'manifest', 'fracatlas' or 'upload'."""
    group: str | None = None
    """Near-duplicate group (FracAtlas: the smallest image id of the group); studies sharing a group
    show the same radiograph and must stay in one split. None when the source has no such grouping."""


@dataclass
class DatasetIndex:
    """Every study found under one data root, and the problems met while reading it."""

    root: Path
    kind: str
    """'mura', 'manifest' or 'fracatlas'."""
    studies: list[Study]
    problems: list[str] = field(default_factory=list)

    def filter(self, split: str | None = None) -> "DatasetIndex":
        """The same index restricted to one split (None keeps every split)."""
        if split is None:
            return self
        kept = [s for s in self.studies if s.split == split]
        return DatasetIndex(self.root, self.kind, kept, list(self.problems))


# ----------------------------------------------------------------------------------------------
# study rules: the label's name, the study probability, the body part's threshold
# ----------------------------------------------------------------------------------------------

def label_name(label: int | None) -> str:
    """'abnormal', 'normal' or 'unlabelled'."""
    return LABEL_NAMES.get(label, LABEL_NAMES[None])


def study_probability(probabilities: Sequence[float | None], aggregate: str = "mean") -> float | None:
    """Mean (MURA) or max of the view probabilities, skipping missing ones; None when there are none."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose 'mean' or 'max'")
    values = [float(p) for p in probabilities if p is not None and math.isfinite(float(p))]
    if not values:
        return None
    import numpy as np

    return float(np.mean(values)) if aggregate == "mean" else float(np.max(values))


def part_key(part: Any) -> str:
    """A body part (enum, string, None) as its threshold key."""
    if part is None:
        return "UNKNOWN"
    value = getattr(part, "value", part)
    text = str(value).strip().upper()
    return text or "UNKNOWN"


def threshold_for(thresholds: Mapping[str, float], body_part: Any) -> float:
    """The body part's threshold if the card has one, else ``thresholds["default"]`` (else 0.5)."""
    key = part_key(body_part)
    if key in thresholds:
        return float(thresholds[key])
    return float(thresholds.get("default", 0.5))
