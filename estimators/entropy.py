"""Shannon entropy of discrete distributions given as probability vectors."""
from __future__ import annotations

import torch

from .estimator import Estimator, log_base


def shannon_entropy(p: torch.Tensor, dim: int = -1, base: float | str = "nats", reduce: bool = True) -> torch.Tensor:
    """H(p) = -sum_i p_i log p_i along ``dim`` (0 log 0 = 0), in nats or bits; mean over the other dims if ``reduce``.

    Exact for the given probabilities (no estimation bias; float64 inputs are summed in float64, and the result
    is float32 as every estimator's); ``p`` must be non-negative and sum to 1 along ``dim``,
    or be all zeros there (an empty distribution, such as a fully masked attention row: left out of the mean, 0
    when not reduced).
    Cost O(numel).
    """
    if not torch.is_floating_point(p):
        raise TypeError(f"shannon_entropy: p must be a floating tensor of probabilities, got {p.dtype}")
    if p.numel() == 0:
        raise ValueError(f"shannon_entropy: p is empty (shape {tuple(p.shape)})")
    tolerance = 1e-2 if p.dtype in (torch.float16, torch.bfloat16) else 1e-3  # a bf16 softmax over 1e5 classes: 2e-3
    p = p.detach().to(torch.float64 if p.dtype == torch.float64 else torch.float32)
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"shannon_entropy: p must be finite and non-negative; it has {int((~torch.isfinite(p)).sum())} "
                         f"NaN/inf and {int((p < 0).sum())} negative entries")
    sums = p.sum(dim)
    empty = sums == 0  # e.g. the association of a state whose stored patterns are all padded
    worst = torch.where(empty, 0.0, sums - 1).abs().max().item()
    if worst > tolerance:
        raise ValueError(f"shannon_entropy: p must sum to 1 along dim {dim}; the sums are off by up to {worst:.3g}")
    h = -torch.special.xlogy(p, p).sum(dim) / log_base(base)
    if not reduce:
        return h.float()
    if empty.all():
        raise ValueError(f"shannon_entropy: every vector of p along dim {dim} is all zeros")
    return h[~empty].mean().float()


def entropy(dim: int = -1, base: float | str = "nats") -> Estimator:
    """Probe estimator: mean Shannon entropy of the probability vectors along ``dim``."""
    return Estimator("entropy", shannon_entropy, dim=dim, base=base)
