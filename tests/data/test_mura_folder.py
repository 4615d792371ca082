"""Tests for mura_core.data.mura_folder: CSV and walking readers, ids and labels from paths, problems."""
from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.build import MuraStudySpec, build_mura_tree
from mura_core.data.mura_folder import DatasetError, find_mura_root, parse_mura_path, read_mura_folder
from mura_core.data.studies import BodyPart


def test_parse_mura_image_path():
    where = parse_mura_path("MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image1.png")
    assert where is not None
    assert (where.split, where.part_folder, where.patient_id, where.study, where.label, where.image) == (
        "valid", "XR_WRIST", "patient11185", "study1", 1, "image1.png")
    assert where.study_id == "valid/XR_WRIST/patient11185/study1"


def test_parse_mura_study_path_and_garbage():
    where = parse_mura_path("MURA-v1.1/train/XR_SHOULDER/patient00001/study1_negative/")
    assert where is not None and where.label == 0 and where.image is None
    assert parse_mura_path("MURA-v1.1/train/XR_SHOULDER/patient00001/image1.png") is None


@pytest.mark.parametrize("with_csv", [True, False])
def test_generated_tree_exact_counts(tmp_path: Path, with_csv: bool):
    root = build_mura_tree(tmp_path, with_csv=with_csv)
    index = read_mura_folder(root)
    assert index.kind == "mura" and index.root == root
    # 7 specs, the valid ELBOW study has no image on disk -> 6 studies; 15 listed - 2 missing = 13 images
    assert len(index.studies) == 6
    assert sum(len(s.views) for s in index.studies) == 13
    by_split = {s: sum(1 for x in index.studies if x.split == s) for s in ("train", "valid")}
    assert by_split == {"train": 4, "valid": 2}
    assert sorted(s.label for s in index.studies) == [0, 0, 0, 1, 1, 1]
    stray = [p for p in index.problems if p.startswith("stray file:")]
    assert any(p.endswith("._image1.png") for p in stray)
    assert any("XR_FOOT" in p for p in index.problems if p.startswith("unknown folder:"))
    assert any("patient11187/study1" in p for p in index.problems if p.startswith("empty study:"))


def test_csv_reader_reports_missing_images_and_keeps_the_rest(mura_tree: Path):
    index = read_mura_folder(mura_tree)
    missing = sorted(p for p in index.problems if p.startswith("missing file:"))
    assert missing == [
        "missing file: MURA-v1.1/valid/XR_ELBOW/patient11187/study1_negative/image1.png",
        "missing file: MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image4.png",
    ]
    wrist = next(s for s in index.studies if s.study_id == "valid/XR_WRIST/patient11185/study1")
    assert [v.name for v in wrist.views] == [
        f"MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image{n}.png" for n in (1, 2, 3)]
    assert all(v.path is not None and v.path.is_file() for v in wrist.views)
    assert (wrist.body_part, wrist.label, wrist.patient_id, wrist.source) == (
        BodyPart.WRIST, 1, "patient11185", "mura")


def test_parent_folder_and_mura_folder_give_same_index(mura_tree: Path):
    a = read_mura_folder(mura_tree)
    b = read_mura_folder(mura_tree.parent)
    assert [s.study_id for s in a.studies] == [s.study_id for s in b.studies]
    assert find_mura_root(mura_tree.parent) == mura_tree


def test_split_filter(mura_tree: Path):
    index = read_mura_folder(mura_tree, split="valid")
    assert {s.split for s in index.studies} == {"valid"}
    assert len(index.studies) == 2


def test_labelled_csv_wins_over_folder_name(tmp_path: Path):
    root = build_mura_tree(tmp_path, (MuraStudySpec("valid", "XR_HAND", "patient1", "study1", True, 1),),
                           strays=False)
    (root / "valid_labeled_studies.csv").write_text("MURA-v1.1/valid/XR_HAND/patient1/study1_positive/,0\n")
    index = read_mura_folder(root)
    assert index.studies[0].label == 0
    assert any(p.startswith("label mismatch:") for p in index.problems)


def test_natural_image_order(tmp_path: Path):
    root = build_mura_tree(tmp_path, (MuraStudySpec("train", "XR_HAND", "patient1", "study1", False, 11),),
                           with_csv=False, strays=False)
    names = [v.name.rsplit("/", 1)[1] for v in read_mura_folder(root).studies[0].views]
    assert names == [f"image{n}.png" for n in range(1, 12)]


def test_csv_with_every_image_absent_still_indexes(tmp_path: Path):
    """A real-sized valid CSV (3,197 lines) with no image on disk: all reported, nothing raised."""
    root = tmp_path / "MURA-v1.1"
    root.mkdir()
    lines = [f"MURA-v1.1/valid/XR_WRIST/patient{11000 + n // 3}/study1_positive/image{n % 3 + 1}.png"
             for n in range(3197)]
    (root / "valid_image_paths.csv").write_text("\n".join(lines) + "\n")
    index = read_mura_folder(tmp_path)
    assert index.studies == []
    assert sum(p.startswith("missing file:") for p in index.problems) == 3197


def test_bad_csv_line_is_reported(tmp_path: Path):
    root = build_mura_tree(tmp_path, (MuraStudySpec("valid", "XR_HAND", "patient1", "study1", True, 1),),
                           strays=False)
    with (root / "valid_image_paths.csv").open("a") as handle:
        handle.write("not/a/mura/path.png\n")
    index = read_mura_folder(root)
    assert len(index.studies) == 1
    assert any(p.startswith("bad line:") and "not/a/mura/path.png" in p for p in index.problems)


def test_not_a_mura_folder(tmp_path: Path):
    with pytest.raises(DatasetError, match="not a MURA folder"):
        read_mura_folder(tmp_path)
