"""The Almost-Linear RNN cell (Brenner et al., NeurIPS 2024, arXiv 2410.14240)."""
from __future__ import annotations

import torch
from torch import nn


class ALRNNCell(nn.Module):
    """z_t = A z_{t-1} + W phi*(z_{t-1}) + h, with A diagonal and
    phi*(z) = (z_1, ..., z_{M-P}, max(0, z_{M-P+1}), ..., max(0, z_M)): only the last P units are ReLUs.

    Initialisation as the authors': A = diag(K) / max|eig(K)| with K = R^T R / M + I, R ~ N(0, 1);
    W ~ 0.01 N(0, 1); h = 0. Within one linear subregion (fixed sign pattern d of the last P units)
    the map is affine with Jacobian diag(A) + W diag(1, ..., 1, d).
    """

    def __init__(self, M: int, P: int):
        super().__init__()
        if not 0 <= P <= M:
            raise ValueError(f"ALRNNCell needs 0 <= P <= M, got M={M}, P={P}")
        self.M, self.P = M, P
        R = torch.randn(M, M)
        K = R.T @ R / M + torch.eye(M)
        self.A = nn.Parameter(torch.diagonal(K) / torch.linalg.eigvalsh(K).abs().max())
        self.W = nn.Parameter(0.01 * torch.randn(M, M))
        self.h = nn.Parameter(torch.zeros(M))
        # phi*(z) = max(z, floor): floor is -inf on the linear units and 0 on the ReLU units (one fused op)
        floor = torch.full((M,), float("-inf"))
        floor[M - P:] = 0.0
        self.register_buffer("floor", floor, persistent=False)

    def phi_star(self, z: torch.Tensor) -> torch.Tensor:
        """Identity on the first M-P units, ReLU on the last P."""
        return torch.maximum(z, self.floor)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.shape[-1] != self.M:
            raise ValueError(f"ALRNNCell: z must have last dim M={self.M}, got shape {tuple(z.shape)}")
        if z.dim() == 2:
            return torch.addmm(torch.addcmul(self.h, self.A, z), self.phi_star(z), self.W.T)
        return torch.addcmul(self.h, self.A, z) + self.phi_star(z) @ self.W.T

    def subregion(self, z: torch.Tensor) -> torch.Tensor:
        """Symbol of the linear subregion: the sign pattern of the P ReLU units as an integer sum_i [z_{M-P+i} > 0] 2^i."""
        bits = (z[..., self.M - self.P:] > 0).long()
        return (bits * (2 ** torch.arange(self.P, device=z.device))).sum(-1)
