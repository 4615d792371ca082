"""mura_core: bone X-ray abnormality scoring and explanation, after the Stanford MURA work.

The data flows one way, one package per stage; a module imports only from stages to its left:
files -> studies (`data`) -> decoded images and tensors (`imaging`) -> model (`models`) -> probabilities
and heat maps (`explain`) -> metrics and reports (`evaluation`) -> pages (`app`, Streamlit only there).
`commands` parses command-line arguments and calls these functions.

The names a notebook needs are importable from here; they load on first use, so `import mura_core`
stays cheap (no torch until a model is needed):

    >>> from mura_core import open_dataset, Predictor          # doctest: +SKIP
    >>> index = open_dataset("../shared/data/bone-fracture-xr", split="valid")  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_FACE: dict[str, str] = {
    "BodyPart": "mura_core.data.studies",
    "Study": "mura_core.data.studies",
    "View": "mura_core.data.studies",
    "DatasetIndex": "mura_core.data.studies",
    "open_dataset": "mura_core.data.sources",
    "study_from_uploads": "mura_core.data.uploads",
    "decode_image": "mura_core.imaging.decode",
    "decode_view": "mura_core.imaging.decode",
    "DecodeError": "mura_core.imaging.decode",
    "list_models": "mura_core.models.registry",
    "create_model": "mura_core.models.registry",
    "load_weights": "mura_core.models.weights",
    "list_weights": "mura_core.models.weights",
    "Predictor": "mura_core.explain.predictor",
    "overlay": "mura_core.explain.cams",
    "evaluate_dataset": "mura_core.evaluation.evaluate",
    "load_report": "mura_core.evaluation.reports",
    "find_reports": "mura_core.evaluation.reports",
}
"""Public name -> the module that defines it."""

__all__ = sorted(_FACE)


def __getattr__(name: str) -> Any:
    """Import a face name's module on first use."""
    if name not in _FACE:
        raise AttributeError(f"module 'mura_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_FACE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_FACE])
