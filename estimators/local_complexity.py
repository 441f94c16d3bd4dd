"""Local complexity of a piecewise-linear network around input points (Humayun, Balestriero & Baraniuk 2024,
"Deep Networks Always Grok and Here is Why"): how many neuron hyperplanes, and so how many linear regions,
a small cross-polytope around each point meets."""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh)


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

    The polytope has the 2m vertices x +- r q_j (m = ``n_directions`` random orthonormal q_j) and its
    centre. The sign pattern of the inputs of every ``activations`` module (pre-activations) at these
    2m + 1 points gives: ``neurons`` = number of neurons whose sign differs among them (their
    hyperplane cuts the polytope: Humayun et al.'s LC), ``regions`` = number of distinct patterns (a
    lower bound on the linear regions meeting the polytope). Both are means over the B points; counts,
    no units. Sampling bias: both are lower bounds that grow with m. Cost one forward pass on
    B (2m + 1) inputs.
    """
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"x must be a batch of inputs (B, ...), got {tuple(x.shape) if torch.is_tensor(x) else x!r}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius!r}")
    b, shape = x.shape[0], x.shape[1:]
    points = _cross_polytope(x.reshape(b, -1), radius, n_directions, generator)
    v = points.shape[1]
    signs = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: signs.append(inp[0].reshape(b, v, -1) > 0))
             for m in model.modules() if isinstance(m, activations)]
    try:
        if not hooks:
            raise ValueError(f"local_complexity: {type(model).__name__} has no modules of types "
                             f"{[a.__name__ for a in activations]}")
        model(points.reshape(b * v, *shape))
    finally:
        for h in hooks:
            h.remove()
    pattern = torch.cat(signs, -1)  # (B, V, U)
    neurons = (pattern.any(1) & ~pattern.all(1)).sum(-1).double()
    same = (pattern[:, :, None] == pattern[:, None, :]).all(-1)  # (B, V, V)
    repeated = (same & torch.ones(v, v, dtype=torch.bool, device=same.device).tril(-1)).any(-1)
    regions = (v - repeated.sum(-1)).double()
    return {"neurons": neurons.mean().item(), "regions": regions.mean().item()}
