"""Tests for mura_core.imaging.decode: formats, DICOM handling, limits, hostile inputs, study decoding."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures.build import dicom_bytes, jpeg_bytes, png_bytes, png_header_bomb, pydicom_data_file
from mura_core.imaging.decode import (
    DecodedImage,
    DecodeError,
    DecodeLimits,
    apply_window,
    decode_image,
    decode_study,
    decode_view,
    sniff_format,
)
from mura_core.data.studies import Study, View


def assert_grey_image(image: DecodedImage, shape: tuple[int, int]) -> None:
    assert isinstance(image, DecodedImage)
    assert image.pixels.dtype == np.float32
    assert image.pixels.shape == shape
    assert float(image.pixels.min()) >= 0.0 and float(image.pixels.max()) <= 1.0
    assert (image.meta.height, image.meta.width) == shape


def assert_refused(data: bytes, name: str, reason_part: str, **kwargs) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        decode_image(data, name, **kwargs)
    error = caught.value
    assert error.file == name
    assert reason_part in error.reason
    assert str(error).startswith(f"{name}: ")
    return error


# ---------------------------------------------------------------- PNG / JPEG modes


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA", "LA", "P", "1"])
def test_png_modes_decode_to_grey(mode):
    image = decode_image(png_bytes(32, 24, mode), "x.png")
    assert_grey_image(image, (24, 32))
    assert image.meta.format == "PNG"


def test_8bit_png_is_divided_by_255():
    pixels = decode_image(png_bytes(32, 24, "L"), "x.png").pixels
    expected = np.linspace(0, 255, 32).round() / 255.0
    np.testing.assert_allclose(pixels[0], expected, atol=1e-6)


def test_8bit_grey_is_exactly_float32_over_255_without_a_clip_pass():
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(raw, mode="L").save(buffer, format="PNG")
    pixels = decode_image(buffer.getvalue(), "x.png").pixels
    assert pixels.dtype == np.float32 and pixels.flags.c_contiguous
    assert np.array_equal(pixels, raw.astype(np.float32) / np.float32(255.0))  # bit for bit
    assert pixels.min() == 0.0 and pixels.max() == 1.0


def test_16bit_png_uses_full_16bit_scale():
    image = decode_image(png_bytes(32, 24, "I;16"), "x.png")
    np.testing.assert_allclose(image.pixels[0], np.linspace(0, 65535, 32).round() / 65535.0, atol=1e-6)
    assert image.meta.bits_stored == 16


def test_rgba_is_composited_on_black():
    pixels = decode_image(png_bytes(32, 24, "RGBA"), "x.png").pixels
    assert np.all(pixels[:, :16] == 0.0)  # transparent left half
    assert pixels[0, -1] == pytest.approx(1.0, abs=1e-3)


def test_rgb_becomes_luminance_equal_to_grey():
    grey = decode_image(png_bytes(32, 24, "L"), "g.png").pixels
    rgb = decode_image(png_bytes(32, 24, "RGB"), "c.png").pixels
    np.testing.assert_allclose(rgb, grey, atol=1e-3)


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg_modes_decode(mode):
    image = decode_image(jpeg_bytes(32, 24, mode), "x.jpg")
    assert_grey_image(image, (24, 32))
    assert image.meta.format == "JPEG"
    assert image.pixels[0, 0] < 0.1 and image.pixels[0, -1] > 0.9  # dark left, bright right


# ---------------------------------------------------------------- hostile inputs (issue 7)


def test_zero_byte_file():
    assert_refused(b"", "empty.png", "empty file")


def test_text_renamed_png():
    assert_refused(b"hello, I am not an image\n", "notes.png", "not an image")


def test_truncated_png():
    assert_refused(png_bytes(64, 64, seed=1)[:120], "cut.png", "truncated")


def test_png_cut_inside_header():
    assert_refused(png_bytes()[:20], "cut.png", "truncated PNG")


def test_truncated_jpeg():
    assert_refused(jpeg_bytes(64, 64)[:300], "cut.jpg", "truncated")


def test_one_pixel_image_is_refused_as_too_small():
    assert_refused(png_bytes(1, 1), "dot.png", "too small")


def test_decompression_bomb_refused_from_header():
    data = png_header_bomb(30000, 30000)
    assert len(data) < 100_000
    assert_refused(data, "bomb.png", "image too large")


def test_file_over_size_cap():
    data = png_bytes(32, 32)
    assert_refused(data, "big.png", "file too large", limits=DecodeLimits(max_bytes=len(data) - 1))


def test_pixel_cap_is_configurable():
    assert_refused(png_bytes(32, 32), "x.png", "image too large", limits=DecodeLimits(max_pixels=1000))


def test_control_characters_in_name_are_not_echoed():
    with pytest.raises(DecodeError) as caught:
        decode_image(b"", "evil\nname.png")
    assert "\n" not in str(caught.value)
    assert caught.value.file == "evil?name.png"


# ---------------------------------------------------------------- DICOM


def test_dicom_16bit_monochrome2_full_range_without_window():
    image = decode_image(dicom_bytes(bits=16), "a.dcm")
    assert_grey_image(image, (32, 40))
    assert image.pixels[0, 0] == 0.0 and image.pixels[0, -1] == 1.0
    assert image.meta.window is None
    assert (image.meta.modality, image.meta.body_part, image.meta.view_position) == ("CR", "WRIST", "PA")
    assert image.meta.pixel_spacing == (0.1, 0.1)


def test_dicom_monochrome1_is_inverted():
    mono2 = decode_image(dicom_bytes(), "a.dcm").pixels
    mono1 = decode_image(dicom_bytes(photometric="MONOCHROME1"), "b.dcm").pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_dicom_rle_equals_uncompressed():
    plain = decode_image(dicom_bytes(), "a.dcm").pixels
    rle = decode_image(dicom_bytes(rle=True), "b.dcm").pixels
    np.testing.assert_array_equal(plain, rle)


def test_dicom_without_preamble_is_read():
    assert_grey_image(decode_image(dicom_bytes(preamble=False), "raw.dcm"), (32, 40))


def test_dicom_file_window_and_override():
    data = dicom_bytes(window=(2000.0, 1000.0))
    own = decode_image(data, "w.dcm")
    assert own.meta.window == (2000.0, 1000.0)
    override = decode_image(data, "w.dcm", window=(500.0, 100.0))
    assert override.meta.window == (500.0, 100.0)
    assert not np.array_equal(own.pixels, override.pixels)
    # values 0..4095 ramp: below 450 black, above 550 white
    assert override.pixels[0, 0] == 0.0 and override.pixels[0, -1] == 1.0


def test_dicom_rescale_slope_intercept_shifts_window():
    plain = decode_image(dicom_bytes(window=(1000.0, 400.0)), "a.dcm").pixels
    shifted = decode_image(dicom_bytes(window=(1000.0, 400.0), rescale=(1.0, -500.0)), "b.dcm").pixels
    assert shifted.mean() < plain.mean()


def test_dicom_voi_lut_sequence_is_applied():
    image = decode_image(dicom_bytes(bits=12, voi_lut=True), "voi.dcm")
    assert image.meta.window is None
    expected = np.linspace(0, 4095, 40).round() * 16 / 65535.0
    np.testing.assert_allclose(image.pixels[0], expected, atol=1e-4)


def test_real_truncated_encapsulated_dicom_says_truncated():
    path = pydicom_data_file("emri_small_jpeg_2k_lossless_too_short.dcm")
    if path is None:
        pytest.skip("pydicom-data file not available")
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(path.read_bytes(), path.name)


@pytest.mark.parametrize("file_name", ["OBXXXX1A_rle_2frame.dcm", "JPEG-LL.dcm", "color3d_jpeg_baseline.dcm"])
def test_real_palette_multiframe_lossless_and_colour_dicoms(file_name):
    path = pydicom_data_file(file_name)
    if path is None:
        pytest.skip(f"{file_name} not available")
    image = decode_image(path.read_bytes(), file_name)
    assert image.pixels.ndim == 2 and image.pixels.std() > 0.01


def test_invalid_window_refused():
    assert_refused(dicom_bytes(), "a.dcm", "invalid window", window=(10.0, 0.0))


def test_dicom_without_pixel_data():
    assert_refused(dicom_bytes(pixel_data=False), "nopix.dcm", "no pixel data")


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.3.4.5.6"])
def test_dicom_unsupported_transfer_syntax(uid):
    error = assert_refused(dicom_bytes(transfer_syntax=uid), "mpeg.dcm", "unsupported transfer syntax")
    assert uid in error.reason


def test_dicom_wrong_vr():
    assert_refused(dicom_bytes(wrong_vr=True), "vr.dcm", "Rows")


def test_truncated_dicom():
    data = dicom_bytes()
    with pytest.raises(DecodeError) as caught:
        decode_image(data[: len(data) // 2], "half.dcm")
    assert caught.value.file == "half.dcm"


def test_identifying_tags_never_returned_or_in_messages():
    image = decode_image(dicom_bytes(), "a.dcm")
    assert "SECRET" not in repr(image.meta)
    for bad in (dicom_bytes(pixel_data=False), dicom_bytes(wrong_vr=True),
                dicom_bytes(transfer_syntax="1.2.3.4"), dicom_bytes()[:400]):
        with pytest.raises(DecodeError) as caught:
            decode_image(bad, "x.dcm")
        assert "SECRET" not in str(caught.value) and "19000101" not in str(caught.value)


def test_real_cr_dicom(real_cr_dicom: Path):
    image = decode_image(real_cr_dicom.read_bytes(), real_cr_dicom.name)
    assert image.meta.format == "DICOM" and image.meta.modality == "CR"
    assert image.meta.photometric == "MONOCHROME1"
    assert image.pixels.ndim == 2 and image.pixels.dtype == np.float32
    assert image.meta.window is not None
    assert 0.05 < float(image.pixels.mean()) < 0.95  # a real, windowed picture, not blank
    assert image.meta.pixel_spacing is None or min(image.meta.pixel_spacing) > 0


def test_real_cr_j2k_matches_uncompressed():
    plain, j2k = pydicom_data_file("RG3_UNCR.dcm"), pydicom_data_file("RG3_J2KR.dcm")
    if plain is None or j2k is None:
        pytest.skip("RG3 files not available from pydicom-data")
    a = decode_image(plain.read_bytes(), plain.name).pixels
    b = decode_image(j2k.read_bytes(), j2k.name).pixels
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_real_radiographs_decode(real_radiographs: list[Path]):
    for path in real_radiographs:
        image = decode_view(View(name=path.name, path=path))
        assert image.meta.format == "JPEG"
        assert min(image.pixels.shape) >= 64
        assert image.pixels.std() > 0.01


# ---------------------------------------------------------------- views and studies


def test_missing_file_view_is_decode_error(tmp_path: Path):
    with pytest.raises(DecodeError, match="file not found") as caught:
        decode_view(View(name="gone.png", path=tmp_path / "gone.png"))
    assert caught.value.file == "gone.png"


def test_view_over_size_cap_refused_before_reading(tmp_path: Path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(64, 64))
    with pytest.raises(DecodeError, match="file too large"):
        decode_view(View(name="big.png", path=path), limits=DecodeLimits(max_bytes=10))


def test_decode_study_keeps_good_views_and_reports_bad(tmp_path: Path):
    views = (
        View(name="good.png", data=png_bytes(32, 24)),
        View(name="empty.png", data=b""),
        View(name="good.dcm", data=dicom_bytes(rle=True)),
        View(name="gone.png", path=tmp_path / "gone.png"),
        View(name="nopix.dcm", data=dicom_bytes(pixel_data=False)),
    )
    images, errors = decode_study(Study("s1", views))
    assert [i.name for i in images] == ["good.png", "good.dcm"]
    assert [(e.file, e.reason) for e in errors] == [
        ("empty.png", "empty file"), ("gone.png", "file not found"), ("nopix.dcm", "no pixel data")]


def test_sniff_format():
    assert sniff_format(png_bytes()) == "PNG"
    assert sniff_format(jpeg_bytes()) == "JPEG"
    assert sniff_format(dicom_bytes()) == "DICOM"
    assert sniff_format(b"GIF89a") is None


def test_apply_window_linear_bounds():
    out = apply_window(np.array([0.0, 100.0, 200.0]), center=100.0, width=100.0)
    assert out[0] == 0.0 and out[2] == 1.0 and 0.4 < out[1] < 0.6


# ---------------------------------------------------------------- property-based


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_decode_error(data: bytes):
    try:
        image = decode_image(data, "random.bin")
    except DecodeError as error:
        assert error.file == "random.bin"
    else:
        assert image.pixels.ndim == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\x00" * 128 + b"DICM"]),
       tail=st.binary(max_size=1024))
def test_random_bytes_behind_real_signatures_only_raise_decode_error(prefix: bytes, tail: bytes):
    try:
        decode_image(prefix + tail, "sig.bin")
    except DecodeError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(width=st.integers(16, 80), height=st.integers(16, 80),
       mode=st.sampled_from(["L", "RGB", "RGBA", "P", "LA", "I;16"]),
       fmt=st.sampled_from(["PNG", "JPEG"]), seed=st.integers(0, 2**16))
def test_random_valid_images_decode_to_right_shape(width, height, mode, fmt, seed):
    from PIL import Image

    rng = np.random.default_rng(seed)
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        mode = "RGB"
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    decoded = decode_image(buffer.getvalue(), f"r.{fmt.lower()}")
    assert_grey_image(decoded, (height, width))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pydicom_log_records_are_silenced_while_decoding(caplog):
    path = pydicom_data_file("emri_small_jpeg_2k_lossless_too_short.dcm")
    if path is None:
        pytest.skip("pydicom-data file not available")
    import pydicom

    with caplog.at_level("DEBUG", logger="pydicom"):
        pydicom.dcmread(path)  # outside decode: pydicom logs its warning
        assert any(r.name == "pydicom" for r in caplog.records)
        caplog.clear()
        with pytest.raises(DecodeError):
            decode_image(path.read_bytes(), path.name)
        assert [r for r in caplog.records if r.name == "pydicom"] == []


def test_dicom_cut_inside_header_names_the_reason():
    data = dicom_bytes()
    for cut in (300, 400):
        with pytest.raises(DecodeError) as caught:
            decode_image(data[:cut], "cut.dcm")
        assert "truncated" in caught.value.reason or "cut short" in caught.value.reason
