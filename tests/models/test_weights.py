"""Tests for mura_core.models.weights: the weights folder resolved in one place."""
from __future__ import annotations

from pathlib import Path

from mura_core.models.weights import weights_folder


def test_weights_folder_env(tmp_path: Path):
    assert weights_folder(env={"MURA_WEIGHTS_DIR": str(tmp_path)}) == tmp_path
    assert weights_folder(env={}).name == "weights"


def test_explicit_folder_wins_over_env(tmp_path: Path):
    assert weights_folder(tmp_path / "x", env={"MURA_WEIGHTS_DIR": str(tmp_path)}) == tmp_path / "x"
