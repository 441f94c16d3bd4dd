"""One level of PV-RNN, the predictive-coding-inspired variational RNN (Ahmadi and Tani, Neural Computation 2019,
arXiv 1811.01339): an MTRNN layer with deterministic units d and stochastic latent units z."""
from __future__ import annotations

import torch
from torch import nn

from .probe_point import ProbePoint


def gaussian_kl(mu_q: torch.Tensor, sigma_q: torch.Tensor, mu_p: torch.Tensor, sigma_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) per unit, in nats:
    log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2."""
    return torch.log(sigma_p / sigma_q) + (sigma_q ** 2 + (mu_q - mu_p) ** 2) / (2 * sigma_p ** 2) - 0.5


class PVRNNLayer(nn.Module):
    """PV-RNN level k with ``d_size`` deterministic units, ``z_size`` latent units and time constant ``tau``.

    Leaky integration (the paper's generative model, section 2):
        h_t = (1 - 1/tau) h_{t-1} + (1/tau) (W_dd d_{t-1} + W_zd z_t + W_top d_t^{k+1} [+ W_bottom d_{t-1}^{k-1}]),
        d_t = tanh(h_t).
    The top-down input d_t^{k+1} comes from the level above at the same step (computed first); the bottom-up
    input d_{t-1}^{k-1} from the level below at the previous step is optional (``bottom_size`` > 0), the 2019
    paper's generative model being top-down only. W_dd carries the recurrent bias.
    Prior:      mu^p_t = tanh(W_mu d_{t-1} + b_mu), sigma^p_t = exp(W_sigma d_{t-1} + b_sigma); at t = 1, N(0, I).
    Posterior:  mu^q_t = tanh(A^mu_t), sigma^q_t = exp(A^sigma_t) from adaptive vectors (held by the model).
    Sampling:   z_t = mu + sigma * eps, eps ~ N(0, I) (reparametrised).
    Probe points (the model passes whole sequences (B, T, .) through them): d, z, prior_mu, prior_sigma,
    post_mu, post_sigma and kl (per step, summed over the layer's z units, nats).
    """

    def __init__(self, d_size: int, z_size: int, tau: float, top_size: int = 0, bottom_size: int = 0):
        super().__init__()
        if d_size < 1 or z_size < 1 or tau < 1 or top_size < 0 or bottom_size < 0:
            raise ValueError(f"PVRNNLayer needs d_size >= 1, z_size >= 1, tau >= 1, top/bottom sizes >= 0, got "
                             f"d_size={d_size}, z_size={z_size}, tau={tau}, top_size={top_size}, bottom_size={bottom_size}")
        self.d_size, self.z_size, self.tau = d_size, z_size, float(tau)
        self.top_size, self.bottom_size = top_size, bottom_size
        self.W_dd = nn.Linear(d_size, d_size)
        self.W_zd = nn.Linear(z_size, d_size, bias=False)
        self.W_top = nn.Linear(top_size, d_size, bias=False) if top_size else None
        self.W_bottom = nn.Linear(bottom_size, d_size, bias=False) if bottom_size else None
        self.W_mu = nn.Linear(d_size, z_size)
        self.W_sigma = nn.Linear(d_size, z_size)
        for name in ("d", "z", "prior_mu", "prior_sigma", "post_mu", "post_sigma", "kl"):
            setattr(self, name, ProbePoint())

    def prior(self, d_prev: torch.Tensor, first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu^p_t, sigma^p_t) from d_{t-1} (..., d_size); the unit Gaussian when ``first``."""
        if first:
            shape = d_prev.shape[:-1] + (self.z_size,)
            return d_prev.new_zeros(shape), d_prev.new_ones(shape)
        return torch.tanh(self.W_mu(d_prev)), torch.exp(self.W_sigma(d_prev))

    @staticmethod
    def posterior(a_mu: torch.Tensor, a_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu^q_t, sigma^q_t) = (tanh(A^mu_t), exp(A^sigma_t))."""
        return torch.tanh(a_mu), torch.exp(a_sigma)

    def step(self, h_prev: torch.Tensor, d_prev: torch.Tensor, z: torch.Tensor, top: torch.Tensor | None = None,
             bottom: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One leaky-integration step; returns (h_t, d_t), each (B, d_size)."""
        if z.shape[-1] != self.z_size:
            raise ValueError(f"PVRNNLayer.step: expected z (B, {self.z_size}), got {tuple(z.shape)}")
        return self.integrate(h_prev, d_prev, self.W_zd(z), top, bottom)

    def integrate(self, h_prev: torch.Tensor, d_prev: torch.Tensor, z_drive: torch.Tensor,
                  top: torch.Tensor | None = None, bottom: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``step`` with the latent drive W_zd z_t given (precomputed for a whole sequence when z does not depend
        on the state, as under the posterior)."""
        if d_prev.shape[-1] != self.d_size:
            raise ValueError(f"PVRNNLayer: expected d_prev (B, {self.d_size}), got {tuple(d_prev.shape)}")
        drive = self.W_dd(d_prev) + z_drive
        if self.W_top is not None:
            if top is None:
                raise ValueError("PVRNNLayer: this layer has top-down connections; pass top=d_t of the level above")
            drive = drive + self.W_top(top)
        if self.W_bottom is not None:
            if bottom is None:
                raise ValueError("PVRNNLayer: this layer has bottom-up connections; pass bottom=d_{t-1} of the level below")
            drive = drive + self.W_bottom(bottom)
        h = torch.lerp(h_prev, drive, 1.0 / self.tau)  # (1 - 1/tau) h_prev + drive / tau
        return h, torch.tanh(h)


class _TopDownRecurrence(torch.autograd.Function):
    """The deterministic recursion of a stack of PV-RNN levels under given latent drives, with a hand-written backward.

    Forward, for t = 1..T and k = L-1 (top) down to 0:
        h^k_t = a_k h^k_{t-1} + c_k (W^k d^k_{t-1} + b^k + u^k_t + V^k d^{k+1}_t),  d^k_t = tanh(h^k_t),
    a_k = 1 - 1/tau_k, c_k = 1/tau_k, u^k_t = W_zd z^k_t (precomputed), V^k = W_top (none at the top).
    Backward, for t = T..1 and k = 0 up to L-1 (level k's d_t feeds level k-1 at the same t):
        g_h^k_t = (dL/dd^k_t + W^k^T c_k g_h^k_{t+1} + V^{k-1}^T c_{k-1} g_h^{k-1}_t)(1 - (d^k_t)^2) + a_k g_h^k_{t+1},
    then dW^k, db^k, dV^k and du^k are single reductions over all steps.
    Tensor arguments, flat: h0[L], d0[L], W[L], b[L], V[L-1], u[L] (u^k: (B, T, n_k)); returns d[L] (B, T, n_k)
    and the final h[L] (B, n_k).
    """

    @staticmethod
    def forward(ctx, taus, *tensors):
        L = len(taus)
        h0, d0, W, b, V, u = (tensors[:L], tensors[L:2 * L], tensors[2 * L:3 * L], tensors[3 * L:4 * L],
                              tensors[4 * L:5 * L - 1], tensors[5 * L - 1:])
        B, T = u[0].shape[:2]
        d = [u[k].new_empty(B, T, u[k].shape[-1]) for k in range(L)]
        h, prev = list(h0), list(d0)
        drive = [u[k] + b[k] for k in range(L)]  # for all steps at once
        for t in range(T):
            for k in reversed(range(L)):
                pre = torch.addmm(drive[k][:, t], prev[k], W[k].T)
                if k + 1 < L:
                    pre = torch.addmm(pre, d[k + 1][:, t], V[k].T)
                h[k] = torch.lerp(h[k], pre, 1.0 / taus[k])
                d[k][:, t] = torch.tanh(h[k])
            prev = [d[k][:, t] for k in range(L)]
        ctx.save_for_backward(*d0, *W, *V, *d)
        ctx.taus = taus
        return (*d, *h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        taus = ctx.taus
        L = len(taus)
        saved = ctx.saved_tensors
        d0, W, V, d = saved[:L], saved[L:2 * L], saved[2 * L:3 * L - 1], saved[3 * L - 1:]
        g_d, g_hT = grads[:L], grads[L:]
        B, T = d[0].shape[:2]
        slope = [1 - dk ** 2 for dk in d]
        g_pre = [torch.empty_like(dk) for dk in d]  # c_k g_h^k_t: the gradient of each step's pre-activation
        # a_k g_h^k_{t+1} (starting with the gradient of the returned final h) and W^k^T c_k g_h^k_{t+1}
        carry = [torch.zeros_like(d[k][:, 0]) if g_hT[k] is None else g_hT[k] for k in range(L)]
        from_next = [torch.zeros_like(d[k][:, 0]) for k in range(L)]
        for t in range(T - 1, -1, -1):
            below = None
            for k in range(L):
                g = from_next[k] if g_d[k] is None else g_d[k][:, t] + from_next[k]
                if below is not None:
                    g = torch.addmm(g, below, V[k - 1])
                g_h = torch.addcmul(carry[k], g, slope[k][:, t])
                below = g_h / taus[k]
                g_pre[k][:, t] = below
                carry[k] = g_h * (1 - 1 / taus[k])
                from_next[k] = below @ W[k]
        g_h0, g_d0 = carry, from_next
        flat = [g.reshape(B * T, -1) for g in g_pre]
        prev_d = [torch.cat([d0[k][:, None], d[k][:, :-1]], 1).reshape(B * T, -1) for k in range(L)]
        g_W = [flat[k].T @ prev_d[k] for k in range(L)]
        g_b = [flat[k].sum(0) for k in range(L)]
        g_V = [flat[k].T @ d[k + 1].reshape(B * T, -1) for k in range(L - 1)]
        return (None, *g_h0, *g_d0, *g_W, *g_b, *g_V, *g_pre)


def top_down_recurrence(levels, u: list[torch.Tensor], state: list[tuple[torch.Tensor, torch.Tensor]]):
    """Run the deterministic recursion of ``levels`` (PVRNNLayer, bottom first, no bottom-up weights) for all T steps
    of the latent drives u[k] = W_zd z^k (B, T, d_k) from ``state`` [(h, d)] per level. Returns (d list of
    (B, T, d_k), final h list). Same values and gradients as stepping ``integrate``; see _TopDownRecurrence."""
    if any(layer.W_bottom is not None for layer in levels):
        raise ValueError("top_down_recurrence: levels with bottom-up weights need the step-by-step path")
    L = len(levels)
    out = _TopDownRecurrence.apply(tuple(layer.tau for layer in levels), *[h for h, _ in state], *[d for _, d in state],
                                   *[layer.W_dd.weight for layer in levels], *[layer.W_dd.bias for layer in levels],
                                   *[levels[k].W_top.weight for k in range(L - 1)], *u)
    return list(out[:L]), list(out[L:])
