"""A stack of PV-RNN levels packed into block matrices: its deterministic recursion (with a hand-written
backward) and generation run skewed over levels in reusable frames, and its whole posterior pass.

Levels k = 0 (bottom) .. L-1 (top) with n_k deterministic and z_k latent units are concatenated into one state of
N = sum n_k units and one latent vector of Z = sum z_k units, so a whole stack advances with one matmul per step.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .device_constant import device_constant
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
        lag=device_constant([L - 1 - k for k, n in enumerate(d_sizes) for _ in range(n)], w.device),
        d_sizes=d_sizes, z_sizes=z_sizes)


class SkewedStack:
    """The deterministic recursion of a packed stack over T steps for a batch of B, run skewed over levels in
    preallocated frames that every call reuses (error regression keeps one instance for all its iterations; the
    autograd function makes one per call):
        h^k_t = (1 - r_k) h^k_{t-1} + r_k (W^k d^k_{t-1} + V^k d^{k+1}_t + u^k_t),  d^k_t = tanh(h^k_t),  r_k = 1/tau_k,
    with V^k = W_top^k (none at the top). Level k reads level k+1 at the same step, so level k computes step t at
    wave s = t + L-1-k: all inputs of wave s then sit in frame s, the concatenated state [h, d] (B, 2N) after wave
    s-1 (frame 0 is the initial state), and one in-place addmm with A = [diag(1 - r); (r M)^T] turns the drive r u
    of wave s, gathered into the next frame's h beforehand, into that h: two ops per wave step (addmm_, tanh),
    S = T + L-1 of them, where stepping level by level takes L T steps.
    In the first L-1 waves the lower levels have not started and keep their state (masked); after its T steps a
    level runs on for up to L-1 waves whose values no valid step reads (and whose gradients are zero).
    ``run`` takes the drives u (the posterior pass), ``run_prior`` samples z from the prior (generation),
    ``propagate`` / ``backward`` backpropagate the last ``run``.
    """

    def __init__(self, packed: PackedStack, T: int, B: int):
        if T < 1 or B < 0:
            raise ValueError(f"SkewedStack needs T >= 1 steps and B >= 0 sequences, got T={T}, B={B}")
        M, lag = packed.M, packed.lag
        N, L = M.shape[0], len(packed.d_sizes)
        S = T + L - 1
        self.packed, self.T, self.B, self.N, self.L, self.S = packed, T, B, N, L, S
        time = torch.arange(S + 1, device=M.device)[:, None] - 1 - lag  # (S+1, N): the step each frame holds
        self.started = (time >= 0).to(M.dtype)                              # 0 in frame 0 and before a level starts
        self.time_of_frame = time[1:].clamp(0, T - 1)[:, None].expand(-1, B, -1)                    # (S, B, N)
        self.frame_of_time = (torch.arange(T, device=M.device)[:, None] + lag + 1)[:, None].expand(-1, B, -1)
        new = M.new_empty  # every buffer is written before it is read, except gin's zeros (see propagate)
        self.X, self.gin, self.G = new(S + 1, B, 2 * N), M.new_zeros(S + 1, B, 2 * N), new(S + 2, B, N)
        self.slope, self.one = new(S + 1, B, N), M.new_ones(())
        self.Xh, self.Xd, self.gin_h, self.gin_d = self.X[..., :N], self.X[..., N:], self.gin[..., :N], self.gin[..., N:]
        # per-frame views, made once: the loops below index lists instead of slicing tensors
        self._X, self._Xh, self._Xd = self.X.unbind(0), self.Xh.unbind(0), self.Xd.unbind(0)
        self._gin, self._G, self._slope = self.gin.unbind(0), self.G.unbind(0), self.slope.unbind(0)
        self.Xd_rows = self.X.view(-1, 2 * N)[:, N:]  # ((S+1) B, N): d of every frame as rows of a matrix
        # the arguments of every unmasked wave step, forward (frames L .. S) and backward (S .. L): loops unpack them
        gin_h, gin_d = self.gin_h.unbind(0), self.gin_d.unbind(0)
        self._forward_args = [(self._X[f - 1], self._Xh[f], self._Xd[f]) for f in range(L, S + 1)]
        self._backward_args = [(self._gin[f], gin_h[f], gin_d[f], self._G[f + 1], self._slope[f], self._G[f])
                               for f in range(S, L - 1, -1)]
        self._on = [self.started[f].bool() for f in range(L)]
        # latent unit j of level k holds step t at wave t + lag_k; z enters the recursion as r (W_zd z + b)
        Z = self.Z = sum(packed.z_sizes)
        self.lag_z = torch.tensor([L - 1 - k for k, z in enumerate(packed.z_sizes) for _ in range(z)], device=M.device)
        # generation (run_prior)
        waves = torch.arange(S, device=M.device)[:, None]
        self._prior = dict(
            mu=new(S, B, Z), sigma=new(S, B, Z), z=new(S, B, Z),
            time_of_wave=(waves - self.lag_z).clamp(0, T - 1)[:, None].expand(-1, B, -1),   # (S, B, Z)
            wave_of_time=(waves[:T] + self.lag_z)[:, None].expand(-1, B, -1),                # (T, B, Z)
            not_first=[(waves[s] != self.lag_z).to(M.dtype).repeat(2) for s in range(L)])   # (2Z,) per early wave
        self.bind(packed)

    def bind(self, packed: PackedStack) -> SkewedStack:
        """Take the weights of ``packed`` (a stack of the sizes, dtype and device this one was built for), so its
        frames serve another call: A = [diag(1 - r); (r M)^T], the masked waves' factors, r W_zd, r b and the
        prior's weights. Returns the stack."""
        M, rate, Z = packed.M, packed.rate, self.Z
        self.packed = packed
        self.A = torch.cat([torch.diag(1 - rate), (rate[:, None] * M).t()], 0)  # (2N, N)
        self._AT = self.A.t()
        # the masked waves' factors: on, r on, 1 - r on and 1 - on per unit
        self._masks = [(on, on * rate, 1 - rate * on, 1 - on) for on in self.started[:self.L]]
        self.rWz, self.rb = rate[:, None] * packed.Wz, rate * packed.b  # (N, Z), (N,)
        self._prior.update(Wmu_t=packed.Wp[:Z].t(), Wsigma_t=packed.Wp[Z:].t(), bmu=packed.bp[:Z],
                           bsigma=packed.bp[Z:])
        return self

    def drop_weights(self) -> None:
        """Let go of the weights ``bind`` took (and, through their autograd history, the model's parameters), so
        that a pooled stack holds only its frames."""
        self.packed = self.A = self._AT = self._masks = self.rWz = self.rb = None
        for key in ("Wmu_t", "Wsigma_t", "bmu", "bsigma"):
            self._prior[key] = None

    @torch.no_grad()
    def run(self, u: torch.Tensor, h0: torch.Tensor, d0: torch.Tensor) -> None:
        """The recursion driven by u (B, T, N) (W_zd z_t plus the W_dd bias, levels concatenated) from the state
        (h0, d0), each (B, N), without autograd, into the frames (read them with ``d`` and ``state_at``)."""
        torch.gather(u.transpose(0, 1), 0, self.time_of_frame, out=self.Xh[1:]).mul_(self.packed.rate)
        self._start(h0, d0)
        for f in range(1, min(self.L, self.S + 1)):
            self._advance(f)
        A = self.A
        for previous, h, d in self._forward_args:  # _advance's unmasked case, unrolled
            h.addmm_(previous, A)
            torch.tanh(h, out=d)

    def _start(self, h0: torch.Tensor, d0: torch.Tensor) -> None:
        self._Xh[0].copy_(h0)
        self._Xd[0].copy_(d0)

    def _advance(self, f: int) -> None:
        """Frame f from frame f-1, with frame f's h holding the drive r u (B, N) of wave f-1: one addmm_ and one
        tanh; in the first L-1 waves the levels below, which have not started, keep h and d."""
        X, Xh, Xd = self._X, self._Xh, self._Xd
        Xh[f].addmm_(X[f - 1], self.A)
        if f < self.L:
            torch.where(self._on[f], Xh[f], Xh[f - 1], out=Xh[f])
            torch.where(self._on[f], torch.tanh(Xh[f]), Xd[f - 1], out=Xd[f])
        else:
            torch.tanh(Xh[f], out=Xd[f])

    @torch.no_grad()
    def run_prior(self, h0: torch.Tensor, d0: torch.Tensor, first: bool, eps: torch.Tensor | None) -> dict:
        """Generation, without autograd: the recursion driven by z sampled from each level's prior given its own
        d_{t-1} (held by the same frame as the step's other inputs),
            mu^p = tanh(W_mu d_{t-1} + b_mu),  sigma^p = exp(W_sigma d_{t-1} + b_sigma),  z_t = mu^p + sigma^p eps_t,
        with z_t = mu^p when ``eps`` (B, T, Z) is None and N(0, I) at t = 1 when ``first``, from (h0, d0). Seven or
        eight ops per wave step. Returns ``z``, ``prior_mu`` and ``prior_sigma`` (B, T, Z); d and the state through
        ``d`` and ``state_at``."""
        p, L, Z, q = self.packed, self.L, self.Z, self._prior
        mu, sigma, z = q["mu"].unbind(0), q["sigma"].unbind(0), q["z"].unbind(0)
        noise = None if eps is None else torch.gather(eps.transpose(0, 1), 0, q["time_of_wave"]).unbind(0)
        Xd, rWz_t = self._Xd, self.rWz.t()
        self._start(h0, d0)
        for f in range(1, self.S + 1):
            s = f - 1
            if first and s < L:  # the levels at their first step draw from N(0, I): zero pre-activations
                pre = torch.addmm(p.bp, Xd[s], p.Wp.t()) * q["not_first"][s]
                torch.tanh(pre[:, :Z], out=mu[s])
                torch.exp(pre[:, Z:], out=sigma[s])
            else:
                torch.tanh(torch.addmm(q["bmu"], Xd[s], q["Wmu_t"]), out=mu[s])
                torch.exp(torch.addmm(q["bsigma"], Xd[s], q["Wsigma_t"]), out=sigma[s])
            zs = mu[s] if noise is None else torch.addcmul(mu[s], sigma[s], noise[s], out=z[s])
            torch.addmm(self.rb, zs, rWz_t, out=self._Xh[f])  # the drive r (W_zd z + b), into frame f's h
            self._advance(f)
        unskew = lambda x: torch.gather(x, 0, q["wave_of_time"]).transpose(0, 1)  # noqa: E731
        return {"z": unskew(q["mu"] if eps is None else q["z"]), "prior_mu": unskew(q["mu"]),
                "prior_sigma": unskew(q["sigma"])}

    def d(self) -> torch.Tensor:
        """d (B, T, N) of the last ``run`` (a transposed view of a gather from the frames)."""
        return torch.gather(self.Xd, 0, self.frame_of_time).transpose(0, 1)

    def state_at(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The state (h, d), each (B, N), after step t of the last ``run``."""
        frame = self.frame_of_time[t:t + 1]
        return torch.gather(self.Xh, 0, frame)[0], torch.gather(self.Xd, 0, frame)[0]

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Backpropagate the direct gradients in ``gin`` (frame f: [dL/dh_f, dL/dd_f], zero where nothing reads
        the frame) through the last ``run`` into ``G`` (G_f = dL/dh_f, total), two ops per wave step in reverse:
            [G_{f+1} (1 - r), gin_f^d + (r G_{f+1}) M] = gin_f + G_{f+1} A^T,   G_f = first + second * (1 - d_f^2),
        the first in place in ``gin``: frames L .. S of ``gin`` hold scratch afterwards, and the caller writes
        them again before the next call. Returns dL/dh0 and dL/dd0."""
        L, N = self.L, self.N
        AT, gin, G, slope = self._AT, self._gin, self._G, self._slope
        torch.addcmul(self.one, self.Xd, self.Xd, value=-1, out=self.slope)
        G[self.S + 1].zero_()
        for gin_f, gin_h, gin_d, G_next, slope_f, G_f in self._backward_args:
            gin_f.addmm_(G_next, AT)
            torch.addcmul(gin_h, gin_d, slope_f, out=G_f)
        hh, dd = torch.addmm(gin[L - 1], G[L], AT).split(N, -1)  # dL/dh, dL/dd of frame L-1 from later frames
        for f in range(L - 1, 0, -1):  # levels that have not started pass both gradients through
            on, on_rate, keep, off = self._masks[f]
            torch.addcmul(hh, dd * on, slope[f], out=G[f])
            hh = torch.addcmul(gin[f - 1][:, :N], G[f], keep)
            dd = torch.addcmul(torch.addmm(gin[f - 1][:, N:], G[f] * on_rate, self.packed.M), dd, off)
        return hh, dd

    def backward(self, g_d: torch.Tensor | None, g_hT: torch.Tensor | None, weights: bool = True):
        """Gradients of the last ``run`` from dL/dd (B, T, N) and dL/dh_T (B, N) (either may be None): dL/du,
        dL/dh0, dL/dd0 and dL/dM (None unless ``weights``), with dL/du = r G (unskewed) and
        dL/dM = sum_f (r G_f)^T d_{f-1}."""
        rate, N, S = self.packed.rate, self.N, self.S
        self.gin.zero_()
        if g_d is not None:
            self.gin_d.scatter_(0, self.frame_of_time, g_d.transpose(0, 1))
        if g_hT is not None:
            self.gin_h.scatter_(0, self.frame_of_time[-1:], g_hT[None])
        g_h0, g_d0 = self.propagate()
        g_pre = self.G[1:S + 1] * (rate * self.started[1:])[:, None]  # (S, B, N): dL/d(r u), 0 before a level starts
        g_u = torch.gather(g_pre, 0, self.frame_of_time - 1).transpose(0, 1)
        g_M = g_pre.reshape(S * self.B, N).t() @ self.Xd_rows[:S * self.B] if weights else None
        return g_u, g_h0, g_d0, g_M


# stacks whose backward has run, by (T, B, dtype, device, sizes), for the next call of that shape to reuse: building
# one (its frames and per-frame views) costs about a sixth of a pvrnn-pfsm training step; a few shapes, least recent out
_FREE_STACKS: OrderedDict[tuple, list[SkewedStack]] = OrderedDict()
_FREE_SHAPES, _FREE_PER_SHAPE = 4, 2


def _take_stack(packed: PackedStack, T: int, B: int) -> tuple[tuple, SkewedStack]:
    key = (T, B, packed.M.dtype, packed.M.device, packed.d_sizes, packed.z_sizes)
    try:
        stack = _FREE_STACKS[key].pop()  # one atomic step: two threads never take the same stack
    except (KeyError, IndexError):
        return key, SkewedStack(packed, T, B)
    return key, stack.bind(packed)


def _give_back(key: tuple, stack: SkewedStack) -> None:
    stack.drop_weights()
    free = _FREE_STACKS.setdefault(key, [])
    if len(free) < _FREE_PER_SHAPE:
        free.append(stack)
    _FREE_STACKS.move_to_end(key)
    while len(_FREE_STACKS) > _FREE_SHAPES:
        _FREE_STACKS.popitem(last=False)


class _StackRecurrence(torch.autograd.Function):
    """``SkewedStack.run`` with ``SkewedStack.backward`` as its backward (differentiable in u, h0, d0, M). The
    stack's frames go back for reuse once its backward has run, so a graph backpropagates through it once."""

    @staticmethod
    def forward(ctx, packed, u, h0, d0, M):
        ctx.key, ctx.stack = _take_stack(packed._replace(M=M), u.shape[1], u.shape[0])
        ctx.M_needs_grad = ctx.needs_input_grad[4]
        ctx.stack.run(u, h0, d0)
        return ctx.stack.d(), ctx.stack.state_at(ctx.stack.T - 1)[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_d, g_hT):
        stack, ctx.stack = ctx.stack, None
        if stack is None:
            raise RuntimeError("stack_recurrence: a second backward through the same PV-RNN graph "
                               "(retain_graph=True) is not supported; its frames were reused after the first")
        g_u, g_h0, g_d0, g_M = stack.backward(g_d, g_hT, weights=ctx.M_needs_grad)
        _give_back(ctx.key, stack)
        return None, g_u, g_h0, g_d0, g_M


@torch.compiler.disable  # frames preallocated per (B, T), written with out=: eager under torch.compile, any shape
def stack_recurrence(packed: PackedStack, u: torch.Tensor, h0: torch.Tensor, d0: torch.Tensor):
    """``SkewedStack`` under autograd: d (B, T, N) and the final h (B, N), differentiable in u, h0, d0 and
    the packed weights. Same values and gradients as stepping ``PVRNNLayer.integrate`` level by level (tested)."""
    N = sum(packed.d_sizes)
    if u.dim() != 3 or u.shape[-1] != N or u.shape[1] < 1 or h0.shape != (u.shape[0], N) or d0.shape != h0.shape:
        raise ValueError(f"stack_recurrence: expected u (B, T >= 1, {N}) and h0, d0 (B, {N}), got "
                         f"{tuple(u.shape)}, {tuple(h0.shape)}, {tuple(d0.shape)}")
    if not u.dtype == h0.dtype == d0.dtype == packed.M.dtype:
        raise TypeError(f"stack_recurrence: u, h0, d0 and the packed weights must share a dtype, got {u.dtype}, "
                        f"{h0.dtype}, {d0.dtype} and {packed.M.dtype} (under torch.autocast, call it with autocast "
                        "off, as PVRNN.unroll does)")
    return _StackRecurrence.apply(packed, u, h0, d0, packed.M)


def posterior_pass(packed: PackedStack, a_mu: torch.Tensor, a_sigma: torch.Tensor, eps: torch.Tensor | None,
                   h0: torch.Tensor, d0: torch.Tensor, first: bool, recurrence=None) -> dict:
    """All levels under the approximate posterior for all T steps at once, latent units concatenated (B, T, Z):
        mu^q = tanh(A^mu), sigma^q = exp(A^sigma), z = mu^q + sigma^q eps (z = mu^q when eps is None),
        d = the recursion driven by W_zd z (``stack_recurrence``, or ``recurrence(z)`` -> (d, h_T) if given),
        prior (mu^p, log sigma^p) = (tanh, id)(W_p d_{t-1} + b_p), N(0, I) at t = 1 when ``first``,
        kl = KL(q || p) per unit and step (``gaussian_kl``, nats).
    Returns those tensors by name (``mu_q``, ``sigma_q``, ``z``, ``d``, ``h``, ``mu_p``, ``log_sigma_p``, ``kl``),
    differentiable by autograd (``WindowGradient`` is error regression's hand-written gradient in A)."""
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
