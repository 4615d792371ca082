"""Turn uploaded files (name + bytes) into one study.

Body part precedence (documented decision): an explicit choice by the user wins; else the first DICOM
`BodyPartExamined` that names one of the seven MURA body parts; else UNKNOWN. The user sees the image
and the form, so their choice is taken over a tag that is often generic ('EXTREMITY') or wrong.

Upload names are sanitised: only the last path component is kept (no `/` or `\\`), control characters
are dropped, and duplicates get a ` (2)` suffix, so a name can never point elsewhere on disk.
"""
from __future__ import annotations

import io
import re
import warnings
from typing import Sequence

from mura_core.data.studies import BodyPart, Study, View

__all__ = ["sanitise_upload_name", "body_part_from_dicom", "study_from_uploads"]

_MAX_NAME = 120


def sanitise_upload_name(name: str, fallback: str = "upload") -> str:
    """The last path component of `name`, without control characters, '..' or leading dots."""
    text = re.sub(r"[\x00-\x1f\x7f]", "", str(name or ""))
    text = re.split(r"[\\/]", text)[-1].strip()
    text = text.lstrip(".").strip()
    if len(text) > _MAX_NAME:
        stem, dot, suffix = text.rpartition(".")
        text = (stem[: _MAX_NAME - len(suffix) - 1] + dot + suffix) if dot and len(suffix) <= 10 else text[:_MAX_NAME]
    return text or fallback


def body_part_from_dicom(data: bytes) -> BodyPart:
    """BodyPartExamined of DICOM bytes, read without touching pixels; UNKNOWN when absent or not DICOM."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return BodyPart.UNKNOWN
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                 specific_tags=["BodyPartExamined"])
            return BodyPart.parse(str(ds.get("BodyPartExamined", "") or ""))
    except Exception:  # an unreadable header simply gives no hint; decoding will report it
        return BodyPart.UNKNOWN


def _choice(body_part: BodyPart | str | None) -> BodyPart:
    if body_part is None:
        return BodyPart.UNKNOWN
    return body_part if isinstance(body_part, BodyPart) else BodyPart.parse(body_part)


def study_from_uploads(files: Sequence[tuple[str, bytes]], body_part: BodyPart | str | None = None,
                       study_id: str = "upload") -> Study:
    """One study from uploaded `(name, bytes)` pairs; see the module notes for the body-part rule.

    Raises:
        ValueError: when no file is given.
    """
    if not files:
        raise ValueError("no files uploaded")
    views: list[View] = []
    seen: dict[str, int] = {}
    for number, (name, data) in enumerate(files, start=1):
        clean = sanitise_upload_name(name, fallback=f"upload{number}")
        count = seen.get(clean, 0) + 1
        seen[clean] = count
        if count > 1:
            stem, dot, suffix = clean.rpartition(".")
            clean = f"{stem} ({count}).{suffix}" if dot and stem else f"{clean} ({count})"
        views.append(View(name=clean, data=bytes(data)))
    part = _choice(body_part)
    if part is BodyPart.UNKNOWN:
        part = next((p for p in (body_part_from_dicom(v.data or b"") for v in views)
                     if p is not BodyPart.UNKNOWN), BodyPart.UNKNOWN)
    return Study(study_id=study_id, views=tuple(views), body_part=part, label=None, source="upload")
