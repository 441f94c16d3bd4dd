"""Hopfield: the modern Hopfield layer of Ramsauer et al. (ICLR 2021), state-dict compatible with hflayers."""
from __future__ import annotations

import torch
from torch import nn

from .hopfield_core import HopfieldCore


def _norm(on: bool, affine: bool, eps: float, size: int | None, what: str) -> nn.LayerNorm | None:
    if affine and not on:
        raise ValueError(f"Hopfield: normalize_{what}_affine=True needs normalize_{what}=True")
    if not on:
        return None
    if size is None:
        raise ValueError(f"Hopfield: normalize_{what}=True needs the {what} size (input_size or the matching *_size)")
    return nn.LayerNorm(size, eps=eps, elementwise_affine=affine)


def _apply(norm: nn.LayerNorm | None, x: torch.Tensor, what: str) -> torch.Tensor:
    if norm is None:
        return x
    if x.shape[-1] != norm.normalized_shape[0] or not x.is_floating_point():
        raise ValueError(f"Hopfield: the {what} must be a floating tensor with {norm.normalized_shape[0]} features, "
                         f"got {x.dtype} {tuple(x.shape)}")
    return norm(x)


def _from_core(name: str, doc: str | None = None) -> property:
    """A read-only attribute of ``Hopfield`` that reads its ``association_core``'s ``name``."""
    return property(lambda self: getattr(self.association_core, name), doc=doc or f"The core's ``{name}``.")


class Hopfield(nn.Module):
    """Z = softmax(beta R W_Q W_K^T Y^T) Y W_V, after optional LayerNorms of the stored patterns Y, the state
    patterns R and the pattern projection, and an output projection; see ``HopfieldCore`` for the update
    iteration, heads, masks and static patterns. beta defaults to 1/sqrt(head dim) (to 1 when every pattern is
    static and nothing is projected: there is no head dim). W_V maps the pattern
    projection directly, as hflayers does by default; ``pattern_projection_as_connected=True`` gives the paper's
    Eq. 10 as written, Z = softmax(beta R W_Q W_K^T Y^T) Y W_K W_V (the pattern projection goes through W_K, b_K
    first; W_V is then (H * hidden, H * hidden), hflayers' layout for that flag).

    ``forward(input)`` takes one tensor (stored = state = projection: Hopfield self-association) or the
    tuple (stored_pattern, state_pattern, pattern_projection), each (batch, length, features) when
    ``batch_first`` (else length first). The output is (batch, state length, output_size).

    State-dict layout = hflayers' ``Hopfield``: ``association_core.{in_proj_weight, in_proj_bias,
    out_proj.weight, out_proj.bias}`` (or ``{q,k,v}_proj_weight``), ``norm_stored_pattern.*``,
    ``norm_state_pattern.*``, ``norm_pattern_projection.*``. ``Hopfield(input_size=64)`` has 17,024
    parameters. Not implemented from hflayers: normalize_hopfield_space,
    association_activation, concat_bias_pattern, add_zero_association, per-head update_steps tensors.
    """

    def __init__(self, input_size: int | None = None, hidden_size: int | None = None, output_size: int | None = None,
                 pattern_size: int | None = None, num_heads: int = 1, scaling: float | torch.Tensor | None = None,
                 update_steps_max: int | None = 0, update_steps_eps: float = 1e-4,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_stored_pattern_eps: float = 1e-5,
                 normalize_state_pattern: bool = True, normalize_state_pattern_affine: bool = True,
                 normalize_state_pattern_eps: float = 1e-5,
                 normalize_pattern_projection: bool = True, normalize_pattern_projection_affine: bool = True,
                 normalize_pattern_projection_eps: float = 1e-5,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False, stored_pattern_size: int | None = None,
                 pattern_projection_size: int | None = None, batch_first: bool = True, dropout: float = 0.0,
                 input_bias: bool = True, disable_out_projection: bool = False,
                 pattern_projection_as_connected: bool = False):
        super().__init__()
        if not isinstance(batch_first, bool):
            raise TypeError(f"Hopfield: batch_first must be a bool, got {batch_first!r}")
        self.association_core = HopfieldCore(
            input_size, num_heads=num_heads, head_dim=hidden_size, pattern_dim=pattern_size,
            kdim=stored_pattern_size, vdim=pattern_projection_size, out_dim=output_size, bias=input_bias,
            dropout=dropout, query_as_static=state_pattern_as_static, key_as_static=stored_pattern_as_static,
            value_as_static=pattern_projection_as_static, disable_out_projection=disable_out_projection,
            scaling=scaling, update_steps_max=update_steps_max, update_steps_eps=update_steps_eps,
            value_as_connected=pattern_projection_as_connected)
        # each LayerNorm is as wide as the core takes its pattern: a static pattern skips its W and enters at the
        # hidden width (hflayers sizes it by input_size, which fails unless the two agree); where all patterns are
        # static and nothing is projected, the sizes given
        state_width, stored_width, projection_width = self.association_core.input_widths
        self.norm_stored_pattern = _norm(normalize_stored_pattern, normalize_stored_pattern_affine,
                                         normalize_stored_pattern_eps,
                                         stored_width or stored_pattern_size or input_size, "stored_pattern")
        self.norm_state_pattern = _norm(normalize_state_pattern, normalize_state_pattern_affine,
                                        normalize_state_pattern_eps, state_width or input_size, "state_pattern")
        self.norm_pattern_projection = _norm(normalize_pattern_projection, normalize_pattern_projection_affine,
                                             normalize_pattern_projection_eps,
                                             projection_width or pattern_projection_size or input_size,
                                             "pattern_projection")
        self.batch_first = batch_first

    # hflayers' read-only settings, from the core that holds them (None where all patterns are static)
    input_size = _from_core("embed_dim")
    hidden_size = _from_core("head_dim")
    output_size = _from_core("out_dim")
    pattern_size = _from_core("pattern_dim")
    scaling = _from_core("scaling", "beta: a number, or one per head.")
    update_steps_max = _from_core("update_steps_max")
    update_steps_eps = _from_core("update_steps_eps")
    stored_pattern_dim = _from_core("kdim")
    input_widths = _from_core("input_widths", "The widths the state, stored and projection patterns must have.")

    def _prepare(self, input) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.is_tensor(input):
            stored = state = projection = input
        elif isinstance(input, (tuple, list)) and len(input) == 3:
            stored, state, projection = input
        else:
            raise TypeError("Hopfield: input must be one tensor or the tuple (stored_pattern, state_pattern, "
                            f"pattern_projection), got {type(input).__name__}"
                            + (f" of length {len(input)}" if isinstance(input, (tuple, list)) else ""))
        if not self.batch_first:
            stored, state, projection = (t.transpose(0, 1) for t in (stored, state, projection))
        stored = _apply(self.norm_stored_pattern, stored, "stored pattern")
        state = _apply(self.norm_state_pattern, state, "state pattern")
        projection = _apply(self.norm_pattern_projection, projection, "pattern projection")
        return stored, state, projection

    def forward(self, input, stored_pattern_padding_mask: torch.Tensor | None = None,
                association_mask: torch.Tensor | None = None) -> torch.Tensor:
        stored, state, projection = self._prepare(input)
        out, _ = self.association_core(state, stored, projection, stored_pattern_padding_mask, association_mask)
        return out if self.batch_first else out.transpose(0, 1)

    @torch.no_grad()
    def get_association_matrix(self, input, stored_pattern_padding_mask: torch.Tensor | None = None,
                               association_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The (final) association matrix softmax(beta Q K^T), shape (batch, heads, state length, stored length)."""
        stored, state, projection = self._prepare(input)
        return self.association_core(state, stored, projection, stored_pattern_padding_mask, association_mask,
                                     need_association=True)[1]
