"""Attention-probability probe points for timm's Attention modules, without touching their fused forward, and
the spectral norms that bound their entropy."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .probe_point import ProbePoint


def _probe_attention(attn: nn.Module, qkv_module: nn.Module, args, qkv: torch.Tensor) -> None:
    """Forward hook on ``attn.qkv``: when a hook listens on ``attn.probs``, pass softmax(q k^T * scale)
    (B, heads, N, N) to it.

    The probabilities come from the qkv projection the block has just computed (through its q/k norms), so timm's
    forward keeps its fused scaled_dot_product_attention, nothing is computed while no probe listens, and nothing
    is computed twice: a second qkv call would also run a sigmaReparam qkv's power iteration a second time."""
    mask, causal = attn.__dict__.pop("_probe_mask", (None, False))
    if not attn.probs._forward_hooks:
        return
    B, N, _ = qkv.shape
    q, k, _ = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if causal:  # the masks as scaled_dot_product_attention reads them: is_causal wins, bool True attends
        logits = logits.masked_fill(torch.ones(N, N, dtype=torch.bool, device=logits.device).triu(1), float("-inf"))
    elif mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    # a query with every key masked attends to nothing: a row of zeros, which entropy estimators skip (softmax of
    # -inf everywhere is NaN, which stopped them)
    attn.probs(logits.softmax(-1).nan_to_num(0.0))


def _remember_mask(attn: nn.Module, args, kwargs) -> None:
    """Forward pre-hook on ``attn``: while a hook listens on ``attn.probs``, keep this call's ``attn_mask`` and
    ``is_causal`` for ``_probe_attention``, which applies them as the block's attention does."""
    if attn.probs._forward_hooks:
        attn._probe_mask = (kwargs.get("attn_mask", args[1] if len(args) > 1 else None),
                            kwargs.get("is_causal", args[2] if len(args) > 2 else False))


def add_attention_probes(model: nn.Module) -> nn.Module:
    """Give every timm ``Attention`` in ``model`` a probe point ``probs`` holding its attention probabilities
    softmax(Q K^T / sqrt(d_head)) per head (e.g. ``blocks.3.attn.probs``), for ``estimators.attention_entropy``.
    A call's ``attn_mask`` / ``is_causal`` apply to the probabilities as to the block's attention. Adds no
    parameters or state-dict keys. Returns ``model``."""
    from timm.models.vision_transformer import Attention

    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    if not attentions:
        raise ValueError(f"add_attention_probes: {type(model).__name__} has no timm Attention module")
    for attn in attentions:
        if not hasattr(attn, "probs"):  # calling twice adds nothing
            attn.probs = ProbePoint()
            attn.register_forward_pre_hook(_remember_mask, with_kwargs=True)
            attn.qkv.register_forward_hook(functools.partial(_probe_attention, attn))
    return model


def attention_logit_norms(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of Zhai et al.'s sigma (Theorem 3.1) for a timm ``Attention`` on tokens x (B, N, d).

    With the qkv biases absorbed by a constant input, x~ = [x, 1], W~_Q = [W_Q | b_Q] (per head), the logits are
    scale * x~_i^T W~_Q^T W~_K x~_j exactly. Returns (sigma_w (heads,) = scale ||W~_Q^T W~_K||_2 per head,
    sigma_x (B,) = ||X~ X~^T||_2 per sample); entropy >= ``attention_entropy_lower_bound(sigma_w * sigma_x, N)``.
    sigmaReparam layers contribute their reparametrised weight. Needs identity q/k norms."""
    from timm.models.vision_transformer import Attention

    if not isinstance(attn, Attention):
        raise TypeError(f"attention_logit_norms: attn must be a timm vision_transformer.Attention (its qkv, q_norm, "
                        f"k_norm, scale), got {type(attn).__name__}")
    if not isinstance(attn.q_norm, nn.Identity) or not isinstance(attn.k_norm, nn.Identity):
        raise ValueError("attention_logit_norms: the bound is for plain bilinear logits; this attention normalises q/k")
    qkv = attn.qkv
    if x.dim() != 3 or x.shape[-1] != qkv.in_features:
        raise ValueError(f"attention_logit_norms: x must be the attention's input tokens (B, N, {qkv.in_features}), "
                         f"got {tuple(x.shape)}")
    # a sigmaReparam qkv: W_hat from the stored u, v (its reparametrized_weight() would run a power iteration in
    # training mode, and this only reads)
    weight = qkv.folded_weight() if hasattr(qkv, "folded_weight") else qkv.weight
    bias = qkv.bias if qkv.bias is not None else weight.new_zeros(weight.shape[0])
    w = torch.cat([weight, bias[:, None]], 1).detach().double()  # (3 d, d + 1)
    heads, hd = attn.num_heads, attn.head_dim
    wq, wk = w[:heads * hd].reshape(heads, hd, -1), w[heads * hd:2 * heads * hd].reshape(heads, hd, -1)
    sigma_w = attn.scale * torch.linalg.matrix_norm(wq.transpose(1, 2) @ wk, 2)
    xt = F.pad(x.detach().double(), (0, 1), value=1.0)
    sigma_x = torch.linalg.matrix_norm(xt, 2) ** 2  # ||X~ X~^T||_2 = ||X~||_2^2
    return sigma_w, sigma_x
