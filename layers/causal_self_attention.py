"""CausalSelfAttention: multi-head scaled dot-product attention with a causal mask, through fused SDPA."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .probe_point import ProbePoint


class CausalSelfAttention(nn.Module):
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head) + M) V per head (Vaswani et al. 2017, eq. 1), then W_O.

    M masks key s for query t unless s <= t (causal) and s is not padding; a query with no key left (padding)
    attends to nothing: its attention output is 0 and its probabilities are 0, so the layer gives W_O's bias there.
    The output comes from
    ``torch.nn.functional.scaled_dot_product_attention`` (fused kernels, no T x T tensor on the flash path).
    Probe point ``probs`` (B, heads, T, S): the attention probabilities, computed explicitly only when a hook is
    attached to it (otherwise it costs nothing).

    ``cache``: any object with ``update(k, v, layer_idx) -> (k_all, v_all)`` (a transformers ``Cache``); the new
    keys/values (B, heads, T, d_head) are appended and attention runs over all S cached positions.
    ``need_weights=True`` computes softmax(...) V as written instead (transformers' "eager" attention, dropout on
    the probabilities) and returns (output, probabilities), as ``nn.MultiheadAttention`` does.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"CausalSelfAttention: d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_head, self.dropout = d_model, n_heads, d_model // n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.probs = ProbePoint()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, cache=None, layer_idx: int = 0,
                need_weights: bool = False):
        """``x`` (B, T, d); ``mask`` bool (B or 1, 1, T, S), True = may attend; None means plain causal (no cache
        past, no padding). Returns (B, T, d), and with ``need_weights`` also the probabilities (B, heads, T, S)."""
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"CausalSelfAttention: x must have shape (batch, time, {self.d_model}), got {tuple(x.shape)}")
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        S = k.shape[2]
        if mask is None and S != T:
            raise ValueError(f"CausalSelfAttention: {S - T} cached positions need an explicit mask")
        if mask is not None and (mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[0] not in (1, B)
                                 or mask.shape[1] not in (1, self.n_heads) or mask.shape[2:] != (T, S)):
            # SDPA would add a float mask to the scores as a bias: a 0/1 mask would then mask nothing
            raise ValueError(f"CausalSelfAttention: mask must be a bool tensor (B or 1, 1, {T}, {S}), True = may "
                             f"attend, with the causal part included; got {mask.dtype} {tuple(mask.shape)}")
        causal = mask is None
        if need_weights or self.probs._forward_hooks:
            allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if causal else mask
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.d_head)
            # a query with no allowed key (padding) gets zero probabilities, which entropy estimators skip
            probs = self.probs(scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0))
        if need_weights:
            y = F.dropout(probs, self.dropout, self.training) @ v
        else:
            # a query with no allowed key attends to nothing: output 0. SDPA is given all keys for it (a row of
            # -inf would be NaN on some backends) and its output is zeroed; no host sync to find such rows
            empty = None if causal else ~mask.any(-1, keepdim=True)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask | empty,
                                               is_causal=causal, dropout_p=self.dropout if self.training else 0.0)
            if empty is not None:
                y = y.masked_fill(empty, 0.0)
        y = self.proj(y.transpose(1, 2).reshape(B, T, self.d_model))
        return (y, probs) if need_weights else y
