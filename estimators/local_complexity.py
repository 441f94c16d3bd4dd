"""Local complexity of a piecewise-linear network around input points (Humayun, Balestriero & Baraniuk 2024,
"Deep Networks Always Grok and Here is Why"): how many neuron hyperplanes, and so how many linear regions,
a small cross-polytope around each point meets."""
from __future__ import annotations

import torch
from torch import nn

from .estimator import ModuleEstimator

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh)


def kinks(module: nn.Module) -> tuple[float, ...]:
    """The pre-activation values where ``module`` bends: Hardtanh at min_val and max_val (ReLU6, a Hardtanh:
    0 and 6), ReLU, LeakyReLU and PReLU at 0."""
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.PReLU)):
        return (0.0,)
    raise ValueError(f"local_complexity: no known kinks for {type(module).__name__}; supported: Hardtanh, ReLU6, "
                     "ReLU, LeakyReLU, PReLU")


def _cross_polytope(x: torch.Tensor, radius: float, n_directions: int, generator: torch.Generator | None) -> torch.Tensor:
    """(B, 2m + 1, D): each point, then x +- radius q_j for m random orthonormal directions q_j per point."""
    b, d = x.shape
    m = min(n_directions, d)
    g = torch.randn(b, d, m, generator=generator, dtype=torch.float64).to(x.device)
    q = torch.linalg.qr(g).Q.transpose(1, 2).to(x.dtype)  # (B, m, D), orthonormal rows
    return torch.cat([x[:, None], x[:, None] + radius * q, x[:, None] - radius * q], 1)


@torch.no_grad()
def local_complexity(model: nn.Module, x: torch.Tensor, radius: float = 0.1, n_directions: int = 16,
                     activations: tuple[type, ...] = ACTIVATIONS, generator: torch.Generator | None = None) -> dict:
    """Linear regions and neuron hyperplanes met by the cross-polytope of ``radius`` around each point of x (B, ...).

    The polytope has the 2m vertices x +- r q_j (m = min(``n_directions``, D) random orthonormal q_j, D the
    input's dimension) and its
    centre. For every neuron of the ``activations`` modules, the side of each of its kinks c (``kinks``:
    pre-activation z > c) at these V = 2m + 1 points gives: ``neurons`` = number of neurons for which
    some kink's side differs among them (one of its hyperplanes z = c cuts the polytope: Humayun et al.'s
    LC), ``regions`` = number of distinct side patterns (a lower bound on the linear regions meeting the
    polytope). Both are means over the B points; counts, no units. Sampling bias: both are lower bounds
    that grow with m. The model runs in eval mode (BatchNorm uses its running statistics, so a point's
    counts do not depend on the rest of the batch; the modes are restored after). Cost one forward pass
    on B V inputs; memory: the side patterns, packed 64 to an int64 word, take two (B, V, U) int64 temporaries,
    U = sum over neurons of their kinks (B = 64, V = 33, U = 1e5: about 1.7 GB each; lower B or n_directions for
    wide networks), and the comparison a (B, V, V, U / 64) bool one.
    """
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"x must be a batch of inputs (B, ...), got {tuple(x.shape) if torch.is_tensor(x) else x!r}")
    if not torch.is_floating_point(x):
        raise TypeError(f"local_complexity: x must be a floating tensor (the polytope's vertices x +- r q are not "
                        f"{x.dtype} values), got {x.dtype}; pass x.float()")
    if not torch.isfinite(x).all():
        raise ValueError(f"x has {int((~torch.isfinite(x)).sum())} NaN/inf entries; local complexity needs finite inputs")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    b, shape = x.shape[0], x.shape[1:]
    weights = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weights is not None:  # inputs recorded under autocast (bf16) go into the fp32 model outside it
        x = x.to(weights.dtype)
    points = _cross_polytope(x.reshape(b, -1), radius, n_directions, generator)
    v = points.shape[1]
    units = [m for m in model.modules() if isinstance(m, activations)]
    if not units:
        raise ValueError(f"local_complexity: {type(model).__name__} has no modules of types "
                         f"{[a.__name__ for a in activations]}")
    cuts = [torch.tensor(kinks(m)) for m in units]
    sides = []  # per module call (B, V, neurons, kinks): pre-activation above each kink
    hooks = [m.register_forward_pre_hook(lambda mod, inp, c=c: sides.append(inp[0].reshape(b, v, -1, 1) > c.to(inp[0])))
             for m, c in zip(units, cuts)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        model(points.reshape(b * v, *shape))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    neurons = sum((s.any(1) & ~s.all(1)).any(-1).sum(-1) for s in sides).double()
    pattern = torch.cat([s.flatten(2) for s in sides], -1)  # (B, V, U)
    # 64 units per int64 word (bit j of a word = unit j of its block): rows compare word by word, a (B, V, V, U/64)
    # temporary where comparing the bools built (B, V, V, U) bytes; equal words <=> equal bits
    pad = -pattern.shape[-1] % 64
    bits = torch.cat([pattern, pattern.new_zeros(b, v, pad)], -1).view(b, v, -1, 64).long()
    words = (bits << torch.arange(64, device=bits.device)).sum(-1)
    same = (words[:, :, None] == words[:, None, :]).all(-1)  # (B, V, V)
    repeated = (same & torch.ones(v, v, dtype=torch.bool, device=same.device).tril(-1)).any(-1)
    regions = (v - repeated.sum(-1)).double()
    return {"neurons": neurons.mean().item(), "regions": regions.mean().item()}


def _seeded_local_complexity(module: nn.Module, x: torch.Tensor, seed: int, **kwargs) -> dict:
    return local_complexity(module, x, generator=torch.Generator().manual_seed(seed), **kwargs)


def local_complexity_estimator(radius: float = 0.1, n_directions: int = 16, seed: int = 0) -> ModuleEstimator:
    """Probe estimator: ``local_complexity`` of the matched module around the inputs it received in a scheduled
    step (``{neurons, regions}``). Its directions come from a private generator seeded ``seed``, so the same
    inputs give the same counts and the training run's random stream is left alone."""
    return ModuleEstimator("local_complexity", _seeded_local_complexity, unit="count", radius=radius,
                           n_directions=n_directions, seed=seed)
