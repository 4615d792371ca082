"""One checkpoint format for every model: weights + a model card, loadable with `weights_only=True`.

A checkpoint file is a plain dict ``{"format", "dtype", "state_dict": {name: tensor}, "card": {...}}``
holding only tensors and primitives, so ``torch.load(path, weights_only=True)`` reads it and no code
can run on load. `weights/index.json` lists the shipped files with their sha256, checked on every load::

    {"default": "efficientnet_lite0",
     "models": {"efficientnet_lite0": {"file": "efficientnet_lite0.pt", "sha256": "...",
                                       "arch": "efficientnet_lite0", "description": "..."}},
     "ensembles": {"ens": ["efficientnet_lite0", "hybrid"]}}

Usage::

    sha = save_checkpoint("weights/x.pt", model, card, half=True)
    loaded = load_checkpoint("weights/x.pt", expected_sha256=sha)   # LoadedModel(model, card, sha256, path)
    loaded = load_weights()                                          # the index's default
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mura_core.models.card import CheckpointError, ModelCard, code_version, utc_now
from mura_core.models.registry import create_model, get_arch

__all__ = [
    "FORMAT",
    "CheckpointError",
    "ModelCard",
    "LoadedModel",
    "sha256_file",
    "save_checkpoint",
    "load_checkpoint",
    "render_card_markdown",
    "update_card",
    "code_version",
    "utc_now",
]

FORMAT = "mura_core.checkpoint/1"


@dataclass
class LoadedModel:
    """A model in eval mode with its card, the file's sha256 and where it came from."""

    model: nn.Module
    card: ModelCard
    sha256: str
    path: Path


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, card: ModelCard, *, half: bool = False) -> str:
    """Write weights + card atomically; returns the file's sha256.

    Args:
        path: the .pt file to write (parent folders are created).
        model: the model (a DDP wrapper is unwrapped).
        card: its :class:`ModelCard`.
        half: store floating-point tensors as float16 (cast back to float32 on load).
    """
    model = getattr(model, "module", model)
    state = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor.clone()
    payload = {"format": FORMAT, "dtype": "float16" if half else "float32",
               "state_dict": state, "card": card.to_dict()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return sha256_file(path)


def _read_payload(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True, every failure turned into a CheckpointError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, pickled objects refused by weights_only
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt, truncated, or holds objects "
                              f"that weights_only loading refuses): {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mura_core checkpoint (expected format {FORMAT!r})")
    if not isinstance(payload.get("state_dict"), dict) or not isinstance(payload.get("card"), dict):
        raise CheckpointError(f"{path}: checkpoint lacks its state_dict or card")
    return payload


def load_checkpoint(path: str | Path, *, expected_sha256: str | None = None,
                    device: str | torch.device = "cpu") -> LoadedModel:
    """Load a checkpoint written by :func:`save_checkpoint` (only ever with weights_only=True).

    Raises CheckpointError when the file is missing, its sha256 differs from `expected_sha256`,
    it cannot be read, or its weights do not fit the architecture its card names.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    sha = sha256_file(path)
    if expected_sha256 and sha != expected_sha256.lower():
        raise CheckpointError(f"{path}: sha256 mismatch (expected {expected_sha256}, file has {sha}); "
                              "the file was changed or corrupted, refusing to load it")
    payload = _read_payload(path)
    card = ModelCard.from_dict(payload["card"])
    try:
        get_arch(card.arch)
        model = create_model(card.arch)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit architecture {card.arch!r}: "
                              f"{str(exc).splitlines()[0]}") from exc
    model.eval().to(device)
    return LoadedModel(model=model, card=card, sha256=sha, path=path)


def update_card(path: str | Path, changes: dict[str, Any], *, expected_sha256: str | None = None) -> str:
    """Rewrite a checkpoint's card fields (e.g. notes or metrics added later); weights and dtype are kept.

    Returns the new sha256 (update weights/index.json with it, e.g. via :func:`register_weights`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if expected_sha256 and sha256_file(path) != expected_sha256.lower():
        raise CheckpointError(f"{path}: sha256 mismatch, refusing to rewrite it")
    payload = _read_payload(path)
    card = ModelCard.from_dict(payload["card"])
    unknown = set(changes) - {f.name for f in fields(ModelCard)}
    if unknown:
        raise CheckpointError(f"unknown card fields: {', '.join(sorted(unknown))}")
    for key, value in changes.items():
        setattr(card, key, value)
    card.__post_init__()
    payload = {**payload, "card": card.to_dict()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return sha256_file(path)


# --------------------------------------------------------------------------------------------------
# Model card as Markdown
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return "—" if value is None else str(value)


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> list[str]:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    return lines + [f"| {k} | {_fmt(v)} |" for k, v in rows]


def render_card_markdown(card: ModelCard | dict[str, Any], sha256: str | None = None, *,
                         metrics_section: str | None = None, summary: str | None = None) -> str:
    """The model card as Markdown: what it is, architecture, data and licence, recipe, metrics, thresholds, limits.

    `summary` (the index's description of the checkpoint) says in words what these weights are.

    `metrics_section` (markdown quoting the shipped evaluate report, `evaluation.reports.metrics_markdown`)
    replaces the card's own training-time metrics, so a shipped card shows the same figures as the app.
    """
    if isinstance(card, dict):
        card = ModelCard.from_dict(card)
    sha = sha256 or card.extra.get("sha256")
    metrics = dict(card.metrics)
    per_part = metrics.pop("per_body_part", None)
    lines = [f"# Model card: {card.name}", ""]
    if summary:
        lines += [f"**These weights**: {summary.rstrip('.')}.", ""]
    try:
        lines += [f"**Architecture**: `{card.arch}` — {get_arch(card.arch).description}.", ""]
    except ValueError:
        lines += [f"**Architecture**: `{card.arch}`.", ""]
    lines += [f"- Input: {card.image_size}x{card.image_size} px, grey copied to 3 channels, normalised with "
              f"mean {_fmt(card.mean)} and std {_fmt(card.std)}; output: one logit (sigmoid = P(abnormal)).",
              f"- Created: {card.created}; code version: {card.code_version}.",
              f"- sha256: `{sha}`" if sha else "- sha256: see weights/index.json", "",
              "## Training data and licence", "", card.training_data or "—", "",
              f"Licence of the data: {card.licence or '—'}.", "",
              "## Recipe", ""]
    lines += _table(sorted(card.recipe.items()), ("setting", "value")) + [""]
    if metrics_section is not None:
        lines += [metrics_section]
        per_part = None
    else:
        lines += ["## Metrics (validation split)", ""]
        lines += _table([(k, v) for k, v in metrics.items() if not isinstance(v, dict)], ("metric", "value"))
        lines += [""]
    if per_part:
        cols = sorted({c for row in per_part.values() for c in row})
        lines += ["### Per body part", "", "| body part | " + " | ".join(cols) + " |",
                  "|---|" + "---|" * len(cols)]
        lines += [f"| {part} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |"
                  for part, row in per_part.items()]
        lines += [""]
    lines += ["## Calibration and thresholds (fitted on the validation split)", "",
              f"Probabilities are calibrated by temperature scaling: P(abnormal) = sigmoid(logit / "
              f"{card.temperature:.3f}). A body part or region gets its own threshold only where the valid split "
              "had enough normal and abnormal images of it; every other one uses the `default` threshold.", ""]
    lines += _table(sorted(card.thresholds.items()), ("body part", "P(abnormal) threshold")) + [""]
    lines += ["## Notes and limitations", ""]
    if card.notes:
        lines += [card.notes, ""]
    if metrics and metrics.get("split") and metrics.get("split") == card.recipe.get("threshold_fitted_on"):
        lines += [f"The metrics above are on the '{metrics['split']}' split, which also chose the epoch and "
                  "fitted the thresholds: they are optimistic, and there is no held-out test split.", ""]
    lines += ["## Intended use", "",
              "A second reader and teaching aid for upper-extremity radiographs. Not a medical device and "
              "not for diagnosis: every output must be checked by a qualified reader.", ""]
    return "\n".join(lines)
