"""Read a Stanford MURA-v1.1 folder into study records.

Layout: `MURA-v1.1/{train,valid}/XR_PART/patientNNNNN/studyN_positive|negative/imageN.png`, with
`{split}_image_paths.csv` (one column, no header, paths starting `MURA-v1.1/`) and
`{split}_labeled_studies.csv` (study folder, label; no header). A split with an image-paths CSV is read
from the CSVs; a split without is read by walking its folders. Patient id, study id and label come from
the path; the labelled-studies CSV, when present, has the last word on the label.

Problems never stop the reading; they are collected in `DatasetIndex.problems` as "kind: detail" lines
(kinds: missing file, stray file, unknown folder, bad line, unlabelled study, label mismatch, empty study).
Images missing on disk are left out of their study, and a study with no image left is left out too.
Existence is checked by listing each folder once (cached), never by a stat per image, so a 3,197-line
CSV whose images are all absent costs a handful of system calls.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mura_core.data.studies import BodyPart, DatasetIndex, Study, View

__all__ = [
    "DatasetError",
    "MURA_FOLDER_NAME",
    "MuraImagePath",
    "parse_mura_path",
    "find_mura_root",
    "looks_like_mura",
    "read_mura_folder",
]

MURA_FOLDER_NAME = "MURA-v1.1"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MURA_CSV_SUFFIXES = ("_image_paths.csv", "_labeled_studies.csv")
"""The names of MURA's own CSV files (e.g. valid_image_paths.csv)."""
_PATH_PATTERN = re.compile(
    r"(?:^|/)(?P<split>[^/]+)/(?P<part>XR_[A-Z]+)/(?P<patient>patient\d+)/"
    r"(?P<study>study\d+)_(?P<outcome>positive|negative)(?:/(?P<image>[^/]+))?/?$")
_NUMBER = re.compile(r"(\d+)")


class DatasetError(ValueError):
    """A path is not a data set this package can read (neither a MURA folder nor a manifest)."""


@dataclass(frozen=True)
class MuraImagePath:
    """What a MURA path tells: split, body part folder, patient, study, label and image file."""

    split: str
    part_folder: str
    patient_id: str
    study: str
    label: int
    image: str | None

    @property
    def study_id(self) -> str:
        """`valid/XR_WRIST/patient11185/study1`."""
        return f"{self.split}/{self.part_folder}/{self.patient_id}/{self.study}"

    @property
    def study_folder(self) -> str:
        """`valid/XR_WRIST/patient11185/study1_positive` (relative to MURA-v1.1)."""
        outcome = "positive" if self.label == 1 else "negative"
        return f"{self.split}/{self.part_folder}/{self.patient_id}/{self.study}_{outcome}"


def parse_mura_path(text: str) -> MuraImagePath | None:
    """Parse a MURA image or study path (CSV form or relative); None when it does not fit the layout."""
    match = _PATH_PATTERN.search(text.strip().replace("\\", "/"))
    if match is None:
        return None
    return MuraImagePath(split=match["split"], part_folder=match["part"], patient_id=match["patient"],
                         study=match["study"], label=1 if match["outcome"] == "positive" else 0,
                         image=match["image"])


def _natural_key(text: str) -> list[object]:
    """Sort `image10` after `image2`."""
    return [int(part) if part.isdigit() else part for part in _NUMBER.split(text)]


def _is_split_folder(path: Path) -> bool:
    """A folder holding XR_* body-part folders."""
    try:
        return path.is_dir() and any(child.name.startswith("XR_") for child in path.iterdir())
    except OSError:
        return False


def find_mura_root(path: Path) -> Path | None:
    """The MURA-v1.1 folder itself, given it or its parent; None when neither looks like MURA."""
    path = Path(path)
    for candidate in (path, path / MURA_FOLDER_NAME):
        if not candidate.is_dir():
            continue
        if any(candidate.glob("*_image_paths.csv")) or any(
                _is_split_folder(child) for child in candidate.iterdir() if child.is_dir()):
            return candidate
    return None


def looks_like_mura(path: Path) -> bool:
    """True when `path` is a MURA-v1.1 folder or its parent."""
    return find_mura_root(path) is not None


class _FolderListing:
    """Lists each folder under `base` at most once; folders are named by '/'-joined relative strings.

    A folder is only listed when its parent lists it, so a missing branch costs one call, whatever the
    number of images below it. Strings, not Path objects, keep a 3,197-line CSV cheap.
    """

    def __init__(self, base: Path) -> None:
        self._base = os.fspath(base)
        self._cache: dict[str, frozenset[str] | None] = {}

    def names(self, relative: str) -> frozenset[str] | None:
        """Entry names of `base/relative`, or None when it does not exist."""
        if relative in self._cache:
            return self._cache[relative]
        parent, _, leaf = relative.rpartition("/")
        listing: frozenset[str] | None = None
        siblings = self.names(parent) if parent else None
        if not parent or (siblings is not None and leaf in siblings):
            try:
                listing = frozenset(os.listdir(os.path.join(self._base, relative)))
            except OSError:
                listing = None
        self._cache[relative] = listing
        return listing

    def exists(self, relative_file: str) -> bool:
        """True when `base/relative_file` is listed in its folder."""
        folder, _, name = relative_file.rpartition("/")
        names = self.names(folder)
        return names is not None and name in names


def _read_csv_lines(path: Path) -> list[list[str]]:
    """Rows of a header-less CSV, blank lines skipped."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]


def _csv_labels(path: Path, problems: list[str]) -> dict[str, int]:
    """study_id -> label from `{split}_labeled_studies.csv`."""
    labels: dict[str, int] = {}
    if not path.is_file():
        return labels
    for row in _read_csv_lines(path):
        parsed = parse_mura_path(row[0])
        if parsed is None or len(row) < 2 or row[1].strip() not in ("0", "1"):
            problems.append(f"bad line: {path.name}: {','.join(row)[:200]}")
            continue
        labels[parsed.study_id] = int(row[1].strip())
    return labels


@dataclass
class _StudyDraft:
    """A study being assembled: its parsed path and the views found so far."""

    where: MuraImagePath
    views: list[View]


def _study_from_draft(draft: _StudyDraft, labels: dict[str, int], problems: list[str]) -> Study:
    where = draft.where
    label = where.label
    if labels:
        if where.study_id not in labels:
            problems.append(f"unlabelled study: {where.study_id} (not in the labelled-studies CSV)")
        elif labels[where.study_id] != where.label:
            problems.append(f"label mismatch: {where.study_id} (folder says {where.label}, "
                            f"CSV says {labels[where.study_id]}; CSV kept)")
            label = labels[where.study_id]
    views = tuple(sorted(draft.views, key=lambda v: _natural_key(v.name)))
    return Study(study_id=where.study_id, views=views, body_part=BodyPart.parse(where.part_folder),
                 label=label, patient_id=where.patient_id, split=where.split, source="mura")


def _stray_files(names: frozenset[str] | None, known: set[str], prefix: str) -> list[str]:
    """Report files in a study folder that are not images the reading used (AppleDouble `._*`...)."""
    if names is None:
        return []
    return [f"stray file: {prefix}/{name}" for name in sorted(names - known)]


def _read_split_from_csv(mura: Path, split: str, listing: _FolderListing,
                         problems: list[str]) -> list[Study]:
    """One split from its image-paths CSV (and labelled-studies CSV when present)."""
    csv_path = mura / f"{split}_image_paths.csv"
    labels = _csv_labels(mura / f"{split}_labeled_studies.csv", problems)
    drafts: dict[str, _StudyDraft] = {}
    used: dict[str, set[str]] = {}
    for row in _read_csv_lines(csv_path):
        line = row[0].strip()
        where = parse_mura_path(line)
        if where is None or where.image is None:
            problems.append(f"bad line: {csv_path.name}: {line[:200]}")
            continue
        draft = drafts.setdefault(where.study_id, _StudyDraft(where, []))
        relative = f"{where.study_folder}/{where.image}"
        used.setdefault(where.study_folder, set()).add(where.image)
        if not listing.exists(relative):
            problems.append(f"missing file: {line}")
            continue
        draft.views.append(View(name=line, path=mura / relative))
    problems.extend(_unknown_part_folders(mura, split, listing.names(split)))
    for study_id in sorted(set(labels) - set(drafts)):
        problems.append(f"empty study: {study_id} (labelled but no image listed)")
    studies = []
    for study_id in sorted(drafts, key=_natural_key):
        draft = drafts[study_id]
        folder = draft.where.study_folder
        problems.extend(_stray_files(listing.names(folder), used[folder], f"{mura.name}/{folder}"))
        if not draft.views:
            problems.append(f"empty study: {study_id} (no image on disk)")
            continue
        studies.append(_study_from_draft(draft, labels, problems))
    return studies


def _unknown_part_folders(mura: Path, split: str, names: frozenset[str] | None) -> list[str]:
    """Entries of a split folder that are not XR_<body part> folders (cheap: the listing is cached)."""
    if names is None:
        return []
    return [f"{'stray file' if name.startswith('.') else 'unknown folder'}: {mura.name}/{split}/{name}"
            for name in sorted(names) if not name.startswith("XR_") or BodyPart.parse(name) is BodyPart.UNKNOWN]


def _subfolders(folder: Path, prefix: str, problems: list[str]) -> list[Path]:
    """Sub-folders of `folder` (sorted); stray files there are reported."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: _natural_key(e.name)):
        if entry.is_dir():
            found.append(Path(entry.path))
        else:
            problems.append(f"stray file: {prefix}/{entry.name}")
    return found


def _read_split_by_walking(mura: Path, split: str, problems: list[str]) -> list[Study]:
    """One split by walking split/XR_PART/patientN/studyN_outcome/imageN.png."""
    studies: list[Study] = []
    labels = _csv_labels(mura / f"{split}_labeled_studies.csv", problems)
    base = f"{mura.name}/{split}"
    for part in _subfolders(mura / split, base, problems):
        if BodyPart.parse(part.name) is BodyPart.UNKNOWN or not part.name.startswith("XR_"):
            problems.append(f"unknown folder: {base}/{part.name}")
            continue
        for patient in _subfolders(part, f"{base}/{part.name}", problems):
            for study_folder in _subfolders(patient, f"{base}/{part.name}/{patient.name}", problems):
                relative = f"{split}/{part.name}/{patient.name}/{study_folder.name}"
                where = parse_mura_path(relative)
                if where is None:
                    problems.append(f"unknown folder: {mura.name}/{relative}")
                    continue
                draft = _StudyDraft(where, [])
                for entry in os.scandir(study_folder):
                    is_image = (entry.is_file() and not entry.name.startswith(".")
                                and entry.name.lower().endswith(IMAGE_SUFFIXES))
                    if is_image:
                        draft.views.append(View(name=f"{mura.name}/{relative}/{entry.name}",
                                                path=Path(entry.path)))
                    else:
                        problems.append(f"stray file: {mura.name}/{relative}/{entry.name}")
                if not draft.views:
                    problems.append(f"empty study: {where.study_id} (no image on disk)")
                    continue
                studies.append(_study_from_draft(draft, labels, problems))
    return studies


def _splits(mura: Path) -> list[str]:
    """Split names found as CSVs or as folders holding XR_* folders (train, valid, ...)."""
    names = {p.name[: -len("_image_paths.csv")] for p in mura.glob("*_image_paths.csv")}
    names |= {p.name for p in mura.iterdir() if _is_split_folder(p)}
    order = {"train": 0, "valid": 1}
    return sorted(names, key=lambda n: (order.get(n, 2), n))


def read_mura_folder(root: Path, split: str | None = None) -> DatasetIndex:
    """Index a MURA-v1.1 folder (given it or its parent), optionally one split only.

    Raises:
        DatasetError: when `root` is not a MURA folder.
    """
    root = Path(root)
    mura = find_mura_root(root)
    if mura is None:
        raise DatasetError(f"{root}: not a MURA folder (expected {MURA_FOLDER_NAME}/ with train/ or valid/ "
                           "holding XR_* folders, or *_image_paths.csv)")
    problems: list[str] = []
    studies: list[Study] = []
    listing = _FolderListing(mura)
    splits = _splits(mura)
    if split is not None:
        if split not in splits:
            problems.append(f"unknown split: {split!r} (found {', '.join(splits) or 'none'})")
        splits = [s for s in splits if s == split]
    for name in splits:
        if (mura / f"{name}_image_paths.csv").is_file():
            studies.extend(_read_split_from_csv(mura, name, listing, problems))
        else:
            studies.extend(_read_split_by_walking(mura, name, problems))
    return DatasetIndex(root=mura, kind="mura", studies=studies, problems=problems)


def detect(path: Path) -> bool:
    """Whether `path` is a MURA-v1.1 folder (or its parent) or one of its CSV files."""
    if path.is_file():
        return path.name.endswith(MURA_CSV_SUFFIXES)
    return find_mura_root(path) is not None


def read(path: Path, split: str | None = None) -> DatasetIndex:
    """The reader-table face of `read_mura_folder` (a CSV file stands for its folder)."""
    return read_mura_folder(path.parent if path.is_file() else path, split)
