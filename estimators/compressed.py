"""Compress-then-estimate MI for high-dimensional layers (Butakov, Tolmachev, Malanchuk, Neopryatnaya,
Frolov & Andreev 2024, "Information Bottleneck Analysis of Deep Neural Networks via Lossy Compression")."""
from __future__ import annotations

from typing import Callable

import torch

from .estimator import Estimator, is_whole
from .knn import ksg_mutual_information
from .paired import paired
from .samples import as_samples, same_rows


def pca_projection(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The rows of x (N, D) projected on their top ``dim`` principal directions (centred, float64). Directions
    whose singular value is rounding noise are left out: below s_max eps_x (the rounding of x's own dtype puts a
    rank-r layer's other singular values at 0.1 to 0.2 eps_x s_max in float32, float16 and bfloat16) or below
    s_max max(N, D) eps_64 (the SVD's, as numpy's matrix_rank). So a layer of rank r < dim gives r columns: the
    estimator downstream standardises each column, and would blow that noise up to unit variance (it cost 15 % of
    the MI of a rank-2 layer)."""
    eps = torch.finfo(x.dtype if torch.is_floating_point(x) else torch.float64).eps
    x = as_samples(x, "x")
    if not isinstance(dim, int) or not 1 <= dim:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if dim >= x.shape[1]:
        return x
    xc = x - x.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    rank = int((s > s[0] * max(eps, max(x.shape) * torch.finfo(torch.float64).eps)).sum())
    return xc @ vh[:max(1, min(dim, rank))].T


def compressed_mutual_information(x: torch.Tensor, y: torch.Tensor, dim: int = 4, k: int = 3,
                                  compress_x: Callable | None = None, compress_y: Callable | None = None,
                                  base: float | str = "nats") -> torch.Tensor:
    """I(X;Y) ~ I(c_x(X); c_y(Y)) by KSG-1 on compressed variables (Butakov et al. 2024, Sec. 4).

    c_x, c_y default to projection on the top ``dim`` principal components (the linear special case of
    the paper's trained autoencoders); pass ``compress_x``/``compress_y`` (e.g. a trained encoder) to use
    others: they get the input as given (its shape, dtype and device), without autograd. By the
    data-processing inequality the result is <= I(X;Y) up to the KSG bias, with equality when the
    compressors keep all shared information (e.g. data on a ``dim``-dimensional subspace).
    Nats. Cost O(N D min(N, D)) for the PCA plus KSG's O(N^2 dim).
    """
    same_rows(as_samples(x, "x"), as_samples(y, "y"))
    with torch.no_grad():
        cx = compress_x(x.detach()) if compress_x is not None else pca_projection(x, dim)
        cy = compress_y(y.detach()) if compress_y is not None else pca_projection(y, dim)
    return ksg_mutual_information(cx, cy, k=k, base=base)


def compressed_mi(target=None, dim: int = 4, k: int = 3, base: float | str = "nats") -> Estimator:
    """Probe estimator: PCA-compressed KSG MI between the probe tensor and a bound target."""
    if isinstance(dim, float) and dim.is_integer():  # a whole float from YAML (4e0), as the shared settings
        dim = int(dim)
    if not is_whole(dim, 1):  # checked when built, as the shared settings are
        raise ValueError(f"compressed_mi: dim must be an integer >= 1, got {dim!r}")
    return paired("compressed_mi", compressed_mutual_information, target, dim=dim, k=k, base=base)
