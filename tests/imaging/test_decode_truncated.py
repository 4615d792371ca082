"""JPEGs that end early: decoded with a note when only the tail is missing, refused when mostly missing."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from fixtures.build import jpeg_bytes
from mura_core.data.roots import SHARED_DATA
from mura_core.imaging.decode import DecodeError, decode_image

REAL = SHARED_DATA / "FracAtlas" / "images"


def _noisy_jpeg(width: int = 96, height: int = 128, *, progressive: bool = False) -> bytes:
    """A grey baseline (or progressive) JPEG whose scan data is spread evenly over the rows."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(20, 236, size=(height, width), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "L").save(out, format="JPEG", quality=90, progressive=progressive)
    return out.getvalue()


def _scan_start(data: bytes) -> int:
    """Offset of the first byte of entropy-coded data (just after the SOS segment)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def test_intact_jpeg_has_no_note():
    assert decode_image(_noisy_jpeg(), "whole.jpg").meta.notes == ()


def test_jpeg_missing_only_its_end_marker_decodes_complete_with_a_note():
    data = _noisy_jpeg()
    assert data.endswith(b"\xff\xd9")
    whole = decode_image(data, "whole.jpg")
    cut = decode_image(data[:-2], "cut.jpg")
    assert cut.meta.notes == ("file ends early; image complete",)
    np.testing.assert_array_equal(cut.pixels, whole.pixels)


def test_jpeg_cut_late_in_the_scan_decodes_with_rows_missing_counted():
    data = _noisy_jpeg()
    start = _scan_start(data)
    cut = decode_image(data[:start + int(0.8 * (len(data) - start))], "cut.jpg")
    (note,) = cut.meta.notes
    match = re.fullmatch(r"file ends early; (\d+) of 128 rows missing", note)
    assert match, note
    missing = int(match.group(1))
    assert 8 <= missing <= 40                          # about the last 20% of the rows, in 8-row blocks
    assert np.all(cut.pixels[-missing:] == pytest.approx(128 / 255))
    assert not np.all(cut.pixels[-missing - 1] == pytest.approx(128 / 255))


def test_jpeg_with_most_of_its_scan_missing_is_refused():
    data = _noisy_jpeg()
    start = _scan_start(data)
    with pytest.raises(DecodeError, match=r"truncated JPEG \(\d+ of 128 rows missing\)"):
        decode_image(data[:start + int(0.3 * (len(data) - start))], "cut.jpg")


def test_jpeg_cut_in_its_header_is_still_refused():
    data = jpeg_bytes(64, 64)
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(data[:_scan_start(data) - 40], "cut.jpg")
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(data[:300], "cut.jpg")


def test_progressive_jpeg_ending_early_says_detail_may_be_missing():
    cut = decode_image(_noisy_jpeg(progressive=True)[:-2], "prog.jpg")
    assert cut.meta.notes == ("file ends early; progressive JPEG, later scans (detail) may be missing",)


def test_trailing_zero_padding_after_the_end_marker_is_not_ending_early():
    assert decode_image(_noisy_jpeg() + b"\x00" * 8, "padded.jpg").meta.notes == ()


@pytest.mark.skipif(not REAL.is_dir(), reason="real FracAtlas not present")
def test_real_fracatlas_tail_truncated_files_all_decode():
    files = sorted((p for p in REAL.glob("*/*.jpg") if p.stem >= "IMG0004028"), key=lambda p: p.stem)
    assert files
    ended_early = 0
    for path in files:
        image = decode_image(path.read_bytes(), path.name)
        data = path.read_bytes()
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            ended_early += 1
            assert image.meta.notes and image.meta.notes[0].startswith("file ends early; ")
        else:
            assert image.meta.notes == ()
    assert ended_early >= 50
