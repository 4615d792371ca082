"""Decode-once caches, one or several sources."""
from __future__ import annotations

from pathlib import Path

import torch

from mura_core.training.cache import ImageCache, load_sources, load_split


def test_load_split_caches_uint8_images(tiny_data: Path, tmp_path: Path) -> None:
    cache = load_split(tiny_data, "train", 16, cache_dir=tmp_path)
    assert cache.images.shape == (24, 16, 16) and cache.images.dtype == torch.uint8
    assert cache.labels.sum() == 12 and "UNKNOWN" in cache.body_parts
    assert set(cache.sources) == {"data"} and any(cache.boxes) and all(cache.in_scope)
    again = load_split(tiny_data, "train", 16, cache_dir=tmp_path)
    assert torch.equal(again.images, cache.images) and again.names == cache.names and again.boxes == cache.boxes


def test_sources_concatenate_and_remember_where_each_image_came_from(tiny_data: Path, second_source: Path) -> None:
    both = load_sources([tiny_data, second_source], "valid", 16)
    assert len(both) == 16 + 12 and both.sources.count("data") == 16 and both.sources.count("other") == 12
    only_other = both.subset([s == "other" for s in both.sources])
    assert len(only_other) == 12 and torch.equal(only_other.images, both.images[16:])
    assert isinstance(ImageCache.concat([only_other]), ImageCache)
