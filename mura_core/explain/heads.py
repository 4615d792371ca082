"""The small heads fitted on a model's pooled features (scope check, body-part suggestion), stored beside it.

File: ``<checkpoint stem>.heads.npz`` next to the checkpoint (numbers and strings only, read with
``allow_pickle=False``), written by ``python -m mura_core fit-heads`` (`explain.fit_heads`). Its sha256 is
recorded where the checkpoint's is: in ``index.json`` (``models[name]["heads_sha256"]``) for indexed weights,
else in ``<stem>.heads.json`` (the fit report) beside a checkpoint given by path; `load_heads` checks it and
that the heads were fitted on this very checkpoint (its sha256 is stored inside), so stale heads from an
older model are refused. A model without heads simply gets no scope check and no suggestion.

What the arrays hold (features `f` are standardised first: ``z = (f - mu) / sd``):

- density (Mahalanobis-like) score of upper-limb radiographs: ``d = |W^T (z - m)|^2 / k + |residual|^2 /
  (C * residual_var)``, the PCA subspace (``W``, k components, whitened) plus the isotropic rest;
- image-kind multinomial logistic head: ``softmax(z @ kind_w.T + kind_b)`` over ``kind_classes``
  (``upper_limb``, ``lower_limb`` and the generated kinds ``chest``, ``photo``, ``document``, ``ct_mr``);
  ``P(outside) = 1 - P(upper_limb)``;
- body-part multinomial logistic head: ``softmax(z @ part_w.T + part_b)`` over ``part_classes``;
- thresholds calibrated on valid data: ``density_threshold``, ``kind_threshold`` (on ``P(outside)``).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Heads", "HeadsError", "heads_for", "predictor_heads", "heads_path", "save_heads", "load_heads",
           "sha256_bytes"]

UPPER_KIND = "upper_limb"
"""The one in-scope class of the image-kind head."""
_STRING_FIELDS = ("checkpoint_sha256", "part_classes", "kind_classes")


class HeadsError(ValueError):
    """Heads file missing its record, changed since it was written, or fitted on another checkpoint."""

@dataclass(frozen=True)
class Heads:
    """Fitted heads for one checkpoint (see the module notes for the formulas)."""

    checkpoint_sha256: str
    mu: np.ndarray
    sd: np.ndarray
    centre: np.ndarray
    components: np.ndarray
    """(C, k): PCA directions divided by the square root of their variance (whitened)."""
    residual_var: float
    density_threshold: float
    kind_classes: tuple[str, ...]
    kind_w: np.ndarray
    kind_b: np.ndarray
    kind_threshold: float
    part_classes: tuple[str, ...]
    part_w: np.ndarray
    part_b: np.ndarray

    def standardise(self, features: np.ndarray) -> np.ndarray:
        """(N, C) features -> z-scores with the training mean and spread."""
        return (np.asarray(features, dtype=np.float64) - self.mu) / self.sd

    def density(self, features: np.ndarray) -> np.ndarray:
        """(N,) squared distance from the upper-limb radiographs (about 1 for a typical one)."""
        z = self.standardise(features) - self.centre
        proj = z @ self.components
        basis = self.components / np.linalg.norm(self.components, axis=0, keepdims=True)
        residual = z - (z @ basis) @ basis.T
        k, c = self.components.shape[1], z.shape[1]
        return (np.sum(proj ** 2, axis=1) / k + np.sum(residual ** 2, axis=1) / (c * self.residual_var)) / 2.0

    def kinds(self, features: np.ndarray) -> np.ndarray:
        """(N, K) image-kind probabilities over `kind_classes`."""
        return _softmax(self.standardise(features) @ self.kind_w.T + self.kind_b)

    def outside(self, features: np.ndarray) -> np.ndarray:
        """(N,) probability that the image is not an upper-limb radiograph (1 - P(upper_limb))."""
        return self.outside_of(self.kinds(features))

    def outside_of(self, kinds: np.ndarray) -> np.ndarray:
        """(N,) 1 - P(upper_limb) of image-kind probabilities already computed by `kinds`."""
        return 1.0 - kinds[:, self.kind_classes.index(UPPER_KIND)]

    def parts(self, features: np.ndarray) -> np.ndarray:
        """(N, K) body-part probabilities over `part_classes`."""
        return _softmax(self.standardise(features) @ self.part_w.T + self.part_b)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

def heads_path(checkpoint: str | Path) -> Path:
    """``<folder>/<stem>.heads.npz`` beside a checkpoint file."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.heads.npz")

def _to_bytes(heads: Heads) -> bytes:
    arrays: dict[str, Any] = {}
    for f in fields(Heads):
        value = getattr(heads, f.name)
        arrays[f.name] = np.asarray(value, dtype=np.str_) if f.name in _STRING_FIELDS \
            else np.asarray(value, dtype=np.float64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()

def save_heads(heads: Heads, path: str | Path) -> str:
    """Write the heads file; returns its sha256 (to record in the index or the fit report)."""
    data = _to_bytes(heads)
    Path(path).write_bytes(data)
    return sha256_bytes(data)

def load_heads(path: str | Path, *, expected_sha256: str, checkpoint_sha256: str | None) -> Heads:
    """Read and verify a heads file (sha256, and that it belongs to `checkpoint_sha256`)."""
    path = Path(path)
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if not expected_sha256 or actual != expected_sha256.lower():
        raise HeadsError(f"{path.name}: sha256 mismatch (expected {expected_sha256}, file has {actual}); "
                         "refusing to use it")
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        missing = [f.name for f in fields(Heads) if f.name not in stored.files]
        if missing:
            raise HeadsError(f"{path.name}: written by an older fit-heads (no {', '.join(missing)}); "
                             "run fit-heads again")
        values = {f.name: stored[f.name] for f in fields(Heads)}
    owner = str(values["checkpoint_sha256"])
    if checkpoint_sha256 and owner != checkpoint_sha256:
        raise HeadsError(f"{path.name}: fitted on another checkpoint (sha256 {owner[:12]}...); run fit-heads again")
    kwargs: dict[str, Any] = {}
    for f in fields(Heads):
        value = values[f.name]
        if f.name == "checkpoint_sha256":
            kwargs[f.name] = owner
        elif f.name in ("part_classes", "kind_classes"):
            kwargs[f.name] = tuple(str(v) for v in value.tolist())
        elif value.ndim == 0:
            kwargs[f.name] = float(value)
        else:
            kwargs[f.name] = value.astype(np.float64)
    return Heads(**kwargs)

def _recorded_sha(checkpoint: Path) -> str | None:
    """The heads' sha256 recorded in the folder's index.json entry for this file, else in the fit report."""
    index = checkpoint.parent / "index.json"
    if index.is_file():
        try:
            models = json.loads(index.read_text()).get("models", {})
        except (OSError, ValueError):
            models = {}
        for entry in models.values():
            if entry.get("file") == checkpoint.name and entry.get("heads_sha256"):
                return str(entry["heads_sha256"])
    report = checkpoint.with_name(f"{checkpoint.stem}.heads.json")
    if report.is_file():
        try:
            return str(json.loads(report.read_text()).get("heads_sha256") or "") or None
        except (OSError, ValueError):
            return None
    return None


def heads_for(checkpoint: str | Path, checkpoint_sha256: str | None) -> tuple[Heads | None, str | None]:
    """(heads, None) when the checkpoint has verified heads; (None, why) otherwise (no file is not a problem)."""
    checkpoint = Path(checkpoint)
    path = heads_path(checkpoint)
    if not path.is_file():
        return None, None
    expected = _recorded_sha(checkpoint)
    if expected is None:
        return None, f"{path.name}: no sha256 recorded for it (index.json or {checkpoint.stem}.heads.json); not used"
    try:
        return load_heads(path, expected_sha256=expected, checkpoint_sha256=checkpoint_sha256), None
    except (HeadsError, OSError, ValueError, KeyError) as error:
        return None, str(error)


def predictor_heads(predictor: Any) -> tuple[Heads | None, str | None]:
    """`heads_for` a `Predictor`'s first model (an ensemble's heads belong to its first member)."""
    loaded = predictor.loaded[0]
    return heads_for(loaded.path, loaded.sha256)
