"""PV-RNN: the predictive-coding-inspired variational RNN (Ahmadi and Tani, Neural Computation 2019, arXiv 1811.01339).

A stack of MTRNN levels (``layers.PVRNNLayer``, level 0 at the bottom, slowest at the top) with a linear read-out
x_t = W_out d_t^0 + b. No encoder sees the data: the approximate posterior of every level is
q(z_t) = N(tanh(A^mu_t), exp(A^sigma_t)^2) with adaptive vectors A held per training sequence and time step
(parameters ``A_mu.k`` / ``A_sigma.k`` of shape (n_sequences, seq_len, z_k), initialised to 0, saved in the
checkpoint); the data reach them only through the prediction error's gradient.

Objective, minimised per sequence of length T (the negative of the paper's weighted lower bound, with our
normalisation stated):
    L = (1/T) sum_t [ (1/R_x) ||x_hat_t - x_t||^2 + sum_k w_k (1/R_z^k) KL(q(z_t^k) || p(z_t^k | d_{t-1}^k)) ],
where R_x and R_z^k are the output and latent sizes and w_k the meta-prior of level k. The squared error is
-log N(x_t | x_hat_t, 1/2) up to a constant (a Gaussian likelihood with fixed variance); the KL is in nats and
closed form (``layers.pvrnn_layer.gaussian_kl``). The training loss is its mean over the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layers import ProbePoint, PVRNNLayer, gaussian_kl, top_down_recurrence

from ._registry import Paper, register_model

PAPER = Paper(family="pvrnn", title="A Novel Predictive-Coding-Inspired Variational RNN Model for Online Prediction "
              "and Recognition", arxiv="1811.01339", authors="Ahmadi, Tani", year=2019)


@dataclass
class PVRNNConfig:
    d_sizes: tuple = (20, 10)       # deterministic units per level, bottom level first
    z_sizes: tuple = (2, 1)         # latent units per level
    taus: tuple = (2.0, 8.0)        # time constants per level (slower towards the top)
    meta_prior: tuple = (0.01, 0.01)  # w per level
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
        sizes = {"d_sizes": len(c.d_sizes), "z_sizes": len(c.z_sizes), "taus": len(c.taus), "meta_prior": len(c.meta_prior)}
        if len(set(sizes.values())) != 1 or not c.d_sizes:
            raise ValueError(f"PVRNN: d_sizes, z_sizes, taus and meta_prior need one entry per level, got lengths {sizes}")
        if c.n_sequences < 1 or c.seq_len < 1 or c.out_size < 1 or min(c.meta_prior) < 0:
            raise ValueError(f"PVRNN needs n_sequences, seq_len, out_size >= 1 and meta_prior >= 0, got {c}")
        self.config = c
        L = len(c.d_sizes)
        self.levels = nn.ModuleList(
            PVRNNLayer(c.d_sizes[k], c.z_sizes[k], c.taus[k], top_size=c.d_sizes[k + 1] if k + 1 < L else 0,
                       bottom_size=c.d_sizes[k - 1] if c.bottom_up and k > 0 else 0) for k in range(L))
        self.out = nn.Linear(c.d_sizes[0], c.out_size)
        self.A_mu = nn.ParameterList(nn.Parameter(torch.zeros(c.n_sequences, c.seq_len, z)) for z in c.z_sizes)
        self.A_sigma = nn.ParameterList(nn.Parameter(torch.zeros(c.n_sequences, c.seq_len, z)) for z in c.z_sizes)
        self.x_hat = ProbePoint()

    # -- the recurrence --------------------------------------------------------------------------------------
    def initial_state(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(h, d) = 0 for every level."""
        p = self.out.weight
        return [(p.new_zeros(batch, n), p.new_zeros(batch, n)) for n in self.config.d_sizes]

    def unroll(self, steps: int, state, first: bool = True, post=None, noise: bool = True) -> dict:
        """Run ``steps`` steps from ``state`` (a list of (h, d) per level).

        ``first``: the first step's prior is N(0, I). ``post``: (A_mu list, A_sigma list), each (B, steps, z_k),
        samples z from the posterior (and computes the KL); None samples from the prior (generation).
        ``noise=False`` takes the mean instead of a sample. Returns x (B, steps, out), per-level statistics
        ``levels[k][name]`` (B, steps, .) and the final ``state``.
        Under the posterior z does not depend on the state, so z, W_zd z, the priors, the KL and the read-out
        are computed for the whole sequence at once, and the d recurrence runs in ``top_down_recurrence`` (one
        autograd function; step by step only with bottom-up weights).
        """
        hs, ds = [h for h, _ in state], [d for _, d in state]
        d0 = list(ds)
        z_drive = None
        if post is not None:
            q = [layer.posterior(a_mu, a_sigma) for layer, a_mu, a_sigma in zip(self.levels, *post)]
            zs = [mu + s * torch.randn_like(mu) if noise else mu for mu, s in q]
            z_drive = [layer.W_zd(z) for layer, z in zip(self.levels, zs)]
        if z_drive is not None and all(layer.W_bottom is None for layer in self.levels):
            d_seq, hs = top_down_recurrence(self.levels, z_drive, list(zip(hs, ds)))
        else:
            rec, hs = self._step_by_step(steps, hs, ds, first, z_drive, noise)
            d_seq = [torch.stack(r["d"], 1) for r in rec]
        ds = [d[:, -1] for d in d_seq]
        levels = []
        for k, (layer, d) in enumerate(zip(self.levels, d_seq)):
            stats = {"d": layer.d(d)}
            if post is None:
                stats |= {n: getattr(layer, n)(torch.stack(rec[k][n], 1)) for n in ("z", "prior_mu", "prior_sigma")}
            else:
                mu_p, s_p = layer.prior(torch.cat([d0[k][:, None], d[:, :-1]], 1))
                if first:
                    mu_p = torch.cat([torch.zeros_like(mu_p[:, :1]), mu_p[:, 1:]], 1)
                    s_p = torch.cat([torch.ones_like(s_p[:, :1]), s_p[:, 1:]], 1)
                stats |= {"z": layer.z(zs[k]), "prior_mu": layer.prior_mu(mu_p), "prior_sigma": layer.prior_sigma(s_p),
                          "post_mu": layer.post_mu(q[k][0]), "post_sigma": layer.post_sigma(q[k][1])}
                stats["kl"] = layer.kl(gaussian_kl(q[k][0], q[k][1], mu_p, s_p).sum(-1))
            levels.append(stats)
        return {"x": self.x_hat(self.out(levels[0]["d"])), "levels": levels, "state": list(zip(hs, ds))}

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
        if ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"PVRNN: ids must be a 1-D integer tensor of sequence ids, got {ids.dtype} {tuple(ids.shape)}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"PVRNN: sequence ids must lie in [0, n_sequences={n}), got {ids.min()}..{ids.max()}")
        steps = T if steps is None else steps
        if not 1 <= steps <= T:
            raise ValueError(f"PVRNN: steps must lie in [1, seq_len={T}], got {steps}")
        return ids, steps

    def forward(self, ids: torch.Tensor, steps: int | None = None, noise: bool = True) -> dict:
        """Posterior unroll of training sequences ``ids`` (B,) over their first ``steps`` (default seq_len) steps."""
        ids, steps = self._ids(ids, steps)
        post = ([a[ids, :steps] for a in self.A_mu], [a[ids, :steps] for a in self.A_sigma])
        return self.unroll(steps, self.initial_state(len(ids)), first=True, post=post, noise=noise)

    # -- the objective ---------------------------------------------------------------------------------------
    def elbo_terms(self, out: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sequence: reconstruction (1/T) sum_t (1/R_x) ||x_hat_t - x_t||^2, shape (B,), and per level
        (1/T) sum_t (1/R_z^k) KL_t^k, shape (B, L)."""
        rec = ((out["x"] - x) ** 2).mean(-1).mean(-1)
        kl = torch.stack([lvl["kl"].mean(-1) / z for lvl, z in zip(out["levels"], self.config.z_sizes)], -1)
        return rec, kl

    def weighted(self, rec: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """rec + sum_k w_k kl_k per sequence (the negative weighted lower bound)."""
        return rec + kl @ kl.new_tensor(self.config.meta_prior)

    def loss(self, ids: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean over the batch of the objective for sequences ``ids`` (B,) with observations x (B, T, out_size)."""
        if x.dim() != 3 or x.shape[0] != len(ids) or x.shape[-1] != self.config.out_size:
            raise ValueError(f"PVRNN.loss: x must have shape (len(ids)={len(ids)}, T, out_size={self.config.out_size}), "
                             f"got {tuple(x.shape)}")
        rec, kl = self.elbo_terms(self(ids, steps=x.shape[1]), x)
        extras = {"rec": float(rec.detach().mean())} | {f"kl_{k}": float(v) for k, v in enumerate(kl.detach().mean(0))}
        return self.weighted(rec, kl).mean(), extras

    # -- generation and reconstruction -----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, batch: int, steps: int, noise: bool = True) -> torch.Tensor:
        """Free-running generation from the prior (first step N(0, I)), shape (batch, steps, out_size)."""
        return self.unroll(steps, self.initial_state(batch), first=True, noise=noise)["x"]

    def prior_mean_map(self, h: torch.Tensor) -> torch.Tensor:
        """One step of the noise-free generative dynamics (z_t = prior mean) on the internal states of all
        levels concatenated, h (B, sum d_k) -> (B, sum d_k), with d = tanh(h): the deterministic part of
        generation, whose largest Lyapunov exponent tells chaos (> 0) from a stable pattern (<= 0)."""
        hs = h.split(list(self.config.d_sizes), -1)
        state = self.unroll(1, [(hk, torch.tanh(hk)) for hk in hs], first=False, noise=False)["state"]
        return torch.cat([hk for hk, _ in state], -1)

    @torch.no_grad()
    def reconstruct(self, ids: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Posterior-mean reconstruction of training sequences ``ids``, shape (B, steps, out_size)."""
        return self(ids, steps=steps, noise=False)["x"]

    # -- error regression ------------------------------------------------------------------------------------
    def window_objective(self, params: list, state, first: bool, obs: torch.Tensor) -> torch.Tensor:
        """Error regression's objective: the training objective restricted to the window ``obs`` (B, W, out),
        given the adaptive vectors ``params`` (A_mu per level, then A_sigma per level), z sampled."""
        n = len(self.levels)
        out = self.unroll(obs.shape[1], state, first, (params[:n], params[n:]), noise=True)
        return self.weighted(*self.elbo_terms(out, obs)).sum()

    def error_regression(self, stream: torch.Tensor, window: int, iterations: int, lr: float = 0.1,
                         horizon: int = 1, compile: bool = False) -> dict:
        """Online inference on unseen streams (B, T, out_size), all streams in lockstep.

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
        ``compile=True`` runs the window objective and its gradient through ``torch.compile``: the same
        objective, faster per iteration after a compilation of tens of seconds; its z samples come from
        another random stream than eager mode's.
        """
        B, T = stream.shape[:2] if stream.dim() == 3 else (0, 0)
        if stream.dim() != 3 or stream.shape[-1] != self.config.out_size:
            raise ValueError(f"error_regression: stream must have shape (B, T, out_size={self.config.out_size}), "
                             f"got {tuple(stream.shape)}")
        if window < 1 or iterations < 0 or horizon < 1 or T < window + horizon:
            raise ValueError(f"error_regression needs window >= 1, iterations >= 0, horizon >= 1 and "
                             f"T >= window + horizon, got window={window}, iterations={iterations}, horizon={horizon}, T={T}")
        stream = stream.to(self.out.weight)
        zs = self.config.z_sizes
        a_mu = [stream.new_zeros(B, window, z) for z in zs]
        a_sigma = [stream.new_zeros(B, window, z) for z in zs]
        state, first = [(h.detach(), d.detach()) for h, d in self.initial_state(B)], True
        keys = ("prediction", "error", "window_error_before", "window_error_after")
        res = {k: [] for k in keys} | {"post_mu": [[] for _ in zs], "post_sigma": [[] for _ in zs]}

        objective = torch.compile(self.window_objective, dynamic=False) if compile else self.window_objective

        def window_error(obs):
            with torch.no_grad():
                out = self.unroll(window, state, first, (a_mu, a_sigma), noise=False)
            return ((out["x"] - obs) ** 2).mean((-1, -2)), out

        for t in range(window - 1, T - horizon):
            obs = stream[:, t - window + 1:t + 1]
            res["window_error_before"].append(window_error(obs)[0])
            params = [a.detach().requires_grad_() for a in a_mu + a_sigma]
            opt = torch.optim.Adam(params, lr=lr)
            with torch.enable_grad():
                for _ in range(iterations):
                    grads = torch.autograd.grad(objective(params, state, first, obs), params)
                    for p, g in zip(params, grads):
                        p.grad = g
                    opt.step()
            a_mu, a_sigma = [p.detach() for p in params[:len(zs)]], [p.detach() for p in params[len(zs):]]
            err, out = window_error(obs)
            res["window_error_after"].append(err)
            for k, lvl in enumerate(out["levels"]):
                res["post_mu"][k].append(lvl["post_mu"][:, -1])
                res["post_sigma"][k].append(lvl["post_sigma"][:, -1])
            with torch.no_grad():
                pred = self.unroll(horizon, out["state"], first=False, noise=False)["x"]
                committed = self.unroll(1, state, first, ([a[:, :1] for a in a_mu], [a[:, :1] for a in a_sigma]),
                                        noise=False)["state"]
            res["prediction"].append(pred)
            res["error"].append(((pred - stream[:, t + 1:t + 1 + horizon]) ** 2).mean((-1, -2)))
            state, first = committed, False
            a_mu = [torch.cat([a[:, 1:], a.new_zeros(B, 1, a.shape[-1])], 1) for a in a_mu]
            a_sigma = [torch.cat([a[:, 1:], a.new_zeros(B, 1, a.shape[-1])], 1) for a in a_sigma]
        out = {k: torch.stack(res[k], 1) for k in keys}
        out["post_mu"] = [torch.stack(v, 1) for v in res["post_mu"]]
        out["post_sigma"] = [torch.stack(v, 1) for v in res["post_sigma"]]
        return out


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
