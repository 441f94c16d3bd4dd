"""AL-RNN: Almost-Linear RNNs for dynamical-systems reconstruction (Brenner, Hemmer, Monfared, Durstewitz, 2024).

Observations are read out from the first N latent units (identity observation model); the initial
state is z_1 = [x_1; L x_1] with a learned (M-N) x N matrix L. Training forces the first N units to
the data every ``forcing_interval`` steps (sparse teacher forcing), optionally mixed with the model's
own state, z[:N] <- alpha x_t + (1 - alpha) z[:N] (generalized teacher forcing, Hess et al. 2023).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layers import ALRNNCell, ProbePoint, autocast_off

from ._inputs import check_dtype, is_int
from ._registry import Paper, register_model

PAPER = Paper(family="alrnn", title="Almost-Linear RNNs Yield Highly Interpretable Symbolic Codes in Dynamical "
              "Systems Reconstruction", arxiv="2410.14240", authors="Brenner, Hemmer, Monfared, Durstewitz", year=2024)


@dataclass
class ALRNNConfig:
    M: int = 20  # latent units
    P: int = 2   # piecewise-linear (ReLU) units among them
    N: int = 3   # observed dimensions, read out from the first N latent units


class ALRNN(nn.Module):
    """Latent AL-RNN with identity observation model. Probe point ``z``: latent states, (B, T - 1, M) in ``forward``
    (the teacher-forced states after z_1) and (B, steps, M) in ``generate`` (z_1 included)."""

    def __init__(self, config: ALRNNConfig):
        super().__init__()
        if not 0 < config.N <= config.M:
            raise ValueError(f"ALRNN needs 0 < N <= M, got N={config.N}, M={config.M}")
        self.config = config
        self.cell = ALRNNCell(config.M, config.P)
        self.L = nn.Parameter(nn.init.xavier_uniform_(torch.empty(config.M - config.N, config.N)))
        self.z = ProbePoint()

    def _check(self, x: torch.Tensor, name: str, dims: tuple[int, ...] = (3,),
               shape: str = "(batch, time, N={N})") -> None:
        if x.dim() not in dims or x.shape[-1] != self.config.N:
            raise ValueError(f"ALRNN: {name} must have shape {shape.format(N=self.config.N)}, got {tuple(x.shape)}")
        check_dtype(x, self.L, "ALRNN", name)

    def initial_state(self, x0: torch.Tensor) -> torch.Tensor:
        """z_1 = [x_1; L x_1] for observations x0 of shape (B, N), in the parameters' dtype also under autocast (as
        the rollout that starts from it: a bf16 L x_1 moved bf16-autocast runs by 1e-4, free runs by 1e-3)."""
        with autocast_off(x0.device.type):
            return torch.cat([x0, x0 @ self.L.T], dim=-1)

    def forward(self, x: torch.Tensor, forcing_interval: int = 16, alpha: float = 1.0) -> torch.Tensor:
        """Teacher-forced one-step predictions of x[:, 1:] (B, T-1, N) from observations x (B, T, N).

        After predicting step t (1-based, t >= 2), if (t - 1) % forcing_interval == 0 the state is forced:
        z[:N] <- alpha x_t + (1 - alpha) z[:N]. The prediction itself is always the unforced one.
        """
        self._check(x, "x")
        if x.shape[1] < 1:
            raise ValueError(f"ALRNN: x needs at least one time step (the first is the initial state), got {tuple(x.shape)}")
        if not is_int(forcing_interval) or forcing_interval < 1 or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"forcing_interval must be an integer >= 1 and alpha a number in [0, 1], got "
                             f"{forcing_interval!r}, {alpha!r}")  # 2.5 forced every 5 steps
        forced = [t % forcing_interval == 0 for t in range(1, x.shape[1])]
        states = self.cell.forced_rollout(self.initial_state(x[:, 0]), x[:, 1:], forced, alpha)
        return self.z(states)[..., : self.config.N]

    @torch.no_grad()
    def generate(self, x0: torch.Tensor, steps: int, return_latents: bool = False):
        """Free-running trajectory of ``steps`` observations starting at x0 (B, N) (x0 itself is the first row)."""
        self._check(x0, "x0 of generate", (2,), "(batch, N={N})")
        if not is_int(steps) or steps < 1:
            raise ValueError(f"ALRNN.generate: steps must be an integer >= 1, got {steps!r}")
        z = self.initial_state(x0)
        out = torch.empty(x0.shape[0], steps, self.config.M, device=x0.device, dtype=z.dtype)
        out[:, 0] = z
        step = self.cell.step_function()
        with autocast_off(x0.device.type):  # the map in the parameters' dtype, as the training rollout
            for t in range(1, steps):
                z = step(z)
                out[:, t] = z
        out = self.z(out)
        return (out[..., : self.config.N], out) if return_latents else out[..., : self.config.N]

    @torch.no_grad()
    def n_step_prediction(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """From every x_t of x (T, N) or (B, T, N) run n free steps; returns the predictions of x_{t+n},
        shape (T - n, N) or (B, T - n, N)."""
        self._check(x, "x of n_step_prediction", (2, 3), "(time, N={N}) or (batch, time, N={N})")
        if not is_int(n) or not 0 <= n < x.shape[-2]:
            raise ValueError(f"ALRNN.n_step_prediction: n must be an integer in [0, T-1] = [0, {x.shape[-2] - 1}], "
                             f"got {n!r}")
        z0 = self.initial_state(x[..., :x.shape[-2] - n, :])
        z, step = z0.reshape(-1, self.config.M), self.cell.step_function()
        with autocast_off(x.device.type):
            for _ in range(n):
                z = step(z)
        return z.view(z0.shape)[..., : self.config.N]

    def symbolic_code(self, z: torch.Tensor) -> torch.Tensor:
        """The linear subregion visited at each state of a latent trajectory z (..., M): the AL-RNN's symbolic code."""
        return self.cell.subregion(z)


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: ALRNN) -> dict[str, torch.Tensor]:
    """Map the authors' PyTorch tutorial layout (DurstewitzLab/ALRNN-DSR, ``alrnn_python``) onto ours.

    Theirs: ``A`` (M,), ``W`` (M, M), ``h`` (M,) with the same recursion, and ``B`` (N, M), whose initial state
    is z_1 = x_1 B with the first N units then set to x_1; so our L = B[:, N:]^T. Our own keys pass through.
    """
    if "B" not in state:
        return state
    N = model.config.N
    B = state["B"]
    if B.dim() != 2 or B.shape[0] != N:
        raise ValueError(f"ALRNN checkpoint: B must be (N={N}, M), got {tuple(B.shape)}")
    rest = {k: v for k, v in state.items() if k not in ("A", "W", "h", "B")}
    return rest | {"cell.A": state["A"], "cell.W": state["W"], "cell.h": state["h"], "L": B[:, N:].T.contiguous()}


@register_model(ALRNNConfig(M=20, P=2, N=3), PAPER)
def alrnn_m20_p2(config: ALRNNConfig) -> ALRNN:
    """The paper's Lorenz-63 model: 20 latent units, 2 ReLUs (minimal PWL representation: 3 subregions)."""
    return ALRNN(config)


@register_model(ALRNNConfig(M=20, P=1, N=3), PAPER)
def alrnn_m20_p1(config: ALRNNConfig) -> ALRNN:
    """The paper's Roessler model: 20 latent units, 1 ReLU (2 subregions)."""
    return ALRNN(config)
