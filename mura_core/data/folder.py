"""A plain folder of DICOM / PNG / JPEG files, grouped into studies (the reader tried last).

Grouping rule: a DICOM file joins the study of its StudyInstanceUID; any other file (and a DICOM whose
header cannot be read or has no StudyInstanceUID) joins the study of its folder. The UID itself is never
shown: the study id is ``dicom-`` plus the first 12 hex digits of its sha256, while folder studies are
named by their path relative to the root (``.`` for the root itself). Body part: the DICOM
BodyPartExamined tag when it names one, else a folder name (``XR_WRIST``, ``wrist``), else UNKNOWN.

Only regular files are opened (pipes and devices become views that the decoder refuses by name), hidden
files are skipped and symbolic links to folders are not followed. Labels are unknown (None) and the split
is None, so ``read(path, split)`` with any split keeps every study.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mura_core.data.studies import BodyPart, DatasetIndex, Study, View

__all__ = ["IMAGE_SUFFIXES", "detect", "image_files", "read"]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
"""File name endings read as images; files without a suffix are read when they carry the DICM marker."""

_HEADER_TAGS = ["StudyInstanceUID", "BodyPartExamined"]


def _has_dicm_marker(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_image_name(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    return suffix == "" and path.is_file() and _has_dicm_marker(path)


def image_files(root: Path) -> list[Path]:
    """Every image file under `root` (sorted; hidden files and folders skipped; links to folders not followed)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and _is_image_name(path):
                found.append(path)
    return found


def detect(path: Path) -> bool:
    """True for a folder holding at least one image file (at any depth)."""
    if not path.is_dir():
        return False
    for folder, dirs, files in os.walk(path, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(not n.startswith(".") and _is_image_name(Path(folder) / n) for n in files):
            return True
    return False


def _dicom_header(path: Path) -> tuple[str | None, BodyPart]:
    """(StudyInstanceUID, body part) of a regular DICOM file; (None, UNKNOWN) when unreadable or not DICOM."""
    if not path.is_file() or not _has_dicm_marker(path):
        return None, BodyPart.UNKNOWN
    try:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with path.open("rb") as handle:
                ds = pydicom.dcmread(io.BufferedReader(handle), stop_before_pixels=True,
                                     specific_tags=_HEADER_TAGS)
            uid = str(ds.get("StudyInstanceUID", "") or "").strip() or None
            return uid, BodyPart.parse(str(ds.get("BodyPartExamined", "") or ""))
    except Exception:  # an unreadable header only loses the grouping; decoding names the reason later
        return None, BodyPart.UNKNOWN


def _folder_part(relative: Path) -> BodyPart:
    """The innermost folder name that names a body part (``XR_WRIST``, ``wrist``), else UNKNOWN."""
    for name in reversed(relative.parts):
        part = BodyPart.parse(name)
        if part is not BodyPart.UNKNOWN:
            return part
    return BodyPart.UNKNOWN


@dataclass
class _Group:
    study_id: str
    views: list[View] = field(default_factory=list)
    parts: list[BodyPart] = field(default_factory=list)


def read(path: Path, split: str | None = None) -> DatasetIndex:
    """Index a plain image folder: one study per DICOM StudyInstanceUID, else per folder.

    `split` is accepted for the reader table's sake; the folder has no splits, so every study is kept.
    """
    root = Path(path)
    groups: dict[str, _Group] = {}
    problems: list[str] = []
    for file in image_files(root):
        relative = file.relative_to(root)
        uid, part = _dicom_header(file)
        if uid is not None:
            key = "dicom-" + hashlib.sha256(uid.encode()).hexdigest()[:12]
        else:
            key = relative.parent.as_posix() if relative.parent != Path(".") else "."
        group = groups.setdefault(key, _Group(key))
        group.views.append(View(name=relative.as_posix(), path=file))
        group.parts.append(part if part is not BodyPart.UNKNOWN else _folder_part(relative.parent))
        if not file.is_file():
            problems.append(f"{relative.as_posix()}: not a regular file (a folder, device or pipe)")
    studies = []
    for key in sorted(groups):
        group = groups[key]
        known = [p for p in group.parts if p is not BodyPart.UNKNOWN]
        part = max(set(known), key=known.count) if known else BodyPart.UNKNOWN
        studies.append(Study(study_id=group.study_id, views=tuple(group.views), body_part=part, label=None,
                             split=None, source="folder"))
    return DatasetIndex(root, "folder", studies, problems)
