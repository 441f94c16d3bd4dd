"""e3nn's equivariant linear map, evaluated one output order at a time on channel-layout blocks."""
from __future__ import annotations

import torch
from e3nn import o3


class OrderwiseLinear(o3.Linear):
    """y_o[n, M, c'] = sum_{k -> o} alpha_k sum_c x_k[n, M, c] W_k[c, c']: e3nn's ``o3.Linear`` (same weights, path
    normalisation alpha_k and state-dict keys) between irreps with one output irreps per order, as one matmul per
    output over all the inputs k that map to it, instead of e3nn's generated code of a few small ops per path.

    ``forward_blocks`` takes, for every output irreps o in order, the inputs that map to it stacked as
    (N, 2L+1, n_o, C_in) in ascending input order (``blocks_of`` makes them from e3nn's layout), and returns the
    outputs (N, 2L+1, C_out): channels last, so each output is one (N (2L+1), n_o C_in) x (n_o C_in, C_out) matmul. ``forward`` keeps e3nn's layout (N, irreps_in.dim) -> (N, irreps_out.dim).
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps):
        super().__init__(irreps_in, irreps_out)
        if len({ir for _, ir in self.irreps_out}) != len(self.irreps_out):
            raise ValueError(f"OrderwiseLinear needs distinct output irreps, got {self.irreps_out}")
        starts, offset = [], 0
        for ins in self.instructions:
            starts.append(offset)
            offset += ins.path_shape[0] * ins.path_shape[1]
        self.outputs = []  # per output: (n inputs, mul_in, mul_out, alpha); buffer index_o: its rows of the weight
        for o, (mul_out, _) in enumerate(self.irreps_out):
            into = [(ins, s) for ins, s in zip(self.instructions, starts) if ins.i_out == o]
            index = torch.cat([torch.arange(s, s + ins.path_shape[0] * ins.path_shape[1]) for ins, s in into]) \
                if into else torch.zeros(0, dtype=torch.long)
            self.register_buffer(f"index_{o}", index, persistent=False)
            mul_in = into[0][0].path_shape[0] if into else 0
            alpha = into[0][0].path_weight if into else 0.0
            if any(ins.path_shape[0] != mul_in or ins.path_weight != alpha for ins, _ in into):
                raise ValueError(f"OrderwiseLinear needs equal multiplicities and path weights into each output, "
                                 f"got {self.irreps_in} -> {self.irreps_out}")
            self.outputs.append((len(into), mul_in, mul_out, alpha))
        self.inputs_of = [[ins.i_in for ins in self.instructions if ins.i_out == o] for o in range(len(self.irreps_out))]
        starts = [0]
        for mul, ir in self.irreps_in:
            starts.append(starts[-1] + mul * ir.dim)
        self.input_slices = [(start, mul, ir.dim) for start, (mul, ir) in zip(starts, self.irreps_in)]  # plain ints
        self.in_dim = starts[-1]
        self.output_dims = [ir.dim for _, ir in self.irreps_out]

    def blocks_of(self, x: torch.Tensor) -> list[torch.Tensor]:
        """e3nn's layout (N, irreps_in.dim) -> ``forward_blocks``' inputs: per output, (N, 2L+1, n_o, C_in)."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"OrderwiseLinear: expected features (N, {self.in_dim}) of {self.irreps_in}, got {tuple(x.shape)}")
        pieces = [x[:, start:start + mul * dim].reshape(-1, mul, dim).transpose(1, 2)
                  for start, mul, dim in self.input_slices]
        return [pieces[inputs[0]].unsqueeze(2) if len(inputs) == 1 else
                torch.stack([pieces[i] for i in inputs], 2) if inputs else x.new_zeros(x.shape[0], dim, 0, 0)
                for inputs, dim in zip(self.inputs_of, self.output_dims)]

    def forward_blocks(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for o, (x, (n, mul_in, mul_out, alpha)) in enumerate(zip(blocks, self.outputs)):
            if n == 0:
                out.append(x.new_zeros(x.shape[0], x.shape[1], mul_out))
                continue
            w = self.weight.index_select(0, getattr(self, f"index_{o}")).view(n * mul_in, mul_out) * alpha
            y = x.reshape(-1, n * mul_in) @ w                                       # (N (2L+1), C_out)
            out.append(y.view(x.shape[0], x.shape[1], mul_out))
        return out

    @staticmethod
    def join(blocks: list[torch.Tensor]) -> torch.Tensor:
        """``forward_blocks``' outputs, per output (N, 2L+1, C_out) -> e3nn's layout (N, irreps_out.dim)."""
        return torch.cat([y.transpose(1, 2).flatten(1) for y in blocks], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.join(self.forward_blocks(self.blocks_of(x)))
