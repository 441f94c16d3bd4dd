"""Radial functions of the interatomic distance: the per-edge weights of an equivariant convolution."""
from __future__ import annotations

import math

import torch
from torch import nn


class PolynomialEnvelope(nn.Module):
    """u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2), d = r / r_cut, and 0 for d >= 1
    (Klicpera et al. 2020): u(0) = 1 and u, u', u'' vanish at the cutoff, so energies are smooth."""

    def __init__(self, cutoff: float, p: int = 6):
        super().__init__()
        self.cutoff, self.p = float(cutoff), int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        # at least float32 inside: the polynomial cancels terms of size ~30 to reach values ~0.01 near the cutoff,
        # which bfloat16 (8 bits) gets wrong by 0.1 or more
        d, p = r.to(torch.promote_types(r.dtype, torch.float32)) / self.cutoff, self.p
        u = 1 - (p + 1) * (p + 2) / 2 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2)
        return torch.where(d >= 1, torch.zeros_like(u), u).to(r.dtype)  # NaN distances stay NaN


class SplineRadial(nn.Module):
    """w(r) = u(r) sum_k c_k B_k(r): a uniform cubic B-spline with ``knots`` learned control vectors c_k of size
    ``out_features``, times the cutoff envelope u (Facet's replacement of the radial MLP).

    Knots are spaced r_cut / (knots - 3) apart from r = -step; at most four basis functions are non-zero at any r.
    Evaluation is ``weights(features(r))``: the enveloped basis u(r) B_k(r) (E, knots), which every radial function
    with the same cutoff and knots shares, times the (knots, out_features) table. No hidden layers, no activations.
    """

    def __init__(self, out_features: int, cutoff: float, knots: int = 16, envelope_p: int = 6):
        super().__init__()
        if knots < 4:
            raise ValueError(f"a cubic spline needs at least 4 knots, got {knots}")
        self.cutoff, self.knots = float(cutoff), int(knots)
        self.step = self.cutoff / (knots - 3)
        self.coefficients = nn.Parameter(torch.randn(knots, out_features))
        self.envelope = PolynomialEnvelope(cutoff, envelope_p)

    def features(self, r: torch.Tensor) -> torch.Tensor:
        """u(r) B_k(r), shape (E, knots). B_k(r) = beta3(r / step - k + 1), beta3 the cardinal cubic B-spline:
        2/3 - x^2 + |x|^3 / 2 on |x| < 1, (2 - |x|)^3 / 6 on 1 <= |x| < 2."""
        x = (r.unsqueeze(-1) / self.step - torch.arange(self.knots, device=r.device, dtype=r.dtype) + 1).abs()
        basis = torch.where(x < 1, 2 / 3 - x**2 + x**3 / 2, torch.where(x < 2, (2 - x).clamp_min(0) ** 3 / 6, 0.0))
        return basis * self.envelope(r).unsqueeze(-1)

    def weights(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.coefficients.to(features.dtype)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.weights(self.features(r))


class BesselMLPRadial(nn.Module):
    """w(r) = MLP(u(r) sqrt(2/r_c) sin(n pi r / r_c) / r, n = 1..num_basis): the radial MLP of NequIP/MACE that
    Facet replaces by splines (kept for the ablation). ``features(r)`` is the enveloped Bessel basis (E, num_basis),
    ``weights`` the MLP."""

    def __init__(self, out_features: int, cutoff: float, num_basis: int = 8, hidden: int = 64, layers: int = 3,
                 envelope_p: int = 6):
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("frequencies", torch.arange(1, num_basis + 1) * math.pi / self.cutoff,
                             persistent=False)
        self.envelope = PolynomialEnvelope(cutoff, envelope_p)
        dims = [num_basis] + [hidden] * layers
        mlp = []
        for a, b in zip(dims[:-1], dims[1:]):
            mlp += [nn.Linear(a, b), nn.SiLU()]
        self.mlp = nn.Sequential(*mlp, nn.Linear(dims[-1], out_features))

    def features(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        bessel = math.sqrt(2 / self.cutoff) * torch.sin(self.frequencies.to(r.dtype) * r) / r.clamp_min(1e-9)
        return bessel * self.envelope(r)

    def weights(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.weights(self.features(r))
