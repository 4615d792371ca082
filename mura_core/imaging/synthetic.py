"""Generated out-of-scope images (deterministic from a seed): what the scope check must flag.

Four categories, each returned as encoded file bytes so that they go through the same decoder as an
upload: ``chest`` (chest-radiograph-like: dark lungs, ribs, spine, heart shadow), ``photo`` (colour
photographs: gradients, blobs, textured shapes), ``document`` (white pages of black text lines) and
``ct_mr`` (round cross-sectional slices on black: body outline, fat ring, organs, bone). `explain.fit_heads`
fits its image-kind head on one seed range and measures the missed rate on another.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["CATEGORIES", "generate", "generate_set"]

CATEGORIES = ("chest", "photo", "document", "ct_mr")


def _encode(image: np.ndarray, fmt: str) -> bytes:
    ok, buffer = cv2.imencode(f".{fmt}", image)
    if not ok:
        raise ValueError(f"could not encode a {fmt} image")
    return buffer.tobytes()


def _chest(rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = size, int(size * rng.uniform(0.85, 1.1))
    img = np.full((h, w), rng.uniform(150, 200), np.float32)
    for side in (-1, 1):
        centre = (int(w / 2 + side * w * rng.uniform(0.18, 0.24)), int(h * rng.uniform(0.45, 0.55)))
        axes = (int(w * rng.uniform(0.14, 0.19)), int(h * rng.uniform(0.3, 0.38)))
        cv2.ellipse(img, centre, axes, 0, 0, 360, float(rng.uniform(30, 70)), -1)
    for k in range(int(rng.integers(8, 12))):
        y = int(h * (0.18 + 0.065 * k))
        for side in (-1, 1):
            cv2.ellipse(img, (w // 2, y), (int(w * 0.42), int(h * 0.07)), 0, 90 - side * 90, 180 - side * 90 + 90 * side,
                        float(rng.uniform(120, 170)), int(max(2, h * 0.012)))
    cv2.rectangle(img, (int(w * 0.47), 0), (int(w * 0.53), h), float(rng.uniform(170, 220)), -1)
    cv2.ellipse(img, (int(w * 0.55), int(h * 0.62)), (int(w * 0.14), int(h * 0.16)), 20, 0, 360,
                float(rng.uniform(150, 200)), -1)
    img = cv2.GaussianBlur(img, (0, 0), size / 80) + rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _photo(rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = size, int(size * rng.uniform(1.2, 1.5))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, d = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 100 * np.sin(a * xx / w * 3 + b * yy / h * 3 + d * 3)
    for _ in range(int(rng.integers(3, 8))):
        colour = [float(v) for v in rng.uniform(0, 255, 3)]
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, centre, int(rng.integers(size // 12, size // 3)), colour, -1)
    img += rng.normal(0, 10, img.shape).astype(np.float32)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 1.5), 0, 255).astype(np.uint8)


def _document(rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = size, int(size * 0.77)
    img = np.full((h, w), int(rng.integers(225, 255)), np.uint8)
    words = ["patient", "report", "findings", "impression", "the", "of", "normal", "fracture", "radius",
             "no", "acute", "osseous", "abnormality", "signed", "date", "left", "right", "view"]
    scale = size / 700
    y = int(h * 0.08)
    while y < h * 0.92:
        line = " ".join(rng.choice(words, int(rng.integers(3, 9))))
        cv2.putText(img, line, (int(w * 0.07), y), cv2.FONT_HERSHEY_SIMPLEX, 0.7 * scale, int(rng.integers(0, 60)),
                    max(1, int(2 * scale)), cv2.LINE_AA)
        y += int(rng.uniform(28, 40) * scale)
    return img


def _ct_mr(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.zeros((size, size), np.float32)
    c = (size // 2 + int(rng.integers(-size // 20, size // 20)), size // 2)
    axes = (int(size * rng.uniform(0.36, 0.45)), int(size * rng.uniform(0.28, 0.42)))
    cv2.ellipse(img, c, axes, 0, 0, 360, float(rng.uniform(180, 230)), -1)
    cv2.ellipse(img, c, (axes[0] - size // 30, axes[1] - size // 30), 0, 0, 360, float(rng.uniform(90, 130)), -1)
    for _ in range(int(rng.integers(3, 7))):
        centre = (c[0] + int(rng.integers(-axes[0] // 2, axes[0] // 2)), c[1] + int(rng.integers(-axes[1] // 2, axes[1] // 2)))
        cv2.ellipse(img, centre, (int(rng.integers(size // 25, size // 8)), int(rng.integers(size // 25, size // 8))),
                    float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(40, 255)), -1)
    img = cv2.GaussianBlur(img, (0, 0), 1.2) + rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


_MAKERS = {"chest": _chest, "photo": _photo, "document": _document, "ct_mr": _ct_mr}


def generate(category: str, seed: int, size: int = 384) -> tuple[str, bytes]:
    """(file name, encoded bytes) of one generated image; same category and seed -> same bytes."""
    if category not in _MAKERS:
        raise ValueError(f"unknown category {category!r}; choose from {', '.join(CATEGORIES)}")
    rng = np.random.default_rng([seed, CATEGORIES.index(category)])
    image = _MAKERS[category](rng, size)
    fmt = "jpg" if category == "photo" else "png"
    return f"{category}_{seed:04d}.{fmt}", _encode(image, fmt)


def generate_set(per_category: int, seed: int = 0, size: int = 384) -> list[tuple[str, str, bytes]]:
    """(category, name, bytes) for `per_category` images of every category."""
    return [(cat, *generate(cat, seed * 100_000 + i, size)) for cat in CATEGORIES for i in range(per_category)]
