"""Condition numbers of weights and of representation covariances."""
from __future__ import annotations

import torch

from .estimator import Estimator


def _ratio(s: torch.Tensor, s_min: torch.Tensor, size: int) -> torch.Tensor:
    """s_max / s_min of float64 singular values s, inf when s_min <= s_max size eps(float64) (numpy's
    matrix_rank rule for the float64 SVD that computed them)."""
    return torch.where(s_min <= s.max() * size * torch.finfo(torch.float64).eps, torch.inf, s.max() / s_min)


def matrix_condition_number(w: torch.Tensor) -> torch.Tensor:
    """kappa(W) = s_max / s_min of W reshaped to 2-D (shape[0], rest), e.g. a conv kernel out x (in*kh*kw);
    dimensionless, >= 1.

    The kappa of W's values as given, whatever its dtype: the SVD runs in float64, and s_min is the
    min(m, n)-th singular value; inf when W is singular to that precision (numpy's matrix_rank rule in
    float64, s_min <= s_max max(m, n) eps(float64)). A matrix singular only up to its own dtype's rounding (a
    float32 product of rank 2, a bfloat16 weight) gives a large finite kappa, of the order of 1/eps(dtype)
    (1e7 for float32, 1e2 to 1e3 for bfloat16): beyond that a low-precision matrix cannot tell apart
    ill-conditioned and singular. Cost: one SVD, O(m n min(m, n)).
    """
    if not torch.is_tensor(w):
        raise TypeError(f"condition number: w must be a tensor, got {type(w).__name__}")
    if w.dim() < 2 or w.numel() == 0:
        raise ValueError(f"condition number needs a non-empty matrix (>= 2 dims), got shape {tuple(w.shape)}")
    w = w.detach().reshape(w.shape[0], -1).double()
    if not torch.isfinite(w).all():
        raise ValueError(f"condition number: the matrix has {int((~torch.isfinite(w)).sum())} NaN/inf entries")
    s = torch.linalg.svdvals(w)
    return _ratio(s, s.min(), max(w.shape)).float()


def covariance_condition_number(x: torch.Tensor, feature_dim: int = -1) -> torch.Tensor:
    """kappa(Cov(x)) = lambda_max / lambda_min = (s_max / s_min)^2 of the centred samples X_c (N, D); dimensionless.

    The D features lie along ``feature_dim``, every other dim indexes samples: the default -1 suits
    channels-last tensors ((N, D), a sequence (B, T, D): B T samples); pass ``feature_dim=1`` for
    channels-first conv activations (N, C, H, W), whose N H W positions are then the samples of C channels.
    inf when the covariance is singular, by numpy's matrix_rank rule on X_c in float64: s_min <= s_max
    max(N, D) eps(float64) (a constant or exactly dependent feature, or N <= D); as for
    ``matrix_condition_number``, features dependent only up to x's own rounding give a large finite kappa,
    here of the order of 1/eps(dtype)^2. Bias: the sample covariance's
    extreme eigenvalues spread with D/N, so kappa is biased high for N not much larger than D.
    Cost O(N D min(N, D))."""
    if not torch.is_tensor(x) or x.dim() == 0:
        raise ValueError(f"covariance condition number needs samples (N, ..., D), got {x!r}")
    if not -x.dim() <= feature_dim < x.dim():
        raise ValueError(f"feature_dim {feature_dim} is out of range for x of shape {tuple(x.shape)}")
    x = x.detach().movedim(feature_dim, -1)
    if x.numel() == 0:
        raise ValueError(f"covariance condition number: x is empty, shape {tuple(x.shape)}")
    x = x.reshape(-1, x.shape[-1]).double()
    n, d = x.shape
    if n < 2:
        raise ValueError(f"covariance needs at least 2 samples, got {n}")
    if not torch.isfinite(x).all():
        raise ValueError(f"covariance condition number: x has {int((~torch.isfinite(x)).sum())} NaN/inf entries")
    s = torch.linalg.svdvals(x - x.mean(0))
    s_min = s.min() if n > d else s.new_zeros(())  # N <= D: rank(X_c) <= N - 1 < D
    return (_ratio(s, s_min, max(n, d)) ** 2).float()


def condition_number(of: str = "matrix", feature_dim: int | None = None) -> Estimator:
    """Probe estimator: kappa of the tensor as a matrix (``of="matrix"``, for weights) or of its covariance
    (``of="covariance"``, features along ``feature_dim``, default -1)."""
    fns = {"matrix": matrix_condition_number, "covariance": covariance_condition_number}
    if of not in fns:
        raise ValueError(f"condition_number: of must be one of {list(fns)}, got {of!r}")
    if feature_dim is None:
        return Estimator(f"condition_number_{of}", fns[of], unit="ratio")
    if of != "covariance":
        raise ValueError(f"condition_number: feature_dim applies to of='covariance' only, got of={of!r}")
    return Estimator(f"condition_number_{of}", fns[of], unit="ratio", feature_dim=feature_dim)
