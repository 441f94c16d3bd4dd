"""Condition numbers of weights and of representation covariances."""
from __future__ import annotations

import torch

from .estimator import Estimator


def _ratio(s: torch.Tensor, s_min: torch.Tensor, size: int, eps: float) -> torch.Tensor:
    """s_max / s_min of singular values s, inf when s_min <= s_max size eps (numpy's matrix_rank rule)."""
    return torch.where(s_min <= s.max() * size * eps, torch.inf, s.max() / s_min)


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps


def matrix_condition_number(w: torch.Tensor) -> torch.Tensor:
    """kappa(W) = s_max / s_min of W reshaped to 2-D (shape[0], rest), e.g. a conv kernel out x (in*kh*kw).

    s_min is the min(m, n)-th singular value; inf when W is rank-deficient by numpy's matrix_rank rule,
    s_min <= s_max max(m, n) eps(W's dtype) (so float32 rounding of an exactly singular matrix still gives
    inf). Cost: one SVD, O(m n min(m, n)).
    """
    if w.dim() < 2:
        raise ValueError(f"condition number needs a matrix (>= 2 dims), got shape {tuple(w.shape)}")
    eps = _eps(w.dtype)
    w = w.detach().reshape(w.shape[0], -1).double()
    if not torch.isfinite(w).all():
        raise ValueError(f"condition number: the matrix has {int((~torch.isfinite(w)).sum())} NaN/inf entries")
    s = torch.linalg.svdvals(w)
    return _ratio(s, s.min(), max(w.shape), eps).float()


def covariance_condition_number(x: torch.Tensor, feature_dim: int = -1) -> torch.Tensor:
    """kappa(Cov(x)) = lambda_max / lambda_min = (s_max / s_min)^2 of the centred samples X_c (N, D).

    The D features lie along ``feature_dim``, every other dim indexes samples: the default -1 suits
    channels-last tensors ((N, D), a sequence (B, T, D): B T samples); pass ``feature_dim=1`` for
    channels-first conv activations (N, C, H, W), whose N H W positions are then the samples of C channels.
    inf when the covariance is singular, by numpy's matrix_rank rule on X_c: s_min <= s_max max(N, D)
    eps(x's dtype) (a constant or linearly dependent feature, or N <= D). Bias: the sample covariance's
    extreme eigenvalues spread with D/N, so kappa is biased high for N not much larger than D.
    Cost O(N D min(N, D))."""
    if not torch.is_tensor(x) or x.dim() == 0:
        raise ValueError(f"covariance condition number needs samples (N, ..., D), got {x!r}")
    if not -x.dim() <= feature_dim < x.dim():
        raise ValueError(f"feature_dim {feature_dim} is out of range for x of shape {tuple(x.shape)}")
    eps = _eps(x.dtype)
    x = x.detach().movedim(feature_dim, -1)
    x = x.reshape(-1, x.shape[-1]).double()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"covariance needs at least 2 samples, got {n}")
    if not torch.isfinite(x).all():
        raise ValueError(f"covariance condition number: x has {int((~torch.isfinite(x)).sum())} NaN/inf entries")
    s = torch.linalg.svdvals(x - x.mean(0))
    s_min = s.min() if n > d else s.new_zeros(())  # N <= D: rank(X_c) <= N - 1 < D
    return (_ratio(s, s_min, max(n, d), eps) ** 2).float()


def condition_number(of: str = "matrix", feature_dim: int | None = None) -> Estimator:
    """Probe estimator: kappa of the tensor as a matrix (``of="matrix"``, for weights) or of its covariance
    (``of="covariance"``, features along ``feature_dim``, default -1)."""
    fns = {"matrix": matrix_condition_number, "covariance": covariance_condition_number}
    if of not in fns:
        raise ValueError(f"condition_number: of must be one of {list(fns)}, got {of!r}")
    if feature_dim is None:
        return Estimator(f"condition_number_{of}", fns[of])
    if of != "covariance":
        raise ValueError(f"condition_number: feature_dim applies to of='covariance' only, got of={of!r}")
    return Estimator(f"condition_number_{of}", fns[of], feature_dim=feature_dim)
