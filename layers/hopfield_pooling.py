"""HopfieldPooling: Hopfield retrieval with learned state patterns (queries) that pool a set (Ramsauer et al., 2021)."""
from __future__ import annotations

import torch
from torch import nn

from .hopfield import Hopfield


class HopfieldPooling(nn.Module):
    """Z = softmax(beta LN(Q) W_Q W_K^T LN(Y)^T) LN(Y) W_V (Eq. 11, "HopfieldPooling", which folds W_Q into the
    learned Q; as in hflayers the state pattern Q = ``pooling_weights`` still passes the state-pattern LayerNorm and
    W_Q, and W_V maps Y directly; the LayerNorms are ``Hopfield``'s, on by default):
    ``quantity`` learned state patterns retrieve from the stored patterns Y of each set.

    ``forward(input)`` takes Y (batch, length, features) (used as stored pattern and pattern projection)
    or the tuple (stored_pattern, pattern_projection); ``stored_pattern_padding_mask`` (batch, length)
    marks padded instances. Returns (batch, quantity * output_size) whatever ``batch_first`` is (hflayers
    flattens a length-first output from dim 1 instead). Keys: ``hopfield.*`` (see ``Hopfield``) and
    ``pooling_weights`` of shape (1, quantity, size) (``(quantity, 1, size)`` when not batch_first),
    initialised N(0, 0.02). Other keyword arguments go to ``Hopfield``.
    """

    def __init__(self, input_size: int, *, quantity: int = 1, trainable: bool = True, **hopfield_kwargs):
        super().__init__()
        if quantity < 1:
            raise ValueError(f"HopfieldPooling: quantity must be >= 1, got {quantity}")
        self.hopfield = Hopfield(input_size=input_size, **hopfield_kwargs)
        self.quantity = quantity
        size = self.hopfield.input_widths[0] or input_size  # None: all static, nothing projected
        shape = (1, quantity, size) if self.hopfield.batch_first else (quantity, 1, size)
        self.pooling_weights = nn.Parameter(torch.empty(shape), requires_grad=trainable)
        nn.init.normal_(self.pooling_weights, mean=0.0, std=0.02)

    def _prepare(self, input):
        if torch.is_tensor(input):
            stored = projection = input
        elif isinstance(input, (tuple, list)) and len(input) == 2:
            stored, projection = input
        else:
            raise TypeError("HopfieldPooling: input must be one tensor or the tuple (stored_pattern, pattern_projection)")
        if self.hopfield.batch_first:
            state = self.pooling_weights.expand(stored.shape[0], -1, -1)
        else:
            state = self.pooling_weights.expand(-1, stored.shape[1], -1)
        return stored, state, projection

    def forward(self, input, stored_pattern_padding_mask: torch.Tensor | None = None,
                association_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.hopfield(self._prepare(input), stored_pattern_padding_mask, association_mask)
        return (out if self.hopfield.batch_first else out.transpose(0, 1)).flatten(start_dim=1)

    def get_association_matrix(self, input, stored_pattern_padding_mask: torch.Tensor | None = None,
                               association_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooling weights over the instances, shape (batch, heads, quantity, length)."""
        return self.hopfield.get_association_matrix(self._prepare(input), stored_pattern_padding_mask, association_mask)
