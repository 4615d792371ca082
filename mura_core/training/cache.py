"""Decode every labelled image of a split ONCE into a uint8 tensor cache at the training size.

Augmentation then works on small tensors, so an epoch costs only the model's arithmetic. Each image
keeps its label, body part or region, source name and finding boxes; several sources concatenate into
one cache whose `sources` column drives per-source weighting, sampling and metrics.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mura_core.data.sources import source_name

__all__ = ["ImageCache", "load_split", "load_sources"]

_CACHE_VERSION = "v2"


@dataclass
class ImageCache:
    """Images of one split (of one or more sources), squashed to size x size, with their labels."""

    images: torch.Tensor
    """(N, S, S) uint8 grey images."""
    labels: torch.Tensor
    """(N,) float32 0/1."""
    body_parts: list[str]
    names: list[str]
    sources: list[str] = field(default_factory=list)
    boxes: list[list[tuple[float, float, float, float]]] = field(default_factory=list)
    in_scope: list[bool] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.names)
        self.sources = self.sources or ["data"] * n
        self.boxes = self.boxes or [[] for _ in range(n)]
        self.in_scope = self.in_scope or [True] * n

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask: Sequence[bool]) -> "ImageCache":
        """The images where `mask` is true (same order)."""
        keep = [i for i, m in enumerate(mask) if m]
        index = torch.tensor(keep, dtype=torch.long)
        pick = lambda values: [values[i] for i in keep]  # noqa: E731
        return ImageCache(self.images[index], self.labels[index], pick(self.body_parts), pick(self.names),
                          pick(self.sources), pick(self.boxes), pick(self.in_scope), list(self.skipped))

    @staticmethod
    def concat(caches: Sequence["ImageCache"]) -> "ImageCache":
        """One cache holding every image of `caches`, in order."""
        joined = lambda attr: [v for c in caches for v in getattr(c, attr)]  # noqa: E731
        return ImageCache(torch.cat([c.images for c in caches]), torch.cat([c.labels for c in caches]),
                          joined("body_parts"), joined("names"), joined("sources"), joined("boxes"),
                          joined("in_scope"), joined("skipped"))


def _cache_file(cache_dir: str | Path, data: str | Path, split: str, size: int) -> Path:
    key = hashlib.sha256(f"{Path(data).resolve()}|{split}|{size}|{_CACHE_VERSION}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"split-{key}.pt"


def _decode_small(view: Any, size: int) -> torch.Tensor:
    from mura_core.imaging.decode import decode_view
    from mura_core.imaging.preprocess import resize_pixels

    small = np.clip(resize_pixels(decode_view(view).pixels, size), 0.0, 1.0)
    return torch.from_numpy(np.round(small * 255.0).astype(np.uint8))


def _decode_index(index: Any, size: int, source: str, progress: bool, desc: str) -> ImageCache:
    from mura_core.imaging.decode import DecodeError

    views = [(view, study) for study in index.studies if study.label is not None for view in study.views]
    if progress:
        from tqdm import tqdm

        views = tqdm(views, desc=desc, unit="img", mininterval=5)
    images, labels, parts, names, boxes, scope, skipped = [], [], [], [], [], [], []
    for view, study in views:
        try:
            images.append(_decode_small(view, size))
        except (DecodeError, OSError) as exc:
            skipped.append(f"{view.name}: {exc}")
            continue
        labels.append(float(study.label))
        parts.append(study.body_part.value)
        names.append(view.name)
        boxes.append([tuple(float(v) for v in box) for box in view.boxes])
        scope.append(bool(getattr(study.body_part, "in_scope", True)))
    if not images:
        raise ValueError(f"{source}: split has no readable labelled images")
    return ImageCache(torch.stack(images), torch.tensor(labels, dtype=torch.float32), parts, names,
                      [source] * len(names), boxes, scope, skipped)


def load_split(data: str | Path, split: str, image_size: int, *, cache_dir: str | Path | None = None,
               progress: bool = False) -> ImageCache:
    """Every labelled, readable image of one split of one source at image_size x image_size.

    Unreadable images are skipped and listed in `skipped`. With `cache_dir`, the decoded split is kept
    as a .pt file of plain tensors and lists (read back with weights_only=True).
    """
    from mura_core.data.sources import open_dataset

    cache_file = _cache_file(cache_dir, data, split, image_size) if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        saved = torch.load(cache_file, map_location="cpu", weights_only=True)
        return ImageCache(**saved)
    index = open_dataset(data, split)
    if not any(study.label is not None for study in index.studies):
        raise ValueError(f"{data}: split {split!r} has no labelled images")
    cache = _decode_index(index, image_size, source_name(data), progress, f"decode {source_name(data)} {split}")
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"images": cache.images, "labels": cache.labels, "body_parts": cache.body_parts,
                    "names": cache.names, "sources": cache.sources, "boxes": cache.boxes,
                    "in_scope": cache.in_scope, "skipped": cache.skipped}, cache_file)
    return cache


def load_sources(data: Sequence[str | Path], split: str, image_size: int, *,
                 cache_dir: str | Path | None = None, progress: bool = False) -> ImageCache:
    """The same split of every source, concatenated (each image remembers its source)."""
    return ImageCache.concat([load_split(d, split, image_size, cache_dir=cache_dir, progress=progress)
                              for d in data])
