"""Modern Hopfield networks as layers: Hopfield Networks is All You Need (Ramsauer et al., ICLR 2021).

``hopfield_mil``: attention-based multiple-instance learning; an instance embedding (fully connected
layers with ReLU and dropout) followed by ``HopfieldPooling`` over the instances of a bag and a linear
bag classifier, the architecture of the paper's MIL experiments (Tiger, Fox, Elephant, UCSB).
``hopfield_tabular``: a classifier for small tabular sets (the paper's UCI experiments): the embedded
sample is the state pattern that retrieves from learned stored patterns (``HopfieldLayer``).
``tabular_logreg`` and ``tabular_mlp`` are the baselines trained by the same loop and recipes.
Probe points: the Hopfield association matrices, ``*.association_core.association`` (B, H, L, S).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from layers import HopfieldLayer, HopfieldPooling

from ._inputs import check_dtype, check_sizes
from ._registry import Paper, register_model

PAPER = Paper(family="hopfield", title="Hopfield Networks is All You Need", arxiv="2008.02217",
              authors="Ramsauer, Schaefl, Lehner, Seidl, Widrich, Adler, Gruber, Holzleitner, Pavlovic, Sandve, "
                      "Greiff, Kreil, Kopp, Klambauer, Brandstetter, Hochreiter", year=2021)


def _mlp(in_features: int, widths, dropout: float) -> nn.Sequential:
    dims = [in_features, *widths]
    return nn.Sequential(*[m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout))])


@dataclass
class HopfieldMILConfig:
    in_features: int = 64          # instance feature size (230 for Tiger/Fox/Elephant)
    embed_dims: tuple[int, ...] = (64, 64)   # widths of the instance-embedding layers
    hidden_size: int = 32          # association (Hopfield space) size per head
    num_heads: int = 4
    scaling: float | None = None   # beta; None = 1/sqrt(hidden_size)
    quantity: int = 1              # learned state patterns (queries) of the pooling
    dropout: float = 0.1           # on the embedding and on the association matrix


class HopfieldMIL(nn.Module):
    """Bag logits from instances: x (B, S, in_features) with padding mask (B, S) (True = no instance)."""

    def __init__(self, config: HopfieldMILConfig):
        super().__init__()
        if not config.embed_dims:
            raise ValueError("HopfieldMIL: embed_dims needs at least one layer width")
        check_sizes(config, "in_features", "embed_dims", "hidden_size", "num_heads", "quantity")
        self.config = config
        width = config.embed_dims[-1]
        self.embed = _mlp(config.in_features, config.embed_dims, config.dropout)
        self.pooling = HopfieldPooling(width, quantity=config.quantity, hidden_size=config.hidden_size,
                                       num_heads=config.num_heads, scaling=config.scaling, dropout=config.dropout)
        self.head = nn.Linear(config.quantity * width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.config.in_features or x.shape[1] == 0 or not x.is_floating_point():
            raise ValueError(f"HopfieldMIL: x must be a floating tensor of shape (bags, instances >= 1, "
                             f"{self.config.in_features}), got {x.dtype} {tuple(x.shape)}")
        check_dtype(x, self.head.weight, "HopfieldMIL")
        if mask is not None and mask.dtype != torch.bool:
            raise TypeError(f"HopfieldMIL: mask must be a bool tensor (True = padded instance), got {mask.dtype}; "
                            "a 0/1 mask as mask.bool()")
        empty = mask.all(-1) if mask is not None and mask.shape == x.shape[:2] else None
        if empty is not None and empty.any():
            raise ValueError(f"HopfieldMIL: bags {empty.nonzero().flatten().tolist()} have every instance "
                             "padded; a bag needs at least one instance")
        return self.head(self.pooling(self.embed(x), stored_pattern_padding_mask=mask)).squeeze(-1)


@dataclass
class HopfieldTabularConfig:
    in_features: int = 30
    num_classes: int = 2
    embed_dim: int = 32     # the state pattern: the sample after one linear layer
    quantity: int = 32      # learned stored patterns
    num_heads: int = 4
    scaling: float | None = None
    dropout: float = 0.1


class HopfieldTabular(nn.Module):
    """Class logits (B, num_classes) from samples x (B, in_features)."""

    def __init__(self, config: HopfieldTabularConfig):
        super().__init__()
        check_sizes(config, "in_features", "num_classes", "embed_dim", "quantity", "num_heads")
        if config.embed_dim % config.num_heads:  # the layer's own message names its hflayers arguments
            raise ValueError(f"hopfield_tabular: embed_dim={config.embed_dim} must be divisible by num_heads="
                             f"{config.num_heads} (each head takes embed_dim / num_heads)")
        self.config = config
        self.embed = nn.Sequential(nn.Linear(config.in_features, config.embed_dim), nn.Dropout(config.dropout))
        self.lookup = HopfieldLayer(config.embed_dim, quantity=config.quantity, num_heads=config.num_heads,
                                    scaling=config.scaling, dropout=config.dropout)
        self.head = nn.Linear(config.embed_dim, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] != self.config.in_features or not x.is_floating_point():
            raise ValueError(f"HopfieldTabular: x must be a floating tensor of shape (batch, "
                             f"{self.config.in_features}), got {x.dtype} {tuple(x.shape)}")
        check_dtype(x, self.head.weight, "HopfieldTabular")
        return self.head(self.lookup(self.embed(x).unsqueeze(1)).squeeze(1))


@dataclass
class TabularBaselineConfig:
    in_features: int = 30
    num_classes: int = 2
    hidden: tuple[int, ...] = ()      # hidden widths; () = logistic regression
    dropout: float = 0.1


class TabularBaseline(nn.Module):
    """Logistic regression (no hidden layer) or an MLP with ReLU and dropout: logits (B, num_classes)."""

    def __init__(self, config: TabularBaselineConfig):
        super().__init__()
        check_sizes(config, "in_features", "num_classes", "hidden")
        self.config = config
        width = config.hidden[-1] if config.hidden else config.in_features
        self.net = nn.Sequential(_mlp(config.in_features, config.hidden, config.dropout),
                                 nn.Linear(width, config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[-1] != self.config.in_features or not x.is_floating_point():
            raise ValueError(f"TabularBaseline: x must be a floating tensor of shape (batch, "
                             f"{self.config.in_features}), got {x.dtype} {tuple(x.shape)}")
        check_dtype(x, next(self.net.parameters()), "TabularBaseline")
        return self.net(x)


@register_model(HopfieldMILConfig(), PAPER)
def hopfield_mil(config: HopfieldMILConfig) -> HopfieldMIL:
    """Instance MLP + HopfieldPooling + linear bag classifier (the paper's MIL architecture)."""
    return HopfieldMIL(config)


@register_model(HopfieldTabularConfig(), PAPER)
def hopfield_tabular(config: HopfieldTabularConfig) -> HopfieldTabular:
    """Linear embedding + HopfieldLayer over learned stored patterns + linear classifier (the paper's UCI setup)."""
    return HopfieldTabular(config)


@register_model(TabularBaselineConfig(hidden=()), PAPER)
def tabular_logreg(config: TabularBaselineConfig) -> TabularBaseline:
    """Baseline: multinomial logistic regression."""
    return TabularBaseline(config)


@register_model(TabularBaselineConfig(hidden=(64, 64)), PAPER)
def tabular_mlp(config: TabularBaselineConfig) -> TabularBaseline:
    """Baseline: two hidden ReLU layers of 64 units."""
    return TabularBaseline(config)
