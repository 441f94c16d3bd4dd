"""Diffusion spectral entropy and diffusion spectral mutual information (Liao, Liu, et al. 2023,
"Assessing Neural Network Representations During Training Using Noise-Resilient Diffusion Spectral Entropy").
"""
from __future__ import annotations

import torch

from .estimator import Estimator, is_finite_positive, is_whole, log_base
from .paired import paired
from .samples import as_samples, same_rows, squared_distances


def _check_sigma(sigma, who: str = "") -> None:
    """The kernel width is the paper's fixed sigma: a finite number > 0 (no data-driven default, unlike the matrix
    estimators' median heuristic, since DSE values compare only at equal sigma)."""
    if not is_finite_positive(sigma):
        raise ValueError(f"{who}sigma must be a finite number > 0 (the kernel width; DSE has no default from the data), "
                         f"got {sigma!r}")


def diffusion_eigenvalues(x: torch.Tensor, sigma: float = 10.0) -> torch.Tensor:
    """Eigenvalues of the symmetric diffusion operator P = D^-1/2 K D^-1/2, K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2)),
    D = diag(row sums of K). Same spectrum as the random-walk matrix D^-1 K; all in (-1, 1], largest 1."""
    _check_sigma(sigma)
    x = as_samples(x, "x")
    k = torch.exp(-squared_distances(x) / (2 * sigma ** 2))
    d = k.sum(1).rsqrt()
    return torch.linalg.eigvalsh(d[:, None] * k * d[None, :])


def _check_max_samples(max_samples) -> None:
    if not (max_samples is None or is_whole(max_samples, 2)):
        raise ValueError(f"max_samples must be an integer >= 2 (the rows drawn; the entropy needs two) or None, "
                         f"got {max_samples!r}")


def diffusion_spectral_entropy(x: torch.Tensor, sigma: float = 10.0, t: int = 1, base: float | str = "bits",
                               max_samples: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """S_D(X, t) = -sum_i p_i log p_i, p_i = |lambda_i|^t / sum_j |lambda_j|^t over the eigenvalues of P (Liao et al. 2023, eq. 3).

    Bits by default, as in the paper. log2 N when sigma is small against the point spacing (P = I), ->0
    as t grows or sigma covers all points (one eigenvalue 1 dominates). A spectral functional, not a
    plug-in of a differential entropy, so no bias against a "true" entropy; it depends on N (at most log2 N):
    compare values at equal sigma, t and N. ``max_samples`` draws that
    many rows at random first (the paper caps N for cost) with ``generator``, by default a private one
    seeded 0, so the global RNG stream (a training run's) is left untouched. Cost O(N^2 D + N^3).
    """
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be a positive integer (diffusion time), got {t!r}")
    _check_max_samples(max_samples)
    x = as_samples(x, "x")  # before subsampling: a NaN row is an error, not a row that a draw may skip
    if max_samples is not None and x.shape[0] > max_samples:
        generator = torch.Generator().manual_seed(0) if generator is None else generator
        x = x[torch.randperm(x.shape[0], generator=generator)[:max_samples].to(x.device)]
    lam = diffusion_eigenvalues(x, sigma).abs() ** t
    p = lam / lam.sum()
    return (-torch.special.xlogy(p, p).sum() / log_base(base)).float()


def diffusion_spectral_mutual_information(x: torch.Tensor, labels: torch.Tensor, sigma: float = 10.0, t: int = 1,
                                          base: float | str = "bits") -> torch.Tensor:
    """I_D(X; Y) = S_D(X, t) - sum_y p(y) S_D(X | Y = y, t)  (Liao et al. 2023, eq. 4), Y discrete labels (N,).

    Bits by default. Classes with fewer than 2 samples contribute 0 entropy. Bias: S_D depends on N, so
    the class-conditional terms (fewer points) are systematically lower, giving a positive offset for
    random labels; compare against a random-label baseline as the paper does. Cost O(N^2 D + N^3).
    """
    x = as_samples(x, "x")
    if not torch.is_tensor(labels):
        raise TypeError(f"labels must be a torch.Tensor of classes (N,), got {type(labels).__name__}")
    if labels.dim() > 1 and labels.shape[1:].numel() > 1:
        raise ValueError(f"labels must hold one class per sample, shape (N,), got {tuple(labels.shape)}; for one-hot "
                         "labels pass labels.argmax(-1)")
    labels = labels.reshape(-1)
    same_rows(x, labels, "x and labels")
    if torch.is_floating_point(labels):
        raise TypeError(f"labels must be an integer or bool tensor of classes, got {labels.dtype}")
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    total = diffusion_spectral_entropy(x, sigma, t, base)
    conditional = torch.zeros((), dtype=total.dtype, device=total.device)
    for c, size in enumerate(counts.tolist()):  # one eigendecomposition per class
        if size > 1:
            conditional = conditional + size / x.shape[0] * diffusion_spectral_entropy(x[inverse == c], sigma, t, base)
    return total - conditional


def dse(sigma: float = 10.0, t: int = 1, base: float | str = "bits", max_samples: int | None = None) -> Estimator:
    """Probe estimator: diffusion spectral entropy of the probe tensor's rows."""
    _check_sigma(sigma, "dse: ")
    if isinstance(max_samples, float) and max_samples.is_integer():  # 5e2 from YAML, as Estimator's shared settings
        max_samples = int(max_samples)
    _check_max_samples(max_samples)
    return Estimator("dse", diffusion_spectral_entropy, sigma=sigma, t=t, base=base, max_samples=max_samples)


def dsmi(target=None, sigma: float = 10.0, t: int = 1, base: float | str = "bits") -> Estimator:
    """Probe estimator: diffusion spectral MI between the probe tensor and bound class labels."""
    _check_sigma(sigma, "dsmi: ")
    return paired("dsmi", diffusion_spectral_mutual_information, target, sigma=sigma, t=t, base=base)
