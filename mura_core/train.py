"""Training: the MURA recipe by default, options from the follow-up papers, one checkpoint + card out.

    python -m mura_core train --data ../shared/data/bone-fracture-xr --arch efficientnet_lite0 \\
        --epochs 8 --image-size 224 --out weights/efficientnet_lite0.pt --register --default

Defaults follow Rajpurkar et al. (MURA, 2017): weighted binary cross-entropy with per-body-part class
weights from the training split (w1 = |N| / (|A| + |N|), w0 = |A| / (|A| + |N|); a body part lacking
one class falls back to the global weights), Adam lr 1e-4 (betas 0.9/0.999), learning rate / 10 when
the validation loss plateaus, random lateral flips and rotations up to 30 degrees, the epoch with the
lowest validation loss kept, early stopping. Options: focal loss, SGD with momentum, a frozen backbone
for the first epochs (head-first warm-up), a dropout head, cosine decay with warm-up.

Every image is decoded and resized ONCE into an in-memory uint8 cache at the training size (optionally
kept on disk with --cache-dir); augmentation then works on small tensors. The same command runs under
`torchrun` (DistributedDataParallel: NCCL on GPUs, gloo on CPU; only rank 0 writes files).
Operating thresholds are fitted on the validation split only and stored in the card.
Outputs next to --out: NAME.pt (best epoch, card inside), NAME.md (card), NAME.log.csv (per epoch);
the resumable NAME.last.pt goes to runs/ when --out is in weights/, else next to --out.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mura_core.models.checkpoints import FORMAT, CheckpointError, ModelCard, render_card_markdown, save_checkpoint
from mura_core.models.weights import WEIGHTS_DIR, register_weights
from mura_core.models.registry import create_model, get_arch

__all__ = [
    "TrainConfig",
    "TrainResult",
    "ImageCache",
    "load_split",
    "class_weight_table",
    "sample_weights",
    "weighted_bce",
    "focal_loss",
    "augment_batch",
    "normalise",
    "predict_probs",
    "backbone_parameters",
    "default_last_path",
    "train",
    "build_parser",
    "cli_main",
]

RESUME_FORMAT = "mura_core.resume/1"
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Every setting of one training run (stored in the card's recipe)."""

    data: str
    arch: str
    out: str
    split_train: str = "train"
    split_valid: str = "valid"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    image_size: int | None = None
    optimizer: str = "adam"
    momentum: float = 0.9
    loss: str = "wbce"
    focal_gamma: float = 2.0
    class_weights: str = "auto"
    scheduler: str = "plateau"
    plateau_patience: int = 1
    warmup_epochs: float = 0.0
    freeze_backbone_epochs: int = 0
    dropout: float = 0.0
    pretrained: bool | None = None
    pretrained_path: str | None = None
    max_rotation: float = 30.0
    hflip: bool = True
    select: str = "loss"
    patience: int = 4
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    workers: int = 0
    threads: int = 2
    half: str = "auto"
    half_tolerance: float = 0.002
    cache_dir: str | None = None
    last: str | None = None
    resume: bool = False
    register: bool = False
    default: bool = False
    name: str | None = None
    licence: str | None = None
    notes: str = ""
    progress: bool = True

    def resolved_image_size(self) -> int:
        """--image-size, else the architecture's default."""
        return int(self.image_size or get_arch(self.arch).default_image_size)

    def resolved_pretrained(self) -> bool:
        """--pretrained, else True where ImageNet weights ship offline."""
        if self.pretrained is None:
            return get_arch(self.arch).pretrained_available or self.pretrained_path is not None
        return bool(self.pretrained)

    def resolved_name(self) -> str:
        """The checkpoint's name (--name, else the file stem of --out)."""
        return self.name or Path(self.out).stem


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


# --------------------------------------------------------------------------------------------------
# Data: decode + resize once into a uint8 cache
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageCache:
    """One split, decoded and squashed to size x size once: uint8 images, labels, body parts, names."""

    images: torch.Tensor
    """(N, S, S) uint8 grey images."""
    labels: torch.Tensor
    """(N,) float32 0/1."""
    body_parts: list[str]
    names: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _cache_key(data: str, split: str, size: int) -> str:
    return hashlib.sha256(f"{Path(data).resolve()}|{split}|{size}|v1".encode()).hexdigest()[:16]


def load_split(data: str | Path, split: str, image_size: int, *, cache_dir: str | Path | None = None,
               progress: bool = False) -> ImageCache:
    """Decode every labelled image of one split (MURA folder or manifest) at image_size x image_size.

    The unit is the image (view); its label and body part come from its study. Unreadable images and
    unlabelled studies are skipped and listed in `skipped`. With `cache_dir`, the decoded split is
    kept as a .pt file of tensors (weights_only) keyed by path, split and size.
    """
    from mura_core.data.sources import open_dataset
    from mura_core.imaging.decode import DecodeError, decode_view
    from mura_core.imaging.preprocess import resize_pixels

    cache_file = Path(cache_dir) / f"split-{_cache_key(str(data), split, image_size)}.pt" if cache_dir else None
    if cache_file is not None and cache_file.is_file():
        saved = torch.load(cache_file, map_location="cpu", weights_only=True)
        return ImageCache(saved["images"], saved["labels"], list(saved["body_parts"]), list(saved["names"]),
                          list(saved["skipped"]))
    index = open_dataset(data, split)
    views = [(view, study) for study in index.studies if study.label is not None for view in study.views]
    if not views:
        raise ValueError(f"{data}: split {split!r} has no labelled images")
    images, labels, parts, names, skipped = [], [], [], [], []
    iterator: Any = views
    if progress:
        from tqdm import tqdm

        iterator = tqdm(views, desc=f"decode {split}", unit="img", mininterval=5)
    for view, study in iterator:
        try:
            pixels = decode_view(view).pixels
        except (DecodeError, OSError) as exc:
            skipped.append(f"{view.name}: {exc}")
            continue
        small = np.clip(resize_pixels(pixels, image_size), 0.0, 1.0)
        images.append(torch.from_numpy(np.round(small * 255.0).astype(np.uint8)))
        labels.append(float(study.label))
        parts.append(study.body_part.value)
        names.append(view.name)
    cache = ImageCache(torch.stack(images), torch.tensor(labels, dtype=torch.float32), parts, names, skipped)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"images": cache.images, "labels": cache.labels, "body_parts": parts, "names": names,
                    "skipped": skipped}, cache_file)
    return cache


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def class_weight_table(labels: Sequence[float] | torch.Tensor, body_parts: Sequence[str],
                       mode: str = "auto") -> tuple[dict[str, tuple[float, float]], list[str]]:
    """MURA class weights per body part: {part: (w0, w1)} plus "default" (global), and fallback notes.

    w1 = |N| / (|A| + |N|) and w0 = |A| / (|A| + |N|) per body part, so the rarer class weighs more.
    A body part lacking normals or abnormals uses the global weights (noted in the returned list).
    mode "none" gives weight 1 to everything.
    """
    y = np.asarray(labels, dtype=np.float64)
    parts = np.asarray(list(body_parts), dtype=object)
    if mode == "none":
        return {"default": (1.0, 1.0)}, []
    if mode != "auto":
        raise ValueError(f"class weights must be 'auto' or 'none', got {mode!r}")

    def weights(mask: np.ndarray) -> tuple[float, float] | None:
        n_abn = float(y[mask].sum())
        n_norm = float(mask.sum() - n_abn)
        if n_abn == 0 or n_norm == 0:
            return None
        return n_abn / (n_abn + n_norm), n_norm / (n_abn + n_norm)

    table = {"default": weights(np.ones_like(y, dtype=bool)) or (0.5, 0.5)}
    fallbacks = []
    for part in sorted(set(parts.tolist())):
        found = weights(parts == part)
        if found is None:
            fallbacks.append(part)
        else:
            table[part] = found
    return table, fallbacks


def sample_weights(labels: torch.Tensor, body_parts: Sequence[str],
                   table: dict[str, tuple[float, float]]) -> torch.Tensor:
    """Per-sample loss weight: w1 for abnormal, w0 for normal, from the sample's body part row."""
    rows = [table.get(part, table["default"]) for part in body_parts]
    w0 = torch.tensor([r[0] for r in rows], dtype=torch.float32)
    w1 = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    labels = labels.float().cpu()
    return labels * w1 + (1 - labels) * w0


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of w * BCE(sigmoid(logit), label) (MURA's loss)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return (loss * weights).mean()


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
               gamma: float = 2.0) -> torch.Tensor:
    """Class-weighted focal loss: w * (1 - p_t)^gamma * BCE."""
    logits, labels = logits.float(), labels.float()
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = torch.exp(-bce)
    return (weights * (1 - p_t) ** gamma * bce).mean()


# --------------------------------------------------------------------------------------------------
# Tensors: augmentation and normalisation per batch
# --------------------------------------------------------------------------------------------------


def _sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, image index): same augmentation with any workers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 100_003 + index) % (2 ** 63))


def augment_batch(images: torch.Tensor, indices: Sequence[int], seed: int, epoch: int,
                  max_rotation: float = 30.0, hflip: bool = True) -> torch.Tensor:
    """(B, S, S) uint8 -> (B, 1, S, S) float 0..1 with a random lateral flip and rotation per image."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from mura_core.imaging.preprocess import train_augment

    x = images.float().div_(255.0).unsqueeze(1)
    out = []
    for img, index in zip(x, indices):
        generator = _sample_generator(seed, epoch, int(index))
        if hflip:
            out.append(train_augment(img, generator, max_degrees=max_rotation))
        else:
            angle = (float(torch.rand((), generator=generator)) * 2.0 - 1.0) * max_rotation
            out.append(TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0))
    return torch.stack(out)


def normalise(grey: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 1, S, S) 0..1 -> (B, 3, S, S) normalised (grey copied to 3 channels)."""
    m = torch.tensor(mean, dtype=grey.dtype, device=grey.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=grey.dtype, device=grey.device).view(1, 3, 1, 1)
    return (grey.expand(-1, 3, -1, -1) - m) / s


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   batch_size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits (N,) for cached uint8 images, no augmentation, model in eval mode."""
    model.eval()
    device = torch.device(device)
    out = []
    for start in range(0, images.shape[0], batch_size):
        grey = images[start:start + batch_size].float().div_(255.0).unsqueeze(1).to(device)
        x = normalise(grey, mean, std)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out.append(model(x).float()[:, 0].cpu())
    return torch.cat(out) if out else torch.empty(0)


def predict_probs(model: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                  batch_size: int = 32, device: torch.device | str = "cpu") -> np.ndarray:
    """P(abnormal) (N,) for cached uint8 images."""
    return torch.sigmoid(predict_logits(model, images, mean, std, batch_size, device)).numpy()


# --------------------------------------------------------------------------------------------------
# Model helpers
# --------------------------------------------------------------------------------------------------


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters frozen during a head-first warm-up: `model.backbone`, else all but the last Linear."""
    model = getattr(model, "module", model)
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return list(backbone.parameters())
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    head_ids = {id(p) for p in head.parameters()}
    return [p for p in model.parameters() if id(p) not in head_ids]


def _set_frozen(model: nn.Module, frozen: bool) -> None:
    for p in backbone_parameters(model):
        p.requires_grad_(not frozen)


def _freeze_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm running statistics fixed (used while the backbone is frozen)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _pick_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if preference == "cuda":
        raise RuntimeError("--device cuda asked for, but CUDA is not available")
    return torch.device("cpu")


def default_last_path(out: str | Path) -> Path:
    """Where the resumable last-epoch checkpoint goes: runs/NAME.last.pt for weights/, else beside out."""
    out = Path(out)
    try:
        out.resolve().relative_to(WEIGHTS_DIR.resolve())
        return REPO_ROOT / "runs" / f"{out.stem}.last.pt"
    except ValueError:
        return out.with_name(f"{out.stem}.last.pt")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _data_licence(data: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    text = str(Path(data).resolve()).lower()
    if "bone-fracture-xr" in text:
        return "bone-fracture-xr, CC BY 4.0"
    if "mura" in text:
        return "MURA v1.1, Stanford AIMI research use agreement (non-commercial)"
    return "unknown (pass --licence)"


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


# --------------------------------------------------------------------------------------------------
# Metrics for logs and the card
# --------------------------------------------------------------------------------------------------


def _metrics(labels: np.ndarray, probs: np.ndarray, threshold: float | np.ndarray = 0.5,
             n_bootstrap: int = 0) -> dict[str, Any]:
    from mura_core.evaluation.metrics import binary_metrics

    return binary_metrics(labels, probs, threshold, n_bootstrap=n_bootstrap)


def _per_body_part(labels: np.ndarray, probs: np.ndarray, parts: Sequence[str],
                   thresholds: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Compact per-part metrics (AUC/specificity are None where a part lacks a class)."""
    from mura_core.evaluation.metrics import threshold_for

    out = {}
    parts_arr = np.asarray(list(parts), dtype=object)
    for part in sorted(set(parts_arr.tolist())):
        mask = parts_arr == part
        t = np.asarray([threshold_for(thresholds, p) for p in parts_arr[mask]])
        m = _metrics(labels[mask], probs[mask], t)
        out[part] = {k: m.get(k) for k in ("n", "n_abnormal", "n_normal", "sensitivity", "specificity", "auc")}
    return out


# --------------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------------


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(preference: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    use_cuda = preference != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return _Dist(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=local_rank)


def _broadcast_float(value: float, dist_info: _Dist, device: torch.device) -> float:
    """Rank 0's value on every rank, so schedulers and early stopping agree."""
    if dist_info.world <= 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, 0)
    return float(tensor.item())


class _IndexDataset(torch.utils.data.Dataset):
    """Cache indices -> (augmented grey image, label, index); seeded per (seed, epoch, index)."""

    def __init__(self, cache: ImageCache, config: TrainConfig) -> None:
        self.cache, self.config, self.epoch = cache, config, 0

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        img = augment_batch(self.cache.images[index:index + 1], [index], self.config.seed, self.epoch,
                            self.config.max_rotation, self.config.hflip)[0]
        return img, self.cache.labels[index], index


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    keys = list(history[0])
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    os.replace(tmp, path)


def _card(config: TrainConfig, train: ImageCache, valid: ImageCache, recipe_extra: dict[str, Any],
          thresholds: dict[str, float], metrics: dict[str, Any], notes: list[str]) -> ModelCard:
    spec = get_arch(config.arch)
    n_abn = int(train.labels.sum())
    v_abn = int(valid.labels.sum())
    data_name = Path(config.data).resolve().name
    training_data = (
        f"{data_name}: split '{config.split_train}' ({len(train)} images: {n_abn} abnormal, "
        f"{len(train) - n_abn} normal) for training; split '{config.split_valid}' ({len(valid)} images: "
        f"{v_abn} abnormal, {len(valid) - v_abn} normal) for model selection and thresholds.")
    recipe = {k: v for k, v in asdict(config).items()
              if k not in {"out", "last", "resume", "register", "default", "name", "notes", "progress",
                           "licence", "cache_dir"}}
    recipe["image_size"] = config.resolved_image_size()
    recipe["pretrained"] = config.resolved_pretrained()
    recipe.update(recipe_extra)
    return ModelCard(name=config.resolved_name(), arch=config.arch, image_size=config.resolved_image_size(),
                     mean=spec.mean, std=spec.std, thresholds=thresholds, training_data=training_data,
                     licence=_data_licence(config.data, config.licence), recipe=recipe, metrics=metrics,
                     notes="\n\n".join(n for n in notes if n))


def _save_last(path: Path, model: nn.Module, card: ModelCard, resume_state: dict[str, Any]) -> None:
    """A usable checkpoint (load_checkpoint reads it) that also carries the state needed to resume."""
    model = getattr(model, "module", model)
    payload = {"format": FORMAT, "dtype": "float32",
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "card": card.to_dict(), "resume": resume_state}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_resume(path: Path, config: TrainConfig) -> dict[str, Any]:
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
    resume["model"] = payload["state_dict"]
    return resume


def _iterate(loader: Any, total: int, enabled: bool, desc: str) -> Iterator[Any]:
    if not enabled:
        yield from loader
        return
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    yield from tqdm(loader, total=total, desc=desc, unit="batch", leave=False,
                    mininterval=0.5 if interactive else 30)


def train(config: TrainConfig) -> TrainResult:
    """Run one training (see the module docstring); returns where the checkpoint went and the history."""
    dist_info = _init_distributed(config.device)
    device = _pick_device(config.device, dist_info.local_rank)
    torch.set_num_threads(max(1, config.threads // max(dist_info.world, 1)) if device.type == "cpu"
                          else config.threads)
    _seed_everything(config.seed)
    spec = get_arch(config.arch)
    size = config.resolved_image_size()
    out = Path(config.out)
    last_path = Path(config.last) if config.last else default_last_path(out)
    log_path = out.with_name(f"{out.stem}.log.csv")
    if dist_info.main:
        out.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()

    show = config.progress and dist_info.main
    train_cache = load_split(config.data, config.split_train, size, cache_dir=config.cache_dir, progress=show)
    valid_cache = load_split(config.data, config.split_valid, size, cache_dir=config.cache_dir, progress=show)
    decode_s = time.time() - started
    table, fallbacks = class_weight_table(train_cache.labels, train_cache.body_parts, config.class_weights)
    notes = []
    if fallbacks and config.class_weights == "auto":
        notes.append(
            "Class weights: MURA's per-body-part weights were used where a body part has both classes; "
            f"{', '.join(fallbacks)} lack one class in the training split and use the global weights "
            f"(w0={table['default'][0]:.3f}, w1={table['default'][1]:.3f}). On bone-fracture-xr every "
            "normal image has an empty body part (UNKNOWN), so effectively all images use the global weights.")
    valid_weights = sample_weights(valid_cache.labels, valid_cache.body_parts, table)

    model = create_model(config.arch, pretrained=config.resolved_pretrained(), dropout=config.dropout,
                         pretrained_path=config.pretrained_path).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters()]
    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999),
                                                            weight_decay=config.weight_decay)
    elif config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
                                    weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")

    dataset = _IndexDataset(train_cache, config)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=dist_info.world, rank=dist_info.rank,
                                                  shuffle=True, seed=config.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                                         num_workers=config.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=config.workers > 0)
    steps_per_epoch = len(loader)
    iter_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, steps_per_epoch))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                         patience=config.plateau_patience)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp and device.type == "cuda")
    loss_fn = focal_loss if config.loss == "focal" else weighted_bce
    if config.loss not in {"wbce", "focal"}:
        raise ValueError(f"unknown loss {config.loss!r}")

    history: list[dict[str, Any]] = []
    start_epoch, best_epoch, best_score, stale = 0, -1, math.inf, 0
    best_state: dict[str, torch.Tensor] | None = None
    if config.resume:
        resume = _load_resume(last_path, config)
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        iter_scheduler.load_state_dict(resume["iter_scheduler"])
        plateau.load_state_dict(resume["plateau"])
        start_epoch, best_epoch = int(resume["epoch"]), int(resume["best_epoch"])
        best_score, stale = float(resume["best_score"]), int(resume["stale"])
        best_state = resume.get("best_state") or None
        history = list(resume.get("history", []))
        torch.set_rng_state(resume["rng"])
        if dist_info.main:
            print(f"resuming {config.arch} from {last_path} after epoch {start_epoch}", file=sys.stderr)

    def make_wrapped(frozen: bool) -> nn.Module:
        _set_frozen(model, frozen)
        if dist_info.world > 1:
            return nn.parallel.DistributedDataParallel(
                model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None)
        return model

    def current_card(extra: dict[str, Any]) -> ModelCard:
        return _card(config, train_cache, valid_cache, extra, {"default": 0.5}, {}, notes)

    def resume_state(epoch: int) -> dict[str, Any]:
        return {"format": RESUME_FORMAT, "arch": config.arch, "epoch": epoch, "best_epoch": best_epoch,
                "best_score": best_score if math.isfinite(best_score) else 1e300, "stale": stale,
                "best_state": best_state or {}, "history": history,
                "optimizer": optimizer.state_dict(), "iter_scheduler": iter_scheduler.state_dict(),
                "plateau": plateau.state_dict(), "rng": torch.get_rng_state()}

    interrupted = False
    epoch = start_epoch
    wrapped_frozen: bool | None = None
    wrapped: nn.Module = model
    try:
        for epoch in range(start_epoch, config.epochs):
            if stale >= config.patience:
                break
            frozen = epoch < config.freeze_backbone_epochs
            if frozen != wrapped_frozen:
                wrapped, wrapped_frozen = make_wrapped(frozen), frozen
            t0 = time.time()
            wrapped.train()
            if frozen:
                _freeze_batchnorm(model)
            dataset.epoch = epoch
            sampler.set_epoch(epoch)
            total, count = 0.0, 0
            for grey, labels, indices in _iterate(loader, steps_per_epoch, show,
                                                  f"epoch {epoch + 1}/{config.epochs}"):
                grey, labels = grey.to(device, non_blocking=True), labels.to(device)
                x = normalise(grey, spec.mean, spec.std)
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                weights = sample_weights(labels, [train_cache.body_parts[i] for i in indices.tolist()],
                                         table).to(device)
                with torch.autocast(device_type=device.type, dtype=torch.float16,
                                    enabled=config.amp and device.type == "cuda"):
                    logits = wrapped(x)[:, 0]
                loss = (loss_fn(logits, labels, weights, config.focal_gamma) if config.loss == "focal"
                        else loss_fn(logits, labels, weights))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                iter_scheduler.step()
                total += float(loss.item()) * labels.shape[0]
                count += labels.shape[0]
            train_s = time.time() - t0
            logits = predict_logits(model, valid_cache.images, spec.mean, spec.std, config.batch_size * 2, device)
            val_loss = float(weighted_bce(logits, valid_cache.labels, valid_weights))
            probs = torch.sigmoid(logits).numpy()
            m = _metrics(valid_cache.labels.numpy(), probs)
            val_loss = _broadcast_float(val_loss, dist_info, device)
            score = val_loss if config.select == "loss" else -float(m["auc"] or 0.0)
            score = _broadcast_float(score, dist_info, device)
            if config.scheduler == "plateau" and not frozen:
                plateau.step(val_loss)
            improved = score < best_score - 1e-6
            if improved:
                best_score, best_epoch, stale = score, epoch + 1, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            row = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_loss": val_loss,
                   "val_auc": m["auc"], "val_kappa": m["kappa"], "val_f1": m["f1"],
                   "lr": optimizer.param_groups[0]["lr"], "frozen_backbone": frozen,
                   "train_s": round(train_s, 1), "epoch_s": round(time.time() - t0, 1), "best": improved}
            history.append(row)
            if dist_info.main:
                print(f"epoch {epoch + 1}/{config.epochs} train_loss {row['train_loss']:.4f} "
                      f"val_loss {val_loss:.4f} val_auc {m['auc'] or float('nan'):.4f} "
                      f"val_kappa {m['kappa'] or float('nan'):.4f} lr {row['lr']:.2e} "
                      f"{row['epoch_s']:.0f}s{' *' if improved else ''}", file=sys.stderr, flush=True)
                _write_log(log_path, history)
                _save_last(last_path, model, current_card({"epochs_run": epoch + 1}), resume_state(epoch + 1))
    except KeyboardInterrupt:
        interrupted = True
        if dist_info.main:
            if not last_path.is_file():
                _save_last(last_path, model, current_card({"epochs_run": epoch}), resume_state(epoch))
            print(f"interrupted: last checkpoint at {last_path} (continue with --resume)", file=sys.stderr)
        return TrainResult(out=out, sha256=None, card=None, history=history, best_epoch=best_epoch,
                           interrupted=True, last=last_path)

    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result = TrainResult(out=out, sha256=None, card=None, history=history, best_epoch=best_epoch,
                         interrupted=interrupted, last=last_path)
    if dist_info.main:
        result = _finish(config, model, train_cache, valid_cache, history, best_epoch, notes, device,
                         time.time() - started, decode_s, last_path, dist_info.world)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result


def _rounded_to_half(model: nn.Module) -> nn.Module:
    """A copy of the model whose floating weights went through float16 (what half storage ships)."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(copy_.parameters()) + list(copy_.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return copy_.eval()


def _finish(config: TrainConfig, model: nn.Module, train_cache: ImageCache, valid_cache: ImageCache,
            history: list[dict[str, Any]], best_epoch: int, notes: list[str], device: torch.device,
            elapsed: float, decode_s: float, last_path: Path, world: int) -> TrainResult:
    """Pick the storage precision, fit thresholds on valid, write checkpoint + card + index entry."""
    from mura_core.evaluation.metrics import fit_thresholds

    spec = get_arch(config.arch)
    labels = valid_cache.labels.numpy()
    probs32 = predict_probs(model, valid_cache.images, spec.mean, spec.std, config.batch_size * 2, device)
    half_model = _rounded_to_half(model)
    probs16 = predict_probs(half_model, valid_cache.images, spec.mean, spec.std, config.batch_size * 2, device)
    auc32, auc16 = _metrics(labels, probs32)["auc"], _metrics(labels, probs16)["auc"]
    if config.half == "auto":
        half = auc32 is not None and auc16 is not None and abs(auc32 - auc16) <= config.half_tolerance
    else:
        half = config.half == "yes"
    shipped = half_model if half else model
    probs = probs16 if half else probs32
    thresholds = fit_thresholds(labels, probs, valid_cache.body_parts)
    t_rows = np.asarray([thresholds.get(p, thresholds["default"]) for p in valid_cache.body_parts])
    full = _metrics(labels, probs, t_rows, n_bootstrap=1000)
    at_half = _metrics(labels, probs, 0.5)
    metrics = {"split": config.split_valid, "n": full["n"], "auc": full["auc"], "kappa": full["kappa"],
               "f1": full["f1"], "sensitivity": full["sensitivity"], "specificity": full["specificity"],
               "accuracy": full.get("accuracy"), "threshold_default": thresholds["default"],
               "kappa_at_0.5": at_half["kappa"], "f1_at_0.5": at_half["f1"],
               "auc_float32": auc32, "auc_float16": auc16, "ci": full.get("ci"),
               "per_body_part": _per_body_part(labels, probs, valid_cache.body_parts, thresholds)}
    epoch_times = [row["epoch_s"] for row in history]
    extra = {"epochs_run": len(history), "best_epoch": best_epoch, "device": str(device), "world_size": world,
             "torch": torch.__version__, "storage": "float16" if half else "float32",
             "seconds_total": round(elapsed, 1), "seconds_decode": round(decode_s, 1),
             "seconds_per_epoch": round(float(np.mean(epoch_times)), 1) if epoch_times else None,
             "threshold_fitted_on": config.split_valid, "threshold_method": "youden",
             "class_weight_table": {k: list(v) for k, v in class_weight_table(
                 train_cache.labels, train_cache.body_parts, config.class_weights)[0].items()}}
    per_part = metrics["per_body_part"]
    if any(row.get("n_normal") == 0 for part, row in per_part.items() if part != "UNKNOWN"):
        notes = notes + [
            "Per body part: AUC and specificity are undefined (None) where a body part has no normal images "
            "in the validation split - on bone-fracture-xr every normal image has an empty body part "
            "(counted as UNKNOWN), so only per-part sensitivity is meaningful, and per-part thresholds "
            "cannot be fitted (every part uses the 'default' threshold)."]
    if train_cache.skipped or valid_cache.skipped:
        notes = notes + [f"Skipped unreadable images: {len(train_cache.skipped)} train, "
                         f"{len(valid_cache.skipped)} valid."]
    if config.notes:
        notes = notes + [config.notes]
    card = _card(config, train_cache, valid_cache, extra, thresholds, metrics, notes)
    out = Path(config.out)
    sha = save_checkpoint(out, shipped, card, half=half)
    out.with_suffix(".md").write_text(render_card_markdown(card, sha256=sha))
    if config.register:
        register_weights(out, card, sha, default=config.default, weights_dir=out.parent)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {'float16' if half else 'float32'}) "
          f"best epoch {best_epoch}: valid AUC {metrics['auc']:.4f} (float32 {auc32:.4f}, float16 {auc16:.4f}) "
          f"kappa {metrics['kappa']:.4f} at threshold {thresholds['default']:.3f}", file=sys.stderr)
    return TrainResult(out=out, sha256=sha, card=card, history=history, best_epoch=best_epoch, last=last_path)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `train` subcommand's arguments."""
    p = argparse.ArgumentParser(prog="python -m mura_core train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig(data="", arch="", out="")
    p.add_argument("--data", required=True, help="MURA folder (or parent) or manifest CSV (or its folder)")
    p.add_argument("--arch", required=True, help="architecture name (see mura_core.models.registry.list_models)")
    p.add_argument("--out", required=True, help="checkpoint to write, e.g. weights/NAME.pt")
    p.add_argument("--split-train", default=d.split_train)
    p.add_argument("--split-valid", default=d.split_valid)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--image-size", type=int, default=None, help="square input side (default: the arch's)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=d.optimizer)
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--loss", choices=["wbce", "focal"], default=d.loss)
    p.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    p.add_argument("--class-weights", choices=["auto", "none"], default=d.class_weights)
    p.add_argument("--scheduler", choices=["plateau", "cosine", "none"], default=d.scheduler,
                   help="plateau: lr/10 when the validation loss stops falling (MURA)")
    p.add_argument("--plateau-patience", type=int, default=d.plateau_patience)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--freeze-backbone-epochs", type=int, default=d.freeze_backbone_epochs)
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the final Linear")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet initialisation (default: where weights ship offline)")
    p.add_argument("--pretrained-path", default=None, help="a torchvision ImageNet state dict you supply")
    p.add_argument("--max-rotation", type=float, default=d.max_rotation)
    p.add_argument("--no-hflip", dest="hflip", action="store_false")
    p.add_argument("--select", choices=["loss", "auc"], default=d.select,
                   help="best epoch by validation loss (MURA) or AUC")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping: epochs without progress")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device)
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--half", choices=["auto", "yes", "no"], default=d.half,
                   help="store float16 (auto: when valid AUC moves by at most --half-tolerance)")
    p.add_argument("--half-tolerance", type=float, default=d.half_tolerance)
    p.add_argument("--cache-dir", default=None, help="keep decoded splits here between runs")
    p.add_argument("--last", default=None, help="resumable last-epoch checkpoint (default: runs/NAME.last.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--register", action="store_true", help="add the checkpoint to index.json beside --out")
    p.add_argument("--default", action="store_true", help="make it the index's default (with --register)")
    p.add_argument("--name", default=None, help="checkpoint name (default: --out's stem)")
    p.add_argument("--licence", default=None, help="data licence for the card (auto for known data)")
    p.add_argument("--notes", default="", help="extra notes for the model card")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    """`python -m mura_core train ...`; 0 on success, 130 when interrupted, 2 on bad input."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    config = TrainConfig(**vars(args))
    try:
        get_arch(config.arch)
        result = train(config)
    except (ValueError, CheckpointError, RuntimeError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    return 130 if result.interrupted else 0
