"""Input checking shared by the sample-based estimators: tensors of samples become (N, D) floating matrices; and
their pairwise squared distances."""
from __future__ import annotations

import torch


def as_samples(x: torch.Tensor, name: str, dtype: torch.dtype = torch.float64, min_rows: int = 2) -> torch.Tensor:
    """``x`` (N, ...) -> (N, D) of ``dtype``, D = prod of the trailing dims; a 1-D ``x`` is N samples of one dim.

    Raises a ValueError naming ``name`` for non-tensors, too few rows, or NaN/inf entries.
    """
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor of samples (N, ...), got {type(x).__name__}")
    if torch.is_complex(x):
        raise TypeError(f"{name} is complex ({x.dtype}); the estimators take real samples: pass "
                        f"torch.view_as_real({name}) for the real and imaginary parts as two features")
    if x.dim() == 0 or x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} samples on dim 0, got shape {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], -1)
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no features: shape {tuple(x.shape)}")
    if torch.is_floating_point(x):
        bad = ~torch.isfinite(x)
        if bad.any():
            raise ValueError(f"{name} has {int(bad.sum())} NaN/inf entries (of {x.numel()}); estimators need finite samples")
    return x.to(dtype).contiguous()  # one memory layout: results do not depend on the input's strides


def squared_distances(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """|x_i - y_j|^2 (N, M) by the matmul form (fast at any D), never negative; for y = None or y is x (x against
    itself) the diagonal is exactly 0, so a kernel exp(-d^2 / (2 sigma^2)) has K_ii = 1 at any sigma. The points
    are centred on their pooled mean first: the matmul form |a|^2 + |b|^2 - 2ab loses the distances to
    cancellation when the points sit far from the origin (an offset of 1e8 changed a Renyi entropy by 15 %)."""
    self_distances = y is None or y is x
    centre = x.mean(0) if self_distances else torch.cat([x, y]).mean(0)
    x = x - centre
    d2 = torch.cdist(x, x if self_distances else y - centre).pow_(2)
    if self_distances:
        d2.diagonal().zero_()
    return d2


def same_rows(x: torch.Tensor, y: torch.Tensor, names: str = "x and y") -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{names} must hold the same number of samples (paired rows), got {x.shape[0]} and {y.shape[0]}")


def standardise_columns(x: torch.Tensor) -> torch.Tensor:
    """x / std per column (no centring, as scikit-learn's MI); constant columns are left as they are. The std is
    taken over the sorted column, so that its last-bit rounding, and with it how ties on a lattice break, does not
    depend on the order of the rows (estimates are exactly permutation invariant). Each column is first scaled by
    the power of two nearest its largest magnitude, which is exact, so that the std neither overflows nor
    underflows at extreme scales (1e154, 1e-170: the column read as constant and the MI as 0)."""
    peak = x.abs().amax(0, keepdim=True)
    x = torch.ldexp(x, -torch.frexp(torch.where(peak > 0, peak, torch.ones_like(peak))).exponent)
    std = x.sort(0).values.std(0, keepdim=True) if x.shape[0] > 1 else torch.ones_like(x[:1])
    return x / torch.where(std > 0, std, torch.ones_like(std))
