"""Tests for mura_core.data.folder: a plain folder of DICOM / PNG / JPEG files grouped into studies."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures.build import dicom_bytes, jpeg_bytes, png_bytes

from mura_core.data import folder
from mura_core.data.sources import detect_kind, open_dataset
from mura_core.data.studies import BodyPart


def _dicom(uid: str, part: str | None = "WRIST") -> bytes:
    """A generated DICOM whose StudyInstanceUID is `uid` (identifying tags hold SECRET)."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(body_part=part)))
    ds.StudyInstanceUID = uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "day"
    (root / "scanner").mkdir(parents=True)
    (root / "scanner" / "a.dcm").write_bytes(_dicom("1.2.3.4"))
    (root / "scanner" / "b.dcm").write_bytes(_dicom("1.2.3.4"))
    (root / "scanner" / "c").write_bytes(_dicom("1.2.3.5", part="ELBOW"))     # no suffix, DICM marker
    (root / "XR_HAND" / "patient1").mkdir(parents=True)
    (root / "XR_HAND" / "patient1" / "x.png").write_bytes(png_bytes(32, 32))
    (root / "XR_HAND" / "patient1" / "y.jpg").write_bytes(jpeg_bytes(32, 32))
    (root / "loose.png").write_bytes(png_bytes(20, 20))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(png_bytes(20, 20))
    (root / "broken.dcm").write_bytes(b"garbage")
    return root


def test_groups_by_study_uid_then_by_folder(image_folder: Path):
    assert detect_kind(image_folder) == "folder"
    index = open_dataset(image_folder, split="valid")
    by_views = {tuple(v.name for v in s.views): s for s in index.studies}
    assert set(by_views) == {("scanner/a.dcm", "scanner/b.dcm"), ("scanner/c",),
                             ("XR_HAND/patient1/x.png", "XR_HAND/patient1/y.jpg"), ("broken.dcm", "loose.png")}
    assert by_views[("scanner/a.dcm", "scanner/b.dcm")].body_part is BodyPart.WRIST
    assert by_views[("scanner/c",)].body_part is BodyPart.ELBOW
    assert by_views[("XR_HAND/patient1/x.png", "XR_HAND/patient1/y.jpg")].body_part is BodyPart.HAND
    assert by_views[("broken.dcm", "loose.png")].study_id == "."
    assert all(s.label is None and s.source == "folder" for s in index.studies)


def test_study_ids_never_show_the_uid(image_folder: Path):
    ids = [s.study_id for s in open_dataset(image_folder).studies]
    assert not any("1.2.3" in i for i in ids)
    assert sum(i.startswith("dicom-") for i in ids) == 2


def test_a_pipe_is_listed_not_opened(image_folder: Path):
    os.mkfifo(image_folder / "pipe.png")
    index = folder.read(image_folder)          # would hang if the pipe were opened
    assert any(v.name == "pipe.png" for s in index.studies for v in s.views)
    assert any("pipe.png" in p and "not a regular file" in p for p in index.problems)


def test_folder_without_images_is_not_detected(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("x")
    assert not folder.detect(tmp_path)
    assert not folder.detect(tmp_path / "notes.txt")


def test_other_readers_keep_priority(mura_tree: Path, manifest_folder: Path):
    assert detect_kind(mura_tree) == "mura" and detect_kind(manifest_folder) == "manifest"
