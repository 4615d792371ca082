"""What a run leaves behind: the per-epoch log, the resumable last checkpoint, and at the end the
shipped checkpoint with its card (calibration temperature, thresholds, sources with licences).
"""
from __future__ import annotations

import copy
import csv
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mura_core.models.checkpoints import FORMAT, CheckpointError, ModelCard, render_card_markdown, save_checkpoint
from mura_core.models.weights import REPO_ROOT, WEIGHTS_DIR, register_weights
from mura_core.models.registry import get_arch
from mura_core.data.sources import source_name
from mura_core.training.cache import ImageCache
from mura_core.training.config import TrainConfig

__all__ = ["TrainResult", "RESUME_FORMAT", "default_last_path", "backbone_parameters", "write_log",
           "save_last", "load_resume", "source_licence", "finish"]

RESUME_FORMAT = "mura_core.resume/2"
MIN_PER_CLASS_FOR_OWN_THRESHOLD = 10

_LICENCES = {
    "bone-fracture-xr": "bone-fracture-xr (Roboflow Universe 'Bone Fracture Detection' v4), CC BY 4.0, "
                        "credit: Roboflow Universe contributors",
    "fracatlas": "FracAtlas (Abedeen et al., Scientific Data 10, 521, 2023), CC BY 4.0, credit: the FracAtlas authors",
    "mura": "MURA v1.1, Stanford AIMI research use agreement (non-commercial)",
}


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    sha256: str | None
    card: ModelCard | None
    history: list[dict[str, Any]]
    best_epoch: int
    interrupted: bool = False
    last: Path | None = None


def default_last_path(out: str | Path) -> Path:
    """Where the resumable last-epoch checkpoint goes: runs/NAME.last.pt for weights/, else beside out."""
    out = Path(out)
    try:
        out.resolve().relative_to(WEIGHTS_DIR.resolve())
        return REPO_ROOT / "runs" / f"{out.stem}.last.pt"
    except ValueError:
        return out.with_name(f"{out.stem}.last.pt")


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The pretrained part: `model.backbone`, else everything but the last Linear layer."""
    model = getattr(model, "module", model)
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return list(backbone.parameters())
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    head_ids = {id(p) for p in head.parameters()}
    return [p for p in model.parameters() if id(p) not in head_ids]


def write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """The per-epoch log as CSV (written atomically)."""
    if not history:
        return
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


def source_licence(data: str | Path) -> str:
    """The licence credit of a known source, from its folder name."""
    text = str(Path(data).resolve()).lower()
    for key, licence in _LICENCES.items():
        if key in text:
            return licence
    return f"{source_name(data)}: licence unknown (pass --licence)"


def _recipe(config: TrainConfig) -> dict[str, Any]:
    recipe = {k: v for k, v in asdict(config).items()
              if k not in {"out", "last", "resume", "register", "default", "name", "notes", "progress",
                           "licence", "cache_dir", "extra"}}
    if not config.teacher:  # the distillation settings mean nothing without a teacher
        for key in ("teacher", "distill_weight", "distill_temperature", "feature_distill_weight"):
            recipe.pop(key)
    recipe["image_size"] = config.resolved_image_size()
    recipe["pretrained"] = config.resolved_pretrained()
    return recipe


def _training_data(config: TrainConfig, train: ImageCache, valid: ImageCache) -> str:
    """One line per source: images and classes per split, and the split rule."""
    lines = []
    for data in config.data:
        name = source_name(data)
        counts = []
        for split, cache in ((config.split_train, train), (config.split_valid, valid)):
            mask = np.asarray([s == name for s in cache.sources])
            n, n_abn = int(mask.sum()), int(cache.labels.numpy()[mask].sum())
            counts.append(f"split '{split}' {n} images ({n_abn} abnormal, {n - n_abn} normal)")
        lines.append(f"{name}: {'; '.join(counts)}; {_split_rule(data)}")
    return "\n".join(lines) + (f"\nTraining used split '{config.split_train}'; split '{config.split_valid}' chose "
                               "the epoch, the calibration temperature and the thresholds.")


def _split_rule(data: str) -> str:
    if "fracatlas" in str(data).lower():
        try:
            from mura_core.data.fracatlas import SPLIT_RULE

            return f"split rule: {SPLIT_RULE}"
        except ImportError:
            return "split rule: see the FracAtlas reader"
    return "split as published in the source"


def make_card(config: TrainConfig, train: ImageCache, valid: ImageCache, extra: dict[str, Any],
              thresholds: dict[str, float], metrics: dict[str, Any], notes: list[str],
              temperature: float = 1.0) -> ModelCard:
    """The card of this run (recipe, data, licences, thresholds, training-time metrics)."""
    spec = get_arch(config.arch)
    licence = config.licence or "; ".join(source_licence(d) for d in config.data)
    recipe = _recipe(config)
    recipe.update(extra)
    return ModelCard(name=config.resolved_name(), arch=config.arch, image_size=config.resolved_image_size(),
                     mean=spec.mean, std=spec.std, thresholds=thresholds, temperature=temperature,
                     training_data=_training_data(config, train, valid), licence=licence, recipe=recipe,
                     metrics=metrics, notes="\n\n".join(n for n in notes if n))


def save_last(path: Path, run: Any, state: Any) -> None:
    """A usable checkpoint (load_checkpoint reads it) that also carries the state needed to resume."""
    model = getattr(run.scored_model, "module", run.scored_model)
    card = make_card(run.config, run.train_cache, run.valid_cache, {"epochs_run": state.epoch},
                     {"default": 0.5}, {}, [])
    resume = {"format": RESUME_FORMAT, "arch": run.config.arch, "epoch": state.epoch,
              "best_epoch": state.best_epoch,
              "best_score": state.best_score if np.isfinite(state.best_score) else 1e300, "stale": state.stale,
              "best_state": state.best_state or {}, "history": state.history,
              "model": {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()},
              "ema": run.ema.state_dict() if run.ema is not None else {},
              "optimizer": run.optimizer.state_dict(), "iter_scheduler": run.iter_scheduler.state_dict(),
              "plateau": run.plateau.state_dict(), "rng": torch.get_rng_state()}
    payload = {"format": FORMAT, "dtype": "float32",
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "card": card.to_dict(), "resume": resume}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_resume(path: Path, config: TrainConfig) -> dict[str, Any]:
    """The resume state saved by `save_last` (weights_only); CheckpointError when absent or foreign."""
    if not path.is_file():
        raise CheckpointError(f"--resume: no last checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"--resume: cannot read {path}: {exc}") from exc
    resume = payload.get("resume") if isinstance(payload, dict) else None
    if not isinstance(resume, dict) or resume.get("format") != RESUME_FORMAT:
        raise CheckpointError(f"--resume: {path} holds no resume state")
    if resume.get("arch") != config.arch:
        raise CheckpointError(f"--resume: {path} is a {resume.get('arch')!r} run, not {config.arch!r}")
    return resume


def _rounded_to_half(model: nn.Module) -> nn.Module:
    """A copy of the model whose floating weights went through float16 (what half storage ships)."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(copy_.parameters()) + list(copy_.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return copy_.eval()


def _valid_logits(run: Any, model: nn.Module) -> np.ndarray:
    from mura_core.training.evaluation import predict_logits

    spec = get_arch(run.config.arch)
    return predict_logits(model, run.valid_cache.images, spec.mean, spec.std, run.config.batch_size * 2,
                          run.device).numpy()


def _storage(run: Any, model: nn.Module) -> tuple[nn.Module, bool, np.ndarray, dict[str, Any]]:
    """float16 storage when it moves the valid AUC by at most the tolerance (--half auto)."""
    from mura_core.evaluation.metrics import binary_metrics

    labels = run.valid_cache.labels.numpy()
    logits32 = _valid_logits(run, model)
    half_model = _rounded_to_half(model)
    logits16 = _valid_logits(run, half_model)
    auc32 = binary_metrics(labels, 1 / (1 + np.exp(-logits32)), 0.5)["auc"]
    auc16 = binary_metrics(labels, 1 / (1 + np.exp(-logits16)), 0.5)["auc"]
    if run.config.half == "auto":
        half = auc32 is not None and auc16 is not None and abs(auc32 - auc16) <= run.config.half_tolerance
    else:
        half = run.config.half == "yes"
    return (half_model if half else model), half, (logits16 if half else logits32), \
        {"auc_float32": auc32, "auc_float16": auc16}


def finish(run: Any, model: nn.Module, state: Any, elapsed: float, decode_s: float, last_path: Path) -> TrainResult:
    """Calibrate and fit thresholds on valid, then write checkpoint + card (+ index entry)."""
    from mura_core.evaluation.metrics import binary_metrics, fit_thresholds
    from mura_core.training.evaluation import fit_temperature, per_source_auc

    config, valid = run.config, run.valid_cache
    model.eval()
    shipped, half, logits, precision = _storage(run, model)
    labels = valid.labels.numpy()
    temperature = fit_temperature(logits, labels)
    probs = torch.sigmoid(torch.as_tensor(np.asarray(logits, dtype=np.float64) / temperature)).numpy()
    scope = np.asarray(valid.in_scope, dtype=bool)
    thresholds = fit_thresholds(labels[scope], probs[scope], np.asarray(valid.body_parts, dtype=object)[scope],
                                min_per_class=MIN_PER_CLASS_FOR_OWN_THRESHOLD)
    pooled = binary_metrics(labels[scope], probs[scope], thresholds["default"])
    metrics = {"split": config.split_valid, "note": "training-time figures on the valid split that also chose the "
               "epoch and thresholds; the evaluate report is the source of truth", "n": pooled["n"],
               "auc": pooled["auc"], "per_source_auc": per_source_auc(labels, probs, valid.sources, valid.in_scope),
               **precision}
    epoch_times = [row["epoch_s"] for row in state.history]
    extra = {"epochs_run": len(state.history), "best_epoch": state.best_epoch, "device": str(run.device),
             "world_size": run.dist.world, "torch": torch.__version__, "storage": "float16" if half else "float32",
             "seconds_total": round(elapsed, 1), "seconds_decode": round(decode_s, 1),
             "seconds_per_epoch": round(float(np.mean(epoch_times)), 1) if epoch_times else None,
             "threshold_fitted_on": f"{config.split_valid} (in-scope images, after calibration)",
             "threshold_method": "youden", "min_per_class_for_own_threshold": MIN_PER_CLASS_FOR_OWN_THRESHOLD,
             **config.extra}
    notes = [config.notes] if config.notes else []
    if run.train_cache.skipped or valid.skipped:
        notes.append(f"Skipped unreadable images: {len(run.train_cache.skipped)} train, {len(valid.skipped)} valid.")
    card = make_card(config, run.train_cache, valid, extra, thresholds, metrics, notes, temperature)
    out = Path(config.out)
    sha = save_checkpoint(out, shipped, card, half=half)
    out.with_suffix(".md").write_text(render_card_markdown(card, sha256=sha))
    if config.register:
        register_weights(out, card, sha, default=config.default, weights_dir=out.parent)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {'float16' if half else 'float32'}) best epoch "
          f"{state.best_epoch}: in-scope valid AUC {pooled['auc'] or float('nan'):.4f}, temperature {temperature:.3f}, "
          f"threshold {thresholds['default']:.3f}", file=sys.stderr)
    return TrainResult(out=out, sha256=sha, card=card, history=state.history, best_epoch=state.best_epoch,
                       last=last_path)
