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


@pytest.mark.parametrize("amx,avx512_bf16,expected", [
    (True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_on_the_cpu_follows_the_hardware_probes(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert devices.native_bf16("cpu") is expected
    assert devices.native_bf16(torch.device("cpu")) is expected


def test_native_bf16_is_false_without_the_probes_and_on_other_devices(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.native_bf16("cpu") is False
    assert devices.native_bf16("cuda") is False
    assert devices.native_bf16("mps") is False


def test_bf16_autocast_turns_cpu_autocast_on_only_when_enabled():
    layer = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with devices.bf16_autocast("cpu", enabled=False):
        assert layer(x).dtype == torch.float32
    with devices.bf16_autocast("cpu"):
        assert layer(x).dtype == torch.bfloat16
    assert layer(x).dtype == torch.float32


def test_forward_chunks_keep_cpu_forwards_small_and_the_rows_in_order():
    rows = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)
    chunks = devices.forward_chunks(rows)
    assert max(len(c) for c in chunks) == devices.CPU_FORWARD_ROWS < len(rows)
    assert torch.equal(torch.cat(chunks), rows)
    assert len(devices.forward_chunks(rows[:1])) == 1 and devices.forward_chunks(rows[:0])[0].shape == (0, 3)
