"""Open any supported data set through ONE table of readers: a MURA-v1.1 folder (or its parent), a
manifest CSV (or its folder), a FracAtlas folder as published (or its dataset.csv), or a plain folder
of DICOM / PNG / JPEG files.

Each reader is a module with ``detect(path) -> bool`` and ``read(path, split) -> DatasetIndex``; `READERS`
lists them in the order they are tried. Adding a source = one module in `mura_core.data` + one row here.

Usage:
    >>> index = open_dataset("../shared/data/bone-fracture-xr", split="valid")  # doctest: +SKIP
    >>> len(index.studies), index.kind                                          # doctest: +SKIP
    (310, 'manifest')
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mura_core.data import fracatlas, folder, manifest, mura_folder
from mura_core.data.manifest import MANIFEST_NAME
from mura_core.data.mura_folder import DatasetError
from mura_core.data.studies import DatasetIndex

__all__ = ["READERS", "DatasetError", "Reader", "detect_kind", "open_dataset", "source_name"]


@dataclass(frozen=True)
class Reader:
    """One data source: its kind (as `DatasetIndex.kind`), how to recognise it and how to read it."""

    kind: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, str | None], DatasetIndex]


READERS: list[Reader] = [
    Reader("fracatlas", fracatlas.detect, fracatlas.read),
    Reader("manifest", manifest.detect, manifest.read),
    Reader("mura", mura_folder.detect, mura_folder.read),
    Reader("folder", folder.detect, folder.read),
]
"""Every data source, tried in order (FracAtlas's dataset.csv before the generic manifest CSV; a plain
image folder last, grouped into studies by DICOM StudyInstanceUID or by folder)."""


def _reader_for(path: Path) -> Reader:
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    for reader in READERS:
        if reader.detect(path):
            return reader
    if path.is_file():
        raise DatasetError(f"{path}: not a data set (expected a CSV file or a folder)")
    raise DatasetError(
        f"{path}: not a data set: expected a MURA-v1.1 folder (or its parent) with train/ or valid/ "
        f"holding XR_* folders or *_image_paths.csv, a folder with {MANIFEST_NAME}, or a FracAtlas folder "
        f"({fracatlas.CSV_NAME} with images/Fractured and images/Non_fractured), or a folder of PNG, JPEG or "
        f"DICOM files")


def detect_kind(path: Path | str) -> str:
    """The kind of data set at `path` ('mura', 'manifest', ...); raises DatasetError when none fits."""
    return _reader_for(Path(path).expanduser()).kind


def open_dataset(path: Path | str, split: str | None = None) -> DatasetIndex:
    """Index the data set at `path` with the first reader that recognises it, optionally one split only.

    Raises:
        DatasetError: when `path` is missing or no reader recognises it.
    """
    path = Path(path).expanduser()
    return _reader_for(path).read(path, split)


def source_name(data: Path | str) -> str:
    """A short, stable name for a data source: its folder name (a manifest's or dataset.csv's folder for a
    file). Training caches, evaluate reports and model cards all name sources this way."""
    path = Path(data).expanduser().resolve()
    return path.parent.name if path.is_file() else path.name
