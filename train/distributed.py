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
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device: str = "auto") -> Dist:
    """Pick the device and, under torchrun (WORLD_SIZE > 1), join the process group (nccl on GPU, gloo on CPU).
    On CUDA a single process uses the GPU named (``cuda`` is ``cuda:0``) and each torchrun rank uses
    cuda:LOCAL_RANK, so there a fixed index is refused: every rank would share that one GPU."""
    world = world_size()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)  # the device string was checked with the recipe (train.loop._check_train_section)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"recipe asks for device={device} but no CUDA device is visible; use train.device=cpu")
        if world > 1 and dev.index is not None:
            raise ValueError(f"train.device={device} under torchrun would put all {world} ranks on one GPU; use "
                             "train.device=cuda (or auto): each rank then takes cuda:LOCAL_RANK")
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"train.device={device} asks for GPU {dev.index} but {torch.cuda.device_count()} "
                             "CUDA device(s) are visible (CUDA_VISIBLE_DEVICES renumbers them from 0)")
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, dev)


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of a tensor over ranks (identity in a single process)."""
    if d.world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= d.world
    return x


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x`` joined along dim 0 in rank order (a collective: all ranks call it, with the same trailing
    shape; the row counts may differ, e.g. atoms). Identity in a single process."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(x)], device=x.device))
    counts = [int(s) for s in sizes]
    if not max(counts):
        return x
    padded = x.new_zeros((max(counts), *x.shape[1:]))
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
