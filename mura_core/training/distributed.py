"""Device choice, seeding and the few DistributedDataParallel helpers the loop needs (torchrun)."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Dist", "init_distributed", "pick_device", "seed_everything", "broadcast_float", "wrap",
           "freeze_batchnorm", "barrier"]


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 when run alone)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(preference: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    use_cuda = preference != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Dist(world=dist.get_world_size(), rank=dist.get_rank(), local_rank=local_rank)


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """cpu when asked, else this rank's GPU when there is one; 'cuda' without CUDA is an error."""
    from mura_core.models.devices import pick_device as pick

    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return pick("cuda" if preference == "cuda" else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def broadcast_float(value: float, dist_info: Dist, device: torch.device) -> float:
    """Rank 0's value on every rank, so schedulers and early stopping agree."""
    if dist_info.world <= 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, 0)
    return float(tensor.item())


def barrier(dist_info: Dist) -> None:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm running statistics fixed (used while the backbone is frozen)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def wrap(model: nn.Module, frozen: bool, dist_info: Dist, device: torch.device) -> nn.Module:
    """Freeze or unfreeze the backbone, then wrap in DDP when several processes train."""
    from mura_core.training.outputs import backbone_parameters

    for p in backbone_parameters(model):
        p.requires_grad_(not frozen)
    if dist_info.world > 1:
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None)
    return model
