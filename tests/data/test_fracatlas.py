"""FracAtlas reader: a tiny published-layout tree built on the fly, plus the real data when present."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from mura_core.data.roots import SHARED_DATA
from mura_core.data.sources import detect_kind, open_dataset
from mura_core.data.fracatlas import (SPLIT_RULE, hash_cache_path, looks_like_fracatlas, near_duplicate_groups,
                                 read_fracatlas, region_for_flags, split_for_group)
from mura_core.data.studies import BodyPart

HEADER = "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique"
REAL = SHARED_DATA / "FracAtlas"


def _radiograph(seed: int, width: int = 120, height: int = 160) -> np.ndarray:
    """A distinct grey picture per seed: smooth random blobs, so that hashes differ between seeds."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC), (9, 9), 0)


def _write(path: Path, image: np.ndarray, quality: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, quality])


# (image id, folder, hand, leg, hip, shoulder, fractured, fracture_count, seed)
ROWS = [
    ("IMG0000001", "Fractured", 1, 0, 0, 0, 1, 1, 1),        # hand only, fractured with a box
    ("IMG0000002", "Non_fractured", 0, 0, 0, 1, 0, 0, 2),    # shoulder only
    ("IMG0000003", "Non_fractured", 1, 0, 0, 1, 0, 0, 3),    # hand + shoulder
    ("IMG0000004", "Non_fractured", 0, 1, 0, 0, 0, 0, 4),    # leg: out of scope
    ("IMG0000005", "Fractured", 0, 0, 1, 0, 1, 1, 5),        # hip: out of scope
    ("IMG0000006", "Non_fractured", 1, 1, 0, 0, 0, 0, 6),    # hand + leg: out of scope wins
    ("IMG0000007", "Fractured", 0, 0, 0, 0, 0, 1, 7),        # inconsistent row, and no region
    ("IMG0000008", "Non_fractured", 1, 0, 0, 0, 0, 0, 8),    # near-duplicate of ...
    ("IMG0000009", "Non_fractured", 1, 0, 0, 0, 0, 0, 8),    # ... this one (same picture, other quality)
]


@pytest.fixture()
def atlas(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "FracAtlas"
    lines = [HEADER]
    for image_id, folder, hand, leg, hip, shoulder, fractured, count, seed in ROWS:
        quality = 60 if image_id == "IMG0000009" else 95
        _write(root / "images" / folder / f"{image_id}.jpg", _radiograph(seed), quality)
        lines.append(f"{image_id}.jpg,{hand},{leg},{hip},{shoulder},0,0,0,{fractured},{count},1,0,0")
    lines.append("IMG0000099.jpg,1,0,0,0,0,0,0,0,0,1,0,0")                   # row without a file
    _write(root / "images" / "Non_fractured" / "IMG0000098.jpg", _radiograph(98))  # file without a row
    (root / "dataset.csv").write_text("\n".join(lines) + "\n")
    coco = {"images": [{"id": 1, "width": 120, "height": 160, "file_name": "IMG0000001.jpg"},
                       {"id": 5, "width": 120, "height": 160, "file_name": "IMG0000005.jpg"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [12, 16, 60, 80]},
                            {"id": 2, "image_id": 5, "category_id": 0, "bbox": [100, 150, 40, 40]}],
            "categories": [{"id": 0, "name": "fractured"}]}
    coco_file = root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
    coco_file.parent.mkdir(parents=True)
    coco_file.write_text(json.dumps(coco))
    return root


def _by_id(index):
    return {s.study_id: s for s in index.studies}


def test_detection_and_open_dataset(atlas: Path, tmp_path: Path):
    assert looks_like_fracatlas(atlas) and looks_like_fracatlas(atlas / "dataset.csv")
    assert not looks_like_fracatlas(tmp_path) and not looks_like_fracatlas(atlas / "images")
    assert detect_kind(atlas) == "fracatlas" and detect_kind(atlas / "dataset.csv") == "fracatlas"
    index = open_dataset(atlas)
    assert index.kind == "fracatlas" and len(index.studies) == 9
    assert open_dataset(atlas / "dataset.csv").kind == "fracatlas"


def test_labels_boxes_and_sources(atlas: Path):
    studies = _by_id(read_fracatlas(atlas))
    assert {s.source for s in studies.values()} == {"fracatlas"}
    assert all(len(s.views) == 1 and s.views[0].path.is_file() for s in studies.values())
    assert studies["IMG0000001"].label == 1 and studies["IMG0000002"].label == 0
    (box,) = studies["IMG0000001"].views[0].boxes
    assert box == pytest.approx((0.1, 0.1, 0.6, 0.6))
    (box,) = studies["IMG0000005"].views[0].boxes           # runs past the image: clipped to 0..1
    assert box == pytest.approx((100 / 120, 150 / 160, 1.0, 1.0))
    for study in studies.values():
        for x0, y0, x1, y1 in study.views[0].boxes:
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_regions_and_scope(atlas: Path):
    studies = _by_id(read_fracatlas(atlas))
    parts = {sid: s.body_part for sid, s in studies.items()}
    assert parts["IMG0000001"] is BodyPart.HAND_WRIST_FOREARM
    assert parts["IMG0000002"] is BodyPart.SHOULDER_HUMERUS
    assert parts["IMG0000003"] is BodyPart.UPPER_LIMB
    assert parts["IMG0000004"] is BodyPart.LEG and not parts["IMG0000004"].in_scope
    assert parts["IMG0000005"] is BodyPart.HIP and not parts["IMG0000005"].in_scope
    assert parts["IMG0000006"] is BodyPart.LOWER_LIMB and not parts["IMG0000006"].in_scope
    assert parts["IMG0000007"] is BodyPart.UNKNOWN and parts["IMG0000007"].in_scope
    assert region_for_flags(hand=False, leg=True, hip=True, shoulder=False) is BodyPart.LOWER_LIMB
    assert region_for_flags(hand=False, leg=False, hip=True, shoulder=True) is BodyPart.LOWER_LIMB


def test_body_part_enum_keeps_mura_picker_and_parses_regions():
    assert [p.value for p in BodyPart.known()] == ["ELBOW", "FINGER", "FOREARM", "HAND", "HUMERUS",
                                                   "SHOULDER", "WRIST"]
    assert set(BodyPart.regions()) == {BodyPart.HAND_WRIST_FOREARM, BodyPart.SHOULDER_HUMERUS, BodyPart.LEG,
                                       BodyPart.HIP, BodyPart.UPPER_LIMB, BodyPart.LOWER_LIMB}
    assert BodyPart.parse("HAND") is BodyPart.HAND and BodyPart.parse("XR_HAND") is BodyPart.HAND
    assert BodyPart.parse("XR_WRIST") is BodyPart.WRIST and BodyPart.parse("EXTREMITY") is BodyPart.UNKNOWN
    for part in BodyPart:
        assert BodyPart.parse(part.value) is part and BodyPart.parse(part.label) is part
    assert BodyPart.HAND_WRIST_FOREARM.label == "hand/wrist/forearm"
    assert BodyPart.UPPER_LIMB.label == "upper limb (hand and shoulder)" and BodyPart.WRIST.label == "wrist"
    assert [p for p in BodyPart if not p.in_scope] == [BodyPart.LEG, BodyPart.HIP, BodyPart.LOWER_LIMB]


def test_quirks_are_problem_lines_not_exceptions(atlas: Path):
    index = read_fracatlas(atlas)
    studies = _by_id(index)
    assert studies["IMG0000007"].label == 1              # folder Fractured + fracture_count 1 beat fractured=0
    (line,) = [p for p in index.problems if "IMG0000007.jpg" in p and p.startswith("inconsistent row")]
    assert "Fractured" in line and "fractured=0" in line and "fracture_count=1" in line and "rule:" in line
    assert any(p.startswith("no region") and "IMG0000007" in p for p in index.problems)
    assert any(p.startswith("missing file") and "IMG0000099.jpg" in p for p in index.problems)
    assert any(p.startswith("no csv row") and "IMG0000098.jpg" in p for p in index.problems)
    assert "IMG0000099" not in studies and "IMG0000098" not in studies


def test_csv_wins_when_the_count_backs_it(atlas: Path):
    csv_file = atlas / "dataset.csv"
    csv_file.write_text(csv_file.read_text().replace(
        "IMG0000004.jpg,0,1,0,0,0,0,0,0,0", "IMG0000004.jpg,0,1,0,0,0,0,0,1,2"))
    index = read_fracatlas(atlas)
    assert _by_id(index)["IMG0000004"].label == 1        # in Non_fractured, but fractured=1 and count=2
    assert any("IMG0000004.jpg" in p and "trust csv" in p for p in index.problems)


def test_near_duplicates_share_group_and_split(atlas: Path):
    studies = _by_id(read_fracatlas(atlas))
    a, b = studies["IMG0000008"], studies["IMG0000009"]
    assert a.group == b.group == "IMG0000008" and a.split == b.split
    others = [s.group for sid, s in studies.items() if sid not in ("IMG0000008", "IMG0000009")]
    assert sorted(others) == sorted(sid for sid in studies if sid not in ("IMG0000008", "IMG0000009"))
    groups = near_duplicate_groups(sorted((atlas / "images").rglob("*.jpg")), cache_file=None)
    assert groups[atlas / "images/Non_fractured/IMG0000009.jpg"] == "IMG0000008"


def test_duplicates_with_different_labels_are_reported(atlas: Path):
    csv_file = atlas / "dataset.csv"
    csv_file.write_text(csv_file.read_text().replace(
        "IMG0000009.jpg,1,0,0,0,0,0,0,0,0", "IMG0000009.jpg,1,0,0,0,0,0,0,1,1"))
    (atlas / "images/Non_fractured/IMG0000009.jpg").rename(atlas / "images/Fractured/IMG0000009.jpg")
    index = read_fracatlas(atlas)
    assert any(p.startswith("conflicting duplicates") and "IMG0000008=0" in p and "IMG0000009=1" in p
               for p in index.problems)


def test_split_is_deterministic_group_aware_and_filterable(atlas: Path):
    first = read_fracatlas(atlas)
    again = read_fracatlas(atlas, cache_file=False)
    assert [(s.study_id, s.split, s.group) for s in first.studies] == \
           [(s.study_id, s.split, s.group) for s in again.studies]
    for study in first.studies:
        assert study.split == split_for_group(study.group) in ("train", "valid")
    assert split_for_group("IMG0000008") == split_for_group("IMG0000008")
    valid = read_fracatlas(atlas, split="valid").studies
    train = open_dataset(atlas, split="train").studies
    assert {s.split for s in valid} <= {"valid"} and {s.split for s in train} <= {"train"}
    assert len(valid) + len(train) == len(first.studies)
    assert "sha1" in SPLIT_RULE and "% 5 == 0" in SPLIT_RULE


def test_hash_cache_is_written_and_reused(atlas: Path, tmp_path: Path):
    cache = hash_cache_path(atlas)
    assert str(cache).startswith(str(tmp_path / "cache" / "mura_core"))
    read_fracatlas(atlas)
    entries = json.loads(cache.read_text())["entries"]
    assert "IMG0000001.jpg" in entries
    read_fracatlas(atlas)                                  # reuses it (no error, same result)
    assert json.loads(cache.read_text())["entries"] == entries


def test_unwritable_cache_is_not_an_error(atlas: Path, tmp_path: Path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert len(read_fracatlas(atlas).studies) == 9


@pytest.mark.skipif(not (REAL / "dataset.csv").is_file(), reason="real FracAtlas not present")
def test_real_fracatlas_counts():
    index = open_dataset(REAL)
    assert index.kind == "fracatlas" and len(index.studies) == 3337
    assert Counter(s.label for s in index.studies) == {0: 2749, 1: 588}
    assert any("IMG0003298" in p for p in index.problems)
    assert _by_id(index)["IMG0003298"].label == 1
    splits = defaultdict(set)
    for study in index.studies:
        splits[study.group].add(study.split)
    assert all(len(s) == 1 for s in splits.values())       # no group straddles the split
    assert sum(1 for s in index.studies if s.split == "valid") / 3337 == pytest.approx(0.2, abs=0.05)
    sizes = Counter(s.group for s in index.studies)
    assert max(sizes.values()) <= 10                         # no runaway chaining of different radiographs
    assert sum(1 for n in sizes.values() if n > 1) >= 50
    assert any(p.startswith("conflicting duplicates") and "IMG0002738" in p for p in index.problems)
