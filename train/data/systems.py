"""Chaotic benchmark systems integrated offline with scipy (no download needed)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp


def lorenz63(t, s, sigma=10.0, rho=28.0, beta=8.0 / 3.0):
    """dx = sigma (y - x), dy = x (rho - z) - y, dz = x y - beta z."""
    x, y, z = s
    return [sigma * (y - x), x * (rho - z) - y, x * y - beta * z]


def roessler(t, s, a=0.2, b=0.2, c=5.7):
    """dx = -y - z, dy = x + a y, dz = b + z (x - c)."""
    x, y, z = s
    return [-y - z, x + a * y, b + z * (x - c)]


SYSTEMS = {
    "lorenz63": (lorenz63, (1.0, 1.0, 1.0)),
    "roessler": (roessler, (1.0, 1.0, 0.0)),
}


def simulate(system: str, steps: int, dt: float, transient: int = 1000, seed: int = 0,
             noise: float = 0.0) -> torch.Tensor:
    """A trajectory of ``steps`` samples every ``dt`` after discarding ``transient`` samples, shape (steps, 3).

    The initial condition is the system's default plus N(0, 1) from ``seed``; ``noise`` adds observation
    noise of that many standard deviations (per dimension). Integrated with RK45 at rtol 1e-9, atol 1e-9.
    """
    if system not in SYSTEMS:
        raise KeyError(f"unknown system {system!r}; available: {sorted(SYSTEMS)}")
    rhs, x0 = SYSTEMS[system]
    rng = np.random.default_rng(seed)
    x0 = np.asarray(x0) + rng.standard_normal(3)
    n = transient + steps
    t_eval = np.arange(n) * dt
    sol = solve_ivp(rhs, (0.0, t_eval[-1]), x0, t_eval=t_eval, method="RK45", rtol=1e-9, atol=1e-9)
    if not sol.success:
        raise RuntimeError(f"integrating {system} failed: {sol.message}")
    x = sol.y.T[transient:]
    if noise:
        x = x + noise * x.std(0) * rng.standard_normal(x.shape)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # row-major, as the cache reloads it


def standardise(train: torch.Tensor, *others: torch.Tensor):
    """Scale every series by the training series' per-dimension mean and std."""
    mean, std = train.mean(0), train.std(0)
    return tuple((x - mean) / std for x in (train, *others))


def cached_simulate(system: str, steps: int, dt: float, transient: int = 1000, seed: int = 0) -> torch.Tensor:
    """``simulate`` with the result kept in ``$PAPERZOO_CACHE/data`` (integrating 1e5 steps takes ~20 s)."""
    from safetensors.torch import load_file

    from weights.checkpoint import save_safetensors
    from weights.manifest import cache_dir

    # repr: the shortest text that reads back as this float, so two step sizes never share an entry (:g kept 6 digits)
    path = cache_dir() / "data" / f"{system}_T{steps}_dt{float(dt)!r}_tr{transient}_seed{seed}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["x"]
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink()
    x = simulate(system, steps, dt, transient=transient, seed=seed)
    save_safetensors({"x": x}, path)
    return x
