"""Condition numbers of weights and of representation covariances."""
from __future__ import annotations

import torch

from .estimator import Estimator


def matrix_condition_number(w: torch.Tensor) -> torch.Tensor:
    """kappa(W) = s_max / s_min of W reshaped to 2-D (shape[0], rest), e.g. a conv kernel out x (in*kh*kw).

    Returns inf for a rank-deficient matrix. Cost: one SVD, O(m n min(m, n)).
    """
    if w.dim() < 2:
        raise ValueError(f"condition number needs a matrix (>= 2 dims), got shape {tuple(w.shape)}")
    w = w.detach().reshape(w.shape[0], -1).double()
    if not torch.isfinite(w).all():
        raise ValueError(f"condition number: the matrix has {int((~torch.isfinite(w)).sum())} NaN/inf entries")
    s = torch.linalg.svdvals(w)
    return (s.max() / s.min()).float()


def covariance_condition_number(x: torch.Tensor) -> torch.Tensor:
    """kappa(Cov(x)) = lambda_max / lambda_min of the feature covariance of samples x (..., D) flattened to (N, D).

    inf when the covariance is singular (a constant or linearly dependent feature, or N <= D). Bias: the sample
    covariance's extreme eigenvalues spread with D/N, so kappa is biased high for N not much larger than D.
    Cost O(N D^2 + D^3)."""
    x = x.detach().reshape(-1, x.shape[-1]).double()
    if x.shape[0] < 2:
        raise ValueError(f"covariance needs at least 2 samples, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"covariance condition number: x has {int((~torch.isfinite(x)).sum())} NaN/inf entries")
    ev = torch.linalg.eigvalsh(torch.cov(x.T).reshape(x.shape[1], x.shape[1]))
    return (ev.max() / ev.min().clamp_min(0)).float()


def condition_number(of: str = "matrix") -> Estimator:
    """Probe estimator: kappa of the tensor as a matrix (``of="matrix"``, for weights) or of its covariance."""
    fns = {"matrix": matrix_condition_number, "covariance": covariance_condition_number}
    if of not in fns:
        raise ValueError(f"condition_number: of must be one of {list(fns)}, got {of!r}")
    return Estimator(f"condition_number_{of}", fns[of])
