"""One level of PV-RNN, the predictive-coding-inspired variational RNN (Ahmadi and Tani, Neural Computation 2019,
arXiv 1811.01339): an MTRNN layer with deterministic units d and stochastic latent units z."""
from __future__ import annotations

import math

import torch
from torch import nn

from .probe_point import ProbePoint


def gaussian_kl(mu_q: torch.Tensor, log_sigma_q: torch.Tensor, mu_p: torch.Tensor, log_sigma_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) per unit, in nats, from the log-sigmas (PV-RNN's parametrisation):
    log sigma_p - log sigma_q + ((sigma_q^2 + (mu_q - mu_p)^2) / sigma_p^2 - 1) / 2."""
    ratio = torch.exp(2 * (log_sigma_q - log_sigma_p)) + (mu_q - mu_p).square() * torch.exp(-2 * log_sigma_p)
    return log_sigma_p - log_sigma_q + 0.5 * (ratio - 1)


class PVRNNLayer(nn.Module):
    """PV-RNN level k with ``d_size`` deterministic units, ``z_size`` latent units and time constant ``tau``.

    Leaky integration (the paper's generative model, section 2):
        h_t = (1 - 1/tau) h_{t-1} + (1/tau) (W_dd d_{t-1} + W_zd z_t + W_top d_t^{k+1} [+ W_bottom d_{t-1}^{k-1}]),
        d_t = tanh(h_t).
    The top-down input d_t^{k+1} comes from the level above at the same step (computed first); the bottom-up
    input d_{t-1}^{k-1} from the level below at the previous step is optional (``bottom_size`` > 0), the 2019
    paper's generative model being top-down only. W_dd carries the recurrent bias.
    Prior:      mu^p_t = tanh(W_mu d_{t-1} + b_mu), sigma^p_t = exp(W_sigma d_{t-1} + b_sigma); at t = 1, N(0, I).
    Posterior:  mu^q_t = tanh(A^mu_t), sigma^q_t = exp(A^sigma_t) from adaptive vectors (held by the model).
    Sampling:   z_t = mu + sigma * eps, eps ~ N(0, I) (reparametrised).
    Probe points (the model passes whole sequences (B, T, .) through them): d, z, prior_mu, prior_sigma,
    post_mu, post_sigma and kl (per step, summed over the layer's z units, nats).
    """

    def __init__(self, d_size: int, z_size: int, tau: float, top_size: int = 0, bottom_size: int = 0):
        super().__init__()
        if d_size < 1 or z_size < 1 or not (math.isfinite(tau) and tau >= 1) or top_size < 0 or bottom_size < 0:
            raise ValueError(f"PVRNNLayer needs d_size >= 1, z_size >= 1, tau >= 1, top/bottom sizes >= 0, got "
                             f"d_size={d_size}, z_size={z_size}, tau={tau}, top_size={top_size}, bottom_size={bottom_size}")
        self.d_size, self.z_size, self.tau = d_size, z_size, float(tau)
        self.top_size, self.bottom_size = top_size, bottom_size
        self.W_dd = nn.Linear(d_size, d_size)
        self.W_zd = nn.Linear(z_size, d_size, bias=False)
        self.W_top = nn.Linear(top_size, d_size, bias=False) if top_size else None
        self.W_bottom = nn.Linear(bottom_size, d_size, bias=False) if bottom_size else None
        self.W_mu = nn.Linear(d_size, z_size)
        self.W_sigma = nn.Linear(d_size, z_size)
        for name in ("d", "z", "prior_mu", "prior_sigma", "post_mu", "post_sigma", "kl"):
            setattr(self, name, ProbePoint())

    def prior(self, d_prev: torch.Tensor, first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu^p_t, sigma^p_t) from d_{t-1} (..., d_size); the unit Gaussian when ``first``."""
        if first:
            shape = d_prev.shape[:-1] + (self.z_size,)
            return d_prev.new_zeros(shape), d_prev.new_ones(shape)
        return torch.tanh(self.W_mu(d_prev)), torch.exp(self.W_sigma(d_prev))

    @staticmethod
    def posterior(a_mu: torch.Tensor, a_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu^q_t, sigma^q_t) = (tanh(A^mu_t), exp(A^sigma_t))."""
        return torch.tanh(a_mu), torch.exp(a_sigma)

    def step(self, h_prev: torch.Tensor, d_prev: torch.Tensor, z: torch.Tensor, top: torch.Tensor | None = None,
             bottom: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One leaky-integration step; returns (h_t, d_t), each (B, d_size)."""
        if z.shape[-1] != self.z_size:
            raise ValueError(f"PVRNNLayer.step: expected z (B, {self.z_size}), got {tuple(z.shape)}")
        return self.integrate(h_prev, d_prev, self.W_zd(z), top, bottom)

    def integrate(self, h_prev: torch.Tensor, d_prev: torch.Tensor, z_drive: torch.Tensor,
                  top: torch.Tensor | None = None, bottom: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``step`` with the latent drive W_zd z_t given (precomputed for a whole sequence when z does not depend
        on the state, as under the posterior)."""
        if d_prev.shape[-1] != self.d_size:
            raise ValueError(f"PVRNNLayer: expected d_prev (B, {self.d_size}), got {tuple(d_prev.shape)}")
        drive = self.W_dd(d_prev) + z_drive
        if self.W_top is not None:
            if top is None:
                raise ValueError("PVRNNLayer: this layer has top-down connections; pass top=d_t of the level above")
            drive = drive + self.W_top(top)
        if self.W_bottom is not None:
            if bottom is None:
                raise ValueError("PVRNNLayer: this layer has bottom-up connections; pass bottom=d_{t-1} of the level below")
            drive = drive + self.W_bottom(bottom)
        h = torch.lerp(h_prev, drive, 1.0 / self.tau)  # (1 - 1/tau) h_prev + drive / tau
        return h, torch.tanh(h)
