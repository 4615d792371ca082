"""Decode one image file (PNG, JPEG or DICOM) into a 2-D float32 array in 0..1 plus safe metadata.

Every failure, whatever its cause, raises one error type, `DecodeError`, whose message names the file
and the reason; callers never see a raw Pillow, pydicom or OpenCV exception.

Decisions (documented once, here):

- Size limits are checked from the header before any pixel is decoded: PNG IHDR, JPEG SOF, DICOM
  Rows x Columns x NumberOfFrames. Images smaller than `DecodeLimits.min_side` pixels on a side are
  refused: a 1x1 "radiograph" cannot be read by anyone, human or model.
- 8-bit images are divided by 255, 16-bit PNGs by 65535 (full scale of the declared bit depth, so a
  pixel value means the same in every file; a 12-bit image stored in 16 bits therefore looks dark).
- Colour is turned into grey by luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B). Transparent
  pixels (RGBA, LA, palette with transparency) are composited on black: no signal, like air on film.
- A JPEG that ends early (no end-of-image marker: 59 published FracAtlas files lack their last 0-67
  bytes) is decoded with the marker appended, and says so in `ImageMeta.notes`. libjpeg fills the
  blocks it has no data for with the neutral value (grey 128 in every channel of a baseline JPEG), so
  the rows missing are counted as the trailing full rows that are exactly grey 128 everywhere: 0 ->
  "file ends early; image complete", N -> "file ends early; N of H rows missing" (a partly decoded last
  block row counts as present). A real radiograph whose bottom rows are exactly uniform 128 would be
  counted as missing rows too; that is the price of not patching libjpeg. More than half the rows
  missing is refused as truncated; so is a file that still does not decode (cut in its header, say).
  Progressive JPEGs are filled scan by scan, not row by row, so their note says that detail may be
  missing instead of counting rows.
- EXIF orientation is not applied: pixels are returned as stored, so that boxes given in the stored
  image's coordinates stay valid.
- DICOM: the modality LUT (rescale slope/intercept) is applied, then the window (the caller's
  `window=(center, width)` if given, else the file's first VOI window, else its VOI LUT sequence, else
  the full range of the values), then MONOCHROME1 is inverted so that bone is always bright. Only the
  first frame of a multi-frame file is returned. Colour DICOM is turned into grey by luminance.
  A caller's window is for display: `Predictor` always scores the file's own window.
- DICOM pixel decoders: pydicom's plugins first (pylibjpeg: JPEG, JPEG-LS, JPEG 2000, RLE), then GDCM
  (PyPI python-gdcm) directly, in memory, for what they refuse: real 12-bit JPEG Extended CR files
  (1.2.840.10008.1.2.4.51, e.g. WG04 RG2_JPLY) have a scan header libjpeg rejects and pydicom's own GDCM
  plugin refuses that syntax. GDCM prints libjpeg's notes about such files on stderr (no tag values).
  When every decoder fails the message names the transfer syntax and each decoder tried (or missing)
  instead of calling a valid file corrupt.
- Identifying DICOM attributes (names, ids, dates, institution...) are never read into `ImageMeta`
  and never put in messages; pydicom's warnings (which can echo tag values) are silenced while decoding.

Usage:
    >>> image = decode_image(Path("image1.png").read_bytes(), "image1.png")  # doctest: +SKIP
    >>> image.pixels.shape, image.meta.format                                 # doctest: +SKIP
    ((512, 420), 'PNG')
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
import stat
import struct
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mura_core.data.studies import Study, View

__all__ = [
    "printable_name",
    "DecodeError",
    "ImageMeta",
    "DecodedImage",
    "DecodeLimits",
    "decode_image",
    "decode_view",
    "read_view_bytes",
    "decode_study",
    "sniff_format",
    "apply_window",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
LUMINANCE = (0.299, 0.587, 0.114)
# JPEG start-of-frame markers: C0..CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class DecodeError(ValueError):
    """An image could not be decoded; `str()` is "<file>: <reason>"."""

    def __init__(self, file: str, reason: str) -> None:
        self.file = printable_name(file)
        self.reason = reason
        super().__init__(f"{self.file}: {reason}")


@dataclass(frozen=True)
class ImageMeta:
    """What may be shown about an image: never a name, id, date or institution."""

    format: str
    """'PNG', 'JPEG' or 'DICOM'."""
    width: int
    height: int
    modality: str | None = None
    body_part: str | None = None
    """DICOM BodyPartExamined as written in the file (e.g. 'WRIST', 'EXTREMITY'), else None."""
    view_position: str | None = None
    pixel_spacing: tuple[float, float] | None = None
    """(row, column) spacing in mm, from PixelSpacing or ImagerPixelSpacing; None when absent or zero."""
    photometric: str | None = None
    """DICOM PhotometricInterpretation, or the Pillow mode for PNG/JPEG."""
    bits_stored: int | None = None
    window: tuple[float, float] | None = None
    """(center, width) of the window applied, in modality units; None when none was applied."""
    notes: tuple[str, ...] = ()
    """Per-image remarks to show beside the image, e.g. "file ends early; image complete"."""


@dataclass(frozen=True)
class DecodedImage:
    """One decoded image: `pixels` is 2-D float32 in 0..1, bright = dense (bone)."""

    name: str
    pixels: np.ndarray
    meta: ImageMeta


@dataclass(frozen=True)
class DecodeLimits:
    """Caps checked before decoding, against oversized files and decompression bombs."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 50_000_000
    min_side: int = 16


# --------------------------------------------------------------------------- helpers

_decoding = threading.local()


class _QuietWhileDecoding(logging.Filter):
    """Drops pydicom's log records emitted while this module decodes (they can echo tag values)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_decoding, "active", False)


logging.getLogger("pydicom").addFilter(_QuietWhileDecoding())


def printable_name(name: str) -> str:
    """The file name without control characters, safe to print or log (no forged lines through names)."""
    text = re.sub(r"[\x00-\x1f\x7f]", "?", str(name))
    return text or "<unnamed>"


def sniff_format(data: bytes) -> str | None:
    """'PNG', 'JPEG' or 'DICOM' from the first bytes; None when unrecognised."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SIGNATURE):
        return "JPEG"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    # DICOM without the 128-byte preamble starts with a group 0002 or 0008 tag, little endian.
    if len(data) >= 8 and data[:2] in (b"\x02\x00", b"\x08\x00") and data[3:4] == b"\x00":
        return "DICOM"
    return None


def _png_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which must come first."""
    if len(data) < 33:
        raise DecodeError(name, "truncated PNG (header incomplete)")
    length, chunk = struct.unpack(">I4s", data[8:16])
    if chunk != b"IHDR" or length != 13:
        raise DecodeError(name, "corrupt PNG (IHDR chunk missing)")
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _jpeg_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the first start-of-frame segment."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise DecodeError(name, "corrupt JPEG (bad marker)")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD9:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF_MARKERS:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return int(width), int(height)
        if length < 2:
            raise DecodeError(name, "corrupt JPEG (bad segment length)")
        pos += 2 + length
    raise DecodeError(name, "truncated JPEG (no frame header)")


def _check_size(width: int, height: int, frames: int, name: str, limits: DecodeLimits) -> None:
    """Refuse images too large (decompression bombs) or too small to be radiographs."""
    pixels = width * height * max(frames, 1)
    if pixels > limits.max_pixels:
        raise DecodeError(
            name, f"image too large ({width}x{height} = {pixels:,} pixels; limit {limits.max_pixels:,})")
    if width < limits.min_side or height < limits.min_side:
        raise DecodeError(
            name, f"image too small ({width}x{height} pixels; need at least {limits.min_side} per side)")


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Grey from RGB (last axis) by ITU-R 601 luminance, as float32."""
    weights = np.asarray(LUMINANCE, dtype=np.float32)
    return rgb[..., :3].astype(np.float32) @ weights


def _finish(pixels: np.ndarray, *, bounded: bool = False) -> np.ndarray:
    """Contiguous float32 2-D array clipped to 0..1 with no NaN. `bounded`: the values came from 8- or 16-bit
    integers scaled into 0..1, so they are finite and in range already and the two full passes are skipped
    (a third of an 8-bit radiograph's decode time)."""
    if bounded:
        return np.ascontiguousarray(pixels, dtype=np.float32)
    out = np.nan_to_num(np.asarray(pixels, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0))


# --------------------------------------------------------------------------- PNG / JPEG


def _scaled(image: Any, full_scale: float) -> np.ndarray:
    """A one-channel Pillow image as float32 divided by full_scale, in place (one copy, not two)."""
    pixels = np.array(image, dtype=np.float32)
    pixels /= np.float32(full_scale)
    return pixels


def _pillow_to_grey(image: Any) -> np.ndarray:
    """A loaded Pillow image as a 2-D float32 array in 0..1 (see module notes for the rules)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _scaled(image, 65535.0)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if mode == "L":
        return _scaled(image, 255.0)
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode == "LA":
        arr = np.asarray(image, dtype=np.float32) / 255.0
        return arr[..., 0] * arr[..., 1]
    if mode in ("RGBA", "RGBa"):
        arr = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        return _luminance(arr) * arr[..., 3]
    if mode != "RGB":
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, ...
    return _luminance(np.asarray(image, dtype=np.float32) / 255.0)


def _decode_pillow(data: bytes, name: str, kind: str, limits: DecodeLimits) -> DecodedImage:
    """PNG or JPEG through Pillow, after the header size check."""
    from PIL import Image

    width, height = _png_size(data, name) if kind == "PNG" else _jpeg_size(data, name)
    _check_size(width, height, 1, name, limits)
    ends_early = kind == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if ends_early:
        data = data + b"\xff\xd9"
    filled_rows: int | None = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind]) as image:
                if image.width * image.height > limits.max_pixels:
                    raise DecodeError(name, f"image too large ({image.width}x{image.height} pixels)")
                image.load()
                mode = image.mode
                if ends_early and not image.info.get("progressive") and not image.info.get("progression"):
                    filled_rows = _trailing_fill_rows(image)
                pixels = _pillow_to_grey(image)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeError(name, "image too large (decompression bomb guard)") from None
    except MemoryError:
        raise DecodeError(name, "image too large (out of memory while decoding)") from None
    except Exception as error:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise DecodeError(name, f"truncated or corrupt {kind} ({_pillow_reason(error)})") from None
    if pixels.ndim != 2:
        raise DecodeError(name, f"unsupported {kind} layout (shape {pixels.shape})")
    bits = 16 if mode.startswith("I") else 8
    notes: tuple[str, ...] = ()
    if ends_early:
        rows = pixels.shape[0]
        if filled_rows is None:
            notes = ("file ends early; progressive JPEG, later scans (detail) may be missing",)
        elif filled_rows == 0:
            notes = ("file ends early; image complete",)
        elif filled_rows * 2 > rows:
            raise DecodeError(name, f"truncated JPEG ({filled_rows} of {rows} rows missing)")
        else:
            notes = (f"file ends early; {filled_rows} of {rows} rows missing",)
    meta = ImageMeta(format=kind, width=pixels.shape[1], height=pixels.shape[0], photometric=mode,
                     bits_stored=bits, notes=notes)
    bounded = mode in ("L", "I;16", "I;16B", "I;16L", "I;16N")  # integers scaled into 0..1 by _scaled
    return DecodedImage(name, _finish(pixels, bounded=bounded), meta)


def _trailing_fill_rows(image: Any) -> int:
    """Full rows at the bottom that are exactly libjpeg's fill value (128 in every channel)."""
    if image.mode not in ("L", "RGB", "YCbCr"):
        return 0
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    flat = arr.reshape(arr.shape[0], -1)
    filled = np.all(flat == 128, axis=1)
    present = np.nonzero(~filled)[0]
    return int(arr.shape[0] - (present[-1] + 1 if present.size else 0))


def _pillow_reason(error: Exception) -> str:
    """A short reason from a Pillow error (these never hold patient data)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:120]}" if text else type(error).__name__


# --------------------------------------------------------------------------- DICOM


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map modality values through a DICOM VOI window to 0..1 (LINEAR, LINEAR_EXACT or SIGMOID)."""
    values = np.asarray(values, dtype=np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / max(width, 1e-6), -60, 60)))
    elif function == "LINEAR_EXACT":
        out = (values - center) / max(width, 1e-6) + 0.5
    else:
        span = max(width - 1.0, 1e-6)
        out = (values - (center - 0.5)) / span + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _valid_window(window: Any) -> bool:
    """True for a (center, width) pair of finite numbers with width > 0."""
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError):
        return False
    return math.isfinite(center) and math.isfinite(width) and width > 0


def _first_number(value: Any) -> float | None:
    """The first number of a single or multi-valued DICOM element; None when absent or invalid."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text(ds: Any, keyword: str) -> str | None:
    """A short code-string attribute as text, None when absent or empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value).strip()[:64] or None


def _spacing(ds: Any) -> tuple[float, float] | None:
    """(row, column) mm from PixelSpacing or ImagerPixelSpacing; None when absent, invalid or zero."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0 and math.isfinite(row) and math.isfinite(col):
            return (row, col)
    return None


def _require_int(ds: Any, keyword: str, name: str, default: int | None = None) -> int:
    """An integer attribute, or a DecodeError naming the attribute (never its value)."""
    value = ds.get(keyword, default)
    if value is None:
        raise DecodeError(name, f"DICOM attribute {keyword} missing")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DecodeError(name, f"DICOM attribute {keyword} invalid (wrong VR or value)") from None


def _read_dicom(data: bytes, name: str) -> Any:
    """Parse the DICOM header (pixel data stays encoded)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except InvalidDicomError:
        raise DecodeError(name, "not a DICOM file") from None
    except (EOFError, struct.error):
        raise DecodeError(name, "truncated DICOM file") from None
    except Exception as error:
        raise DecodeError(name, f"truncated or corrupt DICOM header ({type(error).__name__})") from None


def _check_transfer_syntax(ds: Any, name: str) -> None:
    """Refuse, by name, transfer syntaxes no installed plugin can decode."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = UID(str(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)) if meta is not None
              else ImplicitVRLittleEndian)
    label = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    try:
        decoder = get_decoder(uid)
    except Exception:
        raise DecodeError(name, f"unsupported transfer syntax {label}") from None
    if not decoder.is_available:
        raise DecodeError(name, f"unsupported transfer syntax {label}: no decoding plugin installed")


def _transfer_syntax_label(ds: Any) -> str:
    """'<name> (<uid>)' of the file's transfer syntax (or the uid alone when pydicom has no name)."""
    from pydicom.uid import UID, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    uid = UID(str(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian)) if meta is not None
              else ImplicitVRLittleEndian)
    return f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)


def _gdcm_module() -> Any | None:
    """The `gdcm` module (PyPI python-gdcm) with its console messages off, or None when not installed."""
    try:
        import gdcm
    except ImportError:
        return None
    for switch in ("WarningOff", "ErrorOff", "DebugOff"):
        getattr(gdcm.Trace, switch, lambda: None)()
    return gdcm


def _gdcm_decode(ds: Any) -> np.ndarray:
    """The first frame of encapsulated pixel data decoded by GDCM in memory (no file is written).

    pydicom's own GDCM plugin refuses 12-bit JPEG Extended (1.2.840.10008.1.2.4.51) although GDCM
    decodes it; this builds the GDCM image from the header values and the frame's fragments directly.
    """
    from pydicom.encaps import generate_fragmented_frames

    gdcm = _gdcm_module()
    if gdcm is None:
        raise RuntimeError("GDCM not installed")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame = b"".join(next(iter(generate_fragmented_frames(ds.PixelData, number_of_frames=frames))))
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(frame)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    allocated, stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((cols, rows, 1))
    image.SetDataElement(element)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.GetPIType(photometric)))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(ds.file_meta.TransferSyntaxUID))))
    signed = int(ds.get("PixelRepresentation", 0) or 0)
    image.SetPixelFormat(gdcm.PixelFormat(samples, allocated, stored, stored - 1, signed))
    buffer = image.GetBuffer()
    if not buffer:
        raise RuntimeError("GDCM returned no pixels")
    raw = buffer.encode("utf-8", "surrogateescape")
    dtype = {8: np.uint8, 16: np.uint16, 32: np.uint32}[allocated]
    arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    if signed:
        arr = arr.view(np.dtype(dtype.__name__.replace("u", "")).newbyteorder("<"))
    expected = rows * cols * samples
    if arr.size < expected:
        raise RuntimeError("GDCM returned too few pixels")
    arr = arr[:expected]
    return arr.reshape(rows, cols, samples) if samples > 1 else arr.reshape(rows, cols)


def _dicom_pixel_array(ds: Any, name: str) -> np.ndarray:
    """Pixels through pydicom's plugins, else GDCM directly; when all fail, say which were tried.

    A failure of every decoder is reported as a missing or unable decoder, not as a broken file: real
    scanner files (12-bit JPEG Extended CR) are valid but beyond pylibjpeg's libjpeg.
    """
    try:
        return ds.pixel_array
    except MemoryError:
        raise DecodeError(name, "image too large (out of memory while decoding)") from None
    except Exception as error:  # noqa: BLE001 - pydicom raises RuntimeError, ValueError, NotImplementedError
        first = error
    tried = ["pydicom plugins (" + _plugin_names(first) + ")"]
    if _encapsulated(ds):
        if _gdcm_module() is None:
            tried.append("GDCM: not installed (pip install python-gdcm)")
        else:
            try:
                return _gdcm_decode(ds)
            except MemoryError:
                raise DecodeError(name, "image too large (out of memory while decoding)") from None
            except Exception as error:  # noqa: BLE001
                tried.append(f"GDCM ({type(error).__name__})")
    raise DecodeError(
        name, f"no installed decoder could read the pixel data ({_transfer_syntax_label(ds)}; tried "
              f"{'; '.join(tried)}); a decoder for this encoding is missing or the pixel data is damaged"
    ) from None


def _encapsulated(ds: Any) -> bool:
    """True when the transfer syntax stores pixel data compressed in fragments."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        return False
    try:
        return bool(meta.TransferSyntaxUID.is_compressed)
    except Exception:  # noqa: BLE001
        return False


def _plugin_names(error: Exception) -> str:
    """Names of the pydicom plugins that failed, from its summary message (never tag values)."""
    names = re.findall(r"^\s*([a-z_]+):", str(error), flags=re.MULTILINE)
    return ", ".join(dict.fromkeys(names)) or type(error).__name__


def _dicom_window(ds: Any, values: np.ndarray, window: tuple[float, float] | None
                  ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Apply the caller's window, the file's window, its VOI LUT, or the full range, in that order."""
    function = _text(ds, "VOILUTFunction") or "LINEAR"
    if window is not None:
        center, width = float(window[0]), float(window[1])
        return apply_window(values, center, width, function), (center, width)
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return apply_window(values, center, width, function), (center, width)
    if "VOILUTSequence" in ds:
        from pydicom.pixels import apply_voi_lut

        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float32)
        return out / float(2 ** bits - 1), None
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32), None
    return ((values - low) / (high - low)).astype(np.float32), None


def _decode_dicom(data: bytes, name: str, window: tuple[float, float] | None,
                  limits: DecodeLimits) -> DecodedImage:
    """DICOM through pydicom: header checks, pixel decode, modality LUT, window, MONOCHROME1."""
    _decoding.active = True
    try:
        return _decode_dicom_quietly(data, name, window, limits)
    finally:
        _decoding.active = False


def _decode_dicom_quietly(data: bytes, name: str, window: tuple[float, float] | None,
                          limits: DecodeLimits) -> DecodedImage:
    """`_decode_dicom` with pydicom's warnings captured (never shown; only used to spot truncation)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _read_dicom(data, name)
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            ended_early = any("end of file" in str(w.message).lower() for w in caught)
            if ended_early:
                raise DecodeError(name, "truncated DICOM file (pixel data cut short)")
            if "Rows" not in ds:
                raise DecodeError(name, "no pixel data (not an image object, or the file is cut short)")
            raise DecodeError(name, "no pixel data")
        rows = _require_int(ds, "Rows", name)
        cols = _require_int(ds, "Columns", name)
        frames = _require_int(ds, "NumberOfFrames", name, default=1)
        _check_size(cols, rows, frames, name, limits)
        _check_transfer_syntax(ds, name)
        arr = _dicom_pixel_array(ds, name)
        try:
            return _dicom_pixels_to_image(ds, arr, name, window)
        except DecodeError:
            raise
        except Exception as error:
            raise DecodeError(name, f"DICOM pixel values could not be interpreted ({type(error).__name__})"
                              ) from None


def _dicom_pixels_to_image(ds: Any, arr: np.ndarray, name: str,
                           window: tuple[float, float] | None) -> DecodedImage:
    """Turn a decoded DICOM pixel array into the 0..1 grey image and its metadata."""
    from pydicom.pixels import apply_modality_lut

    samples = _require_int(ds, "SamplesPerPixel", name, default=1)
    frames = _require_int(ds, "NumberOfFrames", name, default=1)
    if frames > 1:
        arr = arr[0]
    photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    bits = _require_int(ds, "BitsStored", name, default=_require_int(ds, "BitsAllocated", name, 8))
    used_window = None
    if photometric == "PALETTE COLOR" and samples == 1:
        from pydicom.pixels import apply_color_lut

        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        rgb = apply_color_lut(arr, ds).astype(np.float32)
        pixels = _luminance(rgb / float(2 ** lut_bits - 1))
    elif samples > 1 or arr.ndim == 3:
        full_scale = float(2 ** min(bits, 16) - 1)
        pixels = _luminance(arr.astype(np.float32) / full_scale)
    else:
        values = apply_modality_lut(arr, ds).astype(np.float64)
        pixels, used_window = _dicom_window(ds, values, window)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
    if pixels.ndim != 2:
        raise DecodeError(name, f"unsupported DICOM pixel layout (shape {arr.shape})")
    meta = ImageMeta(
        format="DICOM", width=int(pixels.shape[1]), height=int(pixels.shape[0]),
        modality=_text(ds, "Modality"), body_part=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"), pixel_spacing=_spacing(ds),
        photometric=photometric, bits_stored=bits, window=used_window)
    return DecodedImage(name, _finish(pixels), meta)


# --------------------------------------------------------------------------- public entry points


def decode_image(data: bytes, name: str, *, window: tuple[float, float] | None = None,
                 limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode PNG, JPEG or DICOM bytes into a `DecodedImage`; any failure raises `DecodeError`.

    Args:
        data: the file's bytes.
        name: how to name the file in messages (upload name, CSV path...).
        window: (center, width) applied to DICOM instead of the file's own window.
        limits: size caps checked before decoding.
    """
    name = printable_name(name)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(name, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise DecodeError(name, "empty file")
    if len(data) > limits.max_bytes:
        raise DecodeError(name, f"file too large ({len(data):,} bytes; limit {limits.max_bytes:,})")
    if window is not None and not _valid_window(window):
        raise DecodeError(name, "invalid window (need finite center and a width > 0)")
    kind = sniff_format(data)
    if kind is None:
        raise DecodeError(name, "not an image (expected PNG, JPEG or DICOM)")
    try:
        if kind == "DICOM":
            return _decode_dicom(data, name, window, limits)
        return _decode_pillow(data, name, kind, limits)
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError(name, "image too large (out of memory while decoding)") from None
    except Exception as error:  # last line of defence: nothing raw escapes
        raise DecodeError(name, f"could not decode {kind} ({type(error).__name__})") from None


def read_view_bytes(view: View, limits: DecodeLimits = DecodeLimits()) -> bytes:
    """A view's bytes, read safely: only a regular file, at most `limits.max_bytes`; else `DecodeError`.

    Devices (`/dev/zero`), pipes and folders are refused before any byte is read (a pipe would block
    and a device never ends), and the read stops one byte past the cap, so a file that grows after
    the size check cannot exhaust memory either. In-memory views (uploads) are returned as they are.
    """
    if view.data is not None or view.path is None:
        try:
            return view.read_bytes()
        except OSError as error:
            raise DecodeError(view.name, f"unreadable file ({type(error).__name__})") from None
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(Path(view.path), flags)  # non-blocking: opening a pipe must not wait for a writer
    except FileNotFoundError:
        raise DecodeError(view.name, "file not found") from None
    except OSError as error:
        raise DecodeError(view.name, f"unreadable file ({type(error).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError(view.name, "not a regular file (a folder, device or pipe)")
        if info.st_size > limits.max_bytes:
            raise DecodeError(view.name, f"file too large ({info.st_size:,} bytes; limit {limits.max_bytes:,})")
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(limits.max_bytes + 1)
    except OSError as error:
        raise DecodeError(view.name, f"unreadable file ({type(error).__name__})") from None
    finally:
        os.close(fd)
    if len(data) > limits.max_bytes:
        raise DecodeError(view.name, f"file too large (over the limit of {limits.max_bytes:,} bytes)")
    return data


def decode_view(view: View, **kwargs: Any) -> DecodedImage:
    """Decode one view of a study; a missing, unreadable or non-regular file is a `DecodeError` too."""
    data = read_view_bytes(view, kwargs.get("limits", DecodeLimits()))
    return decode_image(data, view.name, **kwargs)


def decode_study(study: Study | Sequence[View], **kwargs: Any) -> tuple[list[DecodedImage], list[DecodeError]]:
    """Decode every view; returns the images that decoded and the errors of those that did not."""
    views = study.views if isinstance(study, Study) else tuple(study)
    images: list[DecodedImage] = []
    errors: list[DecodeError] = []
    for view in views:
        try:
            images.append(decode_view(view, **kwargs))
        except DecodeError as error:
            errors.append(error)
    return images, errors
