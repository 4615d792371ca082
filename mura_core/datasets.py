"""Open any supported data set: a MURA-v1.1 folder (or its parent), a manifest CSV (or its folder), or a
FracAtlas folder as published (or its dataset.csv).

Usage:
    >>> index = open_dataset("../shared/data/bone-fracture-xr", split="valid")  # doctest: +SKIP
    >>> len(index.studies), index.kind                                          # doctest: +SKIP
    (310, 'manifest')
"""
from __future__ import annotations

from pathlib import Path

from mura_core.fracatlas import CSV_NAME as FRACATLAS_CSV, looks_like_fracatlas, read_fracatlas
from mura_core.manifest import MANIFEST_NAME, find_manifest, read_manifest
from mura_core.mura_folder import DatasetError, find_mura_root, read_mura_folder
from mura_core.studies import DatasetIndex

__all__ = ["DatasetError", "detect_kind", "open_dataset"]

_MURA_CSV_SUFFIXES = ("_image_paths.csv", "_labeled_studies.csv")


def detect_kind(path: Path | str) -> str:
    """'mura', 'manifest' or 'fracatlas' for a path; raises DatasetError when it is none of them."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name.endswith(_MURA_CSV_SUFFIXES):
            return "mura"
        if path.name == FRACATLAS_CSV and looks_like_fracatlas(path):
            return "fracatlas"
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise DatasetError(f"{path}: not a data set (expected a CSV file or a folder)")
    if find_manifest(path) is not None:
        return "manifest"
    if looks_like_fracatlas(path):
        return "fracatlas"
    if find_mura_root(path) is not None:
        return "mura"
    raise DatasetError(
        f"{path}: not a data set: expected a MURA-v1.1 folder (or its parent) with train/ or valid/ "
        f"holding XR_* folders or *_image_paths.csv, a folder with {MANIFEST_NAME}, or a FracAtlas "
        f"folder ({FRACATLAS_CSV} with images/Fractured and images/Non_fractured)")


def open_dataset(path: Path | str, split: str | None = None) -> DatasetIndex:
    """Index the data set at `path` (MURA folder, manifest or FracAtlas), optionally one split only.

    Raises:
        DatasetError: when `path` is missing or is neither a MURA folder nor a manifest.
    """
    path = Path(path).expanduser()
    kind = detect_kind(path)
    if kind == "mura":
        return read_mura_folder(path.parent if path.is_file() else path, split)
    if kind == "fracatlas":
        return read_fracatlas(path, split)
    return read_manifest(path, split)
