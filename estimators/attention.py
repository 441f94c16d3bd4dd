"""Attention entropy per head (the quantity sigmaReparam keeps from collapsing; Zhai et al. 2023) and its lower
bound in terms of the spectral norm of the attention logits."""
from __future__ import annotations

import math
import numbers

import torch

from .entropy import shannon_entropy
from .estimator import Estimator


def attention_entropy_per_head(probs: torch.Tensor, base: float | str = "nats") -> dict:
    """Ent(A_h) = -1/n_h sum_{b,i} sum_j A_bhij log A_bhij for attention probabilities (B, H, Lq, Lk), n_h the
    number of head h's rows (b, i) that are not all zero (B Lq without masked queries).

    Returns {"head_0": ..., ..., "mean": mean over heads} (Zhai et al. 2023, Sec. 3). Nats (or
    ``base``); exact for the given probabilities (no estimation bias), in [0, log Lk] (causal rows: [0, log #visible
    keys]). Each row is checked and summed by ``shannon_entropy`` (rows must sum to 1, within 1e-3, or 1e-2 in
    float16/bfloat16); masked positions may hold 0, and a row of zeros (a query with every key masked) is left out
    of its head's mean. Cost O(B H Lq Lk).
    """
    if not torch.is_tensor(probs) or probs.dim() != 4:
        raise ValueError(f"attention probabilities must have shape (batch, heads, queries, keys), got "
                         f"{tuple(probs.shape) if torch.is_tensor(probs) else type(probs).__name__}")
    rows = shannon_entropy(probs, dim=-1, base=base, reduce=False)  # (B, H, Lq); 0 for an all-zero row
    counted = (probs.detach().sum(-1) != 0).sum((0, 2))
    if (counted == 0).any():
        raise ValueError("attention probabilities: a head has no row with a visible key (all rows are zeros)")
    h = rows.sum((0, 2)) / counted
    out = {f"head_{i}": v for i, v in enumerate(h)}
    out["mean"] = h.mean()
    return out


def attention_entropy(base: float | str = "nats") -> Estimator:
    """Probe estimator: attention entropy per head and its mean (rows named attention_entropy/head_i)."""
    return Estimator("attention_entropy", attention_entropy_per_head, base=base)


def attention_entropy_lower_bound(sigma: torch.Tensor | float, length: int) -> torch.Tensor:
    """Zhai et al. 2023, Theorem 3.1, in nats: for logits a_ij = x_i^T W x_j over T = ``length`` tokens X (T, d) and
    sigma = ||W||_2 ||X X^T||_2, every row's attention entropy satisfies
    Ent(A_i) >= log(1 + (T-1) beta) + sigma sqrt(T(T-1)) beta / (1 + (T-1) beta), beta = exp(-sigma sqrt(T/(T-1))).
    Tight: the entropy of one logit sigma sqrt(T/(T-1)) above T-1 equal ones. log T at sigma = 0, ~sigma sqrt(T(T-1)) exp(-sigma sqrt(T/(T-1)))
    for large sigma. Elementwise over a tensor of sigmas."""
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 2:
        raise ValueError(f"attention_entropy_lower_bound needs an integer length >= 2 (tokens), got {length!r}")
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if (sigma < 0).any() or sigma.isnan().any():
        raise ValueError(f"sigma is a product of norms and must be >= 0 (not NaN), got {sigma}")
    gap = sigma * math.sqrt(length / (length - 1))
    beta = torch.exp(-gap)
    rest = (length - 1) * beta
    # gap * rest -> 0 as sigma -> inf (inf * 0 would be NaN)
    return torch.log1p(rest) + torch.where(rest > 0, gap * rest / (1 + rest), 0.0)
