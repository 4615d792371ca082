"""Builders for the SCORE tests (predict, predict CLI, evaluate): tiny checkpoints and image files."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

SCORE_SIZE = 64
"""Input size of the tiny test models (pixels)."""


def tiny_checkpoint(path: Path, arch: str = "mobilenet_v2", *, size: int = SCORE_SIZE, seed: int = 0,
                    thresholds: dict[str, float] | None = None, name: str | None = None) -> str:
    """A random-weight checkpoint of `arch` at `size` px written with TRAIN's save_checkpoint; returns sha256."""
    import torch

    from mura_core.checkpoints import ModelCard, save_checkpoint
    from mura_core.models import create_model, get_arch

    torch.manual_seed(seed)
    model = create_model(arch).eval()
    spec = get_arch(arch)
    pieces = spec.classic_cam(model)
    if pieces is not None:  # positive head weights: CAM maps of a random model are then never blank
        with torch.no_grad():
            pieces[1].abs_()
    card = ModelCard(name=name or path.stem, arch=arch, image_size=size, mean=spec.mean, std=spec.std,
                     thresholds=thresholds or {"default": 0.5},
                     training_data="none (random weights, tests)", licence="CC BY 4.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, model, card)


def weights_folder(folder: Path, members: dict[str, str], *, default: str,
                   ensembles: dict[str, list[str]] | None = None,
                   thresholds: dict[str, float] | None = None) -> Path:
    """A weights folder with one tiny checkpoint per name (name -> arch) and an index.json."""
    index: dict = {"default": default, "models": {}, "ensembles": ensembles or {}}
    for seed, (name, arch) in enumerate(members.items()):
        sha = tiny_checkpoint(folder / f"{name}.pt", arch, seed=seed, thresholds=thresholds, name=name)
        index["models"][name] = {"file": f"{name}.pt", "sha256": sha, "arch": arch, "description": "test"}
    (folder / "index.json").write_text(json.dumps(index))
    return folder


def grey_image(height: int, width: int, seed: int = 0, square: tuple[int, int, int] | None = None) -> np.ndarray:
    """A uint8 grey image: smooth noise, optionally a bright square (row, col, side)."""
    rng = np.random.default_rng(seed)
    img = (60 + 40 * rng.random((height, width))).astype(np.uint8)
    if square is not None:
        r, c, s = square
        img[r:r + s, c:c + s] = 240
    return img


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write a grey uint8 image as PNG (cv2)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def tiny_manifest(folder: Path, n_studies: int = 6, *, corrupt: int = 1) -> Path:
    """A manifest folder: `n_studies` studies (1-2 images), half abnormal with boxes, `corrupt` broken files."""
    rows = []
    parts = ["WRIST", "ELBOW", ""]
    for s in range(n_studies):
        label = s % 2
        for v in range(1 + (s % 3 == 0)):
            name = f"images/s{s}_v{v}.png"
            write_png(folder / name, grey_image(48 + 8 * v, 56, seed=10 * s + v, square=(10, 12, 12) if label else None))
            boxes = json.dumps([[12 / 56, 10 / (48 + 8 * v), 24 / 56, 22 / (48 + 8 * v)]]) if label else ""
            rows.append({"image": name, "split": "valid" if s < n_studies - 1 else "train", "label": label,
                         "body_part": parts[s % 3] if label else "", "group": f"g{s:03d}", "boxes": boxes})
    for k in range(corrupt):
        name = f"images/broken{k}.png"
        (folder / name).write_bytes(b"not an image at all")
        rows.append({"image": name, "split": "valid", "label": 1, "body_part": "WRIST", "group": f"gb{k}",
                     "boxes": json.dumps([[0.1, 0.1, 0.5, 0.5]])})
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "split", "label", "body_part", "group", "boxes"])
        writer.writeheader()
        writer.writerows(rows)
    return folder
