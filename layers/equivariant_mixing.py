"""Equivariant node-wise mixing of irreps features: Facet's spherical-grid MLP and the two layers it is compared with.

Features follow e3nn's layout for ``C x (0e + 1o + 2e + ... + Le)``: C channels of every order l, parity
(-1)^l, i.e. each channel is a band-limited function on the sphere in the real spherical-harmonic basis.
"""
from __future__ import annotations

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn


def sphere_irreps(channels: int, lmax: int) -> o3.Irreps:
    """C x 0e + C x 1o + C x 2e + ...: the irreps of C band-limited functions on the sphere."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


def check_features(x: torch.Tensor, channels: int, lmax: int) -> None:
    """Every mixing takes features (N, C (L+1)^2) in e3nn layout: a named error for any other shape."""
    if x.dim() != 2 or x.shape[1] != channels * (lmax + 1) ** 2:
        raise ValueError(f"expected features (N, {channels * (lmax + 1) ** 2}) = (N, C (L+1)^2) for C={channels}, "
                         f"L={lmax}, got {tuple(x.shape)}")


def to_channels(x: torch.Tensor, channels: int, lmax: int) -> torch.Tensor:
    """(N, C * (L+1)^2) in e3nn layout -> (N, C, (L+1)^2): one spherical-harmonic vector per channel."""
    check_features(x, channels, lmax)
    blocks, start = [], 0
    for l in range(lmax + 1):
        size = channels * (2 * l + 1)
        blocks.append(x[:, start:start + size].reshape(-1, channels, 2 * l + 1))
        start += size
    return torch.cat(blocks, -1)


def from_channels(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """Inverse of ``to_channels``."""
    return torch.cat([x[..., l * l:(l + 1) ** 2].flatten(1) for l in range(lmax + 1)], -1)


def to_components(x: torch.Tensor, channels: int, lmax: int) -> torch.Tensor:
    """(N, C * (L+1)^2) in e3nn layout -> (N, (L+1)^2, C): channels last, for maps that act on channels."""
    return to_channels(x, channels, lmax).transpose(1, 2)


def from_components(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """Inverse of ``to_components``."""
    return from_channels(x.transpose(1, 2), lmax)


class SphericalGridMLP(nn.Module):
    """Facet's equivariant mixing: f_c(s) = sum_lm x_clm Y_lm(s) on a grid of points s (e3nn ToS2Grid), a standard
    MLP over channels at every grid point, g(s) = MLP(f(s)), and back to coefficients by quadrature (FromS2Grid).

    Equivariant up to the aliasing of the pointwise non-linearity on a finite grid; the error falls with the
    resolution ``res`` (beta, alpha) and is reported by the tests. The default 18 x 17 grid is the one the
    authors' code uses for L <= 3; the MLP has one hidden layer of ``hidden`` (default C) SiLU units.
    Both projections are linear, so they run as two dense matrices taken from e3nn's ToS2Grid/FromS2Grid: T
    ((L+1)^2 x grid) and F (grid x (L+1)^2), one matmul each instead of e3nn's FFT path. The MLP's two linear maps
    act on channels and the projections on points, so they commute: with coefficients x ((L+1)^2 x C),
    F^T (silu(T^T x W1^T + b1) W2^T + b2) = (F^T silu(T^T (x W1^T) + b1)) W2^T + (F^T 1) b2^T. Only the
    activation runs on the grid; both channel maps run on the (L+1)^2 coefficients (grid / (L+1)^2 = 34x fewer
    rows at L = 2 on the 18 x 17 grid).
    """

    def __init__(self, channels: int, lmax: int, hidden: int | None = None, res: tuple[int, int] | None = None):
        super().__init__()
        self.channels, self.lmax = channels, lmax
        self.res = tuple(int(r) for r in res) if res is not None else (18, 17)  # (beta, alpha)
        if len(self.res) != 2 or self.res[0] % 2 or self.res[0] < 2 * (lmax + 1) or self.res[1] < 2 * lmax + 1:
            # e3nn's grid needs an even beta >= 2(L+1); an alpha below 2L+1 cannot hold order L (F T != I)
            raise ValueError(f"SphericalGridMLP: res must be (beta, alpha) with an even beta >= 2(L+1) = "
                             f"{2 * (lmax + 1)} and alpha >= 2L+1 = {2 * lmax + 1} for L = {lmax}, got {res}")
        self._matrices: tuple | None = None  # (dtype, device, (K, G) to-grid, (G, K) from-grid), built on first use
        hidden = hidden or channels
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.SiLU(), nn.Linear(hidden, channels))
        self.irreps = sphere_irreps(channels, lmax)

    def grid_matrices(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """T^T (grid, K), F^T (K, grid) and F^T 1 (K,) in ``like``'s dtype and device: e3nn's ToS2Grid and FromS2Grid
        of this grid applied to unit vectors, K = (L+1)^2, always computed in float64 and then cast (e3nn's modules
        keep float32 buffers, which would floor a float64 model's equivariance error at float32 rounding). Nothing
        of them is stored: the matrices follow from ``res`` and L."""
        if self._matrices is None or self._matrices[:2] != (like.dtype, like.device):
            k, res = (self.lmax + 1) ** 2, self.res
            f64, default = torch.float64, torch.get_default_dtype()
            try:  # e3nn computes FromS2Grid's quadrature weights in the default dtype, whatever its dtype argument
                torch.set_default_dtype(f64)
                with torch.no_grad():
                    to_grid = o3.ToS2Grid(self.lmax, (res[0], res[1]))(torch.eye(k)).flatten(1)
                    from_grid = o3.FromS2Grid((res[0], res[1]), self.lmax)(torch.eye(res[0] * res[1]).reshape(-1, *res))
            finally:
                torch.set_default_dtype(default)
            cast = dict(dtype=like.dtype, device=like.device)
            self._matrices = (like.dtype, like.device, to_grid.T.contiguous().to(**cast),
                              from_grid.T.contiguous().to(**cast), from_grid.sum(0).to(**cast))
        return self._matrices[2:]

    @staticmethod
    def upgrade_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """Drop the e3nn ToS2Grid/FromS2Grid buffers (constants of the grid) that checkpoints saved before
        2026-11-29, while this layer kept those modules, carry under ``prefix``."""
        old = (f"{prefix}to_grid.", f"{prefix}from_grid.")
        return {k: v for k, v in state.items() if not k.startswith(old)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        to_grid_t, from_grid_t, from_grid_ones = self.grid_matrices(x)
        first, act, second = self.mlp
        coefficients = to_components(x, self.channels, self.lmax)                         # (N, K, C)
        hidden = torch.matmul(to_grid_t, nn.functional.linear(coefficients, first.weight))  # (N, grid, H)
        back = torch.matmul(from_grid_t, act(hidden + first.bias))                         # (N, K, H)
        out = nn.functional.linear(back, second.weight) + torch.outer(from_grid_ones, second.bias)
        return from_components(out, self.lmax)


class GateMixing(nn.Module):
    """The gate non-linearity (Weiler et al. 2018): a linear map to C scalars, C*L gates and the l >= 1 features,
    then silu(scalars) and sigmoid(gate) * feature for every l >= 1 channel."""

    def __init__(self, channels: int, lmax: int):
        super().__init__()
        self.channels, self.lmax = channels, lmax
        self.irreps = sphere_irreps(channels, lmax)
        scalars, gated = self.irreps[:1], self.irreps[1:]
        gates = o3.Irreps([(channels * lmax, (0, 1))]) if lmax else o3.Irreps("")
        self.gate = enn.Gate(scalars, [nn.functional.silu], gates, [torch.sigmoid] if lmax else [], gated)
        self.linear = o3.Linear(self.irreps, self.gate.irreps_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, self.lmax)
        return self.gate(self.linear(x))


class TensorProductMixing(nn.Module):
    """A channel-wise tensor product of the features with themselves, (x (x) x)_c^L = sum w_c C^L (x_c^l1 x_c^l2)
    over all parity-allowed paths (e3nn 'uuu' instructions), then a linear map: the iterated-TP mixing."""

    def __init__(self, channels: int, lmax: int):
        super().__init__()
        self.channels, self.lmax = channels, lmax
        self.irreps = sphere_irreps(channels, lmax)
        instructions = [(i1, i2, o, "uuu", True) for i1, (_, ir1) in enumerate(self.irreps)
                        for i2, (_, ir2) in enumerate(self.irreps) for o, (_, ir) in enumerate(self.irreps)
                        if ir in ir1 * ir2]
        self.tp = o3.TensorProduct(self.irreps, self.irreps, self.irreps, instructions)
        self.linear = o3.Linear(self.irreps, self.irreps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features(x, self.channels, self.lmax)
        return self.linear(self.tp(x, x))


MIXINGS = {"grid": SphericalGridMLP, "gate": GateMixing, "tp": TensorProductMixing}


def make_mixing(kind: str, channels: int, lmax: int, **kwargs) -> nn.Module:
    """The mixing ``kind`` of ``MIXINGS``; ``kwargs`` go to its class (``hidden``, ``res``: the grid's only), so
    one it does not take is a TypeError, never ignored."""
    if kind not in MIXINGS:
        raise ValueError(f"unknown equivariant mixing {kind!r}; choose one of {sorted(MIXINGS)}")
    return MIXINGS[kind](channels, lmax, **kwargs)
