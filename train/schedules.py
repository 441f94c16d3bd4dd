"""Optimizers and learning-rate schedules named in a recipe."""
from __future__ import annotations

import math

import torch

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam, "sgd": torch.optim.SGD}


def build_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name not in OPTIMIZERS:
        raise KeyError(f"optim.name {name!r} is unknown; available: {sorted(OPTIMIZERS)}")
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return OPTIMIZERS[name](params, **cfg)


def lr_factor(cfg: dict, total: int):
    """Multiplier of the base lr at step s: linear warmup, then
    constant | cosine to ``min_ratio`` | exponential decay to ``final_ratio`` at the last step."""
    name, warmup = cfg.get("name", "constant"), int(cfg.get("warmup", 0))
    unknown = sorted(set(cfg) - {"name", "warmup", "min_ratio", "final_ratio"})  # another schedule's may stay
    if unknown:
        raise KeyError(f"schedule has no setting {unknown}; the settings are warmup, min_ratio (cosine) and "
                       "final_ratio (exponential)")

    def decay(progress: float) -> float:
        if name == "constant":
            return 1.0
        if name == "cosine":
            lo = cfg.get("min_ratio", 0.0)
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress))
        if name == "exponential":
            return cfg.get("final_ratio", 0.01) ** progress
        raise KeyError(f"schedule.name {name!r} is unknown; available: constant, cosine, exponential")

    decay(0.0)  # validate the name now, not at the first step

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay(min(1.0, (step - warmup) / max(1, total - warmup)))

    return factor


def build_scheduler(optimizer, cfg: dict, total: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total))
