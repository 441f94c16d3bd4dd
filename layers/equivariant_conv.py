"""Equivariant message passing with spherical-harmonic edge attributes (the convolution of NequIP/MACE/Facet)."""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from .edge_tensor_product import EdgeTensorProduct
from .equivariant_mixing import sphere_irreps
from .orderwise_linear import OrderwiseLinear
from .radial import BesselMLPRadial, SplineRadial


class EquivariantConvolution(nn.Module):
    """m_i = (1 / n_avg) sum_{j in N(i)} sum_paths R_path,c(r_ij) C^L (W_up h_j)_c^l1 (x) Y^l2(r_ij / |r_ij|),
    h_i' = W_out m_i: a channel-wise ('uvu') tensor product of neighbour features with the edge's spherical
    harmonics, weighted per edge, channel and path by a radial function (splines, or an MLP for the ablation).
    Outputs keep the sphere's parity (-1)^l up to ``lmax``, so the layer is E(3)-equivariant, reflections included.
    ``in_lmax`` < ``lmax`` reads only the inputs' orders up to it (0 for a first layer that sees only scalars),
    which drops the tensor-product paths of orders that are still zero. The product runs as one batched matmul
    per output order (``EdgeTensorProduct``), which also sums the messages over each atom's neighbours; W_up and
    W_out are e3nn linear maps evaluated one order at a time (``OrderwiseLinear``).
    """

    def __init__(self, channels: int, lmax: int, sh_lmax: int, cutoff: float, radial: str = "spline",
                 knots: int = 16, avg_num_neighbors: float = 1.0, in_lmax: int | None = None):
        super().__init__()
        in_lmax = lmax if in_lmax is None else in_lmax
        self.irreps, self.irreps_in = sphere_irreps(channels, lmax), sphere_irreps(channels, in_lmax)
        self.in_dim, self.feature_dim = self.irreps_in.dim, self.irreps.dim  # plain ints: forward never touches e3nn's Irreps
        self.sh = o3.SphericalHarmonics(sphere_irreps(1, sh_lmax), normalize=True, normalization="component")
        self.linear_up = OrderwiseLinear(self.irreps_in, self.irreps_in)
        self.tp = EdgeTensorProduct(channels, in_lmax, sh_lmax, lmax)
        if radial == "spline":
            self.radial = SplineRadial(self.tp.weight_numel, cutoff, knots)
        elif radial == "mlp":
            self.radial = BesselMLPRadial(self.tp.weight_numel, cutoff)
        else:
            raise ValueError(f"radial must be 'spline' or 'mlp', got {radial!r}")
        self.linear_out = OrderwiseLinear(self.tp.irreps_out, self.irreps)
        self.register_buffer("avg_num_neighbors", torch.tensor(float(avg_num_neighbors)))

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor,
                sh: torch.Tensor | None = None, radial_features: torch.Tensor | None = None) -> torch.Tensor:
        """h (N, irreps), edge_index (2, E) receiver/sender, vectors (E, 3). A stack of convolutions shares one
        evaluation of what depends only on the edges: ``sh`` = ``self.sh(vectors)`` and ``radial_features`` =
        ``self.radial.features(|vectors|)`` (equal for radial functions of the same kind, cutoff and basis size)."""
        if h.dim() != 2 or h.shape[1] != self.feature_dim:
            raise ValueError(f"EquivariantConvolution: h must be (N, {self.feature_dim}) (the irreps {self.irreps}), got {tuple(h.shape)}")
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or vectors.shape != (edge_index.shape[1], 3):
            raise ValueError(f"EquivariantConvolution: edge_index must be (2, E) and vectors (E, 3) for the same E, got "
                             f"{tuple(edge_index.shape)} and {tuple(vectors.shape)}")
        i, j = edge_index
        sh = self.sh(vectors) if sh is None else sh
        if radial_features is None:
            radial_features = self.radial.features(vectors.norm(dim=-1))
        up = self.linear_up.forward_blocks(self.linear_up.blocks_of(h[:, :self.in_dim]))
        x = torch.cat(up, 1)                                                                       # (N, in_dim, C)
        summed = self.tp(x, sh, self.radial.weights(radial_features), j, i)
        return self.linear_out.join(self.linear_out.forward_blocks(summed)) / self.avg_num_neighbors
