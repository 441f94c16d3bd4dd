"""k-nearest-neighbour estimators: Kozachenko-Leonenko entropy and Kraskov-Stoegbauer-Grassberger (KSG) MI.

Three exact neighbour searches give the same neighbours and counts:
- ``"brute"``: row chunks; each chunk computes its distances to all N points (``torch.cdist``; on CUDA the
  max-norm is built one dimension at a time, see ``_distances``) and keeps what it needs (k smallest via
  ``topk``, counts), so memory is O(chunk * N) and 10^5 samples fit on a GPU. Cost O(N^2 (D_x + D_y)), on
  any device and at any dimension.
- ``"tree"``: scipy's ``cKDTree`` (k-th neighbour queries and radius counts, as scikit-learn does), about
  O(N log N) at low dimension; CPU only.
- ``"fused"`` (KSG only): Triton kernels that do the brute force's arithmetic without writing any distance to
  memory (``knn_fused``); CUDA, max-norm, k <= 16, at most 32 dimensions per variable.
``method="auto"`` takes the tree for CPU tensors of at most 20 (joint) dimensions, the fused kernels for CUDA
tensors where they apply, and brute force otherwise.
"""
from __future__ import annotations

import math
import warnings

import torch

from . import knn_fused
from .estimator import Estimator, is_ksg_variant, is_whole, log_base
from .paired import paired
from .samples import as_samples, same_rows, standardise_columns

_METRICS = {"chebyshev": float("inf"), "euclidean": 2.0}
_TREE_MAX_DIMS = 20  # KD-trees lose to brute force well before this in high dimension; stay conservative


def _chunk_rows(n: int, chunk_size: int | None, device: torch.device, tensors: int = 4) -> int:
    if chunk_size is not None and not is_whole(chunk_size):
        raise ValueError(f"chunk_size must be None (sized to memory) or an integer >= 1, got {chunk_size!r}")
    budget_bytes = (2**30 if device.type == "cuda" else 2**28)  # per chunk: `tensors` (chunk, N) float64 arrays
    return chunk_size or max(1, min(n, budget_bytes // (8 * n * tensors)))


def _distances(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """Minkowski-p distances between the rows of a (m, D) and b (n, D), shape (m, n), computed from the
    differences, so a point is at exactly 0 from itself and from its copies. (For p = 2 cdist would otherwise
    take the |a|^2 + |b|^2 - 2 a.b matmul form above 25 rows, whose rounding puts copies about 1e-8 apart: duplicate
    checks and ties then fail silently. The exact form costs O(m n D) without BLAS: at D = 512 about 15x slower.)

    On CUDA the max-norm of up to 64 dimensions goes through ``_max_norm_by_dims``: torch.cdist's kernel for
    p != 2 gives every pair its own thread block, which is slow at small D. On CPU cdist is the faster one.
    """
    if p == float("inf") and a.device.type == "cuda" and a.shape[1] <= 64:
        return _max_norm_by_dims(a, b)
    return torch.cdist(a, b, p=p, compute_mode="donot_use_mm_for_euclid_dist")


def _max_norm_by_dims(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max_d |a_id - b_jd| built one feature dimension at a time (elementwise, in place): cdist's exact values."""
    out = (a[:, None, 0] - b[None, :, 0]).abs_()
    for j in range(1, a.shape[1]):  # a loop over feature dimensions, not samples
        torch.maximum(out, (a[:, None, j] - b[None, :, j]).abs_(), out=out)
    return out


def _exclude_self(dist: torch.Tensor, start: int) -> None:
    """Set the distance of row i (sample start + i) to itself to +inf, in place."""
    rows = torch.arange(dist.shape[0], device=dist.device)
    dist[rows, rows + start] = float("inf")


def _use_tree(method: str, x: torch.Tensor, dims: int) -> bool:
    if method not in ("auto", "tree", "brute", "fused"):
        raise ValueError(f"method must be 'auto', 'tree', 'brute' or 'fused', got {method!r}")
    if method == "tree" and x.device.type != "cpu":
        raise ValueError(f"method='tree' runs on CPU tensors only (got device {x.device}); use 'brute' or 'auto'")
    return method == "tree" or (method == "auto" and x.device.type == "cpu" and dims <= _TREE_MAX_DIMS)


def _use_fused(method: str, x: torch.Tensor, y: torch.Tensor, k: int) -> bool:
    if method == "fused" and not knn_fused.available(x, y, k):
        raise ValueError(f"method='fused' needs CUDA tensors, Triton, k <= {knn_fused.MAX_K} and at most "
                         f"{knn_fused.MAX_DIMS} dimensions per variable (got device {x.device}, k={k}, dims "
                         f"{x.shape[1]} and {y.shape[1]}); use 'auto' or 'brute'")
    return method == "fused" or (method == "auto" and knn_fused.available(x, y, k))


def _tree_counts(points, radii, strict: bool, rows=None):
    """#{j != i: ||p_j - p_i||_inf < r_i} (strict) or <= r_i, for every i (or the indices ``rows``, whose radii
    ``radii`` then are), by cKDTree radius queries."""
    import numpy as np
    from scipy.spatial import cKDTree

    queries = points if rows is None else points[rows]
    r = np.nextafter(radii, 0) if strict else radii
    counts = cKDTree(points).query_ball_point(queries, r, p=np.inf, return_length=True, workers=-1) - 1  # less itself
    return np.where(radii > 0, counts, 0) if strict else counts  # nothing is closer than 0


def _marginal_reach(near: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KSG-2's eps_x, eps_y (rows, 1): the largest x and y distances to the joint neighbours marked by ``near``."""
    return torch.where(near, dx, 0).amax(1, keepdim=True), torch.where(near, dy, 0).amax(1, keepdim=True)


def _check_k(k: int, n: int) -> int:
    """``k`` as an int (a numpy integer too); a ValueError unless it is an integer in [1, N-1]."""
    if not is_whole(k, 1) or not k < n:
        raise ValueError(f"k must be an integer in [1, N-1] = [1, {n - 1}], got {k!r}")
    return int(k)


def kozachenko_leonenko_entropy(x: torch.Tensor, k: int = 3, metric: str = "euclidean", base: float | str = "nats",
                                chunk_size: int | None = None, method: str = "auto") -> torch.Tensor:
    """H(X) = psi(N) - psi(k) + log V_d + (d/N) sum_i log r_i  (Kozachenko & Leonenko 1987; Kraskov et al. 2004, eq. 20).

    r_i is the distance from x_i to its k-th nearest neighbour, V_d the volume of the unit ball of the
    metric (pi^{d/2}/Gamma(d/2+1) euclidean, 2^d chebyshev). Differential entropy in nats (or ``base``).
    Bias: asymptotically unbiased; for finite N it overestimates in high dimension (the k-NN ball is not
    locally uniform): on a standard Gaussian with N = 2000, k = 3 the error is +0.1 nats at d = 10, +1.0 at
    d = 20 and +6.3 at d = 50. A point whose k-th neighbour is a copy of it (r_i = 0: more than k copies) is an
    error, since the density is not continuous there; fewer than k+1 copies give a finite value (the k-th
    neighbour is then a distinct point). So are constant columns: X then has no density in R^d, and its differential entropy is -inf (drop them).
    Cost O(N^2 d) brute force, about O(N log N) with the tree (``method``, see the module docstring).
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}")
    x = as_samples(x, "x")
    n, d = x.shape
    k = _check_k(k, n)
    # H(x) = H(x / 2^e) + d e log 2 exactly (a power of two scales every distance exactly, and keeps the
    # neighbours): x is brought to magnitudes about 1, so that distances neither overflow nor underflow
    peak = x.abs().max()
    exponent = int(torch.frexp(peak).exponent) if peak > 0 else 0
    x = torch.ldexp(x, torch.tensor(-exponent, device=x.device))
    constant = (x == x[:1]).all(0).nonzero().flatten().tolist()
    if constant:
        raise ValueError(f"x has constant columns {constant} (dead units, e.g. of a ReLU layer): its differential "
                         "entropy is -inf; drop them, or measure with binned_entropy or ksg_mi")
    if method == "fused":
        raise ValueError("kozachenko_leonenko_entropy: method='fused' exists for KSG only; use 'auto', 'tree' or 'brute'")
    if _use_tree(method, x, d):
        from scipy.spatial import cKDTree

        points = x.double().numpy()
        r = torch.from_numpy(cKDTree(points).query(points, k=k + 1, p=_METRICS[metric], workers=-1)[0][:, k]).to(x.dtype)
    else:
        step = _chunk_rows(n, chunk_size, x.device)
        radii = []
        for i in range(0, n, step):
            dist = _distances(x[i:i + step], x, _METRICS[metric])
            _exclude_self(dist, i)
            radii.append(dist.topk(k, dim=1, largest=False).values[:, -1])
        r = torch.cat(radii)
    if (r == 0).any():
        raise ValueError(f"x has duplicate points: {int((r == 0).sum())} samples have their k={k}-th neighbour at "
                         "distance 0; add small noise or raise k")
    log_volume = d * math.log(2.0) if metric == "chebyshev" else d / 2 * math.log(math.pi) - math.lgamma(d / 2 + 1)
    n_t, k_t = (torch.tensor(float(v), dtype=x.dtype, device=x.device) for v in (n, k))
    h = (torch.special.digamma(n_t) - torch.special.digamma(k_t) + log_volume + d * r.to(x.device).log().mean()
         + d * exponent * math.log(2.0))
    return (h / log_base(base)).float()


def ksg_mutual_information(x: torch.Tensor, y: torch.Tensor, k: int = 3, variant: int = 1, standardise: bool = True,
                           base: float | str = "nats", chunk_size: int | None = None,
                           dtype: torch.dtype = torch.float64, method: str = "auto",
                           metric: str = "chebyshev") -> torch.Tensor:
    """KSG estimator of I(X;Y) for X (N, ...) and Y (N, ...) of any dimensions (Kraskov et al. 2004, eqs. 8 and 9).

    Joint distance max(||x_j - x_i||, ||y_j - y_i||), the marginal norms being ``metric``: "chebyshev" (max-norm
    everywhere, Kraskov's choice and scikit-learn's) or "euclidean" (benchmark-mi's default; less biased in
    high dimension, brute-force search only). With eps_i the distance to the k-th joint neighbour,
    variant 1: I = psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >, n_x = #{j != i: |x_j - x_i| < eps_i};
    variant 2: I = psi(k) - 1/k + psi(N) - < psi(n_x) + psi(n_y) >, n_x = #{j != i: |x_j - x_i| <= eps_x,i}
    with eps_x,i the largest x-distance among the k joint neighbours. Nats (or ``base``).
    ``standardise`` divides every column by its std first (as scikit-learn does; constant columns stay).
    Variant 1 with k=3 is scikit-learn's ``mutual_info_regression`` without its clipping at 0 and its
    1e-10 noise. Bias: ~0 for independent variables (estimates scatter around 0 and may be negative);
    underestimates large MI (at least exp(I) ~ N needed) and in high dimension.
    Ties (discrete, quantised or saturated values, bf16 activations) follow Gao et al. (2017, "Estimating mutual
    information for discrete-continuous mixtures"): where eps_i = 0, k becomes k_i = #{j != i: joint distance 0}
    and the marginal counts include ties (n_x = #{j != i: x_j = x_i}); for purely discrete data this is the
    plug-in MI with digammas for logarithms, within O(1/N) of it (a constant x and y give -1/(N-1)).
    Variant 2 takes as neighbours every point within eps_i (k_i >= k of them), so the estimate does not
    depend on how a search breaks ties at the k-th distance; where eps_i = 0 it uses variant 1's term.
    Without ties both rules are exactly Kraskov's. Lattice data (ties at eps_i > 0, e.g. values on a grid
    coarser than the neighbour distances) stay biased, variant 1 upward (16 unstandardised +-1 units against
    binary labels: 1.47 nats, above H = log 2) and variant 2 downward: add noise below the grid step, or use a
    discrete estimator. Against discrete labels y with continuous x use variant 1: variant 2's -1/k term
    assumes a continuous y and makes it low by exactly 1/k there. For the same reason a constant x (a dead
    unit, every point tied in x) gives 0 under variant 1 but -1/k + 1/(N-1) under variant 2.
    Cost O(N^2 (D_x + D_y)), memory O(chunk_size * N) brute force (O(N) fused, on CUDA); about O(N log N) with the
    tree (``method``, see the module docstring).
    """
    if variant not in (1, 2):
        raise ValueError(f"variant must be 1 or 2 (KSG-1 or KSG-2), got {variant!r}")
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}")
    if metric == "euclidean" and method in ("tree", "fused"):
        raise ValueError(f"ksg_mutual_information: metric='euclidean' has no {method} search (the tree needs a "
                         "Minkowski joint distance, the fused kernels the max-norm); use method='auto' or 'brute'")
    x, y = as_samples(x, "x", dtype), as_samples(y, "y", dtype)
    same_rows(x, y)
    n = x.shape[0]
    k = _check_k(k, n)
    if standardise:
        x, y = standardise_columns(x), standardise_columns(y)
    if metric == "chebyshev" and _use_tree(method, x, x.shape[1] + y.shape[1]):
        tied, kk, nx, ny = _ksg_counts_tree(x, y, k, variant)
    elif metric == "chebyshev" and _use_fused(method, x, y, k):
        tied, kk, nx, ny = _fused_or_brute(x, y, k, variant, method, _chunk_rows(n, chunk_size, x.device))
    else:
        tied, kk, nx, ny = _ksg_counts_brute(x, y, k, variant, _chunk_rows(n, chunk_size, x.device), _METRICS[metric])
    tied = tied.to(x.device)
    kk, nx, ny = (c.to(device=x.device, dtype=dtype) for c in (kk, nx, ny))
    psi = torch.special.digamma
    n_t = torch.tensor(float(n), dtype=dtype, device=x.device)
    term = psi(kk) - psi(nx + 1) - psi(ny + 1)  # KSG-1, and Gao et al.'s term where eps = 0
    if variant == 2:
        term = torch.where(tied, term, psi(kk) - 1.0 / kk - psi(nx) - psi(ny))
    return ((psi(n_t) + term.mean()) / log_base(base)).float()


def _fused_or_brute(x, y, k, variant, method, step):
    """The fused kernels' counts. Under method='auto' their first use in a process checks them against the brute
    force on a small problem with ties; if they fail to build or run on this machine (a Triton or driver version
    they were not tried with) or disagree, warn once and use the brute force from then on."""
    global _fused_state
    if method == "auto" and _fused_state == "failed":
        return _ksg_counts_brute(x, y, k, variant, step)
    try:
        if method == "auto" and _fused_state == "unchecked":
            _check_fused(x.device, x.dtype)
            _fused_state = "checked"
        return knn_fused.ksg_counts_fused(x, y, k, variant)
    except Exception as error:  # noqa: BLE001 (any build, launch or agreement failure; the brute force is exact)
        if method == "fused" or isinstance(error, torch.cuda.OutOfMemoryError):
            raise
        _fused_state = "failed"
        warnings.warn(f"ksg_mutual_information: the fused CUDA kernels failed ({type(error).__name__}: {error}); using "
                      "the chunked brute force from now on (the same counts, slower)", RuntimeWarning, stacklevel=3)
        return _ksg_counts_brute(x, y, k, variant, step)


def _check_fused(device: torch.device, dtype: torch.dtype) -> None:
    """Raise if the fused kernels' counts differ from the brute force's on 300 points of a grid (ties at the k-th
    distance and at 0), for both variants."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64).mul(2).round().to(device, dtype)
    y = (x[:, :1] + torch.randn(300, 1, generator=g, dtype=torch.float64).to(device, dtype)).mul(2).round()
    for variant in (1, 2):
        fused, brute = knn_fused.ksg_counts_fused(x, y, 3, variant), _ksg_counts_brute(x, y, 3, variant, 300)
        if not all(torch.equal(a, b.to(a.dtype)) for a, b in zip(fused, brute)):
            raise RuntimeError(f"their KSG-{variant} counts differ from the brute force's on a check problem")


_fused_state = "unchecked"  # "checked" once the check passed, "failed" after a failure (per process)


def _ksg_counts_brute(x, y, k, variant, step, p=float("inf")):
    """KSG's per-sample (eps_i == 0, k_i, n_x, n_y) by chunked brute force (marginal Minkowski-p distances)."""
    n = x.shape[0]
    zero, kk, nx, ny = [], [], [], []
    for i in range(0, n, step):
        dx = _distances(x[i:i + step], x, p)
        dy = _distances(y[i:i + step], y, p)
        dz = torch.maximum(dx, dy)
        _exclude_self(dz, i)
        e = dz.topk(k, dim=1, largest=False).values[:, -1:]
        near, tied = dz <= e, e == 0  # the k joint neighbours (and any tied with the k-th); eps = 0
        zero.append(tied.squeeze(1))
        if variant == 1:  # strict counts (less the point itself) where eps > 0; ties counted where eps = 0
            kk.append(torch.where(tied, near.sum(1, keepdim=True), k).squeeze(1))
            nx.append(torch.where(tied, dx <= 0, dx < e).sum(1) - 1)
            ny.append(torch.where(tied, dy <= 0, dy < e).sum(1) - 1)
        else:
            ex, ey = _marginal_reach(near, dx, dy)
            kk.append(near.sum(1))
            nx.append((dx <= ex).sum(1) - 1)
            ny.append((dy <= ey).sum(1) - 1)
    return torch.cat(zero), torch.cat(kk), torch.cat(nx), torch.cat(ny)


def _ksg_counts_tree(x, y, k, variant):
    """The same (eps_i == 0, k_i, n_x, n_y) with KD-trees: the k joint neighbours, then radius counts."""
    import numpy as np
    from scipy.spatial import cKDTree

    xs, ys = x.double().numpy(), y.double().numpy()
    zs = np.hstack([xs, ys])
    tree = cKDTree(zs)
    eps, idx = tree.query(zs, k=k + 1, p=np.inf, workers=-1)
    eps = eps[:, k]
    if variant == 1:  # strict counts where eps > 0; where eps = 0, k_i and the counts include the ties
        tied = np.flatnonzero(eps == 0)
        counts = [_tree_counts(c, eps, strict=True) for c in (xs, ys)]
        for c, points in zip(counts, (xs, ys)):
            c[tied] = _tree_counts(points, np.zeros(len(tied)), strict=False, rows=tied)
        kk = np.full(len(zs), k)  # the joint count matters only at eps = 0, where it holds the ties
        kk[tied] = _tree_counts(zs, np.zeros(len(tied)), strict=False, rows=tied)
    else:  # the largest marginal distance among the joint neighbours (the point itself adds 0)
        kk = _tree_counts(zs, eps, strict=False)  # >= k: the k-th neighbour's ties included
        ex = np.abs(xs[idx] - xs[:, None]).max(axis=(1, 2))
        ey = np.abs(ys[idx] - ys[:, None]).max(axis=(1, 2))
        rows = np.flatnonzero((kk > k) & (eps > 0))  # ties at the k-th distance: every point within eps counts
        if len(rows):  # by brute force in row chunks: a ball can hold most of the data (O(chunk N) memory)
            xt, yt, r = torch.from_numpy(xs), torch.from_numpy(ys), torch.from_numpy(rows)
            step = _chunk_rows(len(xs), None, xt.device)
            for i in range(0, len(rows), step):
                sub = r[i:i + step]
                dx, dy = (_distances(a[sub], a, float("inf")) for a in (xt, yt))
                ex_i, ey_i = _marginal_reach(torch.maximum(dx, dy) <= torch.from_numpy(eps)[sub, None], dx, dy)
                ex[rows[i:i + step]], ey[rows[i:i + step]] = ex_i[:, 0].numpy(), ey_i[:, 0].numpy()
        counts = [_tree_counts(xs, ex, strict=False), _tree_counts(ys, ey, strict=False)]
    return (torch.from_numpy(eps == 0), *(torch.from_numpy(np.asarray(c, dtype=np.int64)) for c in (kk, *counts)))


def knn_entropy(k: int = 3, metric: str = "euclidean", base: float | str = "nats") -> Estimator:
    """Probe estimator: Kozachenko-Leonenko entropy of the probe tensor's rows."""
    return Estimator("knn_entropy", kozachenko_leonenko_entropy, k=k, metric=metric, base=base)


def ksg_mi(target=None, k: int = 3, variant: int = 1, base: float | str = "nats", metric: str = "chebyshev") -> Estimator:
    """Probe estimator: KSG I(T; target) between the probe tensor T and a bound target (see estimators.paired)."""
    name = f"ksg{variant}_mi" if is_ksg_variant(variant) else "ksg_mi"  # a bad variant: the settings check names it
    return paired(name, ksg_mutual_information, target, k=k, variant=variant, base=base, metric=metric)
