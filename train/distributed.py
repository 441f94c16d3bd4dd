"""Process-group set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("recipe asks for device=cuda but no CUDA device is visible; use train.device=cpu")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:  # the device string was checked with the recipe (train.loop._check_train_section)
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if d.world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= d.world
    return x


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
