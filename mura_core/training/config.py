"""Every setting of one training run, stored whole in the checkpoint card's recipe."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mura_core.models.registry import get_arch

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """One training run: its data sources, model, optimiser, augmentation and outputs.

    `data` lists one or more sources (MURA folder, manifest or FracAtlas folder); each keeps its own
    train/valid split. Defaults follow the MURA paper; the multi-source options (source balancing,
    strong augmentation, EMA, a slower backbone) are off unless asked for.
    """

    data: list[str]
    arch: str
    out: str
    split_train: str = "train"
    split_valid: str = "valid"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    backbone_lr_scale: float = 1.0
    weight_decay: float = 0.0
    image_size: int | None = None
    optimizer: str = "adam"
    momentum: float = 0.9
    loss: str = "wbce"
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    class_weights: str = "auto"
    source_balance: float = 0.0
    """0 samples images uniformly; 1 gives every source the same share of each epoch."""
    scheduler: str = "plateau"
    plateau_patience: int = 1
    warmup_epochs: float = 0.0
    freeze_backbone_epochs: int = 0
    dropout: float = 0.0
    pretrained: bool | None = None
    pretrained_path: str | None = None
    init_from: str | None = None
    """Fine-tune: start from this checkpoint's weights (an indexed name, sha256-checked, or a file) with a
    fresh optimiser and schedule; its architecture must be --arch."""
    augment: str = "paper"
    """'paper': lateral flip + rotation (MURA); 'strong': + random resized crop, brightness/contrast/gamma;
    'domain': 'strong' + another source's look (`training.augment`)."""
    max_rotation: float = 30.0
    hflip: bool = True
    ema_decay: float = 0.0
    """Exponential moving average of the weights (0 = off); the averaged model is evaluated and shipped."""
    box_loss_weight: float = 0.0
    """Weight of the box-attention loss (0 = off): abnormal images' CAM pulled into their finding boxes."""
    windows: int = 0
    """Train on windows of each image labelled by its boxes (`training.windows`), enlarged to this many px (0 = off:
    whole images). The cache and the valid split stay at the image size, scored whole."""
    teacher: str | None = None
    """Distillation: a checkpoint (indexed name, sha256-checked, or file) whose soft probabilities the student
    also learns (`distill.py`); None = off."""
    distill_weight: float = 0.5
    """alpha: the share of the loss given to the teacher's probabilities (with --teacher)."""
    distill_temperature: float = 2.0
    feature_distill_weight: float = 0.0
    """Weight of the feature hint (0 = off; with --teacher): the student's last feature map, through a learned
    1x1 convolution, regresses the teacher's (`distill.FeatureHint`)."""
    select: str = "loss"
    """Best epoch by 'loss' (MURA), 'auc' (pooled valid AUC) or 'source_auc' (mean of per-source AUCs)."""
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
    extra: dict = field(default_factory=dict)
    """Facts found during the run that the card's recipe records (e.g. init_from_sha256)."""

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = [str(self.data)]
        self.data = [str(d) for d in self.data]
        if not self.data:
            raise ValueError("at least one --data source is needed")
        if self.windows and self.box_loss_weight > 0:
            raise ValueError("--windows and --box-loss-weight do not combine: a window's label already says "
                             "whether it holds the finding")

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
