"""Kernel estimators: matrix-based Renyi alpha-entropy and MI (Giraldo, Rao & Principe 2015), and the
Cauchy-Schwarz divergence and quadratic MI used by CS-IB (Yu, Yu, Lokse, Jenssen & Principe 2024).

All use the Gaussian Gram matrix K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2)); ``sigma=None`` takes the
median of the non-zero pairwise distances (the median heuristic; leaving out the zeros, class labels with most
pairs in one class get the distance between classes, where the plain median would be 0; a constant variable,
whose Gram matrix is all ones at any width, gets 1). Cost O(N^2 D) for the Gram matrix, plus O(N^3) for the
eigenvalues of the matrix-based entropies; memory O(N^2).
"""
from __future__ import annotations

import math

import torch

from .estimator import Estimator, log_base
from .paired import paired
from .samples import as_samples, same_rows, squared_distances


def _log_mean_kernel(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """log mean_ij exp(-|a_i - b_j|^2 / (2 sigma^2)), by logsumexp: finite however far apart a and b are."""
    return torch.logsumexp((-squared_distances(a, b) / (2 * sigma ** 2)).flatten(), 0) - math.log(a.shape[0] * b.shape[0])


def _sigma(d2: torch.Tensor, sigma: float | None) -> float:
    if sigma is None:
        nonzero = d2[d2 > 0]  # the diagonal, duplicate rows and same-class label pairs are left out
        sigma = float(nonzero.sqrt().median()) if len(nonzero) else 1.0
    if not sigma > 0 or 2 * sigma ** 2 == 0:  # 1e-200: 2 sigma^2 underflows to 0, the kernel to 0/0
        raise ValueError(f"sigma must be > 0 (and 2 sigma^2 representable, above about 1e-154), got {sigma!r}")
    return sigma


def gram_matrix(x: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian Gram matrix of the rows of x (N, ...), float64."""
    d2 = squared_distances(as_samples(x, "x"))
    return torch.exp(-d2 / (2 * _sigma(d2, sigma) ** 2))


def _renyi_of_normalised(a: torch.Tensor, alpha: float) -> torch.Tensor:
    """S_alpha = logsumexp(alpha log lambda) / (1 - alpha) over the normalised eigenvalues (no underflow of
    lambda^alpha at large alpha); alpha = 1: -sum lambda log lambda; alpha = inf: -log lambda_max."""
    lam = torch.linalg.eigvalsh(a).clamp_min(0)
    lam = lam / lam.sum()
    if abs(alpha - 1.0) < 1e-8:  # closer to 1 the general form cancels (rounding / |1 - alpha|) more than the
        # Shannon limit differs from it (O(|1 - alpha|)); both are about 1e-8 here in float64
        return -torch.special.xlogy(lam, lam).sum()
    if alpha == math.inf:
        return -lam.max().log()
    return torch.logsumexp(alpha * lam.log(), 0) / (1 - alpha)


def _check_alpha(alpha: float) -> None:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")


def matrix_renyi_entropy(x: torch.Tensor, alpha: float = 1.01, sigma: float | None = None,
                         base: float | str = "bits") -> torch.Tensor:
    """S_alpha(A) = 1/(1 - alpha) log( sum_i lambda_i(A)^alpha ), A = K / tr(K)  (Giraldo et al. 2015, eq. 7).

    The eigenvalues of the trace-normalised Gram matrix play the role of probabilities; alpha = 1 is
    the von Neumann (Shannon) limit, alpha = inf the min-entropy -log lambda_max. Bits by default as in
    the paper. Ranges over [0, log N]: log N for points far apart at the kernel's scale (A = I/N), 0 when
    all coincide. Not a plug-in estimate of a differential entropy: it is a functional of the data and
    depends on sigma and alpha; no density estimation bias, but values compare only at equal sigma, alpha
    and N. Cost O(N^3).
    """
    _check_alpha(alpha)
    k = gram_matrix(x, sigma)
    return (_renyi_of_normalised(k / k.trace(), alpha) / log_base(base)).float()


def matrix_renyi_mutual_information(x: torch.Tensor, y: torch.Tensor, alpha: float = 1.01,
                                    sigma_x: float | None = None, sigma_y: float | None = None,
                                    base: float | str = "bits") -> torch.Tensor:
    """I_alpha(X;Y) = S_alpha(A) + S_alpha(B) - S_alpha(A o B / tr(A o B))  (Giraldo et al. 2015, eqs. 7-8).

    o is the Hadamard product (the joint Gram matrix). Bits by default. 0 when either Gram matrix is
    rank one (all ones / N: the variable is constant at the kernel's scale); when A = I/N (all x far
    apart) A o B / tr = I/N too and I = S_alpha(B). Bias and cost as ``matrix_renyi_entropy``.
    """
    _check_alpha(alpha)
    ka, kb = gram_matrix(x, sigma_x), gram_matrix(y, sigma_y)
    same_rows(ka, kb)
    a, b = ka / ka.trace(), kb / kb.trace()
    ab = a * b
    mi = _renyi_of_normalised(a, alpha) + _renyi_of_normalised(b, alpha) - _renyi_of_normalised(ab / ab.trace(), alpha)
    return (mi / log_base(base)).float()


def cauchy_schwarz_divergence(x: torch.Tensor, y: torch.Tensor, sigma: float | None = None,
                              base: float | str = "nats") -> torch.Tensor:
    """D_CS(p||q) = -log( (int p q)^2 / (int p^2 int q^2) ) with Parzen estimates from samples x ~ p, y ~ q.

    int p q ~ mean_ij K(x_i, y_j), int p^2 ~ mean_ij K(x_i, x_j), int q^2 ~ mean_ij K(y_i, y_j) (the kernel
    normalisation cancels); the logs of the means are taken by logsumexp, so far-apart samples give a
    finite value. Symmetric, >= 0, 0 iff the smoothed densities agree. Nats. Bias: it is the
    divergence of the densities each smoothed with a Gaussian of variance sigma^2 / 2 (the pair kernel is their
    convolution, of variance sigma^2; the V-statistic includes
    i = j, O(1/N)). Cost O((N + M)^2 D).
    """
    x, y = as_samples(x, "x"), as_samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same feature dims, got {x.shape[1]} and {y.shape[1]}")
    s = _sigma(squared_distances(torch.cat([x, y])), None) if sigma is None else _sigma(torch.ones(1, 1), sigma)

    d = _log_mean_kernel(x, x, s) + _log_mean_kernel(y, y, s) - 2 * _log_mean_kernel(x, y, s)
    return (d / log_base(base)).float()


def cauchy_schwarz_mutual_information(x: torch.Tensor, y: torch.Tensor, sigma_x: float | None = None,
                                      sigma_y: float | None = None, base: float | str = "nats") -> torch.Tensor:
    """I_CS(X;Y) = D_CS(p(x,y) || p(x)p(y)) = log( V_J V_M / V_C^2 )  (the CS-QMI of CS-IB, Yu et al. 2024).

    V_J = mean_ij Kx_ij Ky_ij, V_M = mean_ij Kx_ij * mean_ij Ky_ij, V_C = mean_i (mean_j Kx_ij)(mean_j Ky_ij).
    >= 0 by the Cauchy-Schwarz inequality, 0 for independent variables (up to O(1/sqrt N)). Nats.
    Bias: as ``cauchy_schwarz_divergence`` (Gaussian-smoothed densities). Cost O(N^2 (D_x + D_y)).
    """
    kx, ky = gram_matrix(x, sigma_x), gram_matrix(y, sigma_y)
    same_rows(kx, ky)
    v_j = (kx * ky).mean()
    v_m = kx.mean() * ky.mean()
    v_c = (kx.mean(1) * ky.mean(1)).mean()
    return ((v_j.log() + v_m.log() - 2 * v_c.log()) / log_base(base)).float()


def renyi_entropy(alpha: float = 1.01, sigma: float | None = None, base: float | str = "bits") -> Estimator:
    """Probe estimator: matrix-based Renyi alpha-entropy of the probe tensor's rows."""
    return Estimator("renyi_entropy", matrix_renyi_entropy, alpha=alpha, sigma=sigma, base=base)


def renyi_mi(target=None, alpha: float = 1.01, sigma_x: float | None = None, sigma_y: float | None = None,
             base: float | str = "bits") -> Estimator:
    """Probe estimator: matrix-based Renyi MI between the probe tensor and a bound target."""
    return paired("renyi_mi", matrix_renyi_mutual_information, target, alpha=alpha, sigma_x=sigma_x,
                  sigma_y=sigma_y, base=base)


def cs_mi(target=None, sigma_x: float | None = None, sigma_y: float | None = None,
          base: float | str = "nats") -> Estimator:
    """Probe estimator: Cauchy-Schwarz quadratic MI between the probe tensor and a bound target."""
    return paired("cs_mi", cauchy_schwarz_mutual_information, target, sigma_x=sigma_x, sigma_y=sigma_y, base=base)
