"""Shannon entropy of discrete distributions given as probability vectors."""
from __future__ import annotations

import torch

from .estimator import Estimator, log_base


def shannon_entropy(p: torch.Tensor, dim: int = -1, base: float | str = "nats", reduce: bool = True) -> torch.Tensor:
    """H(p) = -sum_i p_i log p_i along ``dim`` (0 log 0 = 0), in nats or bits; mean over the other dims if ``reduce``.

    Exact for the given probabilities (no estimation bias); ``p`` must be non-negative and sum to 1 along ``dim``.
    Cost O(numel).
    """
    if not torch.is_floating_point(p):
        raise TypeError(f"shannon_entropy: p must be a floating tensor of probabilities, got {p.dtype}")
    p = p.float()
    h = -torch.special.xlogy(p, p).sum(dim) / log_base(base)
    return h.mean() if reduce else h


def entropy(dim: int = -1, base: float | str = "nats") -> Estimator:
    """Probe estimator: mean Shannon entropy of the probability vectors along ``dim``."""
    return Estimator("entropy", shannon_entropy, dim=dim, base=base)
