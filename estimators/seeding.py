"""A seeded block that leaves the caller's random streams as they were."""
from __future__ import annotations

import contextlib
import random

import torch


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None):
    """Run the block with torch's CPU generator, ``device``'s CUDA generator (when it is a GPU) and Python's
    ``random`` seeded to ``seed``; all three are restored afterwards, and no other GPU's generator is touched
    (``torch.manual_seed`` would reseed every GPU's, for good)."""
    device = torch.device(device if device is not None else "cpu")
    gpu = [device] if device.type == "cuda" else []
    state = random.getstate()
    with torch.random.fork_rng(devices=gpu):
        torch.default_generator.manual_seed(seed)
        if gpu:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)
