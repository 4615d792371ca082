"""Tests for mura_core.models.devices: CUDA, then MPS, then CPU, and explicit requests."""
from __future__ import annotations

import pytest
import torch

from mura_core.models import devices
from mura_core.models.devices import DeviceError, pick_device


def test_cpu_always_available():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("cuda,mps,expected", [
    (True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"), (True, False, "cuda")])
def test_auto_order(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(devices, "mps_available", lambda: mps)
    assert pick_device("auto").type == expected
    assert pick_device(None).type == expected


def test_explicit_missing_device_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA"):
        pick_device("cuda")
    with pytest.raises(DeviceError, match="MPS"):
        pick_device("mps")


def test_unknown_device_name():
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")
