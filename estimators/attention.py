"""Attention entropy per head (the quantity sigmaReparam keeps from collapsing; Zhai et al. 2023)."""
from __future__ import annotations

import torch

from .estimator import Estimator, log_base


def attention_entropy_per_head(probs: torch.Tensor, base: float | str = "nats", atol: float = 1e-2) -> dict:
    """Ent(A_h) = -1/(B Lq) sum_{b,i} sum_j A_bhij log A_bhij for attention probabilities (B, H, Lq, Lk).

    Returns {"head_0": ..., ..., "mean": mean over heads} (Zhai et al. 2023, Sec. 3). Nats (or
    ``base``); exact for the given probabilities, in [0, log Lk] (causal rows: [0, log #visible keys]).
    Rows must sum to 1 within ``atol``; masked positions may hold 0. Cost O(B H Lq Lk).
    """
    if not torch.is_tensor(probs) or probs.dim() != 4:
        raise ValueError(f"attention probabilities must have shape (batch, heads, queries, keys), got "
                         f"{tuple(probs.shape) if torch.is_tensor(probs) else type(probs).__name__}")
    p = probs.detach().float()
    if not torch.isfinite(p).all() or (p < 0).any():
        raise ValueError("attention probabilities must be finite and non-negative")
    sums = p.sum(-1)
    if (sums - 1).abs().max() > atol:
        raise ValueError(f"attention rows must sum to 1 (softmax output), got sums in [{sums.min():.4g}, {sums.max():.4g}]")
    h = (-torch.special.xlogy(p, p).sum(-1)).mean((0, 2)) / log_base(base)
    out = {f"head_{i}": v for i, v in enumerate(h)}
    out["mean"] = h.mean()
    return out


def attention_entropy(base: float | str = "nats") -> Estimator:
    """Probe estimator: attention entropy per head and its mean (rows named attention_entropy/head_i)."""
    return Estimator("attention_entropy", attention_entropy_per_head, base=base)
