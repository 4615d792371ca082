"""`python -m mura_core train`: arguments only; the work is `mura_core.training.train`."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mura_core.training.augment import AUGMENT_MODES
from mura_core.training.config import TrainConfig

__all__ = ["build_parser", "cli_main"]


def build_parser() -> argparse.ArgumentParser:
    """The `train` subcommand's arguments."""
    from mura_core.training import loop

    p = argparse.ArgumentParser(prog="python -m mura_core train", description=loop.__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig(data=["-"], arch="", out="")
    p.add_argument("--data", required=True, action="append",
                   help="a source: MURA folder (or parent), manifest CSV (or its folder) or FracAtlas folder; "
                        "repeat for several sources")
    p.add_argument("--arch", required=True, help="architecture name (see mura_core.models.list_models)")
    p.add_argument("--out", required=True, help="checkpoint to write, e.g. weights/NAME.pt")
    p.add_argument("--split-train", default=d.split_train)
    p.add_argument("--split-valid", default=d.split_valid)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--backbone-lr-scale", type=float, default=d.backbone_lr_scale,
                   help="the pretrained backbone learns at lr times this")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--image-size", type=int, default=None, help="square input side (default: the arch's)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=d.optimizer)
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--loss", choices=["wbce", "focal"], default=d.loss)
    p.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--class-weights", choices=["auto", "none"], default=d.class_weights)
    p.add_argument("--source-balance", type=float, default=d.source_balance,
                   help="0: sample images uniformly; 1: every source an equal share of each epoch")
    p.add_argument("--scheduler", choices=["plateau", "cosine", "none"], default=d.scheduler,
                   help="plateau: lr/10 when the validation loss stops falling (MURA)")
    p.add_argument("--plateau-patience", type=int, default=d.plateau_patience)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--freeze-backbone-epochs", type=int, default=d.freeze_backbone_epochs)
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout before the final Linear")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="ImageNet initialisation (default: where weights ship offline)")
    p.add_argument("--pretrained-path", default=None, help="a torchvision ImageNet state dict you supply")
    p.add_argument("--init-from", default=None,
                   help="fine-tune from this checkpoint (indexed name, sha256-checked, or file) with a fresh "
                        "optimiser and schedule")
    p.add_argument("--augment", choices=list(AUGMENT_MODES), default=d.augment,
                   help="paper: flip + rotation (MURA); strong: + random resized crop and exposure jitter; domain: "
                        "strong + another source's look (resolution loss, noise, equalisation)")
    p.add_argument("--max-rotation", type=float, default=d.max_rotation)
    p.add_argument("--no-hflip", dest="hflip", action="store_false")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA of the weights per step (0: off)")
    p.add_argument("--box-loss-weight", type=float, default=d.box_loss_weight,
                   help="weight of the loss that pulls abnormal images' CAM (a transformer's attention rollout) into "
                        "their boxes (0: off)")
    p.add_argument("--windows", type=int, default=d.windows,
                   help="train on box-labelled windows of each image enlarged to this many px (0: whole images)")
    p.add_argument("--teacher", default=None,
                   help="distil from this checkpoint (indexed name, sha256-checked, or file): the student also "
                        "learns its probabilities on every augmented batch")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight,
                   help="share of the loss given to the teacher's probabilities (with --teacher)")
    p.add_argument("--distill-temperature", type=float, default=d.distill_temperature,
                   help="softening temperature of teacher and student logits (with --teacher)")
    p.add_argument("--feature-distill-weight", type=float, default=d.feature_distill_weight,
                   help="weight of the feature hint: the student's last feature map, through a learned 1x1 "
                        "convolution, regresses the teacher's (FitNets; with --teacher; 0: off)")
    p.add_argument("--select", choices=["loss", "auc", "source_auc"], default=d.select,
                   help="best epoch by validation loss (MURA), pooled AUC, or the mean of per-source AUCs")
    p.add_argument("--patience", type=int, default=d.patience, help="early stopping: epochs without progress")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device)
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 on CUDA, bf16 on a CPU with bf16 in hardware (AMX, AVX512-BF16)")
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
    p.add_argument("--licence", default=None, help="data licence for the card (auto for known sources)")
    p.add_argument("--notes", default="", help="extra notes for the model card")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    """`python -m mura_core train ...`; 0 on success, 130 when interrupted, 2 on bad input."""
    from mura_core.models.checkpoints import CheckpointError
    from mura_core.models.registry import get_arch
    from mura_core.training.loop import train

    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        config = TrainConfig(**vars(args))
        get_arch(config.arch)
        result = train(config)
    except (ValueError, CheckpointError, RuntimeError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    return 130 if result.interrupted else 0
