"""Variational lower bounds on MI with a small trainable critic: InfoNCE (van den Oord et al. 2018) and
Donsker-Varadhan as in MINE (Belghazi et al. 2018)."""
from __future__ import annotations

import copy
import math
import numbers

import torch
from torch import nn

from .estimator import Estimator, is_whole, log_base
from .paired import paired
from .samples import as_samples, same_rows, standardise_columns
from .seeding import seeded

BOUNDS = ("infonce", "dv")


class SeparableCritic(nn.Module):
    """f(x, y) = g(x)^T h(y) with two small MLPs, evaluated on all B x B pairs at once: scores = g(X) h(Y)^T."""

    def __init__(self, dx: int, dy: int, hidden: int = 64, embed: int = 32):
        super().__init__()
        self.g = nn.Sequential(nn.Linear(dx, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed))
        self.h = nn.Sequential(nn.Linear(dy, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.g(x) @ self.h(y).T


def bound_value(scores: torch.Tensor, bound: str) -> torch.Tensor:
    """The bound from a B x B score matrix whose diagonal holds the joint pairs, in nats.

    infonce: log B + mean_i [ f_ii - log sum_j exp f_ij ]  (<= log B);
    dv:      mean_i f_ii - log mean_{i != j} exp f_ij.
    """
    b = scores.shape[0]
    diag = scores.diagonal()
    if bound == "infonce":
        return math.log(b) + (diag - scores.logsumexp(1)).mean()
    off = scores[~torch.eye(b, dtype=torch.bool, device=scores.device)]
    return diag.mean() - (off.logsumexp(0) - math.log(off.numel()))


def neural_mutual_information(x: torch.Tensor, y: torch.Tensor, bound: str = "infonce", steps: int = 500,
                              batch_size: int = 256, hidden: int = 64, lr: float = 3e-3, seed: int = 0,
                              base: float | str = "nats", held_out: float = 0.5) -> torch.Tensor:
    """Lower bound on I(X;Y) maximised over a critic trained on (x, y) (N, ...) pairs.

    ``infonce``: I >= E[ log( e^{f(x_i,y_i)} / (1/B sum_j e^{f(x_i,y_j)}) ) ] (van den Oord et al. 2018, eq. 5).
    ``dv``: I >= E_p[f] - log E_{p(x)p(y)}[e^f] (Donsker-Varadhan, MINE eq. 10; plain gradients, without
    MINE's moving-average correction). The critic is separable, g(x)^T h(y) with 2-hidden-layer MLPs on the
    standardised inputs, trained with Adam for ``steps`` minibatches on a random (1 - ``held_out``) of the pairs.
    The held-out pairs are halved: the critic kept is the one (of every steps/20) with the best bound on the first
    half (early stopping), and the value returned is its bound on the second half, averaged over disjoint full
    batches (B = min(batch_size, each part's size); the pairs left over are not used: the InfoNCE bound depends
    on B). For that critic it is an unbiased estimate of a lower bound. Scored on its own training pairs a critic
    memorises them (independent X, Y at N = 512: 0.8 nats instead of 0; at a probe's 64 rows the ceiling log 64),
    which ``held_out=0`` gives back. Nats (or ``base``). Bias: low when the critic is under-trained or the data
    are few; InfoNCE cannot exceed log B and has low variance, DV is unbounded with high variance.
    Cost O(steps * B * hidden * (D_x + D_y + hidden) + steps * B^2 * 32).
    """
    _check_options(bound, held_out)
    if not is_whole(steps):  # 0 steps would score the untrained critic, about 0, as if it were an estimate
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    x, y = as_samples(x, "x", torch.float32), as_samples(y, "y", torch.float32)
    same_rows(x, y)
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen).to(x.device)
    kept_out = round(held_out * n)
    train, valid, test = ((order[kept_out:], order[:kept_out // 2], order[kept_out // 2:kept_out]) if kept_out
                          else (order, order, order))
    b = min(batch_size, len(train), len(valid), len(test))
    if b < 2:
        raise ValueError(f"neural MI needs batches of >= 2 pairs, got batch_size={batch_size} with N={n} split into "
                         f"{len(train)} training, {len(valid)} validation and {len(test)} scored pairs "
                         f"(held_out={held_out})")
    x, y = standardise_columns(x - x.mean(0)), standardise_columns(y - y.mean(0))
    with seeded(seed, x.device):
        critic = SeparableCritic(x.shape[1], y.shape[1], hidden).to(x.device)
    opt = torch.optim.Adam(critic.parameters(), lr=lr)

    @torch.no_grad()
    def score(rows: torch.Tensor) -> torch.Tensor:
        return torch.stack([bound_value(critic(x[i], y[i]), bound) for i in rows.split(b)[:len(rows) // b]]).mean()

    best, kept = score(valid), copy.deepcopy(critic.state_dict())
    every = max(1, steps // 20)
    with torch.enable_grad():
        for step in range(1, steps + 1):
            idx = train[torch.randperm(len(train), generator=gen)[:b].to(x.device)]
            loss = -bound_value(critic(x[idx], y[idx]), bound)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % every == 0 or step == steps:
                value = score(valid)
                if value > best:
                    best, kept = value, copy.deepcopy(critic.state_dict())
    critic.load_state_dict(kept)
    return (score(test) / log_base(base)).float()


def _check_options(bound: str, held_out: float) -> None:
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if not (isinstance(held_out, numbers.Real) and 0 <= held_out < 1):
        raise ValueError(f"held_out must be a fraction in [0, 1) of the pairs kept out of training, got {held_out!r}")


def neural_mi(target=None, bound: str = "infonce", steps: int = 500, batch_size: int = 256,
              base: float | str = "nats", held_out: float = 0.5) -> Estimator:
    """Probe estimator: critic-based MI lower bound between the probe tensor and a bound target."""
    _check_options(bound, held_out)  # steps and batch_size are checked as shared settings by the Estimator
    return paired(f"{bound}_mi", neural_mutual_information, target, bound=bound, steps=steps,
                  batch_size=batch_size, base=base, held_out=held_out)
