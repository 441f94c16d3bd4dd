"""Optimizers and learning-rate schedules named in a recipe."""
from __future__ import annotations

import inspect
import math
import warnings

import torch

from .recipe import check_number

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam, "sgd": torch.optim.SGD}


def build_optimizer(params, cfg: dict) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` with the section's other keys as its arguments: numbers checked by name (a
    recipe's typo or string is an error naming the key, not a comparison failure inside torch)."""
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name not in OPTIMIZERS:
        raise KeyError(f"optim.name {name!r} is unknown; available: {sorted(OPTIMIZERS)}")
    settings = [p for p in inspect.signature(OPTIMIZERS[name]).parameters if p != "params"]
    unknown = sorted(set(cfg) - set(settings))
    if unknown:
        raise KeyError(f"optim: {name} has no setting {unknown}; its settings are {settings}")
    largest = float(torch.finfo(torch.float32).max)  # torch keeps these as float32 scalars in places
    for key, high in (("lr", largest), ("weight_decay", largest), ("momentum", 1.0), ("dampening", 1.0),
                      ("eps", largest)):
        if key in cfg:
            check_number("optim", key, cfg[key], high=high)
    if "betas" in cfg:
        betas = cfg["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ValueError(f"optim.betas must be a pair [beta1, beta2], got {betas!r}")
        cfg["betas"] = tuple(check_number("optim", "betas", b, high=1.0) for b in betas)
        if max(cfg["betas"]) == 1.0:  # a decay of 1 never forgets the first gradient; torch's Adam refuses it
            raise ValueError(f"optim.betas must each lie in [0, 1), got {betas!r}")
    return OPTIMIZERS[name](params, **cfg)


def lr_factor(cfg: dict, total: int):
    """Multiplier of the base lr at step s of ``total``: linear warmup (w steps, default 0: (s + 1) / w, so the first
    step already takes 1/w and step w - 1 the full rate, where transformers' warmup starts at 0), then constant |
    cosine to ``min_ratio`` (default 0) | exponential decay to ``final_ratio`` (default 0.01), as functions of
    p = (s - w) / (total - w). p = 1 is step ``total``, one past the last update (as in transformers' schedules);
    so without warmup the first n steps of an exponential run of ``total`` steps are a run of n steps with
    final_ratio**(n/total) (with warmup w: final_ratio**((n - w)/(total - w)))."""
    name = cfg.get("name", "constant")
    warmup = int(check_number("schedule", "warmup", cfg.get("warmup", 0), integer=True))
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

    if "min_ratio" in cfg:
        check_number("schedule", "min_ratio", cfg["min_ratio"], high=1.0)
    if "final_ratio" in cfg:  # 0 would drop the rate to 0 right after the first step
        check_number("schedule", "final_ratio", cfg["final_ratio"], low=1e-12, high=1.0)
    decay(0.0)  # validate the name now, not at the first step
    if warmup > total:  # a short trial run of a long recipe: allowed, but it never trains at optim.lr
        warnings.warn(f"schedule.warmup ({warmup}) is longer than the run ({total} steps): the learning rate ends at "
                      f"{total / warmup:.3g} x optim.lr; --set schedule.warmup=N to shorten it")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay(min(1.0, (step - warmup) / max(1, total - warmup)))

    return factor


def build_scheduler(optimizer, cfg: dict, total: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, total))
