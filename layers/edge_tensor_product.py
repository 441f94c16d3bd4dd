"""The channel-wise tensor product of neighbour features with edge spherical harmonics, as one batched matmul."""
from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from .autocast_off import autocast_off
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
        self.chunk_elements = 1 << 22                                       # per-edge products held at once

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
        exact, tables = (f"{prefix}output_mask", f"{prefix}weight"), f"{prefix}_compiled_main_left_right._w3j_"
        return {k: v for k, v in state.items() if k not in exact and not k.startswith(tables)}

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weights: torch.Tensor, senders: torch.Tensor,
                receivers: torch.Tensor) -> list[torch.Tensor]:
        """x (N, in_dim, C) node features (``to_components`` layout), sh (E, sh_dim), weights (E, P C) in e3nn's
        order, senders and receivers (E,) -> for every output order L = 0..lmax the summed messages
        (N, 2L+1, paths_L, C), paths in ascending order (paths_L = 0 for an order no path reaches)."""
        n_nodes, _, c = x.shape
        w = weights.view(-1, self.num_paths, c).index_select(1, self.path_order)      # (E, P, C), paths by order
        # one dtype (the widest given) without autocast: the hand-written backward turns autocast off too (forces
        # call it inside the caller's autocast), and its gradients must match the forward's dtypes (under bf16
        # autocast x and w come in bf16, sh in float32)
        dtype = torch.promote_types(torch.promote_types(x.dtype, sh.dtype), w.dtype)
        with autocast_off(x.device.type):
            summed = _EdgeMessages.apply(self, x.to(dtype), sh.to(dtype), w.to(dtype), senders, receivers)
        blocks = [x.new_zeros(n_nodes, 2 * l + 1, 0, c) for l in range(self.lmax + 1)]
        for l, block in zip(self.orders, summed):
            blocks[l] = block
        return blocks

    def chunks(self, edges: int, channels: int) -> list[slice]:
        """Edge ranges whose per-edge products (rows x C each) stay within ``chunk_elements``."""
        step = max(1, self.chunk_elements // (self.rows * channels))
        return [slice(start, min(start + step, edges)) for start in range(0, edges, step)] or [slice(0, 0)]

    def products(self, x: torch.Tensor, sh: torch.Tensor, senders: torch.Tensor):
        """Per edge: T contracted with Y (E, rows, in_dim), the sender features (E, in_dim, C) and their product
        u (E, rows, C) (with scalar inputs an outer product, which broadcasting does ~10x faster than bmm on CPU)."""
        per_edge = (sh @ self.coupling(sh)).view(sh.shape[0], self.rows, x.shape[1])
        x_j = x.index_select(0, senders)
        return per_edge, x_j, per_edge * x_j if x.shape[1] == 1 else torch.bmm(per_edge, x_j)

    def to_irreps(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """``forward``'s blocks -> (N, C P-paths) in e3nn's layout of ``irreps_out``."""
        return torch.cat([blocks[self.orders[b]][:, :, k].transpose(1, 2).flatten(1) for b, k in self.layout], -1)


class _EdgeMessages(torch.autograd.Function):
    """sum_{e: i<-j} w_e * (P_e x_j) per output order, where P_e = Y_e T: the product, weighting and scatter of
    ``EdgeTensorProduct``. It saves only its inputs (node features, Y, weights, indices) and recomputes the
    per-edge products in backward, one edge chunk at a time, so neither pass keeps (E, rows, C) tensors alive:
    memory per edge drops from about 2,000 to about 400 numbers at C = 32, L = 2. Only when all edges fit in one
    chunk are the products kept from the forward, and a first-order backward (forces) reuses them. The backward
    is written in differentiable torch ops, so it can itself be differentiated (force training differentiates it
    again; that backward always recomputes, to record how the products depend on the inputs)."""

    @staticmethod
    def forward(ctx, tp: EdgeTensorProduct, x, sh, w, senders, receivers):
        ctx.tp, ctx.products = tp, None
        ctx.save_for_backward(x, sh, w, senders, receivers)
        n_nodes, c = x.shape[0], x.shape[2]
        blocks = [x.new_zeros(n_nodes, 2 * l + 1, n, c) for l, n in zip(tp.orders, tp.counts)]
        parts = tp.chunks(sh.shape[0], c)
        for part in parts:
            products = tp.products(x, sh[part], senders[part])
            if len(parts) == 1:
                ctx.products = products
            u = products[2]
            per_order = zip(blocks, tp.orders, tp.counts, u.split(tp.row_counts, 1), w[part].split(tp.counts, 1))
            for block, l, n, u_l, w_l in per_order:
                block.index_add_(0, receivers[part], u_l.view(-1, 2 * l + 1, n, c) * w_l.unsqueeze(1))
        return tuple(blocks)

    @staticmethod
    def backward(ctx, *grads):
        # forces differentiate the energy inside the caller's autocast: the products here keep the forward's dtype
        with autocast_off(ctx.saved_tensors[0].device.type):
            return _EdgeMessages._backward(ctx, *grads)

    @staticmethod
    def _backward(ctx, *grads):
        tp, (x, sh, w, senders, receivers) = ctx.tp, ctx.saved_tensors
        c, k_in = x.shape[2], x.shape[1]
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[1] else None
        grad_sh, grad_w = [], []
        reuse = ctx.products is not None and not torch.is_grad_enabled()  # one chunk, first-order backward
        for part in tp.chunks(sh.shape[0], c):
            per_edge, x_j, u = ctx.products if reuse else tp.products(x, sh[part], senders[part])
            grad_u, grad_w_part = [], []
            for g, l, n, u_l, w_l in zip(grads, tp.orders, tp.counts, u.split(tp.row_counts, 1),
                                         w[part].split(tp.counts, 1)):
                g = g.index_select(0, receivers[part])                                  # (e, 2L+1, n, C)
                grad_w_part.append((g * u_l.view(-1, 2 * l + 1, n, c)).sum(1))
                grad_u.append((g * w_l.unsqueeze(1)).flatten(1, 2))
            grad_u = torch.cat(grad_u, 1)                                               # (e, rows, C)
            grad_w.append(torch.cat(grad_w_part, 1))
            if k_in == 1:
                grad_p, grad_x_j = (grad_u * x_j).sum(2, keepdim=True), (grad_u * per_edge).sum(1, keepdim=True)
            else:
                grad_p, grad_x_j = torch.bmm(grad_u, x_j.transpose(1, 2)), torch.bmm(per_edge.transpose(1, 2), grad_u)
            grad_sh.append(grad_p.flatten(1) @ tp.coupling(sh).T)
            if grad_x is not None:
                grad_x = grad_x.index_add(0, senders[part], grad_x_j)
        return None, grad_x, torch.cat(grad_sh), torch.cat(grad_w), None, None
