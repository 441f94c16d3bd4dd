"""PV-RNN: the predictive-coding-inspired variational RNN (Ahmadi and Tani, Neural Computation 2019, arXiv 1811.01339).

A stack of MTRNN levels (``layers.PVRNNLayer``, level 0 at the bottom, slowest at the top) with a linear read-out
x_t = W_out d_t^0 + b. No encoder sees the data: the approximate posterior of every level is
q(z_t) = N(tanh(A^mu_t), exp(A^sigma_t)^2) with adaptive vectors A held per training sequence and time step
(parameters ``A_mu.k`` / ``A_sigma.k`` of shape (n_sequences, seq_len, z_k), initialised to 0, saved in the
checkpoint); the data reach them only through the prediction error's gradient.

Objective, minimised per sequence of length T (the negative of the paper's weighted lower bound, with our
normalisation stated):
    L = (1/T) sum_t [ (1/R_x) ||x_hat_t - x_t||^2 + sum_k w_k (1/R_z^k) KL(q(z_t^k) || p(z_t^k | d_{t-1}^k)) ],
where R_x and R_z^k are the output and latent sizes and w_k the meta-prior of level k (at the first step, whose
prior is N(0, I), optionally a separate w1_k, ``meta_prior_first``, as the authors' lab's later PV-RNN code
has it; by default w1 = w, the 2019 objective). The squared error is
-log N(x_t | x_hat_t, 1/2) up to a constant (a Gaussian likelihood with fixed variance); the KL is in nats and
closed form (``layers.pvrnn_layer.gaussian_kl``). The training loss is its mean over the batch.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from layers import (PackedStack, ProbePoint, PVRNNLayer, SkewedStack, WindowGradient, autocast_off, device_constant,
                    pack_levels, posterior_pass)

from ._inputs import is_int
from ._registry import Paper, register_model

PAPER = Paper(family="pvrnn", title="A Novel Predictive-Coding-Inspired Variational RNN Model for Online Prediction "
              "and Recognition", arxiv="1811.01339", authors="Ahmadi, Tani", year=2019)


def adam_step(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: int, lr: float,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """One in-place step of torch.optim.Adam's update (its single-tensor path, no weight decay; ``step`` counts
    from 1): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2, p -= lr/(1-b1^step) m / (sqrt(v)/sqrt(1-b2^step) + eps),
    in six ops, without the optimizer's per-call overhead (error regression takes thousands of tiny steps)."""
    b1, b2 = betas
    m.lerp_(grad, 1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    param.addcdiv_(m, (v.sqrt() / math.sqrt(1 - b2 ** step)).add_(eps), value=-lr / (1 - b1 ** step))


def _without_autocast(method):
    """``method`` with autocast off on the model's device: PV-RNN computes in its parameters' dtype, so under mixed
    precision (``train.precision: bf16``) its results equal float32's (its matmuls are small; its recursion, KL and
    error regression keep their precision)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with autocast_off(self.out.weight.device.type):
            return method(self, *args, **kwargs)
    return run


def join_state(state) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of (h, d) per level -> (h, d) with the levels concatenated, each (B, sum d_k)."""
    return torch.cat([h for h, _ in state], -1), torch.cat([d for _, d in state], -1)


def split_state(h: torch.Tensor, d: torch.Tensor, d_sizes) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Inverse of ``join_state``: (h, d), each (B, sum d_k) -> a list of (h, d) per level (views)."""
    return list(zip(h.split(d_sizes, -1), d.split(d_sizes, -1)))


@dataclass
class PVRNNConfig:
    d_sizes: tuple[int, ...] = (20, 10)       # deterministic units per level, bottom level first
    z_sizes: tuple[int, ...] = (2, 1)         # latent units per level
    taus: tuple[float, ...] = (2.0, 8.0)        # time constants per level (slower towards the top)
    meta_prior: tuple[float, ...] = (0.01, 0.01)  # w per level
    meta_prior_first: tuple[float, ...] | None = None  # w1 per level: the first step's KL weight (None: meta_prior)
    out_size: int = 2
    n_sequences: int = 16           # training sequences, each with its own adaptive vectors
    seq_len: int = 200              # steps of adaptive vectors per training sequence
    bottom_up: bool = False         # add d_{t-1}^{k-1} -> level k connections (not in the 2019 generative model)


class PVRNN(nn.Module):
    """PV-RNN. ``forward(ids)`` unrolls the posterior of training sequences ``ids``; ``loss(ids, x)`` is the
    objective above; ``generate`` runs the prior; ``error_regression`` infers unseen streams online.
    Probe points: ``levels.K.{d,z,prior_mu,prior_sigma,post_mu,post_sigma,kl}`` and ``x_hat``.
    """

    def __init__(self, config: PVRNNConfig):
        super().__init__()
        c = config
        w1 = c.meta_prior if c.meta_prior_first is None else c.meta_prior_first
        sizes = {"d_sizes": len(c.d_sizes), "z_sizes": len(c.z_sizes), "taus": len(c.taus), "meta_prior": len(c.meta_prior)}
        sizes |= {} if c.meta_prior_first is None else {"meta_prior_first": len(c.meta_prior_first)}
        if len(set(sizes.values())) != 1 or not c.d_sizes:
            raise ValueError(f"PVRNN: d_sizes, z_sizes, taus and meta_prior (and meta_prior_first when given) need one "
                             f"entry per level, got lengths {sizes}")
        if c.n_sequences < 1 or c.seq_len < 1 or c.out_size < 1 or not all(math.isfinite(w) and w >= 0
                                                                             for w in (*c.meta_prior, *w1)):
            raise ValueError(f"PVRNN needs n_sequences, seq_len, out_size >= 1 and finite meta_prior >= 0 "
                             f"(meta_prior_first too), got {c}")
        self.config = c
        L = len(c.d_sizes)
        self.levels = nn.ModuleList(
            PVRNNLayer(c.d_sizes[k], c.z_sizes[k], c.taus[k], top_size=c.d_sizes[k + 1] if k + 1 < L else 0,
                       bottom_size=c.d_sizes[k - 1] if c.bottom_up and k > 0 else 0) for k in range(L))
        self.out = nn.Linear(c.d_sizes[0], c.out_size)
        self.A_mu = nn.ParameterList(nn.Parameter(torch.zeros(c.n_sequences, c.seq_len, z)) for z in c.z_sizes)
        self.A_sigma = nn.ParameterList(nn.Parameter(torch.zeros(c.n_sequences, c.seq_len, z)) for z in c.z_sizes)
        self.x_hat = ProbePoint()
        self._probing = True  # off during error regression (``_point``)

    # -- the recurrence --------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(h, d) = 0 for every level."""
        p = self.out.weight
        return [(p.new_zeros(batch, n), p.new_zeros(batch, n)) for n in self.config.d_sizes]

    def packed(self) -> PackedStack:
        """The levels' weights as block matrices (``layers.pack_levels``); differentiable. Error regression, whose
        weights stay fixed, packs once and passes the result to ``unroll``."""
        return pack_levels(self.levels)

    @_without_autocast
    def unroll(self, steps: int, state, first: bool = True, post=None, noise: bool = True,
               packed: PackedStack | None = None) -> dict:
        """Run ``steps`` steps from ``state`` (a list of (h, d) per level), in the parameters' dtype (``state`` and
        ``post`` are cast to it) with autocast off.

        ``first``: the first step's prior is N(0, I). ``post``: (A_mu, A_sigma), each (B, steps, Z) with the
        levels' latent units concatenated (Z = sum z_k, bottom level first), samples z from the posterior (and
        computes the KL); None samples from the prior (generation). ``noise=False`` takes the mean instead of a
        sample. ``packed``: ``self.packed()`` computed once by a caller that keeps the weights fixed.
        Returns x (B, steps, out), ``kl`` (B, steps, L) per level summed over its units, per-level statistics
        ``levels[k][name]`` (B, steps, .) and the final ``state``.
        Under the posterior z does not depend on the state, so z, W_zd z, the priors, the KL and the read-out are
        computed for all steps and levels at once from the packed weights, and the d recursion of all levels runs
        in ``stack_recurrence`` (one autograd function; step by step only with bottom-up weights). Under the prior
        all levels advance together in a ``layers.SkewedStack`` without autograd (``prior_mean_map`` and models
        with bottom-up weights step level by level, differentiably).
        """
        if not is_int(steps) or steps < 1:
            raise ValueError(f"PVRNN: steps must be an integer >= 1, got {steps!r}")
        sizes = self.config.d_sizes
        if len(state) != len(sizes) or any(h.shape[-1] != n or d.shape[-1] != n for (h, d), n in zip(state, sizes)):
            raise ValueError(f"PVRNN.unroll: state must hold (h, d) per level with d_sizes={sizes} units (as from "
                             f"initial_state), got {[tuple(t.shape) for pair in state for t in pair]}")
        dtype = self.out.weight.dtype
        state = [(h.to(dtype), d.to(dtype)) for h, d in state]
        if post is None:
            return self._stepped_prior(steps, state, first, noise) if self.config.bottom_up else \
                self._skewed_prior(steps, state, first, noise, packed)
        p = self.packed() if packed is None else packed
        a_mu, a_sigma = (a.to(dtype) for a in post)
        Z = sum(p.z_sizes)
        if a_mu.shape != a_sigma.shape or a_mu.dim() != 3 or a_mu.shape[1:] != (steps, Z):
            raise ValueError(f"PVRNN.unroll: post must be two (B, steps={steps}, sum z_sizes={Z}) tensors, got "
                             f"{tuple(a_mu.shape)} and {tuple(a_sigma.shape)}")
        h0, d0 = join_state(state)
        q = self._posterior_pass(p, a_mu, a_sigma, torch.randn_like(a_mu) if noise else None, h0, d0, first)
        return self._posterior_outputs(q, p)

    @torch.compiler.disable  # as layers.stack_recurrence: the stack's frames are eager code
    @torch.no_grad()
    def _skewed_prior(self, steps: int, state, first: bool, noise: bool, packed: PackedStack | None) -> dict:
        """``unroll`` under the prior in a ``layers.SkewedStack`` (``run_prior``): all levels advance together, one
        wave step at a time; no autograd (``_stepped_prior`` is the differentiable reference)."""
        p = self.packed() if packed is None else packed
        h0, d0 = join_state(state)
        stack = SkewedStack(p, steps, h0.shape[0])
        eps = h0.new_empty(h0.shape[0], steps, sum(p.z_sizes)).normal_() if noise else None
        prior = stack.run_prior(h0, d0, first, eps)
        levels = self._through_probes({"d": stack.d().split(p.d_sizes, -1),
                                       **{n: prior[n].split(p.z_sizes, -1) for n in ("z", "prior_mu", "prior_sigma")}})
        return {"x": self._point(self.x_hat, self.out(levels[0]["d"])), "levels": levels,
                "state": split_state(*stack.state_at(steps - 1), p.d_sizes)}

    def _stepped_prior(self, steps: int, state, first: bool, noise: bool) -> dict:
        """``unroll`` under the prior level by level, one step at a time, differentiable (``prior_mean_map``)."""
        rec, hs = self._step_by_step(steps, [h for h, _ in state], [d for _, d in state], first, None, noise)
        levels = self._through_probes({n: [torch.stack(r[n], 1) for r in rec]
                                       for n in ("d", "z", "prior_mu", "prior_sigma")})
        return {"x": self._point(self.x_hat, self.out(levels[0]["d"])), "levels": levels,
                "state": [(h, lvl["d"][:, -1]) for h, lvl in zip(hs, levels)]}

    def _posterior_pass(self, p: PackedStack, a_mu, a_sigma, eps, h0, d0, first: bool) -> dict:
        """``layers.posterior_pass`` with this model's recursion: the skewed stack, or level by level when the
        model has bottom-up weights (which the skewed stack cannot run)."""
        def stepped(z):  # W_zd z drives each level's own step; W_dd adds the bias there
            drives = F.linear(z, p.Wz).split(p.d_sizes, -1)
            rec, hs = self._step_by_step(z.shape[1], list(h0.split(p.d_sizes, -1)), list(d0.split(p.d_sizes, -1)),
                                         first, drives, noise=False)
            return torch.cat([torch.stack(r["d"], 1) for r in rec], -1), torch.cat(hs, -1)

        return posterior_pass(p, a_mu, a_sigma, eps, h0, d0, first, stepped if self.config.bottom_up else None)

    def _posterior_outputs(self, q: dict, p: PackedStack) -> dict:
        """``unroll``'s outputs from a ``posterior_pass``: per-level statistics through the probe points, the KL
        summed per level, the read-out and the final state."""
        kl = q["kl"] @ p.level_sum  # (B, steps, L)
        z_stats = (q["z"], q["mu_p"], torch.exp(q["log_sigma_p"]), q["mu_q"], q["sigma_q"])
        levels = self._through_probes({"d": q["d"].split(p.d_sizes, -1),
                                       **{name: x.split(p.z_sizes, -1) for name, x in zip(
                                           ("z", "prior_mu", "prior_sigma", "post_mu", "post_sigma"), z_stats)},
                                       "kl": kl.unbind(-1)})
        return {"x": self._point(self.x_hat, self.out(levels[0]["d"])), "kl": kl, "levels": levels,
                "state": split_state(q["h"], q["d"][:, -1], p.d_sizes)}

    def _point(self, point: ProbePoint, x: torch.Tensor) -> torch.Tensor:
        """``point(x)``, or x alone during error regression: its window passes are not forwards of the model, and a
        probe attached to watch training must not record them (bottom-up models run them through ``unroll``)."""
        return point(x) if self._probing else x

    def _through_probes(self, stats: dict) -> list[dict]:
        """Per level k, ``{name: level_k.<name>(stats[name][k])}``: each statistic through its probe point."""
        return [{name: self._point(getattr(layer, name), per_level[k]) for name, per_level in stats.items()}
                for k, layer in enumerate(self.levels)]

    def _step_by_step(self, steps: int, hs: list, ds: list, first: bool, z_drive, noise: bool):
        """The recursion one step at a time: z from the prior (``z_drive`` None) or the given drives W_zd z.
        Returns per level the recorded d (and z, prior mu/sigma under the prior) lists, and the final h."""
        L = len(self.levels)
        rec = [{"d": [], "z": [], "prior_mu": [], "prior_sigma": []} for _ in range(L)]
        for t in range(steps):
            new_d = [None] * L
            for k in reversed(range(L)):
                layer, r = self.levels[k], rec[k]
                top = new_d[k + 1] if k + 1 < L else None
                bottom = ds[k - 1] if layer.W_bottom is not None else None
                if z_drive is None:
                    mu, s = layer.prior(ds[k], first and t == 0)
                    z = mu + s * torch.randn_like(mu) if noise else mu
                    r["prior_mu"].append(mu)
                    r["prior_sigma"].append(s)
                    r["z"].append(z)
                    hs[k], new_d[k] = layer.step(hs[k], ds[k], z, top, bottom)
                else:
                    hs[k], new_d[k] = layer.integrate(hs[k], ds[k], z_drive[k][:, t], top, bottom)
                r["d"].append(new_d[k])
            ds = new_d
        return rec, hs

    def _ids(self, ids: torch.Tensor, steps: int | None) -> tuple[torch.Tensor, int]:
        n, T = self.config.n_sequences, self.config.seq_len
        if not torch.is_tensor(ids):
            raise TypeError(f"PVRNN: ids must be a 1-D integer tensor of sequence ids, got {type(ids).__name__}")
        if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"PVRNN: ids must be a 1-D integer tensor of sequence ids, got {ids.dtype} {tuple(ids.shape)}")
        lo, hi = torch.stack(ids.aminmax()).tolist() if ids.numel() else (0, 0)  # one wait for the device
        if lo < 0 or hi >= n:
            raise ValueError(f"PVRNN: sequence ids must lie in [0, n_sequences={n}), got {lo}..{hi}")
        steps = T if steps is None else steps
        if not is_int(steps) or not 1 <= steps <= T:
            raise ValueError(f"PVRNN: steps must be an integer in [1, seq_len={T}], got {steps!r}")
        return ids, steps

    def forward(self, ids: torch.Tensor, steps: int | None = None, noise: bool = True) -> dict:
        """Posterior unroll of training sequences ``ids`` (B,) over their first ``steps`` (default seq_len) steps."""
        ids, steps = self._ids(ids, steps)
        post = (torch.cat([a[ids, :steps] for a in self.A_mu], -1), torch.cat([a[ids, :steps] for a in self.A_sigma], -1))
        return self.unroll(steps, self.initial_state(len(ids)), first=True, post=post, noise=noise)

    # -- the objective ---------------------------------------------------------------------------------------
    def elbo_terms(self, out: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sequence: reconstruction (1/T) sum_t (1/R_x) ||x_hat_t - x_t||^2, shape (B,), and per step and level
        the KL per latent unit (1/R_z^k) KL_t^k, shape (B, T, L) (its mean over steps is the objective's KL term)."""
        rec = (out["x"] - x).square().mean((-1, -2))
        return rec, out["kl"] / device_constant(self.config.z_sizes, out["kl"].device, out["kl"].dtype)

    def kl_weights(self, steps: int, first: bool, like: torch.Tensor) -> torch.Tensor:
        """(steps, L): the meta-prior w_k at every step, and w1_k (``meta_prior_first``) at step 0 when ``first``
        (the steps start at the sequence's first step, whose prior is N(0, I))."""
        c = self.config
        w = device_constant(c.meta_prior, like.device, like.dtype).expand(steps, -1)
        if first and c.meta_prior_first is not None:
            w = torch.cat([device_constant(c.meta_prior_first, like.device, like.dtype)[None], w[1:]])
        return w

    def weighted(self, rec: torch.Tensor, kl: torch.Tensor, first: bool = True) -> torch.Tensor:
        """rec + (1/T) sum_t sum_k w_k(t) kl_tk per sequence (the negative weighted lower bound), kl (B, T, L) from
        ``elbo_terms``; ``first``: the steps start at the sequence's first step (its KL weighted by w1)."""
        return rec + (kl * self.kl_weights(kl.shape[1], first, kl)).mean(1).sum(-1)  # no matmul: autocast casts it

    def loss(self, ids: torch.Tensor, x: torch.Tensor, forward=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over the batch of the objective for sequences ``ids`` (B,) with observations x (B, T, out_size),
        and its parts {"rec", "kl_0", ...} as detached scalar tensors (batch means; no device sync).
        ``forward``: the module whose call runs the posterior unroll (default this model; the training loop passes
        its DistributedDataParallel or compiled wrapper)."""
        if not len(ids):
            raise ValueError("PVRNN.loss: an empty batch (no sequence ids) has no mean objective")
        T = self.config.seq_len
        if x.dim() != 3 or x.shape[0] != len(ids) or x.shape[-1] != self.config.out_size or not 1 <= x.shape[1] <= T:
            raise ValueError(f"PVRNN.loss: x must have shape (len(ids)={len(ids)}, T, out_size={self.config.out_size}) "
                             f"with 1 <= T <= seq_len={T} (a training sequence's first T steps), got {tuple(x.shape)}")
        rec, kl = self.elbo_terms((self if forward is None else forward)(ids, steps=x.shape[1]), x)
        extras = {"rec": rec.detach().mean()} | {f"kl_{k}": v for k, v in enumerate(kl.detach().mean((0, 1)))}
        return self.weighted(rec, kl).mean(), extras

    # -- generation and reconstruction -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: int, steps: int, noise: bool = True) -> torch.Tensor:
        """Free-running generation from the prior (first step N(0, I)), shape (batch, steps, out_size)."""
        if not is_int(batch) or batch < 1:
            raise ValueError(f"PVRNN.generate: batch must be an integer >= 1, got {batch!r}")
        return self.unroll(steps, self.initial_state(batch), first=True, noise=noise)["x"]

    @_without_autocast
    def prior_mean_map(self, h: torch.Tensor) -> torch.Tensor:
        """One step of the noise-free generative dynamics (z_t = prior mean) on the internal states of all
        levels concatenated, h (B, sum d_k) -> (B, sum d_k), with d = tanh(h): the deterministic part of
        generation, whose largest Lyapunov exponent tells chaos (> 0) from a stable pattern (<= 0)."""
        hs = h.split(list(self.config.d_sizes), -1)
        state = self._stepped_prior(1, [(hk, torch.tanh(hk)) for hk in hs], first=False, noise=False)["state"]
        return join_state(state)[0]

    @torch.no_grad()
    def reconstruct(self, ids: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Posterior-mean reconstruction of training sequences ``ids``, shape (B, steps, out_size)."""
        return self(ids, steps=steps, noise=False)["x"]

    # -- error regression ------------------------------------------------------------------------------------
    def _predict(self, ahead: SkewedStack | None, state: tuple[torch.Tensor, torch.Tensor], horizon: int):
        """x for ``horizon`` steps of the prior mean from the state (h, d) (levels concatenated), in ``ahead``
        (a SkewedStack reused across calls) or level by level when it is None (bottom-up weights)."""
        if ahead is None:
            return self.unroll(horizon, split_state(*state, self.config.d_sizes), first=False, noise=False)["x"]
        ahead.run_prior(*state, first=False, eps=None)
        return self.out(ahead.d()[..., :self.config.d_sizes[0]])

    def window_objective(self, a: torch.Tensor, state, first: bool, obs: torch.Tensor,
                         packed: PackedStack | None = None) -> torch.Tensor:
        """Error regression's objective: the training objective restricted to the window ``obs`` (B, W, out), summed
        over the streams, given the window's adaptive vectors ``a`` (B, W, 2 Z) = [A_mu, A_sigma], z sampled."""
        out = self.unroll(obs.shape[1], state, first, a.chunk(2, -1), noise=True, packed=packed)
        return self.weighted(*self.elbo_terms(out, obs), first=first).sum()

    @_without_autocast
    def window_objective_and_grad(self, a: torch.Tensor, state, first: bool, obs: torch.Tensor,
                                  packed: PackedStack) -> tuple[torch.Tensor, torch.Tensor]:
        """``window_objective`` and its gradient in ``a``, with the weights fixed, from ``window_solver``: by hand
        (``layers.WindowGradient``, no autograd graph), or by autograd for models with bottom-up weights. The KL
        weights are dJ/dkl = w_k / (z_k W) per latent unit of level k (w1_k at the stream's first step). Equal to
        autograd's gradient (tested)."""
        solver = self.window_solver(packed, obs.shape[1], obs.shape[0])
        with torch.no_grad():
            value, grad = solver(a, torch.randn_like(a[..., :solver.Z]), *join_state(state), first, obs, value=True)
        return value, grad.clone()

    def window_solver(self, packed: PackedStack, window: int, batch: int):
        """Error regression's window for ``batch`` streams: ``layers.WindowGradient`` with this model's read-out
        and KL weights (buffers made once, reused by every call), or a ``SteppedWindow`` with the same interface
        for models with bottom-up weights, which the skewed stack cannot run."""
        if self.config.bottom_up:
            return SteppedWindow(self, packed)
        z = packed.Wz.new_tensor(packed.z_sizes)
        c_later, c_first = ((self.kl_weights(window, first, z) / (z * window)).repeat_interleave(z.long(), -1)
                            for first in (False, True))
        return WindowGradient(packed, self.out.weight.detach(), self.out.bias.detach(), c_later, c_first, window, batch)

    @_without_autocast
    def error_regression(self, stream: torch.Tensor, window: int, iterations: int, lr: float = 0.1,
                         horizon: int = 1) -> dict:
        """Online inference on unseen streams (B, T, out_size), all streams in lockstep (cast to the model's dtype and
        device).

        At every step t >= window - 1 only the adaptive vectors of the window [t - window + 1, t] are
        optimised (Adam, ``iterations`` steps, the objective above restricted to the window, z sampled); the
        state before the window and all model weights stay fixed. Then the prior mean is run ``horizon``
        steps ahead from the window's end. Sliding on, the window's oldest step is committed with its
        posterior mean and a new step's vectors start at 0.
        Returns, per step s (S = T - window - horizon + 1 of them; step s ends its window at t = s + window - 1):
        ``prediction`` (B, S, horizon, out) of x_{t+1..t+horizon}, ``error`` (B, S) its mean squared error,
        ``window_error_before`` / ``window_error_after`` (B, S) the window's mean squared reconstruction
        error (posterior means) before and after the iterations, and ``post_mu`` / ``post_sigma``: lists per
        level of (B, S, z_k), the posterior at the window's last step.
        Each iteration takes the objective's gradient from ``window_solver`` (by hand, no autograd, in buffers
        made once per call) and applies torch's Adam update (``adam_step``). The loop runs in inference mode
        (less overhead per op; level by level under no_grad for bottom-up models, whose gradient is autograd's);
        the results are ordinary tensors. It works inside a caller's ``torch.inference_mode`` and autocast (which it
        turns off); a float16 or bfloat16 model regresses in a float32 copy and returns its results in its own
        dtype. An empty batch (B = 0) gives empty results.
        """
        if not torch.is_tensor(stream):
            raise TypeError(f"error_regression: stream must be a (B, T, out_size) tensor, got {type(stream).__name__}")
        B, T = stream.shape[:2] if stream.dim() == 3 else (0, 0)
        if stream.dim() != 3 or stream.shape[-1] != self.config.out_size:
            raise ValueError(f"error_regression: stream must have shape (B, T, out_size={self.config.out_size}), "
                             f"got {tuple(stream.shape)}")
        integers = {"window": window, "iterations": iterations, "horizon": horizon}
        if not all(is_int(v) for v in integers.values()):
            raise ValueError(f"error_regression: window, iterations and horizon must be integers, got {integers}")
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"error_regression: lr must be a finite number > 0, got {lr!r}")
        if window < 1 or iterations < 0 or horizon < 1 or T < window + horizon:
            raise ValueError(f"error_regression needs window >= 1, iterations >= 0, horizon >= 1 and "
                             f"T >= window + horizon, got window={window}, iterations={iterations}, horizon={horizon}, T={T}")
        if stream.is_complex() or not torch.isfinite(stream).all():
            bad = "complex" if stream.is_complex() else f"{int((~torch.isfinite(stream)).sum())} NaN/inf values"
            raise ValueError(f"error_regression: stream must be real and finite, got {bad}; mask or interpolate "
                             "missing observations before regressing")
        dtype = self.out.weight.dtype
        # out of any caller's inference mode: a bottom-up model's window gradient needs autograd
        with torch.inference_mode(False), torch.no_grad():
            # Adam's eps (1e-8) is 0 in float16: a half-precision model regresses in a float32 copy
            work = self if dtype.itemsize >= 4 else copy.deepcopy(self).float()
            work._probing = False
            try:
                with contextlib.nullcontext() if self.config.bottom_up else torch.inference_mode():
                    out = work._regress(stream.to(work.out.weight, copy=True), window, iterations, lr, horizon)
            finally:
                self._probing = True
        return {k: [x.to(dtype, copy=True) for x in v] if isinstance(v, list) else v.to(dtype, copy=True)
                for k, v in out.items()}

    def _regress(self, stream: torch.Tensor, window: int, iterations: int, lr: float, horizon: int) -> dict:
        """``error_regression``'s loop, without autograd."""
        B, T = stream.shape[:2]
        packed = self.packed()  # once: the weights stay fixed
        Z = sum(self.config.z_sizes)
        a = stream.new_zeros(B, window, 2 * Z)  # the window's [A_mu, A_sigma], updated in place by Adam
        state, first = [(h.detach(), d.detach()) for h, d in self.initial_state(B)], True
        keys = ("prediction", "error", "window_error_before", "window_error_after")
        res = {k: [] for k in keys} | {"post_mu": [], "post_sigma": []}
        solver, d_sizes, z_sizes = self.window_solver(packed, window, B), packed.d_sizes, packed.z_sizes
        ahead = None if self.config.bottom_up else SkewedStack(packed, horizon, B)  # the prior-mean predictions
        for t in range(window - 1, T - horizon):
            obs = stream[:, t - window + 1:t + 1]
            h0, d0 = join_state(state)
            res["window_error_before"].append(solver.mean_pass(a, h0, d0, obs))
            moments = (torch.zeros_like(a), torch.zeros_like(a))
            for step in range(1, iterations + 1):
                adam_step(a, solver(a, torch.randn_like(a[..., :Z]), h0, d0, first, obs)[1], *moments, step, lr)
            res["window_error_after"].append(solver.mean_pass(a, h0, d0, obs))
            res["post_mu"].append(torch.tanh(a[:, -1, :Z]).split(z_sizes, -1))
            res["post_sigma"].append(torch.exp(a[:, -1, Z:]).split(z_sizes, -1))
            pred = self._predict(ahead, solver.state_at(window - 1), horizon)
            res["prediction"].append(pred)
            res["error"].append((pred - stream[:, t + 1:t + 1 + horizon]).square().mean((-1, -2)))
            # commit the oldest step at its posterior mean, then slide: a new step's vectors start at 0
            state, first = split_state(*solver.state_at(0), d_sizes), False
            a = torch.cat([a[:, 1:], a.new_zeros(B, 1, 2 * Z)], 1)
        out = {k: torch.stack(res[k], 1) for k in keys}
        for name in ("post_mu", "post_sigma"):
            out[name] = [torch.stack(v, 1) for v in zip(*res[name])]
        return out


class SteppedWindow:
    """``layers.WindowGradient``'s interface (gradient call, ``mean_pass``, ``state_at``) for models with bottom-up
    weights: the model's level-by-level posterior pass, and autograd's gradient of ``window_objective``."""

    def __init__(self, model: PVRNN, packed: PackedStack):
        self.model, self.packed, self.Z = model, packed, sum(packed.z_sizes)
        self._last = None  # (a, h0, d0, pass) of the last mean_pass

    def _pass(self, a, eps, h0, d0, first):
        return self.model._posterior_pass(self.packed, a[..., :self.Z], a[..., self.Z:], eps, h0, d0, first)

    def __call__(self, a, eps, h0, d0, first, obs, value=False):
        m = self.model
        with torch.enable_grad():
            a = a.detach().requires_grad_()
            J = m.weighted(*m.elbo_terms(m._posterior_outputs(self._pass(a, eps, h0, d0, first), self.packed),
                                         obs), first=first).sum()
            grad, = torch.autograd.grad(J, [a])
        return J.detach() if value else None, grad

    def mean_pass(self, a, h0, d0, obs):
        q = self._pass(a, None, h0, d0, False)  # z = mu^q: the first step's prior does not enter d
        self._last = (a.clone(), h0, d0, q)
        return (self.model.out(q["d"][..., :self.packed.d_sizes[0]]) - obs).square().mean((-1, -2))

    def state_at(self, t):
        a, h0, d0, q = self._last
        if t + 1 < a.shape[1]:
            q = self._pass(a[:, :t + 1], None, h0, d0, False)
        return q["h"], q["d"][:, -1]


@register_model(PVRNNConfig(), PAPER)
def pvrnn_small(config: PVRNNConfig) -> PVRNN:
    """Two levels (20 + 10 d units, 2 + 1 z units, tau 2 and 8), 16 sequences of 200 steps: quick runs and tests."""
    return PVRNN(config)


@register_model(PVRNNConfig(d_sizes=(40, 10), z_sizes=(4, 1), taus=(2.0, 10.0), meta_prior=(0.01, 0.01),
                            n_sequences=24, seq_len=400), PAPER)
def pvrnn_pfsm(config: PVRNNConfig) -> PVRNN:
    """Two levels (40 + 10 d units, 4 + 1 z units, tau 2 and 10) for the probabilistic finite-state-machine
    experiment: 24 training sequences of 400 steps of 2-D patterns."""
    return PVRNN(config)
