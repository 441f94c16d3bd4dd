"""Error regression's inner step for a packed PV-RNN stack: the window objective's gradient in the window's
adaptive vectors, by hand, in buffers made once and reused by every iteration."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .pvrnn_layer import gaussian_kl
from .pvrnn_stack import PackedStack, SkewedStack


class WindowGradient:
    """Error regression's inner step by hand (no autograd): the gradient in a window's adaptive vectors
    A = [A^mu, A^sigma] (B, W, 2Z) of the window objective, summed over the B streams,
        J = sum_t [ (1/(W R)) ||W_out d^0_t + b_out - x_t||^2 + sum_j c_j KL(q_tj || p_tj) ],
    with the weights fixed, z = tanh(A^mu) + exp(A^sigma) eps for the given eps, and c_tj the KL weight of latent
    unit j at window step t (w_k / (z_k W) for the model's objective), ``c_later`` (W, Z) for a window that
    starts after the stream's first step and ``c_first`` for one that starts there. With e = mu^q - mu^p and
    v = 1/sigma_p^2 the KL's partials are dKL/dmu^q = e v = -dKL/dmu^p, dKL/dlog sigma^p = 1 - (sigma_q^2 + e^2) v,
    dKL/dA^sigma = sigma_q^2 v - 1 (besides the path through z); the recursion's part is ``SkewedStack.propagate``. Buffers are allocated once for (W, B):
    about 50 small ops per call plus four per wave step. Equal to autograd's gradient (tested through the model).
    """

    def __init__(self, packed: PackedStack, out_weight: torch.Tensor, out_bias: torch.Tensor, c_later: torch.Tensor,
                 c_first: torch.Tensor, W: int, B: int):
        self.packed, self.stack, self.c_later, self.c_first = packed, SkewedStack(packed, W, B), c_later, c_first
        c = c_later  # the buffers' device and dtype
        L, Z, n0 = len(packed.d_sizes), sum(packed.z_sizes), packed.d_sizes[0]
        self.L, self.Z, self.n0 = L, Z, n0
        lag = self.stack.lag_z
        # the prior of step t reads d_{t-1} of its level, held by frame t + lag (frame lag: the initial state)
        self.prior_frame = (torch.arange(W, device=c.device)[:, None] + lag.repeat(2))[:, None].expand(-1, B, -1)
        self.not_first_step = (torch.arange(W, device=c.device) > 0).to(c.dtype)[:, None]
        self.Wp_t, self.one, self.minus_one = packed.Wp.t(), c.new_ones(()), -c.new_ones(())
        self.out_weight, self.out_bias = out_weight, out_bias
        self.out_grad = out_weight * (2 / (W * out_weight.shape[0]))  # dJ/dd^0 = (x_hat - x) 2 W_out / (W R)
        self.g_prior_frames = c.new_zeros(self.stack.S + 1, B, 2 * Z)
        self.g_prior, self.grad = c.new_empty(B, W, 2 * Z), c.new_empty(B, W, 2 * Z)
        self.g_pre_mu, self.g_log_sigma_p = self.g_prior[..., :Z], self.g_prior[..., Z:]
        self.g_mu, self.g_sigma = self.grad[..., :Z], self.grad[..., Z:]
        self.level0_gin = self.stack.gin_d[L:, :, :n0]  # level 0's steps sit in frames L .. S

    def __call__(self, a: torch.Tensor, eps: torch.Tensor, h0: torch.Tensor, d0: torch.Tensor, first: bool,
                 obs: torch.Tensor, value: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(J if ``value`` else None, dJ/dA) for A = ``a`` (B, W, 2Z), noise ``eps`` (B, W, Z), state (h0, d0)
        before the window, observations ``obs`` (B, W, R); ``first``: the window's first prior is N(0, I). The
        gradient is a buffer that the next call overwrites."""
        p, stack, Z = self.packed, self.stack, self.Z
        c = self.c_first if first else self.c_later
        a_mu, a_sigma = a[..., :Z], a[..., Z:]
        mu_q, sigma_q = torch.tanh(a_mu), torch.exp(a_sigma)
        stack.run(F.linear(torch.addcmul(mu_q, sigma_q, eps), p.Wz, p.b), h0, d0)
        prior = torch.addmm(p.bp, stack.Xd_rows, self.Wp_t).view(stack.S + 1, stack.B, 2 * Z)  # every frame's
        prior = torch.gather(prior, 0, self.prior_frame).transpose(0, 1)  # (B, W, 2Z), each step's own
        if first:  # zero pre-activations at t = 1: N(0, I)
            prior = prior * self.not_first_step
        pre_mu, log_sigma_p = prior[..., :Z], prior[..., Z:]
        mu_p, v = torch.tanh(pre_mu), torch.exp(log_sigma_p * -2)
        e = mu_q - mu_p
        ev, sq2v = e * v, sigma_q.square() * v
        cev = ev * c
        torch.mul(cev, torch.addcmul(self.minus_one, mu_p, mu_p), out=self.g_pre_mu)
        torch.addcmul(c, c, torch.addcmul(sq2v, e, ev), value=-1, out=self.g_log_sigma_p)
        frames = self.g_prior_frames.zero_().scatter_(0, self.prior_frame, self.g_prior.transpose(0, 1))
        torch.matmul(frames, p.Wp, out=stack.gin_d)
        stack.gin_h.zero_()  # propagate leaves scratch there
        diff = self._residual(obs)
        self.level0_gin.add_(diff @ self.out_grad)
        stack.propagate()
        # z enters as r (W_zd z + b), so dJ/dz = dJ/d(r u) r W_zd, and dJ/d(r u) is G in the step's frame
        g_z = torch.gather(stack.G, 0, stack.frame_of_time).transpose(0, 1) @ stack.rWz  # (B, W, Z)
        torch.mul(g_z + cev, torch.addcmul(self.one, mu_q, mu_q, value=-1), out=self.g_mu)
        torch.addcmul(c * (sq2v - 1), g_z * eps, sigma_q, out=self.g_sigma)
        if not value:
            return None, self.grad
        kl = gaussian_kl(mu_q, a_sigma, mu_p, log_sigma_p)
        return diff.square().sum() / (diff.shape[0] * diff.shape[2]) + (kl * c).sum(), self.grad

    def _residual(self, obs: torch.Tensor) -> torch.Tensor:
        """x_hat - x (W, B, R) of the stack's last run, from level 0's d in frames L .. S."""
        return F.linear(self.stack.Xd[self.L:, :, :self.n0], self.out_weight, self.out_bias) - obs.transpose(0, 1)

    def mean_pass(self, a: torch.Tensor, h0: torch.Tensor, d0: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """The window at z = mu^q (posterior means): its mean squared reconstruction error per stream (B,).
        The stack keeps the trajectory for ``state_at``."""
        p = self.packed
        self.stack.run(F.linear(torch.tanh(a[..., :self.Z]), p.Wz, p.b), h0, d0)
        return self._residual(obs).square().mean((0, 2))

    def state_at(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, d), each (B, N), after step t of the last pass."""
        return self.stack.state_at(t)
