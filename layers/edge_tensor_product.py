"""The channel-wise tensor product of neighbour features with edge spherical harmonics, as one batched matmul."""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from .equivariant_mixing import from_channels, sphere_irreps


class EdgeTensorProduct(nn.Module):
    """m_i,c,(p,M) = sum_{e: i<-j} w_e,p,c sum_{a,b} T^p_{a b M} x_j,c,a Y_e,b: e3nn's channel-wise ('uvu') tensor
    product of C-channel neighbour features x (orders up to ``in_lmax``) with edge harmonics Y (orders up to
    ``sh_lmax``), one path p for every (l1, l2 -> L) with L <= ``lmax`` and parity (-1)^L, weighted per edge, path
    and channel, and summed over each receiver's edges.

    T is read from e3nn's ``TensorProduct`` with the same instructions (its Clebsch-Gordan coefficients and path
    normalisation, probed on basis vectors), so the two agree to rounding. For each output order L, Y is contracted
    with T into one (in_dim x paths_L (2L+1)) matrix per edge that ``torch.bmm`` applies to all channels at once,
    the weights scale each path by broadcasting, and the scatter runs on that block: a handful of large ops instead
    of e3nn's dozens of small einsums per path. The output stays in per-order blocks, which ``OrderwiseLinear``
    reads directly; ``to_irreps`` gives e3nn's layout. Autograd differentiates it to any order.
    """

    def __init__(self, channels: int, in_lmax: int, sh_lmax: int, lmax: int):
        super().__init__()
        self.irreps_in, self.irreps_sh = sphere_irreps(channels, in_lmax), sphere_irreps(1, sh_lmax)
        allowed = {ir for _, ir in sphere_irreps(1, lmax)}
        paths = [(i1, i2, ir) for i1, (_, ir1) in enumerate(self.irreps_in) for i2, (_, ir2) in enumerate(self.irreps_sh)
                 for ir in ir1 * ir2 if ir in allowed]
        self.irreps_out = o3.Irreps([(channels, ir) for _, _, ir in paths])
        self.instructions = [(i1, i2, p, "uvu", True) for p, (i1, i2, _) in enumerate(paths)]
        self.channels, self.in_lmax, self.lmax, self.num_paths = channels, in_lmax, lmax, len(paths)
        self.weight_numel = len(paths) * channels
        coupling = self._coupling([ir.dim for _, _, ir in paths])          # per path (in_dim, sh_dim, 2L+1)
        self.orders = sorted({ir.l for _, _, ir in paths})                  # output orders, one block each
        members = [[p for p, (_, _, ir) in enumerate(paths) if ir.l == l] for l in self.orders]
        # float64 masters, cast on first use per dtype/device (kept out of the buffers so .float() cannot round them)
        self._masters = [torch.stack([coupling[p] for p in block], 2).transpose(0, 1).flatten(1) for block in members]
        self._cast: tuple | None = None                                     # (dtype, device, [(sh_dim, ...)])
        for l, block in zip(self.orders, members):
            self.register_buffer(f"paths_{l}", torch.tensor(block), persistent=False)
        self.layout = [(self.orders.index(ir.l), members[self.orders.index(ir.l)].index(p)) for p, (_, _, ir)
                       in enumerate(paths)]                                 # path p = block b, row k

    def couplings(self, like: torch.Tensor) -> list[torch.Tensor]:
        """Per output order L, T as an (sh_dim, in_dim paths_L (2L+1)) matrix in ``like``'s dtype and device."""
        if self._cast is None or self._cast[:2] != (like.dtype, like.device):
            self._cast = (like.dtype, like.device, [t.to(like) for t in self._masters])
        return self._cast[2]

    def reference(self) -> o3.TensorProduct:
        """The e3nn TensorProduct this layer evaluates per edge (weights per edge, none of its own)."""
        return o3.TensorProduct(self.irreps_in, self.irreps_sh, self.irreps_out, self.instructions,
                                shared_weights=False, internal_weights=False)

    @torch.no_grad()
    def _coupling(self, dims: list[int]) -> list[torch.Tensor]:
        """T^p[a, b, M] for every path: e3nn's output on channel 0 for x = e_a in channel 0, Y = e_b, unit weights."""
        tp = self.reference().to(torch.float64)
        c, k_in, k_sh = self.channels, self.irreps_in.dim // self.channels, self.irreps_sh.dim
        x = torch.zeros(k_in, c, k_in, dtype=torch.float64)
        x[:, 0, :] = torch.eye(k_in, dtype=torch.float64)
        x = from_channels(x, self.in_lmax)                                   # (k_in, C k_in), e3nn layout
        y = torch.eye(k_sh, dtype=torch.float64)
        out = tp(x.repeat_interleave(k_sh, 0), y.repeat(k_in, 1),
                 torch.ones(k_in * k_sh, self.weight_numel, dtype=torch.float64))
        blocks, start = [], 0
        for d in dims:                                                       # channel 0 of every path's block
            blocks.append(out[:, start:start + d].reshape(k_in, k_sh, d))
            start += c * d
        return blocks

    @staticmethod
    def upgrade_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """Drop the constant buffers (output mask, empty weight, Wigner 3j tables) that checkpoints saved while this
        product was e3nn's own module carry under ``prefix``; this layer has no state of its own."""
        legacy = (f"{prefix}output_mask", f"{prefix}weight", f"{prefix}_compiled_main_left_right._w3j_")
        return {k: v for k, v in state.items() if not k.startswith(legacy)}

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor, receivers: torch.Tensor,
                num_nodes: int) -> list[torch.Tensor]:
        """x (E, C, in_dim) sender features (``to_channels`` layout), sh (E, sh_dim), weights (E, P C) in e3nn's
        order, receivers (E,) -> for every output order L = 0..lmax the summed messages (num_nodes, C, paths_L, 2L+1),
        paths in ascending order (paths_L = 0 for an order no path reaches)."""
        e, k_in = x.shape[0], x.shape[-1]
        per_path = weights.view(e, self.num_paths, self.channels).transpose(1, 2)      # (E, C, P)
        blocks = [x.new_zeros(num_nodes, self.channels, 0, 2 * l + 1) for l in range(self.lmax + 1)]
        for l, coupling in zip(self.orders, self.couplings(sh)):
            paths = getattr(self, f"paths_{l}")
            per_edge = (sh @ coupling).view(e, k_in, coupling.shape[1] // k_in)         # (E, in_dim, paths_L (2L+1))
            m = torch.bmm(x, per_edge).view(e, self.channels, len(paths), 2 * l + 1)    # (E, C, paths_L, 2L+1)
            m = m * per_path[:, :, paths, None]
            blocks[l] = m.new_zeros(num_nodes, *m.shape[1:]).index_add_(0, receivers, m)
        return blocks

    def to_irreps(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """``forward``'s blocks -> (N, C P-paths) in e3nn's layout of ``irreps_out``."""
        return torch.cat([blocks[self.orders[b]][:, :, k].flatten(1) for b, k in self.layout], -1)
