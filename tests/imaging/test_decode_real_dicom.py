"""Real DICOM files shipped by pydicom / pydicom-data decode through every installed decoder (issue #13).

Each test skips cleanly when its file (or GDCM) is not installed.
"""
from __future__ import annotations

import numpy as np
import pytest

from fixtures.build import pydicom_data_file
from mura_core.imaging import decode as decode_module
from mura_core.imaging.decode import DecodeError, decode_image

# (file, transfer syntax family, photometric) - one real file per encoding the issue names.
REAL_FILES = [
    ("JPEG-lossy.dcm", "JPEG Extended 12-bit (needs GDCM)", "MONOCHROME2"),
    ("JPEG-LL.dcm", "JPEG Lossless", "MONOCHROME2"),
    ("emri_small_jpeg_ls_lossless.dcm", "JPEG-LS", "MONOCHROME2"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000", "MONOCHROME2"),
    ("RG3_J2KR.dcm", "JPEG 2000 CR", "MONOCHROME1"),
    ("MR_small_RLE.dcm", "RLE", "MONOCHROME2"),
    ("RG3_UNCR.dcm", "uncompressed CR, MONOCHROME1", "MONOCHROME1"),
    ("vlut_04.dcm", "VOI LUT sequence", "MONOCHROME2"),
]


def _file(name: str):
    path = pydicom_data_file(name)
    if path is None:
        pytest.skip(f"{name} not installed (pydicom / pydicom-data)")
    return path


def _need_gdcm(name: str) -> None:
    if name == "JPEG-lossy.dcm" and decode_module._gdcm_module() is None:
        pytest.skip("python-gdcm not installed")


@pytest.mark.parametrize("name,family,photometric", REAL_FILES, ids=[f[0] for f in REAL_FILES])
def test_real_dicom_decodes(name: str, family: str, photometric: str) -> None:
    _need_gdcm(name)
    path = _file(name)
    image = decode_image(path.read_bytes(), name)
    assert image.meta.format == "DICOM" and image.meta.photometric == photometric, family
    assert image.pixels.ndim == 2 and image.pixels.dtype == np.float32
    assert float(image.pixels.std()) > 0.01, f"{family}: blank image"


def test_jpeg_extended_12bit_matches_its_lossless_twin() -> None:
    """pydicom's JPEG-lossy.dcm (12-bit JPEG Extended, refused by pylibjpeg) equals JPEG-LL.dcm up to
    lossy-compression error once decoded through the GDCM fallback."""
    _need_gdcm("JPEG-lossy.dcm")
    lossy, lossless = _file("JPEG-lossy.dcm"), _file("JPEG-LL.dcm")
    import pydicom

    raw_lossy = decode_module._gdcm_decode(pydicom.dcmread(lossy)).astype(np.float64)
    raw_lossless = pydicom.dcmread(lossless).pixel_array.astype(np.float64)
    assert raw_lossy.shape == raw_lossless.shape
    assert np.corrcoef(raw_lossy.ravel(), raw_lossless.ravel())[0, 1] > 0.95  # measured 0.987
    assert np.abs(raw_lossy - raw_lossless).mean() < 0.02 * raw_lossless.max()


def test_pylibjpeg_alone_refuses_jpeg_extended_so_the_fallback_is_needed() -> None:
    """Guards the premise: if pydicom's plugins learn to read this file, the fallback is no longer used."""
    import pydicom

    ds = pydicom.dcmread(_file("JPEG-lossy.dcm"))
    with pytest.raises(Exception):
        ds.pixel_array


def test_without_gdcm_the_refusal_names_decoders_not_a_broken_file(monkeypatch) -> None:
    path = _file("JPEG-lossy.dcm")
    monkeypatch.setattr(decode_module, "_gdcm_module", lambda: None)
    with pytest.raises(DecodeError) as caught:
        decode_image(path.read_bytes(), "RG2_JPLY.dcm")
    reason = caught.value.reason
    assert "no installed decoder" in reason and "decoder" in reason
    assert "GDCM: not installed" in reason and "python-gdcm" in reason
    assert "pylibjpeg" in reason and "1.2.840.10008.1.2.4.51" in reason
    assert "truncated" not in reason


def test_when_every_decoder_fails_both_are_named(monkeypatch) -> None:
    _need_gdcm("JPEG-lossy.dcm")
    path = _file("JPEG-lossy.dcm")

    def broken(ds):
        raise RuntimeError("boom")

    monkeypatch.setattr(decode_module, "_gdcm_decode", broken)
    with pytest.raises(DecodeError) as caught:
        decode_image(path.read_bytes(), "x.dcm")
    assert "GDCM (RuntimeError)" in caught.value.reason and "pylibjpeg" in caught.value.reason


def test_body_part_examined_is_read_when_present() -> None:
    image = decode_image(_file("RG3_UNCR.dcm").read_bytes(), "rg3.dcm")
    assert image.meta.body_part == "EXTREMITY"
    chest = decode_image(_file("RG1_UNCR.dcm").read_bytes(), "rg1.dcm")
    assert chest.meta.body_part == "CHEST"
