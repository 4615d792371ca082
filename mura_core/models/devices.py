"""Which torch device to run on: CUDA, then Apple MPS, then CPU, unless the caller insists; whether
bf16 maths runs in hardware there (`native_bf16`, `bf16_autocast`); and how many rows one forward takes on the
CPU (`forward_chunks`).

Example:
    >>> pick_device("cpu")
    device(type='cpu')
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["CPU_FORWARD_ROWS", "DEVICE_CHOICES", "DeviceError", "bf16_autocast", "forward_chunks", "native_bf16",
           "pick_device", "mps_available"]

CPU_FORWARD_ROWS = 2
"""Most rows one scoring forward takes on the CPU. Larger batches overflow the caches there: on the 2-core CPU
(2 threads, float32, images/s at 1 / 2 / 4 / 8 / 16 / 32 rows per forward) the 384 px Lite2 ran 29.9 / 26.6 /
12.6 / 8.7 / 6.3 / 5.5, the 224 px Lite0 72 / 110 / 113 / 64 / 60 / 39, DenseNet-169 at 320 px 11.2 / 13.5 /
12.5 / 11.4 / 6.7 (16 rows). Two rows is the best or near it for all three."""

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
"""What `pick_device` accepts (plus explicit forms such as ``cuda:1``)."""


def forward_chunks(rows: torch.Tensor) -> list[torch.Tensor]:
    """`rows` in chunks of at most `CPU_FORWARD_ROWS` when they are on the CPU (one forward each); whole on a GPU,
    where large batches are what make it fast."""
    if rows.device.type != "cpu" or len(rows) <= CPU_FORWARD_ROWS:
        return [rows]
    return list(torch.split(rows, CPU_FORWARD_ROWS))


class DeviceError(RuntimeError):
    """A device was asked for that this machine does not have."""


def mps_available() -> bool:
    """True when Apple's Metal backend is built and usable."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """The device to use: ``"auto"`` (or None) picks CUDA, then MPS, then CPU.

    Args:
        preference: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a torch.device.

    Raises:
        DeviceError: an explicit CUDA/MPS request on a machine without it.
        ValueError: an unknown device name.
    """
    if isinstance(preference, torch.device):
        preference = str(preference)
    text = (preference or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = text.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("CUDA was requested but no CUDA GPU is available (use --device auto or cpu)")
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"{text} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return device
    if kind == "mps":
        if not mps_available():
            raise DeviceError("Apple MPS was requested but is not available (use --device auto or cpu)")
        return torch.device("mps")
    raise ValueError(f"unknown device {preference!r}; choose from {', '.join(DEVICE_CHOICES)}")


def _cpu_has(check: str) -> bool:
    """One of torch's CPU feature probes (``torch.cpu._is_*_supported``); False where this torch lacks it."""
    probe = getattr(torch.cpu, check, None)
    try:
        return bool(probe()) if callable(probe) else False
    except RuntimeError:
        return False


def native_bf16(device: str | torch.device) -> bool:
    """True where bf16 matrix maths runs in hardware: a CUDA GPU that supports it, or a CPU with AMX tiles
    or AVX512-BF16 (e.g. Sapphire Rapids and later Xeons, Zen 4). Elsewhere bf16 is emulated and slower.

    Measured on the 2-core Xeon with AMX that the project runs on: a DenseNet-169 forward at 320 px went
    from 3.8 images/s (float32) to 11.7 (bf16 autocast); see the README's speed section.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return _cpu_has("_is_amx_tile_supported") or _cpu_has("_is_avx512_bf16_supported")
    return False


def bf16_autocast(device: str | torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on `device` when `enabled` (a no-op context otherwise); reusable, one `with` after another.
    Scores-only forwards and training use it; heat maps read activations as numpy arrays, which have no bf16,
    so map forwards stay float32."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
