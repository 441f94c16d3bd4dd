"""The channel-wise tensor product of neighbour features with edge spherical harmonics, as one batched matmul."""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from .equivariant_mixing import from_channels, sphere_irreps


class EdgeTensorProduct(nn.Module):
    """m_i,(p,M),c = sum_{e: i<-j} w_e,p,c sum_{a,b} T^p_{a b M} x_j,a,c Y_e,b: e3nn's channel-wise ('uvu') tensor
    product of C-channel neighbour features x (orders up to ``in_lmax``) with edge harmonics Y (orders up to
    ``sh_lmax``), one path p for every (l1, l2 -> L) with L <= ``lmax`` and parity (-1)^L, weighted per edge, path
    and channel, and summed over each receiver's edges.

    T is read from e3nn's ``TensorProduct`` with the same instructions (its Clebsch-Gordan coefficients and path
    normalisation, probed on basis vectors), so the two agree to rounding. Y is contracted with T into one
    (rows x in_dim) matrix per edge, rows = every path's 2L+1 output components, which one ``torch.bmm`` applies to
    all channels. Channels stay last (the contiguous axis), so the per-path weights scale whole rows by broadcasting,
    and the scatter over receivers runs on one block per output order L. The output stays in those blocks, which
    ``OrderwiseLinear`` reads directly; ``to_irreps`` gives e3nn's layout. Autograd differentiates it to any order.
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
        self.counts = [len(block) for block in members]                     # paths_L
        self.row_counts = [(2 * l + 1) * n for l, n in zip(self.orders, self.counts)]
        self.rows = sum(self.row_counts)                                    # per edge: every path's 2L+1 components
        # float64 master (sh_dim, rows in_dim), rows ordered (L, M, path): cast on first use per dtype/device (kept
        # out of the buffers so .float() cannot round it)
        self._master = torch.cat([torch.stack([coupling[p] for p in block], -1).permute(1, 2, 3, 0).flatten(1)
                                  for block in members], 1)
        self._cast: tuple | None = None                                     # (dtype, device, cast master)
        self.register_buffer("path_order", torch.tensor([p for block in members for p in block], dtype=torch.long),
                             persistent=False)
        self.layout = [(self.orders.index(ir.l), members[self.orders.index(ir.l)].index(p)) for p, (_, _, ir)
                       in enumerate(paths)]                                 # path p = block b, row k

    def coupling(self, like: torch.Tensor) -> torch.Tensor:
        """T as an (sh_dim, rows in_dim) matrix in ``like``'s dtype and device."""
        if self._cast is None or self._cast[:2] != (like.dtype, like.device):
            self._cast = (like.dtype, like.device, self._master.to(like))
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
        """x (E, in_dim, C) sender features (``to_components`` layout), sh (E, sh_dim), weights (E, P C) in e3nn's
        order, receivers (E,) -> for every output order L = 0..lmax the summed messages (num_nodes, 2L+1, paths_L, C),
        paths in ascending order (paths_L = 0 for an order no path reaches)."""
        e, k_in, c = x.shape
        per_edge = (sh @ self.coupling(sh)).view(e, self.rows, k_in)                  # (E, rows, in_dim)
        # (E, rows, C); with scalar inputs an outer product, which broadcasting does ~10x faster than bmm on CPU
        m = per_edge * x if k_in == 1 else torch.bmm(per_edge, x)
        w = weights.view(e, self.num_paths, c).index_select(1, self.path_order)        # (E, P, C), paths by order
        blocks = [x.new_zeros(num_nodes, 2 * l + 1, 0, c) for l in range(self.lmax + 1)]
        # split, not slicing: the backward of split is one cat, that of each slice a zero tensor of the full size
        per_order = zip(self.orders, self.counts, m.split(self.row_counts, 1), w.split(self.counts, 1))
        for l, n, m_l, w_l in per_order:
            m_l = m_l.view(e, 2 * l + 1, n, c) * w_l.unsqueeze(1)
            blocks[l] = m_l.new_zeros(num_nodes, 2 * l + 1, n, c).index_add_(0, receivers, m_l)
        return blocks

    def to_irreps(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """``forward``'s blocks -> (N, C P-paths) in e3nn's layout of ``irreps_out``."""
        return torch.cat([blocks[self.orders[b]][:, :, k].transpose(1, 2).flatten(1) for b, k in self.layout], -1)
