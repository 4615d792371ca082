"""The model card and the checkpoint error: what a checkpoint says about itself, readable without torch.

`ModelCard` travels inside every checkpoint (`models.checkpoints`) and inside every evaluate report
(``report.json`` "model" -> "card"), so the app's Home page can describe the model before torch is imported.
"""
from __future__ import annotations

import datetime as _dt
import math
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "ModelCard", "code_version", "mean_thresholds", "utc_now"]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, tampered with (sha256 mismatch) or of the wrong shape."""


def utc_now() -> str:
    """The current UTC time as ISO 8601 (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def code_version() -> str:
    """`mura_core` version plus the git commit of the repository when available (`0.1.0+abc1234`)."""
    from mura_core import __version__

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def _plain(value: Any) -> Any:
    """`value` as JSON-like primitives (numpy scalars, tuples, Paths, enums converted) for weights_only."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # str subclasses (torch.__version__) would not pass weights_only
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k.value if hasattr(k, "value") else k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):  # Enum
        return value.value
    if hasattr(value, "item"):  # numpy / torch scalar
        return _plain(value.item())
    raise TypeError(f"cannot store {type(value).__name__} in a model card")


@dataclass
class ModelCard:
    """Everything a reader needs to use and judge one checkpoint (after timm's PretrainedCfg)."""

    name: str
    arch: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    thresholds: dict[str, float] = field(default_factory=lambda: {"default": 0.5})
    """Body part name -> probability threshold; "default" is always present."""
    temperature: float = 1.0
    """Calibration: P(abnormal) = sigmoid(logit / temperature), fitted on the valid splits."""
    training_data: str = ""
    licence: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=utc_now)
    code_version: str = field(default_factory=code_version)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.thresholds = {str(k): float(v) for k, v in (self.thresholds or {}).items()}
        self.thresholds.setdefault("default", 0.5)

    def threshold_for(self, body_part: str | None) -> float:
        """The threshold for a body part (enum or name), falling back to "default"."""
        key = getattr(body_part, "value", body_part)
        return self.thresholds.get(str(key), self.thresholds["default"]) if key else self.thresholds["default"]

    def to_dict(self) -> dict[str, Any]:
        """Plain primitives only, so the card survives `torch.load(weights_only=True)` and JSON."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        """Inverse of :meth:`to_dict`; unknown keys go to `extra` (newer cards stay readable)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        missing = [k for k in ("name", "arch", "image_size", "mean", "std") if k not in kwargs]
        if missing:
            raise CheckpointError(f"model card lacks {', '.join(missing)}")
        return cls(**kwargs, extra=extra)


def mean_thresholds(members: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """An ensemble's thresholds: key-by-key mean of its members' over the keys every member has ("default"
    always, a member without one counting as 0.5)."""
    keys = set.intersection(*(set(m) for m in members)) | {"default"}
    return {k: float(sum(m.get(k, m.get("default", 0.5)) for m in members) / len(members)) for k in sorted(keys)}
