"""Attention-probability probe points for timm's Attention modules, without touching their fused forward."""
from __future__ import annotations

from torch import nn

from .probe_point import ProbePoint


def _probe_attention(attn: nn.Module, args) -> None:
    """Forward pre-hook: when a hook listens on ``attn.probs``, pass softmax(q k^T * scale) (B, heads, N, N) to it.

    The probabilities are recomputed from the block's own qkv projection (and q/k norms), so timm's forward keeps
    its fused scaled_dot_product_attention and nothing is computed while no probe listens."""
    if not attn.probs._forward_hooks:
        return
    x = args[0]
    B, N, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    attn.probs(((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1))


def add_attention_probes(model: nn.Module) -> nn.Module:
    """Give every timm ``Attention`` in ``model`` a probe point ``probs`` holding its attention probabilities
    softmax(Q K^T / sqrt(d_head)) per head (e.g. ``blocks.3.attn.probs``), for ``estimators.attention_entropy``.
    Unmasked self-attention only (as in timm's ViTs). Adds no parameters or state-dict keys. Returns ``model``."""
    from timm.models.vision_transformer import Attention

    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    if not attentions:
        raise ValueError(f"add_attention_probes: {type(model).__name__} has no timm Attention module")
    for attn in attentions:
        if not hasattr(attn, "probs"):  # calling twice adds nothing
            attn.probs = ProbePoint()
            attn.register_forward_pre_hook(_probe_attention)
    return model
