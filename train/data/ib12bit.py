"""The 12-bit binary task of Shwartz-Ziv & Tishby (2017, "Opening the Black Box of Deep Neural Networks via
Information"), generated offline.

Published facts: the 12 inputs are binary, one per point of 12 uniformly spread points on the 2-sphere;
X takes all 4096 patterns with equal probability; the label is y = Theta(f(x) - theta) for a spherically
symmetric real function f and a threshold theta giving balanced classes (I(X;Y) ~ 0.99 bits). The exact
f is not published, so we fix one: the 12 points are the vertices v_i of the regular icosahedron (the
uniform arrangement of 12 points), f(x) = sum_i x_i + 0.1 |sum_i x_i v_i|^2 (depends only on the
pattern's geometry, so it is invariant under the icosahedron's rotations), and theta is the value
whose class split is closest to 50/50 (P(y=1) = 0.517, H(Y) = 0.9992 bits). As in the authors' data,
the label is set mostly by the number of active bits (all patterns with <= 5 ones are 0, >= 7 ones
are 1) and, for 6 ones, by their arrangement (57.6% are 1, as in the authors' file).
"""
from __future__ import annotations

import math

import torch


def icosahedron_vertices() -> torch.Tensor:
    """(12, 3) unit vectors: the cyclic permutations of (0, +-1, +-phi), normalised."""
    phi = (1 + math.sqrt(5)) / 2
    v = [p for a in (-1.0, 1.0) for b in (-phi, phi) for p in ((0.0, a, b), (a, b, 0.0), (b, 0.0, a))]
    v = torch.tensor(v, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def ib12bit(weight: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """All 4096 inputs x (4096, 12) float32 in {0, 1} (row i = the bits of i) and labels y (4096,) int64."""
    x = ((torch.arange(4096)[:, None] >> torch.arange(12)) & 1).double()
    f = x.sum(1) + weight * (x @ icosahedron_vertices()).pow(2).sum(1)
    f = f.round(decimals=9)  # equal geometries give exactly equal f
    values = f.unique()
    share = torch.stack([(f >= t).double().mean() for t in values])
    theta = values[(share - 0.5).abs().argmin()]
    return x.float(), (f >= theta).long()


def split(n: int, train_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random train/test index split of range(n) (the paper trains on part of the 4096 patterns)."""
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(train_fraction * n))
    return perm[:k], perm[k:]
