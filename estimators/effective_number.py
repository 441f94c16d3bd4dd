"""Effective numbers exp(H(p)) of a normalised non-negative vector: effective rank of a matrix
(Roy & Vetterli 2007) and the effective feature count of a mass distribution (superposition)."""
from __future__ import annotations

import math
import numbers

import torch

from .estimator import Estimator


def _exp_entropy(mass: torch.Tensor) -> torch.Tensor:
    p = mass / mass.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum())


def spectral_effective_rank(w: torch.Tensor) -> torch.Tensor:
    """erank(W) = exp( -sum_i p_i log p_i ), p_i = s_i / sum_j s_j over the singular values of W (Roy & Vetterli 2007, eq. 2).

    W is reshaped to (shape[0], rest) (conv kernels: out x in*kh*kw; activations (N, ...): samples x
    features). Real number in [1, rank(W)]: k for k equal non-zero singular values; 0 for the zero matrix (rank 0:
    a dead layer, or PV-RNN's posteriors before training, is a value to record, not an error). Exact (no sampling
    bias for a given W). Cost one SVD, O(m n min(m, n)).
    """
    if not torch.is_tensor(w) or w.dim() < 2 or w.numel() == 0:
        raise ValueError(f"effective rank needs a non-empty matrix (>= 2 dims), got "
                         f"{tuple(w.shape) if torch.is_tensor(w) else w!r}")
    w = w.detach().reshape(w.shape[0], -1).double()
    if not torch.isfinite(w).all():
        raise ValueError("effective rank: w has NaN/inf entries")
    s = torch.linalg.svdvals(w)
    if s.sum() == 0:
        return s.new_zeros(()).float()
    return _exp_entropy(s).float()


def _check_power(power) -> None:
    if not (isinstance(power, numbers.Real) and not isinstance(power, bool) and 0 <= power < math.inf):
        raise ValueError(f"feature count: power must be a finite number >= 0, got {power!r}")


def effective_feature_count(x: torch.Tensor, power: float = 1.0, feature_dim: int = -1) -> torch.Tensor:
    """N_eff = exp(H(p)), p_f = m_f / sum_g m_g with mass m_f = sum |x_{..f..}|^power over all dims but
    ``feature_dim`` (m = |x|^power for 1-D x); ``power=0`` counts the non-zero entries (the L0 mass: how
    often each feature is active).

    The effective number of features carrying the mass (e.g. sparse-autoencoder codes (N, F), feature
    norms, per-feature importances): F for uniform mass, 1 when one feature holds all, 0 when none holds any
    (an all-zero code: no active feature). Features lie along
    ``feature_dim``: the default -1 suits channels-last tensors ((N, F), a sequence (B, T, F)); pass
    ``feature_dim=1`` for channels-first conv activations (N, C, H, W) to count channels. Exact for the
    given mass; a sample estimate of the population count, biased up by sampling noise on idle
    features. Cost O(numel).
    """
    if not torch.is_tensor(x) or x.dim() == 0:
        raise ValueError(f"feature count needs a tensor (F,) or (N, ..., F), got {x!r}")
    _check_power(power)
    if not -x.dim() <= feature_dim < x.dim():
        raise ValueError(f"feature count: feature_dim {feature_dim} is out of range for x of shape {tuple(x.shape)}")
    x = x.detach().double()
    if not torch.isfinite(x).all():
        raise ValueError("feature count: x has NaN/inf entries")
    scale = x.abs().max()  # (|x| / scale)^power: p is unchanged and |x|^power cannot overflow to inf / inf
    mass = (x != 0).double() if power == 0 or scale == 0 else (x.abs() / scale) ** power
    mass = mass.movedim(feature_dim, -1)
    mass = mass.reshape(-1, mass.shape[-1]).sum(0)
    if mass.sum() == 0:
        return mass.new_zeros(()).float()
    return _exp_entropy(mass).float()


def effective_rank() -> Estimator:
    """Probe estimator: Roy-Vetterli effective rank of the tensor as a matrix (weights or (N, D) activations)."""
    return Estimator("effective_rank", spectral_effective_rank, unit="dimensions")


def feature_count(power: float = 1.0, feature_dim: int = -1) -> Estimator:
    """Probe estimator: effective number of features exp(H) of the per-feature mass of the probe tensor
    (features along ``feature_dim``)."""
    _check_power(power)
    return Estimator("feature_count", effective_feature_count, unit="features", power=power, feature_dim=feature_dim)
