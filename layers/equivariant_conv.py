"""Equivariant message passing with spherical-harmonic edge attributes (the convolution of NequIP/MACE/Facet)."""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from .equivariant_mixing import sphere_irreps
from .radial import BesselMLPRadial, SplineRadial


class EquivariantConvolution(nn.Module):
    """m_i = (1 / n_avg) sum_{j in N(i)} sum_paths R_path,c(r_ij) C^L (W_up h_j)_c^l1 (x) Y^l2(r_ij / r_ij),
    h_i' = W_out m_i: a channel-wise ('uvu') tensor product of neighbour features with the edge's spherical
    harmonics, weighted per edge, channel and path by a radial function (splines, or an MLP for the ablation).
    Outputs keep the sphere's parity (-1)^l up to ``lmax``, so the layer is E(3)-equivariant, reflections included.
    ``in_lmax`` < ``lmax`` reads only the inputs' orders up to it (0 for a first layer that sees only scalars),
    which drops the tensor-product paths of orders that are still zero.
    """

    def __init__(self, channels: int, lmax: int, sh_lmax: int, cutoff: float, radial: str = "spline",
                 knots: int = 16, avg_num_neighbors: float = 1.0, in_lmax: int | None = None):
        super().__init__()
        self.irreps = sphere_irreps(channels, lmax)
        self.irreps_in = sphere_irreps(channels, lmax if in_lmax is None else in_lmax)
        self.in_dim = self.irreps_in.dim  # a plain int: forward never touches e3nn's Irreps (torch.compile)
        self.sh = o3.SphericalHarmonics(sphere_irreps(1, sh_lmax), normalize=True, normalization="component")
        irreps_sh = self.sh.irreps_out
        allowed = {ir for _, ir in self.irreps}
        mid, instructions = [], []
        for i1, (mul, ir1) in enumerate(self.irreps_in):
            for i2, (_, ir2) in enumerate(irreps_sh):
                for ir in ir1 * ir2:
                    if ir in allowed:
                        instructions.append((i1, i2, len(mid), "uvu", True))
                        mid.append((mul, ir))
        self.linear_up = o3.Linear(self.irreps_in, self.irreps_in)
        self.tp = o3.TensorProduct(self.irreps_in, irreps_sh, o3.Irreps(mid), instructions, shared_weights=False,
                                   internal_weights=False)
        if radial == "spline":
            self.radial = SplineRadial(self.tp.weight_numel, cutoff, knots)
        elif radial == "mlp":
            self.radial = BesselMLPRadial(self.tp.weight_numel, cutoff)
        else:
            raise ValueError(f"radial must be 'spline' or 'mlp', got {radial!r}")
        self.linear_out = o3.Linear(o3.Irreps(mid), self.irreps)
        self.register_buffer("avg_num_neighbors", torch.tensor(float(avg_num_neighbors)))

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        i, j = edge_index
        r = vectors.norm(dim=-1)
        messages = self.tp(self.linear_up(h[:, :self.in_dim]).index_select(0, j), self.sh(vectors), self.radial(r))
        summed = torch.zeros(h.shape[0], messages.shape[1], dtype=messages.dtype, device=messages.device)
        summed.index_add_(0, i, messages)
        return self.linear_out(summed / self.avg_num_neighbors)
