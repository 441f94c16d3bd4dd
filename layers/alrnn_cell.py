"""The Almost-Linear RNN cell (Brenner et al., NeurIPS 2024, arXiv 2410.14240)."""
from __future__ import annotations

import torch
from torch import nn

from .autocast_off import autocast_off
from .device_constant import device_constant


class ALRNNCell(nn.Module):
    """z_t = A z_{t-1} + W phi*(z_{t-1}) + h, with A diagonal and
    phi*(z) = (z_1, ..., z_{M-P}, max(0, z_{M-P+1}), ..., max(0, z_M)): only the last P units are ReLUs.

    Initialisation as the authors': A = diag(K) / max|eig(K)| with K = R^T R / M + I, R ~ N(0, 1);
    W ~ 0.01 N(0, 1); h = 0. Within one linear subregion (fixed sign pattern d of the last P units)
    the map is affine with Jacobian diag(A) + W diag(1, ..., 1, d).
    """

    def __init__(self, M: int, P: int):
        super().__init__()
        if not 0 <= P <= M:
            raise ValueError(f"ALRNNCell needs 0 <= P <= M, got M={M}, P={P}")
        self.M, self.P = M, P
        R = torch.randn(M, M)
        K = R.T @ R / M + torch.eye(M)
        self.A = nn.Parameter(torch.diagonal(K) / torch.linalg.eigvalsh(K).abs().max())
        self.W = nn.Parameter(0.01 * torch.randn(M, M))
        self.h = nn.Parameter(torch.zeros(M))
        # phi*(z) = max(z, floor): floor is -inf on the linear units and 0 on the ReLU units (one fused op)
        floor = torch.full((M,), float("-inf"))
        floor[M - P:] = 0.0
        self.register_buffer("floor", floor, persistent=False)

    def phi_star(self, z: torch.Tensor) -> torch.Tensor:
        """Identity on the first M-P units, ReLU on the last P."""
        return torch.maximum(z, self.floor)

    def step_function(self):
        """The map z -> A z + W phi*(z) + h for states z (B, M), with the parameters read once: a free run calls
        it 10^5 times, at half the cost of a Module call with its checks."""
        A, W_t, h, floor = self.A, self.W.T, self.h, self.floor
        return lambda z: torch.addmm(torch.addcmul(h, A, z), torch.maximum(z, floor), W_t)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.M:
            raise ValueError(f"ALRNNCell: z must have last dim M={self.M}, got shape {tuple(z.shape)}")
        if z.dim() == 2:
            return torch.addmm(torch.addcmul(self.h, self.A, z), self.phi_star(z), self.W.T)
        return torch.addcmul(self.h, self.A, z) + self.phi_star(z) @ self.W.T

    def forced_rollout(self, z0: torch.Tensor, x: torch.Tensor, forced: list[bool], alpha: float = 1.0) -> torch.Tensor:
        """States s_1..s_T (B, T, M) of the recursion from z0 (B, M), where after step i the first N units are
        set to alpha x_i + (1 - alpha) s_i[:N] wherever forced[i] (teacher forcing; x is (B, T, N)).
        Same values and gradients as looping ``forward``, with a fused backward (see _ForcedRollout)."""
        if z0.dim() != 2 or z0.shape[-1] != self.M or x.dim() != 3 or x.shape[0] != z0.shape[0]:
            raise ValueError(f"forced_rollout: z0 must be (B, M={self.M}) and x (B, T, N), got "
                             f"{tuple(z0.shape)} and {tuple(x.shape)}")
        if len(forced) != x.shape[1]:
            raise ValueError(f"forced_rollout: forced has {len(forced)} entries for {x.shape[1]} steps")
        with autocast_off(z0.device.type):
            dtype = self.A.dtype
            return _ForcedRollout.apply(z0.to(dtype), self.A, self.W, self.h, self.floor.to(dtype), x.to(dtype),
                                        list(forced), float(alpha))

    def subregion(self, z: torch.Tensor) -> torch.Tensor:
        """Symbol of the linear subregion: the sign pattern of the P ReLU units as an integer sum_i [z_{M-P+i} > 0] 2^i."""
        if not torch.is_tensor(z) or z.dim() == 0 or z.shape[-1] != self.M:
            raise ValueError(f"subregion: z must be latent states (..., M={self.M}), got "
                             f"{tuple(z.shape) if torch.is_tensor(z) else type(z).__name__} (observations have N "
                             "dims: generate(..., return_latents=True) gives the latents)")
        bits = (z[..., self.M - self.P:] > 0).long()
        return (bits * (2 ** torch.arange(self.P, device=z.device))).sum(-1)


class _ForcedRollout(torch.autograd.Function):
    """The teacher-forced AL-RNN recursion with a hand-written backward (backpropagation through time).

    Forward, for i = 0..T-1: s_i = A z_i + W phi*(z_i) + h; z_{i+1} = s_i, except where forced[i]:
    z_{i+1}[:N] = alpha x_i + (1 - alpha) s_i[:N]. Backward per step: g_i = dL/ds_i + c_i (with c_i's first
    N entries scaled by 1 - alpha where forced[i]), c_{i-1} = A g_i + (g_i W) * phi*'(z_i); the weight
    gradients dA, dW, dh are then single reductions over all steps, and dL/dx_i = alpha c_i[:N] where forced[i]
    (computed only when x requires grad: an encoder or a soft-forcing target upstream). About 10 tensor ops per
    time step, against ~3x that through autograd, so the per-step overhead that dominates small recurrent models
    shrinks accordingly.
    """

    @staticmethod
    def forward(ctx, z0, A, W, h, floor, x, forced, alpha):
        B, M = z0.shape
        T, N = x.shape[1], x.shape[2]
        states = z0.new_empty(T, B, M)  # time-major, so that each step writes its row in place (out=)
        W_t, z = W.T, z0
        for i in range(T):
            s = torch.addmm(torch.addcmul(h, A, z), torch.maximum(z, floor), W_t, out=states[i])
            z = torch.cat([torch.lerp(s[:, :N], x[:, i], alpha), s[:, N:]], dim=-1) if forced[i] else s
        # each step's input z_i, after the loop: z_0, then the previous state, forced where that step was
        inputs = torch.cat([z0[None], states[:-1]])
        before = device_constant([i for i in range(T - 1) if forced[i]], z0.device, torch.long)
        inputs[before + 1, :, :N] = torch.lerp(states[before, :, :N], x[:, before].transpose(0, 1), alpha)
        ctx.save_for_backward(inputs, A, W, floor)
        ctx.forced, ctx.alpha, ctx.N = forced, alpha, N
        return states.transpose(0, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_states):
        inputs, A, W, floor = ctx.saved_tensors
        T, B, M = inputs.shape
        keep = torch.ones(M, dtype=inputs.dtype, device=inputs.device)
        keep[: ctx.N] = 1.0 - ctx.alpha
        slope = (inputs > floor).to(inputs.dtype)  # phi*'(z): 1 on linear units, [z > 0] on ReLU units
        grads = torch.empty_like(inputs)
        carry = torch.zeros_like(inputs[0])
        d_x = inputs.new_zeros(B, len(ctx.forced), ctx.N) if ctx.needs_input_grad[5] else None
        d_states = d_states.transpose(0, 1)
        for i in range(T - 1, -1, -1):
            if d_x is not None and ctx.forced[i]:
                d_x[:, i] = ctx.alpha * carry[:, : ctx.N]
            g = torch.add(d_states[i], carry * keep if ctx.forced[i] else carry, out=grads[i])
            carry = torch.addcmul(A * g, g @ W, slope[i])
        flat_g = grads.reshape(-1, M)
        d_A = (flat_g * inputs.reshape(-1, M)).sum(0)
        d_W = flat_g.T @ torch.maximum(inputs, floor).reshape(-1, M)
        return carry, d_A, d_W, flat_g.sum(0), None, d_x, None, None
