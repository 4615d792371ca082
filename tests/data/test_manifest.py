"""Tests for mura_core.data.manifest: grouping rows into studies, boxes, labels, problems, real manifest."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fixtures.build import build_manifest_folder
from mura_core.data.manifest import parse_boxes, parse_label, read_manifest
from mura_core.data.mura_folder import DatasetError
from mura_core.data.studies import BodyPart


def test_rows_sharing_group_form_one_study(manifest_folder: Path):
    index = read_manifest(manifest_folder)
    assert index.kind == "manifest"
    assert [s.study_id for s in index.studies] == ["g1", "g2", "g3"]
    g1 = index.studies[0]
    assert [v.name for v in g1.views] == ["images/a.jpg", "images/b.jpg"]
    assert g1.views[0].boxes == ((0.1, 0.2, 0.3, 0.4),) and g1.views[1].boxes == ()
    assert (g1.body_part, g1.label, g1.split, g1.source) == (BodyPart.WRIST, 1, "train", "manifest")
    assert index.studies[1].body_part is BodyPart.UNKNOWN and index.studies[1].label == 0
    assert len(index.studies[2].views[0].boxes) == 2
    assert index.problems == []


def test_manifest_file_path_and_split(manifest_folder: Path):
    index = read_manifest(manifest_folder / "manifest.csv", split="valid")
    assert [s.study_id for s in index.studies] == ["g3"]


def test_missing_image_is_reported_not_fatal(tmp_path: Path):
    build_manifest_folder(tmp_path, missing=("images/b.jpg",))
    index = read_manifest(tmp_path)
    assert index.problems == ["missing file: images/b.jpg"]
    assert [v.name for v in index.studies[0].views] == ["images/a.jpg"]


def test_bad_label_and_boxes_are_reported(tmp_path: Path):
    rows = [dict(image="images/a.png", label="maybe", group="g1", boxes=[[0.5, 0.5, 0.1, 0.1]])]
    build_manifest_folder(tmp_path, rows)
    index = read_manifest(tmp_path)
    assert index.studies[0].label is None and index.studies[0].views[0].boxes == ()
    assert {p.split(":")[0] for p in index.problems} == {"bad label", "bad boxes"}


def test_parse_helpers():
    assert parse_label("1") == 1 and parse_label("0") == 0 and parse_label("") is None
    with pytest.raises(ValueError):
        parse_label("2")
    assert parse_boxes("[]") == () and parse_boxes("") == ()
    assert parse_boxes("[[0, 0, 1, 1]]") == ((0.0, 0.0, 1.0, 1.0),)
    with pytest.raises(ValueError):
        parse_boxes("[[0, 0, 1]]")


def test_csv_without_image_column(tmp_path: Path):
    (tmp_path / "manifest.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(DatasetError, match="'image' column"):
        read_manifest(tmp_path)


def test_real_shared_manifest_counts(shared_data: Path):
    with (shared_data / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    present = [r for r in rows if (shared_data / r["image"]).is_file()]
    index = read_manifest(shared_data)
    assert sum(len(s.views) for s in index.studies) == len(present)
    assert len(index.studies) == len({r["group"] for r in present})
    for split in ("train", "valid"):
        part = index.filter(split)
        assert sum(len(s.views) for s in part.studies) == sum(r["split"] == split for r in present)
    normal_rows = [r for r in present if r["label"] == "0"]
    assert all(r["body_part"] == "" for r in normal_rows)
    assert all(s.body_part is BodyPart.UNKNOWN for s in index.studies if s.label == 0)
    boxed = sum(1 for r in present if r["boxes"].strip() not in ("", "[]"))
    assert sum(1 for s in index.studies for v in s.views if v.boxes) == boxed
    if len(rows) == 1171 and len(present) == 1171:  # the known release
        assert len(index.studies) == 1169
