"""Read a manifest CSV (image, split, label, body_part, group, boxes) into study records.

Rows sharing `group` are the views of one study (study_id = group; a row without a group is a study of
its own, named after its image). `image` is relative to the manifest's folder. `label` is 1 abnormal,
0 normal, empty unknown. An empty or unrecognised `body_part` reads as UNKNOWN (the bone-fracture-xr
manifest leaves it empty for every normal image). `boxes` is JSON `[[x0, y0, x1, y1], ...]` in 0..1.

Problems never stop the reading; they are collected as "kind: detail" lines (missing file, bad label,
bad boxes, conflicting rows, empty study). Missing images are left out, and so are studies left empty.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from mura_core.data.mura_folder import MURA_CSV_SUFFIXES, DatasetError
from mura_core.data.studies import BodyPart, Box, DatasetIndex, Study, View

__all__ = ["MANIFEST_NAME", "MANIFEST_COLUMNS", "find_manifest", "parse_boxes", "parse_label", "read_manifest"]

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("image", "split", "label", "body_part", "group", "boxes")
"""Known columns; only `image` is required."""


def find_manifest(path: Path) -> Path | None:
    """The manifest CSV given itself or its folder; None when there is none."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    candidate = path / MANIFEST_NAME
    return candidate if candidate.is_file() else None


def parse_label(text: str | None) -> int | None:
    """'1' -> 1, '0' -> 0, '' -> None; anything else raises ValueError."""
    text = (text or "").strip()
    if text == "":
        return None
    value = float(text)
    if value not in (0.0, 1.0):
        raise ValueError(f"label must be 0 or 1, got {text!r}")
    return int(value)


def parse_boxes(text: str | None) -> tuple[Box, ...]:
    """JSON `[[x0, y0, x1, y1], ...]` (0..1, x0 <= x1, y0 <= y1) -> tuple of boxes; ValueError if malformed."""
    text = (text or "").strip()
    if text == "":
        return ()
    raw = json.loads(text)
    if not isinstance(raw, list):
        raise ValueError("boxes must be a JSON list")
    boxes = []
    for item in raw:
        if not isinstance(item, list) or len(item) != 4:
            raise ValueError("each box needs 4 numbers")
        x0, y0, x1, y1 = (float(v) for v in item)
        if not all(math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in (x0, y0, x1, y1)) or x0 > x1 or y0 > y1:
            raise ValueError("box corners must be in 0..1 with x0 <= x1 and y0 <= y1")
        boxes.append((x0, y0, x1, y1))
    return tuple(boxes)


class _FolderFiles:
    """Existence checks by listing each image folder once."""

    def __init__(self) -> None:
        self._cache: dict[Path, frozenset[str]] = {}

    def exists(self, file: Path) -> bool:
        folder = file.parent
        if folder not in self._cache:
            try:
                self._cache[folder] = frozenset(os.listdir(folder))
            except OSError:
                self._cache[folder] = frozenset()
        return file.name in self._cache[folder]


def _first_known(values: list[str | None]) -> str | None:
    return next((v for v in values if v), None)


def _study_from_rows(study_id: str, rows: list[dict], problems: list[str]) -> Study:
    """One study from its rows (views already built in row['view'])."""
    parts = {r["part"] for r in rows if r["part"] is not BodyPart.UNKNOWN}
    labels = {r["label"] for r in rows if r["label"] is not None}
    splits = {r["split"] for r in rows if r["split"]}
    if len(parts) > 1:
        problems.append(f"conflicting rows: study {study_id} has body parts {sorted(p.value for p in parts)}")
    if len(labels) > 1:
        problems.append(f"conflicting rows: study {study_id} has labels {sorted(labels)}; abnormal kept")
    if len(splits) > 1:
        problems.append(f"conflicting rows: study {study_id} is in splits {sorted(splits)}")
    part = next((r["part"] for r in rows if r["part"] is not BodyPart.UNKNOWN), BodyPart.UNKNOWN)
    return Study(study_id=study_id, views=tuple(r["view"] for r in rows), body_part=part,
                 label=max(labels) if labels else None, patient_id=None,
                 split=_first_known([r["split"] for r in rows]), source="manifest")


def read_manifest(path: Path, split: str | None = None) -> DatasetIndex:
    """Index a manifest CSV (given it or its folder), optionally one split only.

    Raises:
        DatasetError: when there is no manifest or it has no `image` column.
    """
    path = Path(path)
    manifest = find_manifest(path)
    if manifest is None:
        raise DatasetError(f"{path}: no {MANIFEST_NAME} found")
    folder = manifest.parent
    problems: list[str] = []
    files = _FolderFiles()
    groups: dict[str, list[dict]] = {}
    with manifest.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "image" not in (reader.fieldnames or []):
            raise DatasetError(f"{manifest}: not a manifest (needs an 'image' column; "
                               f"found {', '.join(reader.fieldnames or []) or 'no header'})")
        for line, row in enumerate(reader, start=2):
            image = (row.get("image") or "").strip()
            row_split = (row.get("split") or "").strip() or None
            if not image or (split is not None and row_split != split):
                if not image:
                    problems.append(f"bad line: {manifest.name} line {line}: no image")
                continue
            try:
                label = parse_label(row.get("label"))
            except ValueError:
                problems.append(f"bad label: {image} ({(row.get('label') or '')[:20]!r}); treated as unknown")
                label = None
            try:
                boxes = parse_boxes(row.get("boxes"))
            except (ValueError, TypeError):
                problems.append(f"bad boxes: {image}; boxes dropped")
                boxes = ()
            file = folder / image
            if not files.exists(file):
                problems.append(f"missing file: {image}")
                continue
            group = (row.get("group") or "").strip() or image
            groups.setdefault(group, []).append(dict(
                view=View(name=image, path=file, boxes=boxes), label=label, split=row_split,
                part=BodyPart.parse(row.get("body_part"))))
    studies = [_study_from_rows(study_id, rows, problems) for study_id, rows in groups.items()]
    return DatasetIndex(root=folder, kind="manifest", studies=studies, problems=problems)


def detect(path: Path) -> bool:
    """Whether `path` is a manifest CSV (not one of MURA's own CSVs) or a folder holding manifest.csv."""
    if path.is_file():
        return path.suffix.lower() == ".csv" and not path.name.endswith(MURA_CSV_SUFFIXES)
    return find_manifest(path) is not None


read = read_manifest
"""The reader-table face: `read(path, split)`."""
