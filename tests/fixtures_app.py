"""Fixtures for the app tests: a tiny random-weight checkpoint, a weights folder, an evaluate report.

The app reads its weights folder from ``MURA_WEIGHTS_DIR`` (see `viewer_validation.weights_dir`), so
a test points the app at a temporary folder holding a 64-px `shallow_cnn` that scores in milliseconds.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

TINY_NAME = "tiny_cnn"
"""The name the tiny checkpoint is indexed under."""

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "bone-fracture-xr"


def build_tiny_weights(folder: Path, *, name: str = TINY_NAME, seed: int = 0, with_report: bool = True) -> Path:
    """Write a random-weight 64-px shallow_cnn checkpoint, index it as the default, add a report.

    Returns the weights folder (to put in MURA_WEIGHTS_DIR).
    """
    import torch

    from mura_core.checkpoints import ModelCard, register_weights, save_checkpoint
    from mura_core.models import create_model, get_arch

    torch.manual_seed(seed)
    model = create_model("shallow_cnn")
    spec = get_arch("shallow_cnn")
    card = ModelCard(
        name=name, arch="shallow_cnn", image_size=64, mean=spec.mean, std=spec.std,
        thresholds={"default": 0.5, "WRIST": 0.45},
        training_data="none (random weights, for tests); data credit: bone-fracture-xr, CC BY 4.0",
        licence="CC BY 4.0", recipe={"epochs": 0}, metrics={"auc": 0.5},
        notes="Random weights: only for testing the app.",
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    sha = save_checkpoint(path, model, card)
    register_weights(path, card, sha, description="tiny test model", default=True, weights_dir=folder)
    if with_report:
        write_report(folder / f"{name}.report", thresholds=card.thresholds)
    return folder


def write_report(folder: Path, *, thresholds: dict[str, float], n: int = 80, seed: int = 1) -> Path:
    """A synthetic evaluate output (report.json + predictions.csv) with informative scores."""
    rng = np.random.default_rng(seed)
    parts = ["WRIST", "ELBOW", "FINGER", "UNKNOWN"]
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_id", "body_part", "label", "probability", "split"])
        for i in range(n):
            label = int(i % 2)
            prob = float(np.clip(rng.normal(0.65 if label else 0.35, 0.2), 0.01, 0.99))
            writer.writerow([f"g{i:04d}", parts[(i // 2) % len(parts)], label, f"{prob:.4f}", "valid"])
    (folder / "report.json").write_text(json.dumps({"model": "tiny", "split": "valid",
                                                    "thresholds": thresholds}))
    return folder


def real_views(count: int = 3) -> list[Path]:
    """The first `count` abnormal radiographs of the real data (read in place), [] when absent."""
    manifest = SHARED_DATA / "manifest.csv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["label"] == "1" and r["body_part"] == "WRIST"]
    paths = [SHARED_DATA / r["image"] for r in rows[:count]]
    return [p for p in paths if p.is_file()]


def start_app(weights: Path, monkeypatch) -> "AppTest":
    """Run app.py once under AppTest on the given weights folder (MURA_WEIGHTS_DIR), with no MURA_DATA."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MURA_WEIGHTS_DIR", str(weights))
    monkeypatch.delenv("MURA_DATA", raising=False)
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    return at
