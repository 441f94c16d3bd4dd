"""A stack of PV-RNN levels packed into block matrices: its deterministic recursion and its whole posterior pass,
each with a hand-written backward.

Levels k = 0 (bottom) .. L-1 (top) with n_k deterministic and z_k latent units are concatenated into one state of
N = sum n_k units and one latent vector of Z = sum z_k units, so a whole stack advances with one matmul per step.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .pvrnn_layer import gaussian_kl


class PackedStack(NamedTuple):
    """Block matrices of a stack of ``PVRNNLayer`` (bottom-up weights are not packed; see ``pack_levels``).

    M (N, N): level k's rows hold W_dd^k on its own columns and W_top^k on level k+1's (block upper bidiagonal);
    b (N,): the W_dd biases; rate (N,): 1/tau_k per unit; Wz (N, Z): block-diagonal W_zd; Wp (2Z, N), bp (2Z,):
    the prior's W_mu blocks stacked over its W_sigma blocks; level_sum (Z, L): 1 where unit i belongs to level k;
    lag (N,): L - 1 - k for the units of level k, the wave steps by which the skewed recursion delays them.
    """
    M: torch.Tensor
    b: torch.Tensor
    rate: torch.Tensor
    Wz: torch.Tensor
    Wp: torch.Tensor
    bp: torch.Tensor
    level_sum: torch.Tensor
    lag: torch.Tensor
    d_sizes: tuple
    z_sizes: tuple


def pack_levels(levels) -> PackedStack:
    """Pack ``levels`` (PVRNNLayer, bottom first) into a ``PackedStack`` with differentiable ops, so gradients
    reach every level's weights."""
    d_sizes = tuple(layer.d_size for layer in levels)
    z_sizes = tuple(layer.z_size for layer in levels)
    N, L = sum(d_sizes), len(levels)
    w = levels[0].W_dd.weight
    rows, start = [], 0
    for layer in levels:
        blocks = [layer.W_dd.weight] + ([layer.W_top.weight] if layer.W_top is not None else [])
        width = sum(b.shape[1] for b in blocks)
        rows.append(F.pad(torch.cat(blocks, 1), (start, N - start - width)))
        start += layer.d_size
    return PackedStack(
        M=torch.cat(rows, 0), b=torch.cat([layer.W_dd.bias for layer in levels]),
        rate=torch.cat([w.new_full((layer.d_size,), 1.0 / layer.tau) for layer in levels]),
        Wz=torch.block_diag(*[layer.W_zd.weight for layer in levels]),
        Wp=torch.cat([torch.block_diag(*[layer.W_mu.weight for layer in levels]),
                      torch.block_diag(*[layer.W_sigma.weight for layer in levels])], 0),
        bp=torch.cat([layer.W_mu.bias for layer in levels] + [layer.W_sigma.bias for layer in levels]),
        level_sum=torch.block_diag(*[w.new_ones(z, 1) for z in z_sizes]),
        lag=torch.tensor([L - 1 - k for k, n in enumerate(d_sizes) for _ in range(n)], device=w.device),
        d_sizes=d_sizes, z_sizes=z_sizes)


class _Waves:
    """Index maps between time steps (B, T, N) and the skewed wave steps (S, B, N), S = T + L - 1: unit n of level
    k computes time step t = s - lag_n at wave step s (lag_n = L - 1 - k); ``active`` (S, N) is 1 where it does."""

    def __init__(self, packed: PackedStack, T: int):
        S = T + len(packed.d_sizes) - 1
        step = torch.arange(S, device=packed.lag.device)[:, None] - packed.lag  # (S, N): each unit's time step
        self.active = ((step >= 0) & (step < T)).to(packed.rate.dtype)
        self.time_of_wave = step.clamp(0, T - 1)[:, None]                        # (S, 1, N)
        self.wave_of_time = (torch.arange(T, device=step.device)[:, None] + packed.lag)[:, None]  # (T, 1, N)

    def skew(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, N) -> (S, B, N); idle units read a neighbouring step (mask with ``active`` where it matters)."""
        x = x.transpose(0, 1)
        return torch.gather(x, 0, self.time_of_wave.expand(-1, x.shape[1], -1))

    def unskew(self, x: torch.Tensor) -> torch.Tensor:
        """(S, B, N) -> (B, T, N), a transposed view."""
        return torch.gather(x, 0, self.wave_of_time.expand(-1, x.shape[1], -1)).transpose(0, 1)


def recurrence_forward(packed: PackedStack, u: torch.Tensor, h0: torch.Tensor, d0: torch.Tensor):
    """h^k_t = (1 - r_k) h^k_{t-1} + r_k (W^k d^k_{t-1} + V^k d^{k+1}_t + u^k_t),  d^k_t = tanh(h^k_t),  r_k = 1/tau_k,
    for all T steps of the drives u (B, T, N) (W_zd z_t plus the W_dd bias, levels concatenated) from the state
    (h0, d0), each (B, N); V^k = W_top^k (none at the top). No autograd; returns d (B, T, N), the final h (B, N)
    and the trace ``recurrence_backward`` needs.

    Level k reads level k+1 at the same step, so the levels are run skewed: at wave step s level k computes step
    t = s - (L - 1 - k). Every level's inputs then sit in the previous wave step's concatenated state, and one
    addmm with the block matrix M advances all levels: T + L - 1 steps of three ops (addmm, lerp, tanh) instead of
    L T. In the first and last L - 1 wave steps the levels that have not started or have finished keep their state
    (rate 0, d passed through).
    """
    rate, M, L, T = packed.rate, packed.M, len(packed.d_sizes), u.shape[1]
    waves = _Waves(packed, T)
    h, d, Mt = h0, [d0], M.t()
    for s, drive in enumerate(waves.skew(u).unbind(0)):
        pre = torch.addmm(drive, d[-1], Mt)
        if L - 1 <= s < T:  # every level computes
            h = torch.lerp(h, pre, rate)
            d.append(torch.tanh(h))
        else:
            on = waves.active[s]
            h = torch.lerp(h, pre, rate * on)
            d.append(torch.where(on.bool(), torch.tanh(h), d[-1]))
    d = torch.stack(d)  # (S + 1, B, N): d0, then every wave step
    return waves.unskew(d[1:]), h, (d, waves)


def recurrence_backward(packed: PackedStack, trace, g_d: torch.Tensor | None, g_hT: torch.Tensor | None,
                        weights: bool = True):
    """Gradients of ``recurrence_forward`` from dL/dd (B, T, N) and dL/dh_T (B, N) (either may be None): returns
    dL/du, dL/dh0, dL/dd0 and dL/dM (None unless ``weights``). The skewed steps in reverse, three ops each:
        g_h_s = g_d_s (1 - d_s^2) + (1 - r) g_h_{s+1},   g_pre_s = r g_h_s,   g_d_{s-1} += g_pre_s M,
    then dL/dM = sum_s g_pre_s^T d_{s-1} and dL/du = g_pre (unskewed) as single reductions."""
    rate, M, L = packed.rate, packed.M, len(packed.d_sizes)
    d, waves = trace
    S, B, N = d.shape[0] - 1, *d.shape[1:]
    T = S - L + 1
    g_in = waves.skew(g_d) * waves.active[:, None] if g_d is not None else d.new_zeros(S, B, N)
    g_in, slope = g_in.unbind(0), (1 - d[1:] * d[1:]).unbind(0)
    keep, rate_M = 1 - rate, rate[:, None] * M
    g_h = [None] * S
    carry = d.new_zeros(B, N) if g_hT is None else g_hT  # (1 - r) g_h of the next wave step
    g = g_in[S - 1]                                       # dL/dd_s in full, once step s is reached
    for s in range(S - 1, -1, -1):
        g_outside = g_in[s - 1] if s else d.new_zeros(B, N)
        if L - 1 <= s < T:
            g_h[s] = torch.addcmul(carry, g, slope[s])
            g, carry = torch.addmm(g_outside, g_h[s], rate_M), keep * g_h[s]
        else:  # idle levels keep h and pass d through: their gradients skip this step
            on = waves.active[s]
            g_h[s] = torch.addcmul(carry, g * on, slope[s])
            g = torch.addmm(torch.addcmul(g_outside, g, 1 - on), g_h[s] * on, rate_M)
            carry = g_h[s] * (1 - rate * on)
    g_pre = torch.stack(g_h) * (rate * waves.active)[:, None]  # dL/d(pre-activation) = r g_h; 0 for idle levels
    g_M = g_pre.reshape(S * B, N).t() @ d[:-1].reshape(S * B, N) if weights else None
    return waves.unskew(g_pre), carry, g, g_M


class _StackRecurrence(torch.autograd.Function):
    """``recurrence_forward`` with ``recurrence_backward`` as its backward (differentiable in u, h0, d0 and M)."""

    @staticmethod
    def forward(ctx, packed, u, h0, d0, M):
        d, h, (waves_d, waves) = recurrence_forward(packed._replace(M=M), u, h0, d0)
        ctx.save_for_backward(M, waves_d)
        ctx.packed, ctx.waves = packed, waves
        return d, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_d, g_hT):
        M, waves_d = ctx.saved_tensors
        g_u, g_h0, g_d0, g_M = recurrence_backward(ctx.packed._replace(M=M), (waves_d, ctx.waves), g_d, g_hT,
                                                   weights=ctx.needs_input_grad[4])
        return None, g_u, g_h0, g_d0, g_M


def stack_recurrence(packed: PackedStack, u: torch.Tensor, h0: torch.Tensor, d0: torch.Tensor):
    """``recurrence_forward`` under autograd: d (B, T, N) and the final h (B, N), differentiable in u, h0, d0 and
    the packed weights. Same values and gradients as stepping ``PVRNNLayer.integrate`` level by level (tested)."""
    N = sum(packed.d_sizes)
    if u.dim() != 3 or u.shape[-1] != N or h0.shape != (u.shape[0], N) or d0.shape != h0.shape:
        raise ValueError(f"stack_recurrence: expected u (B, T, {N}) and h0, d0 (B, {N}), got "
                         f"{tuple(u.shape)}, {tuple(h0.shape)}, {tuple(d0.shape)}")
    return _StackRecurrence.apply(packed, u, h0, d0, packed.M)


def posterior_pass(packed: PackedStack, a_mu: torch.Tensor, a_sigma: torch.Tensor, eps: torch.Tensor | None,
                   h0: torch.Tensor, d0: torch.Tensor, first: bool, recurrence=None) -> dict:
    """All levels under the approximate posterior for all T steps at once, latent units concatenated (B, T, Z):
        mu^q = tanh(A^mu), sigma^q = exp(A^sigma), z = mu^q + sigma^q eps (z = mu^q when eps is None),
        d = the recursion driven by W_zd z (``stack_recurrence``, or ``recurrence(z)`` -> (d, h_T) if given),
        prior (mu^p, log sigma^p) = (tanh, id)(W_p d_{t-1} + b_p), N(0, I) at t = 1 when ``first``,
        kl = KL(q || p) per unit and step (``gaussian_kl``, nats).
    Returns those tensors by name (``mu_q``, ``sigma_q``, ``z``, ``d``, ``h``, ``mu_p``, ``log_sigma_p``, ``kl``),
    differentiable by autograd; ``posterior_pass_backward`` is the hand-written gradient in A."""
    mu_q, sigma_q = torch.tanh(a_mu), torch.exp(a_sigma)
    z = mu_q if eps is None else torch.addcmul(mu_q, sigma_q, eps)
    if recurrence is None:
        d, h = stack_recurrence(packed, F.linear(z, packed.Wz, packed.b), h0, d0)
    else:
        d, h = recurrence(z)
    prior = F.linear(torch.cat([d0[:, None], d[:, :-1]], 1), packed.Wp, packed.bp)
    if first:  # zero pre-activations at t = 1 give mu = tanh(0) = 0 and sigma = exp(0) = 1
        prior = prior * (torch.arange(d.shape[1], device=d.device) > 0)[:, None]
    pre_mu, log_sigma_p = prior.chunk(2, -1)
    mu_p = torch.tanh(pre_mu)
    return {"mu_q": mu_q, "sigma_q": sigma_q, "z": z, "d": d, "h": h, "mu_p": mu_p, "log_sigma_p": log_sigma_p,
            "kl": gaussian_kl(mu_q, a_sigma, mu_p, log_sigma_p)}


def posterior_pass_backward(packed: PackedStack, a_mu: torch.Tensor, a_sigma: torch.Tensor, eps: torch.Tensor | None,
                            h0: torch.Tensor, d0: torch.Tensor, first: bool, g_d_of, g_kl: torch.Tensor):
    """The gradient in (A^mu, A^sigma) of a loss of ``posterior_pass``'s d and kl, by hand (no autograd):
    ``g_d_of(d)`` gives dL/dd (B, T, N) from the pass's d, and ``g_kl`` (broadcastable to (B, T, Z)) is dL/dkl.
    With e = mu^q - mu^p and v = 1/sigma_p^2, the KL's partials are dkl/dmu^q = e v = -dkl/dmu^p,
    dkl/dlog sigma^p = 1 - (sigma_q^2 + e^2) v and dkl/dA^sigma = sigma_q^2 v - 1 (besides the path through z).
    Returns (the pass's outputs, dL/dA^mu, dL/dA^sigma). Equal to autograd through ``posterior_pass`` (tested)."""
    traces = []

    def recurrence(z):
        d, h, trace = recurrence_forward(packed, F.linear(z, packed.Wz, packed.b), h0, d0)
        traces.append(trace)
        return d, h

    with torch.no_grad():
        out = posterior_pass(packed, a_mu, a_sigma, eps, h0, d0, first, recurrence)
        mu_q, sigma_q = out["mu_q"], out["sigma_q"]
        e, v = mu_q - out["mu_p"], torch.exp(-2 * out["log_sigma_p"])
        ev, sq2v = e * v, sigma_q.square() * v
        # dL/d(prior pre-activations) at steps 2..T; step 1's prior feeds only d0 (or is N(0, I))
        g_prior = torch.cat([-g_kl * ev * (1 - out["mu_p"].square()), g_kl * (1 - sq2v - e * ev)], -1)[:, 1:]
        g_d = g_d_of(out["d"])
        g_d[:, :-1] += g_prior @ packed.Wp
        g_z = recurrence_backward(packed, traces[0], g_d, None, weights=False)[0] @ packed.Wz
        g_mu = torch.addcmul(g_z, g_kl, ev) * (1 - mu_q.square())
        g_sigma = g_kl * (sq2v - 1)
        if eps is not None:
            g_sigma = torch.addcmul(g_sigma, g_z * eps, sigma_q)
    return out, g_mu, g_sigma
