"""The modern Hopfield association (Ramsauer et al., ICLR 2021, arXiv 2008.02217): projections and update rule."""
from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .probe_point import ProbePoint


def hopfield_energy(state: torch.Tensor, stored: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. (2): E(xi) = -lse(beta, X^T xi) + 1/2 xi^T xi + 1/beta ln N + 1/2 M^2, M = max_i ||x_i||, with
    lse(beta, x) = 1/beta log sum_i exp(beta x_i).

    ``stored`` (..., N, d) holds the stored patterns x_i as rows; ``state`` is (..., d), one state pattern xi per
    stored set, or (..., L, d), L state patterns per stored set, as the layers lay them out (B, L, d) against
    (B, N, d). Returns the energy per state pattern, shape (...,) or (..., L), in the units of the squared pattern
    norm. Its minimisation by the concave-convex procedure gives the update rule xi <- X softmax(beta X^T xi).
    """
    n = stored.shape[-2]
    if n == 0:
        raise ValueError(f"hopfield_energy: no stored patterns, shape {tuple(stored.shape)}")
    big_m = stored.norm(dim=-1).amax(dim=-1)
    if state.dim() == stored.dim():  # L states per set (a (B, L, d) layout paired state[b, l] with stored[l])
        scores, big_m = state @ stored.transpose(-1, -2), big_m.unsqueeze(-1)
    elif state.dim() == stored.dim() - 1:
        scores = (stored @ state.unsqueeze(-1)).squeeze(-1)
    else:
        raise ValueError(f"hopfield_energy: state must be (..., d) or (..., L, d) for stored (..., N, d), got "
                         f"{tuple(state.shape)} and {tuple(stored.shape)}")
    lse = torch.logsumexp(beta * scores, dim=-1)
    return -lse / beta + 0.5 * (state * state).sum(-1) + math.log(n) / beta + 0.5 * big_m ** 2


UNTIL_CONVERGED_MAX = 1000  # update steps of update_steps_max=None before it gives up with a warning


class HopfieldCore(nn.Module):
    """Z = softmax(beta Q K^T) V with Q = R W_Q, K = Y W_K, V = Y W_K W_V (Eq. 10; W_V here maps Y directly,
    as in hflayers), iterated in the Hopfield space as xi <- softmax(beta xi K^T) K (Eq. 3) before the
    final retrieval.

    Patterns are batch-first: state R (B, L, embed_dim), stored Y (B, S, kdim), projection (B, S, vdim).
    ``update_steps_max=0`` is one association and runs through ``F.scaled_dot_product_attention``; ``n``
    repeats the update up to n more times, per head, until the association matrix changes by no more than
    ``update_steps_eps`` (Frobenius norm, max over the batch); ``None`` repeats until then, for at most
    ``UNTIL_CONVERGED_MAX`` steps, with a warning if it stops there (an eps below the dtype's rounding, 1e-8 in
    float32, never converged and hung). A static
    pattern enters unprojected and is shared by all heads. The association matrix (B, H, L, S) is built
    only when iterating or when a hook sits on the ``association`` probe point.

    Parameter names and shapes are hflayers' ``HopfieldCore``: ``in_proj_weight`` (rows: state, stored,
    projection; only the non-static ones) when kdim == vdim == embed_dim and no pattern_dim is given,
    else ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``; ``in_proj_bias`` with entries for the
    non-static state and stored projections plus, always, the pattern projection; ``out_proj``.
    """

    def __init__(self, embed_dim: int | None, num_heads: int = 1, head_dim: int | None = None,
                 pattern_dim: int | None = None, kdim: int | None = None, vdim: int | None = None,
                 out_dim: int | None = None, bias: bool = True, dropout: float = 0.0,
                 query_as_static: bool = False, key_as_static: bool = False, value_as_static: bool = False,
                 disable_out_projection: bool = False, scaling: float | torch.Tensor | None = None,
                 update_steps_max: int | None = 0, update_steps_eps: float = 1e-4, value_as_connected: bool = False):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"HopfieldCore: num_heads must be >= 1, got {num_heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"HopfieldCore: dropout must be in [0, 1), got {dropout}")
        if update_steps_max is not None and (not isinstance(update_steps_max, int) or update_steps_max < 0):
            raise ValueError(f"HopfieldCore: update_steps_max must be an int >= 0 or None, got {update_steps_max!r}")
        if not update_steps_eps > 0:
            raise ValueError(f"HopfieldCore: update_steps_eps must be > 0, got {update_steps_eps}")
        self.static = (query_as_static, key_as_static, value_as_static)
        self.value_as_connected = value_as_connected
        if value_as_connected and (key_as_static or value_as_static):
            raise ValueError("HopfieldCore: pattern_projection_as_connected projects the pattern projection with the "
                             "stored pattern's W_K, so neither may be static")
        self.static_execution = all(self.static) and disable_out_projection
        self.num_heads, self.dropout = num_heads, dropout
        self.update_steps_max, self.update_steps_eps = update_steps_max, update_steps_eps
        self.association = ProbePoint()
        if self.static_execution:  # nothing is projected: widths come from the inputs
            self.embed_dim = self.kdim = self.vdim = self.head_dim = self.pattern_dim = self.out_dim = None
            self.out_proj = self.in_proj_weight = self.in_proj_bias = None
            self._set_scaling(1.0 if scaling is None else scaling)
            return
        if embed_dim is None:
            raise ValueError("HopfieldCore: input_size (embed_dim) is required unless all patterns are static and "
                             "the output projection is disabled")
        if head_dim is None:
            if embed_dim % num_heads:
                raise ValueError(f"HopfieldCore: input_size={embed_dim} must be divisible by num_heads={num_heads} "
                                 "(or give hidden_size)")
            head_dim = embed_dim // num_heads
        self.embed_dim, self.kdim, self.vdim = embed_dim, kdim or embed_dim, vdim or embed_dim
        self.head_dim, self.pattern_dim = head_dim, pattern_dim or head_dim
        if value_as_connected and (self.kdim != self.vdim or self.pattern_dim != head_dim):
            raise ValueError(f"HopfieldCore: pattern_projection_as_connected needs stored and projected patterns of one "
                             f"width and pattern_size = hidden_size, got {self.kdim} and {self.vdim}, "
                             f"{self.pattern_dim} and {head_dim}")
        self.out_dim = out_dim or embed_dim
        hq, hv = num_heads * self.head_dim, num_heads * self.pattern_dim
        self._rows = (hq, hq, hv)
        same = self.kdim == embed_dim and self.vdim == embed_dim and pattern_dim is None and not value_as_connected
        non_static = [not s for s in self.static]
        if same:
            rows = sum(r for r, keep in zip(self._rows, non_static) if keep)
            self.in_proj_weight = nn.Parameter(torch.empty(rows, embed_dim)) if rows else None
        else:  # connected: W_V maps the W_K-projected pattern projection, (H * pattern_dim, H * head_dim)
            self.in_proj_weight = None
            widths = (embed_dim, self.kdim, hq if value_as_connected else self.vdim)
            for name, r, width, keep in zip("qkv", self._rows, widths, non_static):
                setattr(self, f"{name}_proj_weight", nn.Parameter(torch.empty(r, width)) if keep else None)
        n_bias = non_static[0] * hq + non_static[1] * hq + hv
        self.in_proj_bias = nn.Parameter(torch.empty(n_bias)) if bias and any(non_static) else None
        self.out_proj = None if disable_out_projection else nn.Linear(hv, self.out_dim, bias=bias)
        self._set_scaling(1.0 / math.sqrt(self.head_dim) if scaling is None else scaling)
        self.reset_parameters()

    def _set_scaling(self, scaling) -> None:
        if torch.is_tensor(scaling):
            if scaling.shape != (self.num_heads,):
                raise ValueError(f"HopfieldCore: a tensor scaling needs one entry per head, shape ({self.num_heads},), "
                                 f"got {tuple(scaling.shape)}")
            if isinstance(scaling, nn.Parameter):  # a learned beta: trained and saved with the other parameters
                self.scaling = scaling
                return
            # in the parameters' dtype (the default one, as they are made), which .to()/.double() then move with them
            self.register_buffer("scaling", scaling.detach().to(torch.get_default_dtype(), copy=True),
                                 persistent=False)
        else:
            self.scaling = float(scaling)

    def reset_parameters(self) -> None:
        """hflayers' initialisation: projection weights N(0, 0.02), biases 0."""
        for p in (self.in_proj_weight, getattr(self, "q_proj_weight", None), getattr(self, "k_proj_weight", None),
                  getattr(self, "v_proj_weight", None), None if self.out_proj is None else self.out_proj.weight):
            if p is not None:
                nn.init.normal_(p, mean=0.0, std=0.02)
        for b in (self.in_proj_bias, None if self.out_proj is None else self.out_proj.bias):
            if b is not None:
                nn.init.zeros_(b)

    @property
    def input_widths(self) -> tuple[int | None, int | None, int | None]:
        """The widths the state, stored and projection patterns must have (None: any): a projected pattern its input
        width, a static one the hidden width it is used at (head_dim; the projection pattern_dim when an output
        projection follows)."""
        static_q, static_k, static_v = self.static
        return (self.head_dim if static_q else self.embed_dim, self.head_dim if static_k else self.kdim,
                (self.pattern_dim if self.out_proj is not None else None) if static_v else self.vdim)

    def _projections(self) -> list[tuple[torch.Tensor, torch.Tensor | None] | None]:
        """(weight, bias) for state, stored and projection patterns; None where a pattern is static."""
        out, w_at, b_at = [], 0, 0
        for name, rows, static in zip("qkv", self._rows, self.static):
            if static:
                out.append(None)
                continue
            if self.in_proj_weight is not None:
                w = self.in_proj_weight[w_at:w_at + rows]
                w_at += rows
            else:
                w = getattr(self, f"{name}_proj_weight")
            b = None if self.in_proj_bias is None else self.in_proj_bias[b_at:b_at + rows]
            b_at += rows
            out.append((w, b))
        return out

    @staticmethod
    def _check(x: torch.Tensor, arg: str, width: int | None) -> None:
        if x.dim() != 3 or (width is not None and x.shape[-1] != width) or not x.is_floating_point():
            want = f"(batch, length, {width})" if width is not None else "(batch, length, features)"
            raise ValueError(f"Hopfield: {arg} must be a floating tensor of shape {want}, got {x.dtype} "
                             f"{tuple(x.shape)}")

    def _heads(self, x: torch.Tensor, proj, arg: str, width: int | None) -> torch.Tensor:
        """(B, n, width) -> (B, H, n, d): projected and split into heads, or (static) shared by every head."""
        self._check(x, arg, width)
        if proj is None:
            return x.unsqueeze(1).expand(x.shape[0], self.num_heads, *x.shape[1:])
        return self._split(F.linear(x, *proj))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, H * d) -> (B, H, n, d)."""
        return x.view(*x.shape[:2], self.num_heads, x.shape[-1] // self.num_heads).transpose(1, 2)  # -1 fails at B = 0

    def _mask(self, key_padding_mask, attn_mask, b: int, l_: int, s: int, like: torch.Tensor):
        """One mask for (B, H, L, S) scores, on ``like``'s device: bool (True = may associate), or float (added, in
        ``like``'s dtype) where either mask is float; or None.

        ``key_padding_mask`` (B, S) and ``attn_mask`` (L, S) or (B * H, L, S): a bool mask's True forbids an
        association (marks a padded stored pattern); a float mask is added to the scores (-inf forbids).
        """
        masks = []
        if attn_mask is not None:
            if attn_mask.shape == (l_, s):
                masks.append(attn_mask.view(1, 1, l_, s))
            elif attn_mask.shape == (b * self.num_heads, l_, s):
                masks.append(attn_mask.view(b, self.num_heads, l_, s))
            else:
                raise ValueError(f"Hopfield: association_mask must have shape (L, S)=({l_}, {s}) or "
                                 f"(B*H, L, S)=({b * self.num_heads}, {l_}, {s}), got {tuple(attn_mask.shape)}")
        if key_padding_mask is not None:
            if key_padding_mask.shape != (b, s) or not (key_padding_mask.dtype == torch.bool
                                                        or key_padding_mask.is_floating_point()):
                raise ValueError(f"Hopfield: stored_pattern_padding_mask must be a bool (True = padded) or float "
                                 f"(added) tensor of shape (B, S)=({b}, {s}), got {key_padding_mask.dtype} "
                                 f"{tuple(key_padding_mask.shape)}")
            masks.append(key_padding_mask.view(b, 1, 1, s))
        if not masks:
            return None
        for name, m in (("association_mask", attn_mask), ("stored_pattern_padding_mask", key_padding_mask)):
            if m is not None and m.is_floating_point() and bool(((m == 0) | (m == 1)).all() & (m == 1).any()):
                raise ValueError(f"Hopfield: {name} holds only 0 and 1 as floats; a float mask is added to the "
                                 f"scores (-inf forbids; 1 only shifts a score), so this would mask nothing: pass "
                                 f"{name}.bool() (True = forbidden)")
        masks = [m.to(like.device) for m in masks]
        if all(m.dtype == torch.bool for m in masks):
            return ~functools.reduce(torch.logical_or, masks)
        additive = [m.to(like.dtype) if m.is_floating_point() else
                    torch.zeros(m.shape, dtype=like.dtype, device=like.device).masked_fill(m, float("-inf"))
                    for m in masks]
        return functools.reduce(torch.add, additive)

    def _beta(self, like: torch.Tensor):
        return self.scaling.to(like.dtype).view(1, -1, 1, 1) if torch.is_tensor(self.scaling) else self.scaling

    def _association(self, q: torch.Tensor, k: torch.Tensor, mask) -> torch.Tensor:
        """softmax(beta xi K^T), iterated with xi <- softmax(beta xi K^T) K per head until converged."""
        beta = self._beta(q)

        def softmax(state):
            scores = (state * beta) @ k.transpose(-2, -1)
            if mask is None:
                return scores.softmax(dim=-1)
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            # a state whose stored patterns are all masked associates with nothing (zeros, as SDPA returns);
            # its scores are zeroed before the softmax, so no NaN reaches the gradient either
            empty = scores.isneginf().all(-1, keepdim=True)
            return torch.where(empty, 0.0, torch.where(empty, 0.0, scores).softmax(dim=-1))

        xi, state = softmax(q), q
        active = torch.ones(self.num_heads, dtype=torch.bool, device=q.device)
        step, limit = 0, UNTIL_CONVERGED_MAX if self.update_steps_max is None else self.update_steps_max
        while step < limit and active.any():  # no wait at 0
            keep = active.view(1, -1, 1, 1)
            state = torch.where(keep, xi @ k, state)
            new = torch.where(keep, softmax(state), xi)
            with torch.no_grad():  # a new mask: the old one is saved for torch.where's backward
                change = (new - xi).norm(dim=(2, 3))  # (B, H); a row of zeros keeps the max defined for B = 0
                active = active & (torch.cat([change, change.new_zeros(1, change.shape[1])]).amax(dim=0)
                                   > self.update_steps_eps)
            xi, step = new, step + 1
        if self.update_steps_max is None and step == limit and active.any():
            warnings.warn(f"Hopfield: update_steps_max=None stopped after {limit} updates with the association still "
                          f"changing by {float(change.amax()):.3g} > update_steps_eps={self.update_steps_eps:g}; an eps "
                          f"near {q.dtype}'s rounding is never reached: raise it", RuntimeWarning, stacklevel=3)
        return xi

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                need_association: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Retrieve for state ``query`` (B, L, E) from stored ``key`` (B, S, Ek) with projection ``value`` (B, S, Ev).

        Returns the output (B, L, out_dim) and, when ``need_association``, the association matrix (B, H, L, S).
        """
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ValueError(f"Hopfield: stored pattern {tuple(key.shape)} and pattern projection {tuple(value.shape)} "
                             f"must share (batch, length), and the state pattern {tuple(query.shape)} the batch")
        if key.dim() == 3 and key.shape[1] == 0:
            raise ValueError(f"Hopfield: no stored patterns (length 0, shape {tuple(key.shape)}): a state pattern has "
                             "nothing to associate with")
        q_width, k_width, v_width = self.input_widths
        if query is key is value and self.in_proj_weight is not None and not any(self.static):
            # self-association: one fused projection
            self._check(query, "input", self.embed_dim)
            q, k, v = (self._split(t) for t in F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, -1))
        else:
            proj = self._projections() if not self.static_execution else [None] * 3
            q = self._heads(query, proj[0], "state pattern", q_width)
            k = self._heads(key, proj[1], "stored pattern", k_width)
            if self.value_as_connected:  # V = (P W_K + b_K) W_V + b_V: the paper's Y W_K W_V when P = Y
                self._check(value, "pattern projection", v_width)
                value, v_width = F.linear(value, *proj[1]), None
            v = self._heads(value, proj[2], "pattern projection", v_width)
        if q.shape[-1] != k.shape[-1]:
            raise ValueError(f"Hopfield: state and stored patterns must meet in one space, got widths {q.shape[-1]} "
                             f"and {k.shape[-1]} per head")
        b, _, l_, _ = q.shape
        mask = self._mask(key_padding_mask, attn_mask, b, l_, k.shape[2], q)
        p = self.dropout if self.training else 0.0
        if need_association or self.update_steps_max != 0 or self.association._forward_hooks:
            xi = self.association(self._association(q, k, mask))
            out = F.dropout(xi, p=p, training=self.training) @ v
        else:
            xi = None
            if torch.is_tensor(self.scaling):
                q, scale = q * self._beta(q), 1.0
            else:
                scale = self.scaling
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=scale)
            # the CPU kernel gives 0 for a state pattern holding NaN/inf, where the update rule (and the path
            # above) gives NaN: a bad input must not come out as a plausible zero
            out = out.masked_fill(~torch.isfinite(q).all(-1, keepdim=True), float("nan"))
        out = out.transpose(1, 2).reshape(b, l_, out.shape[1] * out.shape[-1])
        if self.out_proj is not None:
            out = self.out_proj(out)
        return out, xi
