"""Tiny generated data sets for the training tests (CPU, shallow_cnn at 32 px, seconds each)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def make_tiny_set(folder: Path, n_train: int = 24, n_valid: int = 16, *, seed: int = 0,
                  valid_brightness: float = 0.0, size: int = 40) -> Path:
    """A manifest data set: abnormal images carry a bright square (boxed), normals are plain noise.

    Like bone-fracture-xr, most normal images have no body part. `valid_brightness` shifts every
    valid image so the validation score distribution differs from the training one.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, n in (("train", n_train), ("valid", n_valid)):
        for i in range(n):
            label = i % 2
            img = rng.normal(80, 20, (size, size))
            boxes = []
            if label:
                cx, cy = rng.integers(8, size - 8, 2)
                img[cy - 5:cy + 5, cx - 5:cx + 5] += 130
                boxes = [[float(v) / size for v in (cx - 5, cy - 5, cx + 5, cy + 5)]]
            if split == "valid":
                img += valid_brightness
            name = f"images/{split}_{i}.png"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name)
            part = ("WRIST" if i % 4 < 2 else "ELBOW") if label else ("WRIST" if i % 6 == 0 else "")
            rows.append({"image": name, "split": split, "label": label, "body_part": part,
                         "group": f"{split}{i}", "boxes": json.dumps(boxes)})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_set(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def second_source(tmp_path_factory) -> Path:
    """Another, smaller source with a different look (darker, fewer images)."""
    return make_tiny_set(tmp_path_factory.mktemp("other") / "other", n_train=12, n_valid=12, seed=5,
                         valid_brightness=-20.0)
