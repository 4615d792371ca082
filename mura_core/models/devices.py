"""Which torch device to run on: CUDA, then Apple MPS, then CPU, unless the caller insists.

Example:
    >>> pick_device("cpu")
    device(type='cpu')
"""
from __future__ import annotations

import torch

__all__ = ["DEVICE_CHOICES", "DeviceError", "pick_device", "mps_available"]

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
"""What `pick_device` accepts (plus explicit forms such as ``cuda:1``)."""


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
