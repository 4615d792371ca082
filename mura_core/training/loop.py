"""The training loop: one or more sources in, the best epoch's (EMA) weights out.

    python -m mura_core train --data ../shared/data/FracAtlas --data ../shared/data/bone-fracture-xr \\
        --arch efficientnet_lite0 --augment strong --source-balance 0.5 --ema-decay 0.998 \\
        --select source_auc --out weights/NAME.pt

Defaults follow Rajpurkar et al. (MURA, 2017): weighted BCE with per-body-part class weights from the
training split (here per source and body part, falling back to the source's, then the global weights),
Adam lr 1e-4, lr / 10 when the validation loss plateaus, lateral flips and rotations up to 30 degrees,
the epoch with the lowest validation loss kept, early stopping. Every image is decoded ONCE into a uint8
cache (`cache.py`); augmentation works on small tensors (`augment.py`). The same command runs under
`torchrun` (DistributedDataParallel: NCCL on GPUs, gloo on CPU; only rank 0 writes files).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from mura_core.explain.rollout import has_attention
from mura_core.models.checkpoints import CheckpointError
from mura_core.models.registry import create_model, get_arch
from mura_core.models.weights import load_weights
from mura_core.training import distributed as dist_utils
from mura_core.training.augment import augment_batch, box_masks, sample_generator
from mura_core.training.box_loss import FeatureCapture, RolloutCapture, box_attention_loss, cam_from_features
from mura_core.training.cache import ImageCache, load_sources
from mura_core.training.config import TrainConfig
from mura_core.training.distill import FeatureHint, Teacher, distillation_loss, load_teacher, teach
from mura_core.training.evaluation import (
    channels_last_on,
    normalise,
    per_source_auc,
    predict_logits,
    selection_score,
)
from mura_core.training.outputs import TrainResult, default_last_path, finish, load_resume, save_last, write_log
from mura_core.training.windows import draw_window
from mura_core.training.weighting import (
    EpochSampler,
    class_weight_table,
    focal_loss,
    sample_weights,
    smooth_labels,
    source_sampling_weights,
    weight_keys,
    weighted_bce,
)

__all__ = ["train", "TrainState"]


_WINDOW_STREAM = 1
"""`augment.sample_generator`'s stream for placing training windows (the augmentation uses stream 0)."""


class _IndexDataset(torch.utils.data.Dataset):
    """Cache indices -> (augmented grey image or window of it, label, index, box mask); seeded per (seed, epoch,
    index)."""

    def __init__(self, cache: ImageCache, config: TrainConfig) -> None:
        self.cache, self.config, self.epoch = cache, config, 0

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
        c = self.config
        if c.windows:
            window, label = draw_window(self.cache.images[index], float(self.cache.labels[index]),
                                        self.cache.boxes[index],
                                        sample_generator(c.seed, self.epoch, index, _WINDOW_STREAM), c.windows)
            image = augment_batch(window[None], [index], c.seed, self.epoch, c.max_rotation, c.hflip, c.augment,
                                  crop=False)[0]
            return image, torch.tensor(label, dtype=torch.float32), index, torch.zeros(0)
        args = (self.cache.images[index:index + 1], [index], c.seed, self.epoch, c.max_rotation, c.hflip, c.augment)
        if c.box_loss_weight <= 0:
            return augment_batch(*args)[0], self.cache.labels[index], index, torch.zeros(0)
        masks = box_masks([self.cache.boxes[index]], self.cache.images.shape[-1])
        img, mask = augment_batch(*args, masks=masks)
        return img[0], self.cache.labels[index], index, mask[0]


@dataclass
class TrainState:
    """What changes from epoch to epoch (and what a resume restores)."""

    epoch: int = 0
    best_epoch: int = -1
    best_score: float = math.inf
    stale: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _optimizer(model: nn.Module, config: TrainConfig, extra: list[nn.Parameter] | None = None
               ) -> torch.optim.Optimizer:
    """Adam/AdamW/SGD with the backbone at lr * backbone_lr_scale and the rest (and `extra`, parameters
    that train beside the model but never ship, such as the feature hint's regressor) at lr."""
    from mura_core.training.outputs import backbone_parameters

    backbone_ids = {id(p) for p in backbone_parameters(model)}
    groups = [{"params": [p for p in model.parameters() if id(p) in backbone_ids],
               "lr": config.lr * config.backbone_lr_scale},
              {"params": [p for p in model.parameters() if id(p) not in backbone_ids] + list(extra or []),
               "lr": config.lr}]
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True,
                               weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def _lr_lambda(config: TrainConfig, steps_per_epoch: int):
    """Per-iteration multiplier: linear warm-up, then cosine to 0 (scheduler 'cosine') or flat."""
    warm = int(round(config.warmup_epochs * steps_per_epoch))
    total = max(config.epochs * steps_per_epoch, 1)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if config.scheduler == "cosine":
            progress = min((step - warm) / max(total - warm, 1), 1.0)
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0
    return factor


def _iterate(loader: Any, total: int, enabled: bool, desc: str) -> Iterator[Any]:
    if not enabled:
        yield from loader
        return
    from tqdm import tqdm

    yield from tqdm(loader, total=total, desc=desc, unit="batch", leave=False,
                    mininterval=0.5 if sys.stderr.isatty() else 30)


@dataclass
class _Run:
    """Everything one run holds while it trains."""

    config: TrainConfig
    device: torch.device
    dist: Any
    model: nn.Module
    ema: Any
    optimizer: torch.optim.Optimizer
    iter_scheduler: Any
    plateau: Any
    scaler: Any
    train_cache: ImageCache
    valid_cache: ImageCache
    table: dict[str, tuple[float, float]]
    loader: Any
    sampler: EpochSampler
    dataset: _IndexDataset
    teacher: Teacher | None = None
    hint: FeatureHint | None = None

    @property
    def scored_model(self) -> nn.Module:
        """The model to evaluate and ship: the EMA average when on, else the trained weights."""
        return self.ema.module if self.ema is not None else self.model


def _groups(cache: ImageCache, indices: list[int] | None = None) -> list[tuple[str, str]]:
    picked = range(len(cache)) if indices is None else indices
    return [weight_keys(cache.sources[i], cache.body_parts[i]) for i in picked]


def _mixed_precision(device: torch.device, amp: bool) -> Any:
    """``--amp``: float16 autocast (with a GradScaler) on CUDA; bf16 autocast on a CPU with bf16 in hardware
    (`models.devices.native_bf16`; about 2x an epoch of DenseNet-169 on the project's AMX Xeon), which needs no
    loss scaling; otherwise float32. Decided once per epoch: the context is entered batch after batch."""
    from mura_core.models.devices import bf16_autocast, native_bf16

    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return bf16_autocast(device, amp and device.type == "cpu" and native_bf16(device))


def _box_term(run: _Run, box_scores: Callable[[], torch.Tensor | None], masks: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
    """The weighted box-attention loss of this batch on the map `box_scores` gives for the latest forward (0 when
    the option is off or no map was captured)."""
    scores = box_scores() if run.config.box_loss_weight > 0 else None
    if scores is None:
        return torch.zeros((), device=run.device)
    return run.config.box_loss_weight * box_attention_loss(scores, masks.to(run.device), labels)


def _pooled_head(arch: str, model: nn.Module, option: str) -> tuple[nn.Module, torch.Tensor]:
    """The student's CAM layer (the map its head pools) and the head's weight; only pooled + Linear heads
    (classic CAM) have them, so `option` (the flag that needs them) is refused otherwise."""
    found = get_arch(arch).classic_cam(model)
    if found is None:
        raise ValueError(f"{option} needs a pooled + Linear head; {arch} has none")
    return found


def _box_on_rollout(run: _Run) -> bool:
    """True when the box loss reads the attention rollout: a transformer without a pooled + Linear head, and no
    feature hint (which needs that head)."""
    return (run.config.box_loss_weight > 0 and run.hint is None
            and get_arch(run.config.arch).classic_cam(run.model) is None and has_attention(run.model))


def _train_epoch(run: _Run, epoch: int, wrapped: nn.Module, frozen: bool) -> float:
    """One pass over the sampled training images; returns the mean training loss. Which map the box loss reads is
    decided here, once: the CAM of a pooled + Linear head (its layer captured once per forward, and shared with the
    feature hint), or a transformer's attention, rolled out after each forward."""
    capture = FeatureCapture()
    if run.config.box_loss_weight <= 0 and run.hint is None:
        return _train_batches(run, epoch, wrapped, frozen, capture, lambda: None)
    if _box_on_rollout(run):
        rollout = RolloutCapture()
        with rollout.on(run.model):
            return _train_batches(run, epoch, wrapped, frozen, capture, rollout.log_shares)

    def cam() -> torch.Tensor | None:
        weight = _pooled_head(run.config.arch, run.model, "--box-loss-weight")[1]
        return None if capture.features is None else cam_from_features(capture.features, weight)

    with capture.on(_pooled_head(run.config.arch, run.model, "--box-loss-weight without attention layers")[0]):
        return _train_batches(run, epoch, wrapped, frozen, capture, cam)


def _train_batches(run: _Run, epoch: int, wrapped: nn.Module, frozen: bool, capture: FeatureCapture,
                   box_scores: Callable[[], torch.Tensor | None]) -> float:
    config, spec = run.config, get_arch(run.config.arch)
    wrapped.train()
    if frozen:
        dist_utils.freeze_batchnorm(run.model)
    run.dataset.epoch = epoch
    run.sampler.set_epoch(epoch)
    total, count = 0.0, 0
    mixed_precision = _mixed_precision(run.device, config.amp)
    show = config.progress and run.dist.main
    for grey, labels, indices, masks in _iterate(run.loader, len(run.loader), show,
                                                 f"epoch {epoch + 1}/{config.epochs}"):
        grey, labels = grey.to(run.device, non_blocking=True), labels.to(run.device)
        x = normalise(grey, spec.mean, spec.std)
        if channels_last_on(run.device):
            x = x.contiguous(memory_format=torch.channels_last)
        weights = sample_weights(labels, _groups(run.train_cache, indices.tolist()), run.table).to(run.device)
        targets = smooth_labels(labels, config.label_smoothing)
        with mixed_precision:
            logits = wrapped(x)[:, 0].float()
        loss = (focal_loss(logits, targets, weights, config.focal_gamma) if config.loss == "focal"
                else weighted_bce(logits, targets, weights))
        if run.teacher is not None:
            taught = teach(run.teacher, grey, with_features=run.hint is not None)
            soft = distillation_loss(logits, taught.logits, weights, config.distill_temperature)
            loss = (1.0 - config.distill_weight) * loss + config.distill_weight * soft
            if run.hint is not None:
                loss = loss + config.feature_distill_weight * run.hint(capture.features, taught.features)
        loss = loss + _box_term(run, box_scores, masks, labels)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.iter_scheduler.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        total += float(loss.item()) * labels.shape[0]
        count += labels.shape[0]
    return total / max(count, 1)


def _validate(run: _Run) -> dict[str, Any]:
    """Valid loss, pooled AUC/kappa/F1 and per-source AUC of the scored model. On a CPU always in float32, the
    precision the viewer and the shipped reports score in: bf16 moves an EfficientNet-Lite's probabilities by
    up to 0.2 (README, Speed), enough to pick the wrong epoch. On CUDA under --amp in float16 autocast."""
    from mura_core.evaluation.metrics import binary_metrics

    spec, valid = get_arch(run.config.arch), run.valid_cache
    with _mixed_precision(run.device, run.config.amp and run.device.type == "cuda"):
        logits = predict_logits(run.scored_model, valid.images, spec.mean, spec.std, run.config.batch_size * 2,
                                run.device)
    val_weights = sample_weights(valid.labels, _groups(valid), run.table)
    val_loss = float(weighted_bce(logits, valid.labels, val_weights))
    probs = torch.sigmoid(logits).numpy()
    labels = valid.labels.numpy()
    pooled = binary_metrics(labels, probs, 0.5)
    sources = per_source_auc(labels, probs, valid.sources, valid.in_scope)
    return {"val_loss": val_loss, "val_auc": pooled["auc"], "val_kappa": pooled["kappa"], "val_f1": pooled["f1"],
            "source_auc": sources}


def _run_epoch(run: _Run, state: TrainState, epoch: int, wrapped: nn.Module, frozen: bool) -> dict[str, Any]:
    """Train one epoch, validate, keep the best weights; returns the log row."""
    t0 = time.time()
    train_loss = _train_epoch(run, epoch, wrapped, frozen)
    train_s = time.time() - t0
    m = _validate(run)
    val_loss = dist_utils.broadcast_float(m["val_loss"], run.dist, run.device)
    score = selection_score(run.config.select, val_loss, m["val_auc"], m["source_auc"])
    score = dist_utils.broadcast_float(score, run.dist, run.device)
    if run.config.scheduler == "plateau" and not frozen:
        run.plateau.step(val_loss)
    improved = score < state.best_score - 1e-6
    if improved:
        state.best_score, state.best_epoch, state.stale = score, epoch + 1, 0
        state.best_state = {k: v.detach().cpu().clone() for k, v in run.scored_model.state_dict().items()}
    else:
        state.stale += 1
    row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_auc": m["val_auc"],
           "val_kappa": m["val_kappa"], "val_f1": m["val_f1"], "lr": run.optimizer.param_groups[-1]["lr"],
           "frozen_backbone": frozen, "train_s": round(train_s, 1), "epoch_s": round(time.time() - t0, 1),
           "best": improved}
    row.update({f"auc_{name}": value for name, value in m["source_auc"].items()})
    return row


def _setup(config: TrainConfig, dist: Any, device: torch.device) -> _Run:
    """Decode the data, build the model, optimiser, schedulers, sampler and loader."""
    size = config.resolved_image_size()
    show = config.progress and dist.main
    train_cache = load_sources(config.data, config.split_train, size, cache_dir=config.cache_dir, progress=show)
    valid_cache = load_sources(config.data, config.split_valid, size, cache_dir=config.cache_dir, progress=show)
    table, _ = class_weight_table(train_cache.labels, _groups(train_cache), config.class_weights)
    start_from_imagenet = config.resolved_pretrained() and not config.init_from  # --init-from overwrites them
    model = create_model(config.arch, pretrained=start_from_imagenet, dropout=config.dropout,
                         pretrained_path=config.pretrained_path if start_from_imagenet else None).to(device)
    if config.init_from:
        state, config.extra["init_from_sha256"] = initial_weights(config.init_from, config.arch)
        load_initial(model, state)
    if channels_last_on(device):
        model = model.to(memory_format=torch.channels_last)
    teacher = _teacher(config, device)
    hint = _feature_hint(config, model, teacher, device)
    ema = None
    if config.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
    optimizer = _optimizer(model, config, None if hint is None else list(hint.parameters()))
    dataset = _IndexDataset(train_cache, config)
    weights = source_sampling_weights(train_cache.sources, config.source_balance) if config.source_balance else None
    sampler = EpochSampler(weights, len(train_cache), config.seed, dist.rank, dist.world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                         num_workers=config.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=config.workers > 0)
    iter_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, len(loader)))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                         patience=config.plateau_patience)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    return _Run(config, device, dist, model, ema, optimizer, iter_scheduler, plateau, scaler, train_cache,
                valid_cache, table, loader, sampler, dataset, teacher, hint)


def _teacher(config: TrainConfig, device: torch.device) -> Teacher | None:
    """--teacher loaded and frozen (its sha256 goes into the card's recipe), or None."""
    if not config.teacher:
        return None
    if not 0.0 <= config.distill_weight <= 1.0:
        raise ValueError(f"--distill-weight must be within 0..1, got {config.distill_weight}")
    teacher = load_teacher(config.teacher, device)
    config.extra["teacher_sha256"] = teacher.sha256
    return teacher


def _feature_hint(config: TrainConfig, model: nn.Module, teacher: Teacher | None,
                  device: torch.device) -> FeatureHint | None:
    """--feature-distill-weight's regressor from the student's last map to the teacher's, or None when off.
    Both need a pooled + Linear head (the map the head pools is the one copied)."""
    if config.feature_distill_weight <= 0:
        return None
    if teacher is None:
        raise ValueError("--feature-distill-weight needs a --teacher")
    _layer, head_weight = _pooled_head(config.arch, model, "--feature-distill-weight")
    if teacher.feature_layer is None:
        raise ValueError("--feature-distill-weight needs a teacher with a pooled + Linear head")
    return FeatureHint(int(head_weight.numel()), teacher.feature_channels).to(device)


_BACKBONE_CLASSIFIER = "_fc."
"""The classifier of a backbone architecture's checkpoint (`ArchSpec.backbone_arch`, an EfficientNet-Lite), which the
model built around it does not have."""


def initial_weights(name_or_path: str, arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """The float32 state dict and sha256 of the checkpoint to fine-tune from (an indexed name in the
    weights folder, sha256-checked, or a file); a checkpoint of the arch's `ArchSpec.same_weights_as` gives all of
    them; for an arch with an `ArchSpec.backbone_arch`, a checkpoint of that arch gives the ``backbone.`` weights
    alone (its own classifier dropped). CheckpointError when unreadable or of another arch."""
    loaded = load_weights(name_or_path)
    if loaded.card.arch in (arch, get_arch(arch).same_weights_as):
        return loaded.model.state_dict(), loaded.sha256
    if loaded.card.arch == get_arch(arch).backbone_arch:
        return ({f"backbone.{k}": v for k, v in loaded.model.state_dict().items()
                 if not k.startswith(_BACKBONE_CLASSIFIER)},
                loaded.sha256)
    raise CheckpointError(f"--init-from {name_or_path}: a {loaded.card.arch!r} checkpoint, not {arch!r}")


def load_initial(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `initial_weights` into `model`: all of it (strict), or, when every key is a ``backbone.`` one, the
    backbone alone, every backbone weight required and nothing else touched."""
    if not all(key.startswith("backbone.") for key in state):
        model.load_state_dict(state)
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    absent = [key for key in missing if key.startswith("backbone.")]
    if unexpected or absent:
        raise CheckpointError(f"the backbone weights do not fit: missing {absent[:3]}, unexpected {unexpected[:3]}")


def _restore(run: _Run, last_path: Path) -> TrainState:
    resume = load_resume(last_path, run.config)
    run.model.load_state_dict(resume["model"])
    if run.ema is not None and resume.get("ema"):
        run.ema.load_state_dict(resume["ema"])
    run.optimizer.load_state_dict(resume["optimizer"])
    run.iter_scheduler.load_state_dict(resume["iter_scheduler"])
    run.plateau.load_state_dict(resume["plateau"])
    torch.set_rng_state(resume["rng"])
    if run.dist.main:
        print(f"resuming {run.config.arch} from {last_path} after epoch {resume['epoch']}", file=sys.stderr)
    return TrainState(int(resume["epoch"]), int(resume["best_epoch"]), float(resume["best_score"]),
                      int(resume["stale"]), resume.get("best_state") or None, list(resume.get("history", [])))


def _print_row(row: dict[str, Any]) -> None:
    per_source = " ".join(f"{k[4:]} {v:.4f}" for k, v in row.items() if k.startswith("auc_") and v is not None)
    print(f"epoch {row['epoch']} train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
          f"val_auc {row['val_auc'] or float('nan'):.4f} kappa {row['val_kappa'] or float('nan'):.4f} "
          f"[{per_source}] lr {row['lr']:.2e} {row['epoch_s']:.0f}s{' *' if row['best'] else ''}",
          file=sys.stderr, flush=True)


def train(config: TrainConfig) -> TrainResult:
    """Run one training (see the module docstring); returns where the checkpoint went and the history."""
    dist = dist_utils.init_distributed(config.device)
    device = dist_utils.pick_device(config.device, dist.local_rank)
    if device.type == "cpu":
        torch.set_num_threads(max(1, config.threads // max(dist.world, 1)))
    dist_utils.seed_everything(config.seed)
    out = Path(config.out)
    last_path = Path(config.last) if config.last else default_last_path(out)
    if dist.main:
        out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    run = _setup(config, dist, device)
    decode_s = time.time() - started
    state = _restore(run, last_path) if config.resume else TrainState()
    restored_s = sum(row["epoch_s"] for row in state.history)  # time of the epochs a resume starts after
    wrapped, wrapped_frozen = run.model, None
    epoch = state.epoch
    try:
        for epoch in range(state.epoch, config.epochs):
            if state.stale >= config.patience:
                break
            frozen = epoch < config.freeze_backbone_epochs
            if frozen != wrapped_frozen:
                wrapped, wrapped_frozen = dist_utils.wrap(run.model, frozen, dist, device), frozen
            row = _run_epoch(run, state, epoch, wrapped, frozen)
            state.history.append(row)
            state.epoch = epoch + 1
            if dist.main:
                _print_row(row)
                write_log(out.with_name(f"{out.stem}.log.csv"), state.history)
                save_last(last_path, run, state)
    except KeyboardInterrupt:
        if dist.main:
            if not last_path.is_file():
                save_last(last_path, run, state)
            print(f"interrupted: last checkpoint at {last_path} (continue with --resume)", file=sys.stderr)
        return TrainResult(out=out, sha256=None, card=None, history=state.history, best_epoch=state.best_epoch,
                           interrupted=True, last=last_path)
    model = run.scored_model
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    result = TrainResult(out=out, sha256=None, card=None, history=state.history, best_epoch=state.best_epoch,
                         last=last_path)
    if dist.main:
        result = finish(run, model, state, time.time() - started + restored_s, decode_s, last_path)
    dist_utils.barrier(dist)
    return result
