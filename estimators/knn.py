"""k-nearest-neighbour estimators: Kozachenko-Leonenko entropy and Kraskov-Stoegbauer-Grassberger (KSG) MI.

The neighbour search is exact and brute force, in row chunks: each chunk computes its distances to all
N points with ``torch.cdist`` and keeps what it needs (k smallest via ``topk``, counts), so memory is
O(chunk * N) and 10^5 samples fit on a GPU. Cost O(N^2 (D_x + D_y)) time; no tree, so it is slower
than scikit-learn's KD-tree on a CPU for 1-D data but runs on any device at any dimension.
"""
from __future__ import annotations

import math

import torch

from .estimator import Estimator, log_base
from .paired import paired
from .samples import as_samples, same_rows, standardise_columns

_METRICS = {"chebyshev": float("inf"), "euclidean": 2.0}


def _chunk_rows(n: int, chunk_size: int | None, tensors: int = 4, budget_bytes: int = 256 * 2**20) -> int:
    return chunk_size or max(1, min(n, budget_bytes // (8 * n * tensors)))


def _check_k(k: int, n: int) -> None:
    if not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, N-1] = [1, {n - 1}], got {k!r}")


def kozachenko_leonenko_entropy(x: torch.Tensor, k: int = 3, metric: str = "euclidean", base: float | str = "nats",
                                chunk_size: int | None = None) -> torch.Tensor:
    """H(X) = psi(N) - psi(k) + log V_d + (d/N) sum_i log r_i  (Kozachenko & Leonenko 1987; Kraskov et al. 2004, eq. 20).

    r_i is the distance from x_i to its k-th nearest neighbour, V_d the volume of the unit ball of the
    metric (pi^{d/2}/Gamma(d/2+1) euclidean, 2^d chebyshev). Differential entropy in nats (or ``base``).
    Bias: asymptotically unbiased; for finite N it is biased low in high dimension (the k-NN ball is not
    locally uniform). Duplicate points (r_i = 0) are an error: the density is not continuous there.
    Cost O(N^2 d).
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}")
    x = as_samples(x, "x")
    n, d = x.shape
    _check_k(k, n)
    step = _chunk_rows(n, chunk_size)
    radii = []
    for i in range(0, n, step):
        dist = torch.cdist(x[i:i + step], x, p=_METRICS[metric])
        dist[torch.arange(dist.shape[0]), torch.arange(i, i + dist.shape[0])] = float("inf")
        radii.append(dist.topk(k, dim=1, largest=False).values[:, -1])
    r = torch.cat(radii)
    if (r == 0).any():
        raise ValueError(f"x has duplicate points: {int((r == 0).sum())} samples have their k={k}-th neighbour at "
                         "distance 0; add small noise or raise k")
    log_volume = d * math.log(2.0) if metric == "chebyshev" else d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1)
    h = torch.special.digamma(torch.tensor(float(n), dtype=x.dtype)) - torch.special.digamma(
        torch.tensor(float(k), dtype=x.dtype)) + log_volume + d * r.log().mean().cpu()
    return (h / log_base(base)).float()


def ksg_mutual_information(x: torch.Tensor, y: torch.Tensor, k: int = 3, variant: int = 1, standardise: bool = True,
                           base: float | str = "nats", chunk_size: int | None = None,
                           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """KSG estimator of I(X;Y) for X (N, ...) and Y (N, ...) of any dimensions (Kraskov et al. 2004, eqs. 8 and 9).

    Max-norm in the joint space Z = (X, Y). With eps_i the distance to the k-th joint neighbour,
    variant 1: I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >, n_x = #{j != i: |x_j - x_i| < eps_i};
    variant 2: I = psi(k) - 1/k + psi(N) - < psi(n_x) + psi(n_y) >, n_x = #{j != i: |x_j - x_i| <= eps_x,i}
    with eps_x,i the largest x-distance among the k joint neighbours. Nats (or ``base``).
    ``standardise`` divides every column by its std first (as scikit-learn does; constant columns stay).
    Variant 1 with k=3 is scikit-learn's ``mutual_info_regression`` without its clipping at 0 and its
    1e-10 noise. Bias: ~0 for independent variables (estimates scatter around 0 and may be negative);
    underestimates large MI (at least exp(I) ~ N needed) and in high dimension. Duplicate joint points
    give a finite but biased value (counts with eps = 0 are 0). Cost O(N^2 (D_x + D_y)), memory
    O(chunk_size * N).
    """
    if variant not in (1, 2):
        raise ValueError(f"variant must be 1 or 2 (KSG-1 or KSG-2), got {variant!r}")
    x, y = as_samples(x, "x", dtype), as_samples(y, "y", dtype)
    same_rows(x, y)
    n = x.shape[0]
    _check_k(k, n)
    if standardise:
        x, y = standardise_columns(x), standardise_columns(y)
    step = _chunk_rows(n, chunk_size)
    nx, ny = [], []
    for i in range(0, n, step):
        dx = torch.cdist(x[i:i + step], x, p=float("inf"))
        dy = torch.cdist(y[i:i + step], y, p=float("inf"))
        dz = torch.maximum(dx, dy)
        dz[torch.arange(dz.shape[0]), torch.arange(i, i + dz.shape[0])] = float("inf")
        eps, idx = dz.topk(k, dim=1, largest=False)
        if variant == 1:
            e = eps[:, -1:]
            self_counted = (e > 0).to(torch.long).squeeze(1)
            nx.append((dx < e).sum(1) - self_counted)
            ny.append((dy < e).sum(1) - self_counted)
        else:
            ex = dx.gather(1, idx).amax(1, keepdim=True)
            ey = dy.gather(1, idx).amax(1, keepdim=True)
            nx.append((dx <= ex).sum(1) - 1)
            ny.append((dy <= ey).sum(1) - 1)
    nx, ny = torch.cat(nx).to(dtype), torch.cat(ny).to(dtype)
    psi = torch.special.digamma
    n_t, k_t = torch.tensor(float(n), dtype=dtype, device=x.device), torch.tensor(float(k), dtype=dtype, device=x.device)
    if variant == 1:
        mi = psi(k_t) + psi(n_t) - (psi(nx + 1) + psi(ny + 1)).mean()
    else:
        mi = psi(k_t) - 1.0 / k + psi(n_t) - (psi(nx) + psi(ny)).mean()
    return (mi / log_base(base)).float()


def knn_entropy(k: int = 3, metric: str = "euclidean", base: float | str = "nats") -> Estimator:
    """Probe estimator: Kozachenko-Leonenko entropy of the probe tensor's rows."""
    return Estimator("knn_entropy", kozachenko_leonenko_entropy, k=k, metric=metric, base=base)


def ksg_mi(target=None, k: int = 3, variant: int = 1, base: float | str = "nats") -> Estimator:
    """Probe estimator: KSG I(T; target) between the probe tensor T and a bound target (see estimators.paired)."""
    return paired(f"ksg{variant}_mi", ksg_mutual_information, target, k=k, variant=variant, base=base)
