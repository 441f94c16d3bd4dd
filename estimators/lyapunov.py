"""The largest Lyapunov exponent of a map, by Benettin's renormalised two-trajectory method (Benettin et al. 1980)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .estimator import is_whole


_BLOCK = 64  # steps between checks for a diverged or merged pair


def largest_lyapunov_exponent(step: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, steps: int,
                              transient: int = 0, dt: float = 1.0, delta: float = 1e-8, seed: int = 0) -> torch.Tensor:
    """lambda_max = (1 / (T dt)) sum_t log(d_t / delta), d_t = ||step(w_t) - step(z_t)||, w_{t+1} = z_{t+1} + delta (step(w_t) - step(z_t)) / d_t.

    A companion trajectory w starts ``delta`` away from z in a random direction; after every step its
    separation is measured and rescaled back to ``delta``, so it follows the most expanding direction
    (for small delta this is the tangent dynamics v -> J v / ||J v||). z and w go through ``step`` as one
    batch of 2B states (B, D) -> (B, D), so the cost is one batched call per time step. ``transient`` steps
    run first without averaging. Units: per step divided by ``dt`` (pass the sampling interval for
    1/time). Returns (B,), one exponent per trajectory: > 0 chaos, ~0 a limit cycle or neutral direction,
    < 0 a stable fixed point. Bias: a transient left in the average pulls the estimate towards the
    transient's own rate (pass ``transient``). Errors: O(1/sqrt(steps)) fluctuations on chaotic sets; keep delta well
    above the dtype's resolution (float64 with the default) and below the attractor's scale. A pair that diverges
    (inf/NaN separation) or merges (0), or an orbit that grows until delta is within 100 eps |z| of the dtype's
    resolution (the separation then survives only in the contracting directions, and the estimate drifts towards
    the smallest exponent), is a FloatingPointError naming the step; it is checked once per 64 steps, so ``step``
    may meet up to 63 steps of NaN states before the error.
    """
    if z0.dim() != 2:
        raise ValueError(f"largest_lyapunov_exponent: z0 must be (batch, dims), got {tuple(z0.shape)}")
    for name, value, least in (("steps", steps, 1), ("transient", transient, 0), ("seed", seed, 0)):
        if not is_whole(value, least):
            raise ValueError(f"largest_lyapunov_exponent: {name} must be an integer >= {least}, got {value!r}")
    if not torch.is_floating_point(z0):
        raise TypeError(f"largest_lyapunov_exponent: z0 must be a floating tensor, got {z0.dtype}")
    for name, value in (("dt", dt), ("delta", delta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"largest_lyapunov_exponent: {name} must be a finite number > 0, got {value!r}")
    eps = torch.finfo(z0.dtype).eps
    scale = float(z0.detach().abs().max()) if z0.numel() else 0.0
    resolution = eps * max(scale, 1.0)
    if delta < 100 * resolution:  # z + delta v would round back onto z, or keep only a few bits of the separation
        way_out = (f"pass a delta >= {100 * resolution:.2g}" if z0.dtype == torch.float64 else
                   f"pass z0.double() or a delta >= {100 * resolution:.2g}")
        raise FloatingPointError(f"largest_lyapunov_exponent: delta={delta:g} is not well above the resolution of "
                                 f"z0's dtype {z0.dtype} at |z| ~ {scale:.3g} (eps |z| = {resolution:.2g}); {way_out}")
    B, n = z0.shape[0], transient + steps
    v = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed), dtype=z0.dtype).to(z0.device)
    pair = torch.cat([z0, z0 + delta * v / v.norm(dim=-1, keepdim=True)])
    total = torch.zeros(B, dtype=z0.dtype, device=z0.device)
    block = torch.empty(_BLOCK, B, dtype=z0.dtype, device=z0.device)  # separations, checked and summed per block
    with torch.no_grad():
        for t in range(n):
            pair = step(pair)
            z, sep = pair[:B], pair[B:] - pair[:B]
            d = sep.norm(dim=-1)
            block[t % _BLOCK] = d
            pair = torch.cat([z, z + sep * (delta / d)[:, None]])
            if t % _BLOCK == _BLOCK - 1 or t == n - 1:  # one check per block, not a host sync per step
                first = t - t % _BLOCK
                filled = block[:t % _BLOCK + 1]
                bad = (~torch.isfinite(filled) | (filled == 0)).any(1)
                any_bad, size = torch.stack([bad.any().to(z.dtype), z.abs().max()]).tolist()  # one host sync
                if any_bad:
                    raise FloatingPointError(f"largest_lyapunov_exponent: the trajectories diverged or merged at "
                                             f"step {first + int(bad.nonzero()[0])}; no exponent defined (check the "
                                             "map and delta)")
                if delta < 100 * eps * size:
                    raise FloatingPointError(f"largest_lyapunov_exponent: the orbit grew to |z| ~ {size:.3g} by step "
                                             f"{t}, where delta={delta:g} is within 100 eps |z| of {z.dtype}'s "
                                             "resolution: the separation would be rounded away along the growing "
                                             "directions and the estimate would be wrong (an unbounded orbit has no "
                                             "attractor to measure; check the map, or run fewer steps)")
                total += (filled[max(transient - first, 0):] / delta).log().sum(0)
    return total / (steps * dt)


__all__ = ["largest_lyapunov_exponent"]
