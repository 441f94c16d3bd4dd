"""The information-plane MLP of Shwartz-Ziv & Tishby (2017): 12-10-7-5-4-3-2, tanh (or ReLU, for the contrast
of Saxe et al. 2018) hidden layers and a 2-way softmax output, on the 12-bit task (train/data/ib12bit.py).

Probe points ``t.0`` ... ``t.5``: every layer's output T_l (hidden activations, then the softmax
probabilities), what the information plane reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layers import ProbePoint

from ._inputs import check_dtype
from ._registry import Paper, register_model

PAPER = Paper(family="ib_mlp", title="Opening the Black Box of Deep Neural Networks via Information",
              arxiv="1703.00810", authors="Shwartz-Ziv, Tishby", year=2017)
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


@dataclass
class IBMLPConfig:
    widths: tuple[int, ...] = (12, 10, 7, 5, 4, 3, 2)  # input, hidden..., classes
    activation: str = "tanh"


class IBMLP(nn.Module):
    """Fully connected network; returns class logits (B, widths[-1]) for inputs (B, widths[0])."""

    def __init__(self, config: IBMLPConfig):
        super().__init__()
        widths = tuple(config.widths)
        if len(widths) < 2 or any(int(w) < 1 for w in widths):
            raise ValueError(f"IBMLP: widths must be >= 2 positive layer sizes, got {config.widths!r}")
        if config.activation not in ACTIVATIONS:
            raise ValueError(f"IBMLP: activation must be one of {list(ACTIVATIONS)}, got {config.activation!r}")
        self.config = config
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.acts = nn.ModuleList(ACTIVATIONS[config.activation]() for _ in widths[1:-1])
        self.t = nn.ModuleList(ProbePoint() for _ in widths[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.widths[0] or not x.is_floating_point():
            raise ValueError(f"IBMLP: x must be a floating tensor of shape (batch, {self.config.widths[0]}) (bits as "
                             f"x.float()), got {x.dtype} {tuple(x.shape)}")
        check_dtype(x, self.linears[0].weight, "IBMLP")
        for linear, act, probe in zip(self.linears, self.acts, self.t):
            x = probe(act(linear(x)))
        logits = self.linears[-1](x)
        self.t[-1](logits.softmax(-1))
        return logits


@register_model(IBMLPConfig(activation="tanh"), PAPER)
def ib_mlp_tanh(config: IBMLPConfig) -> IBMLP:
    """The paper's network: 12-10-7-5-4-3-2 with tanh hidden units (shows the compression phase)."""
    return IBMLP(config)


@register_model(IBMLPConfig(activation="relu"), PAPER)
def ib_mlp_relu(config: IBMLPConfig) -> IBMLP:
    """The same with ReLU hidden units (Saxe et al. 2018: no compression under equal-width binning)."""
    return IBMLP(config)
