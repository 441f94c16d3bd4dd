"""Dynamical-systems reconstruction measures: state-space divergence and power-spectrum distance.

Both compare a generated trajectory with the true one through long-term statistics (the attractor's
occupation and its spectrum), not step-wise error, as is standard in DSR (Koppe et al. 2019,
Mikhaeil et al. 2022, Brenner et al. 2024).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from .estimator import log_base


def _check_pair(x_true: torch.Tensor, x_gen: torch.Tensor, name: str, spread: bool = False) -> None:
    """Two (time, dims) series with equal dims; with ``spread``, x_true must vary in every dimension."""
    if x_true.dim() != 2 or x_gen.dim() != 2 or x_true.shape[1] != x_gen.shape[1]:
        raise ValueError(f"{name}: x_true and x_gen must be (time, dims) with equal dims, got "
                         f"{tuple(x_true.shape)} and {tuple(x_gen.shape)}")
    if not spread or not len(x_true):
        return
    flat = (x_true.amax(0) == x_true.amin(0)).nonzero().flatten().tolist()
    if flat:  # D_stsp's grid would have no width there (every true point off it: inf), D_H's spectrum 0/0 (NaN)
        raise ValueError(f"{name}: x_true is constant in dimension(s) {flat}, which have no distribution or spectrum "
                         "to compare; leave them out")


def state_space_divergence(x_true: torch.Tensor, x_gen: torch.Tensor, n_bins: int = 30, alpha: float = 1e-5,
                           base: float | str = "nats") -> torch.Tensor:
    """D_stsp = KL(p_true || p_gen) = sum_k p_true,k log(p_true,k / p_gen,k) over a grid of n_bins^N cells.

    The grid spans [min - 0.1 std, max + 0.1 std] of x_true per dimension; generated points outside it
    are dropped; both histograms get Laplace smoothing p = (count + alpha) / (total + alpha n_bins^N),
    as in the AL-RNN authors' code. Where no generated point falls on the grid the result is inf (all of
    p_gen's mass lies outside p_true's region; the authors' code gives NaN, and smoothing alone would give
    a uniform p_gen that scores better than a trajectory stuck in one wrong cell). 0 for identical
    occupation; bias: grows with n_bins^N / T. Cost O(T N) plus O(n_bins^N) memory, so use it for N <= ~6.
    """
    _check_pair(x_true, x_gen, "state_space_divergence", spread=True)
    x_true, x_gen = x_true.double(), x_gen.double()
    n = x_true.shape[1]
    std = x_true.std(0)
    lo, hi = x_true.min(0).values - 0.1 * std, x_true.max(0).values + 0.1 * std
    cells = n_bins ** n
    strides = n_bins ** torch.arange(n, device=x_true.device)

    def counts(x):
        idx = torch.floor((x - lo) / (hi - lo) * n_bins).long()
        inside = ((idx >= 0) & (idx < n_bins)).all(1)
        return torch.bincount((idx[inside] * strides).sum(1), minlength=cells).double()

    def smoothed(c):
        return (c + alpha) / (c.sum() + alpha * cells)

    c_gen = counts(x_gen)
    p, q = smoothed(counts(x_true)), smoothed(c_gen)
    divergence = (p * (p.log() - q.log())).sum() / log_base(base)
    return torch.where(c_gen.sum() > 0, divergence, torch.inf)


def _gaussian_smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian filter along the last dim as scipy's gaussian_filter1d: kernel truncated at 4 sigma, edges
    mirrored about the half-sample point (d c b a | a b c d), repeatedly where the kernel is wider than x."""
    radius = int(4 * sigma + 0.5)
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (k / sigma) ** 2)
    taps = (kernel / kernel.sum()).tolist()
    n = x.shape[-1]
    index = torch.arange(-radius, n + radius, device=x.device) % (2 * n)  # the mirrored series has period 2n
    index = torch.where(index < n, index, 2 * n - 1 - index)
    padded = x[..., index]
    # one scaled add per tap: float64 conv1d has no fast CPU kernel (10x slower on a 100,000-step series)
    out = padded[..., :n] * taps[0]
    for j in range(1, len(taps)):
        out.add_(padded[..., j:j + n], alpha=taps[j])
    return out


def power_spectra(x: torch.Tensor, smoothing: float = 20.0) -> torch.Tensor:
    """Per-dimension normalised power spectrum of x (T, N) -> (N, T//2+1): |rfft(z-scored x)|^2, Gaussian-smoothed, sums to 1
    (NaN for a constant dimension, which has no spectrum)."""
    x = x.double()
    x = (x - x.mean(0)) / x.std(0)
    ps = torch.fft.rfft(x.T, dim=-1).abs() ** 2
    if smoothing > 0:
        ps = _gaussian_smooth(ps, smoothing)
    ps = ps.clamp_min(0)
    return ps / ps.sum(-1, keepdim=True)


def power_spectrum_distance(x_true: torch.Tensor, x_gen: torch.Tensor, smoothing: float = 20.0) -> torch.Tensor:
    """D_H = mean over dims of the Hellinger distance H(p, q) = sqrt(1 - sum_f sqrt(p_f q_f)) between smoothed spectra.

    In [0, 1]: 0 for identical spectra, 1 for spectra with disjoint support, and 1 for a dimension in which x_gen
    is constant (a fixed point: no fluctuation, so no spectrum to share; it was NaN). Both series must have the
    same length (same frequency grid). Cost O(N T log T).
    """
    _check_pair(x_true, x_gen, "power_spectrum_distance", spread=True)
    if x_true.shape[0] != x_gen.shape[0]:
        raise ValueError(f"power_spectrum_distance: series need equal length, got {x_true.shape[0]} and {x_gen.shape[0]}")
    p, q = power_spectra(x_true, smoothing), power_spectra(x_gen, smoothing)
    bc = (p * q).sqrt().sum(-1).clamp(max=1.0)
    return torch.where(x_gen.amax(0) == x_gen.amin(0), 1.0, (1 - bc).sqrt()).mean()


def prediction_error(x_true: torch.Tensor, x_pred: torch.Tensor) -> torch.Tensor:
    """Mean squared error over time and dims, in x's units squared (the n-step prediction error PE_n of the DSR
    measures, Brenner et al. 2024, when x_pred are n-step predictions)."""
    _check_pair(x_true, x_pred, "prediction_error")
    return F.mse_loss(x_pred.double(), x_true.double())


__all__ = ["state_space_divergence", "power_spectrum_distance", "power_spectra", "prediction_error"]
