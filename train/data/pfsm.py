"""2-D sequences from a probabilistic finite-state machine switching between primitive patterns, generated offline
in the manner of PV-RNN's first experiment (Ahmadi and Tani 2019): a fixed-period primitive, then a random
transition, plus Gaussian observation noise. The primitives and probabilities below are our own choice."""
from __future__ import annotations

import math

import numpy as np
import torch

PRIMITIVES = ("A", "B", "C")  # figure eight through the origin; circle to its right; circle to its left
# After A comes B with probability p_b, else C; after B or C always A: one stochastic branching point.


def primitive(name: str, period: int) -> np.ndarray:
    """One period (period, 2) of a primitive; each starts and ends at the origin."""
    theta = 2 * math.pi * np.arange(period) / period
    if name == "A":
        return np.stack([0.8 * np.sin(theta), 0.8 * np.sin(2 * theta)], 1)
    side = 1.0 if name == "B" else -1.0
    return np.stack([side * 0.4 * (1 - np.cos(theta)), 0.4 * np.sin(theta)], 1)


def pfsm_sequences(n: int, length: int, period: int = 20, p_b: float = 0.7, noise: float = 0.05,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of ``length`` steps, shape (n, length, 2), and the primitive index per step (n, length).

    Every sequence starts with A at phase 0. Noise is i.i.d. N(0, noise^2) per coordinate.
    """
    if not 0.0 <= p_b <= 1.0 or period < 2 or n < 1 or length < 1:
        raise ValueError(f"pfsm_sequences needs n, length >= 1, period >= 2 and p_b in [0, 1], got n={n}, "
                         f"length={length}, period={period}, p_b={p_b}")
    rng = np.random.default_rng(seed)
    shapes = np.stack([primitive(p, period) for p in PRIMITIVES])  # (3, period, 2)
    n_prim = -(-length // period)
    states = np.zeros((n, n_prim), dtype=np.int64)
    branch = np.where(rng.random((n, n_prim)) < p_b, 1, 2)
    states[:, 1::2] = branch[:, 1::2]  # A at even positions, B or C at odd ones
    x = shapes[states].reshape(n, n_prim * period, 2)[:, :length]
    labels = np.repeat(states, period, axis=1)[:, :length]
    x = x + noise * rng.standard_normal(x.shape)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels)


def branch_probability(x: torch.Tensor, period: int, threshold: float = 0.2) -> torch.Tensor:
    """Estimated P(B | branch) of trajectories (n, T, 2): cut into windows of ``period`` steps, label a window B
    (mean x > threshold), C (mean x < -threshold) or neither (A), and return #B / (#B + #C) (nan when none)."""
    n_win = x.shape[1] // period
    mean_x = x[:, :n_win * period, 0].reshape(x.shape[0], n_win, period).mean(-1)
    b, c = (mean_x > threshold).sum(), (mean_x < -threshold).sum()
    return b / (b + c) if b + c else torch.tensor(float("nan"))
