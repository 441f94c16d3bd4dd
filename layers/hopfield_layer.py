"""HopfieldLayer: Hopfield retrieval from learned stored patterns (a learned lookup table; Ramsauer et al., 2021)."""
from __future__ import annotations

import torch
from torch import nn

from .hopfield import Hopfield


class HopfieldLayer(nn.Module):
    """Z = softmax(beta LN(R) W_Q W_K^T LN(Y)^T) LN(Y) W_V (Eq. 12, "HopfieldLayer", with W_V mapping Y directly as
    in hflayers; the LayerNorms are ``Hopfield``'s, on by default) with Y = ``lookup_weights`` learned:
    each input R (batch, length, input_size), the state pattern, retrieves from ``quantity`` learned stored
    patterns; the pattern projection is Y itself or, with ``lookup_weights_as_separated``, separate
    ``target_weights``. Returns (batch, length, output_size).

    Keys: ``hopfield.*`` (see ``Hopfield``), ``lookup_weights`` and optionally ``target_weights``, each
    (1, quantity, width), or (quantity, 1, width) when not batch_first, initialised N(0, 0.02) as in hflayers.
    Other keyword arguments go to ``Hopfield``.
    """

    def __init__(self, input_size: int, *, quantity: int = 1, trainable: bool = True,
                 lookup_weights_as_separated: bool = False, lookup_targets_as_trainable: bool = True,
                 **hopfield_kwargs):
        super().__init__()
        if quantity < 1:
            raise ValueError(f"HopfieldLayer: quantity must be >= 1, got {quantity}")
        self.hopfield = Hopfield(input_size=input_size, **hopfield_kwargs)
        self.quantity = quantity
        _, size, target = self.hopfield.input_widths  # the stored patterns' and the pattern projection's widths
        size = size or input_size  # all patterns static, no projection: the lookup patterns meet R as they are
        lead = (1, quantity) if self.hopfield.batch_first else (quantity, 1)
        self.lookup_weights = nn.Parameter(torch.empty(*lead, size), requires_grad=trainable)
        nn.init.normal_(self.lookup_weights, mean=0.0, std=0.02)
        self.target_weights = None
        if lookup_weights_as_separated:
            target = target or size
            self.target_weights = nn.Parameter(torch.empty(*lead, target), requires_grad=lookup_targets_as_trainable)
            nn.init.normal_(self.target_weights, mean=0.0, std=0.02)
        elif target is not None and target != size:
            raise ValueError(f"HopfieldLayer: the lookup weights ({size} wide) are also the pattern projection, which "
                             f"this layer takes {target} wide; give pattern_projection_size={size} or "
                             "lookup_weights_as_separated=True (separate targets)")

    def _prepare(self, input: torch.Tensor):
        if not torch.is_tensor(input) or input.dim() != 3:
            raise ValueError(f"HopfieldLayer: input must be a tensor (batch, length, features), got "
                             f"{tuple(input.shape) if torch.is_tensor(input) else type(input).__name__}")
        batch_first = self.hopfield.batch_first
        expand = (input.shape[0], -1, -1) if batch_first else (-1, input.shape[1], -1)
        stored = self.lookup_weights.expand(*expand)
        projection = stored if self.target_weights is None else self.target_weights.expand(*expand)
        return stored, input, projection

    def forward(self, input: torch.Tensor, stored_pattern_padding_mask: torch.Tensor | None = None,
                association_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.hopfield(self._prepare(input), stored_pattern_padding_mask, association_mask)

    def get_association_matrix(self, input: torch.Tensor, stored_pattern_padding_mask: torch.Tensor | None = None,
                               association_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Association of each input with the learned patterns, shape (batch, heads, length, quantity)."""
        return self.hopfield.get_association_matrix(self._prepare(input), stored_pattern_padding_mask, association_mask)
