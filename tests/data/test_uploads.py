"""Tests for mura_core.data.uploads: name sanitising, body-part precedence, one study from many files."""
from __future__ import annotations

import pytest

from fixtures.build import dicom_bytes, png_bytes
from mura_core.imaging.decode import decode_study
from mura_core.data.studies import BodyPart
from mura_core.data.uploads import body_part_from_dicom, sanitise_upload_name, study_from_uploads


@pytest.mark.parametrize("raw, clean", [
    ("image1.png", "image1.png"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\x\\wrist.dcm", "wrist.dcm"),
    ("a/b\\c.png", "c.png"),
    ("..", "upload"),
    ("", "upload"),
    (".hidden.png", "hidden.png"),
    ("bad\x00name\n.png", "badname.png"),
])
def test_sanitise_upload_name(raw, clean):
    assert sanitise_upload_name(raw) == clean


def test_long_name_is_shortened_keeping_suffix():
    name = sanitise_upload_name("x" * 500 + ".dcm")
    assert len(name) <= 120 and name.endswith(".dcm")


def test_study_from_uploads_names_and_duplicates():
    study = study_from_uploads([("dir/a.png", png_bytes()), ("other/a.png", png_bytes()), ("..", png_bytes())])
    assert [v.name for v in study.views] == ["a.png", "a (2).png", "upload3"]
    assert all("/" not in v.name and "\\" not in v.name for v in study.views)
    assert study.source == "upload" and study.label is None and study.study_id == "upload"


def test_body_part_from_dicom_tag():
    study = study_from_uploads([("a.png", png_bytes()), ("b.dcm", dicom_bytes(body_part="ELBOW"))])
    assert study.body_part is BodyPart.ELBOW


def test_user_choice_wins_over_dicom():
    files = [("b.dcm", dicom_bytes(body_part="ELBOW"))]
    assert study_from_uploads(files, body_part="HAND").body_part is BodyPart.HAND
    assert study_from_uploads(files, body_part=BodyPart.WRIST).body_part is BodyPart.WRIST
    assert study_from_uploads(files, body_part="").body_part is BodyPart.ELBOW  # no choice -> tag


def test_generic_or_missing_tag_gives_unknown():
    assert body_part_from_dicom(dicom_bytes(body_part="EXTREMITY")) is BodyPart.UNKNOWN
    assert body_part_from_dicom(dicom_bytes(body_part=None)) is BodyPart.UNKNOWN
    assert body_part_from_dicom(b"not dicom") is BodyPart.UNKNOWN
    assert study_from_uploads([("a.png", png_bytes())]).body_part is BodyPart.UNKNOWN


def test_no_files():
    with pytest.raises(ValueError, match="no files"):
        study_from_uploads([])


def test_bad_upload_does_not_hide_good_ones():
    study = study_from_uploads([("good.png", png_bytes()), ("bad.png", b"text"), ("x.dcm", dicom_bytes())])
    images, errors = decode_study(study)
    assert [i.name for i in images] == ["good.png", "x.dcm"]
    assert [str(e) for e in errors] == ["bad.png: not an image (expected PNG, JPEG or DICOM)"]
