"""Tests for mura_core.data.sources: picking the right reader, clear errors otherwise."""
from __future__ import annotations

from pathlib import Path

import pytest

from mura_core.data.sources import DatasetError, detect_kind, open_dataset


def test_opens_mura_folder_parent_and_csv(mura_tree: Path):
    for path in (mura_tree, mura_tree.parent, mura_tree / "valid_image_paths.csv"):
        assert detect_kind(path) == "mura"
        assert open_dataset(path).kind == "mura"
    assert len(open_dataset(str(mura_tree), split="train").studies) == 4


def test_opens_manifest_folder_and_file(manifest_folder: Path):
    assert open_dataset(manifest_folder).kind == "manifest"
    assert open_dataset(manifest_folder / "manifest.csv", split="train").kind == "manifest"


def test_missing_path(tmp_path: Path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        open_dataset(tmp_path / "nowhere")


def test_folder_that_is_neither(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="not a data set") as caught:
        open_dataset(tmp_path)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(DatasetError, match="not a data set"):
        open_dataset(tmp_path / "notes.txt")


def test_real_shared_data(shared_data: Path):
    assert open_dataset(shared_data).kind == "manifest"


def test_reader_table_is_consulted_in_order(tmp_path: Path, monkeypatch):
    from mura_core.data import sources
    from mura_core.data.studies import DatasetIndex

    marker = tmp_path / "data.custom"
    marker.write_text("x")
    custom = sources.Reader("custom", lambda p: p.suffix == ".custom", lambda p, split: DatasetIndex(p, "custom", []))
    monkeypatch.setattr(sources, "READERS", [*sources.READERS, custom])
    assert detect_kind(marker) == "custom" and open_dataset(marker).kind == "custom"
