"""A small GPT-style causal Transformer LM as a Hugging Face ``transformers`` model.

The size-matched baseline of "Attention Is Not What You Need" (arXiv 2512.19428): learned token and position
embeddings, pre-norm blocks x + Attn(LN(x)), x + FFN(LN(x)) with GELU, a final LayerNorm and an LM head tied to
the token embedding (no bias). With d=256, 4 heads, d_ff=1024, 128 positions and the BERT vocabulary (30,522):
6 layers = 12,585,472 parameters, 12 layers = 17,324,032 (the paper's 12.59M and 17.32M). The paper's 17.32M
counts 128 position rows although that model is trained at L=256; training at L=256 here needs
``max_position_embeddings=256`` (+32,768 parameters).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig,
                          PreTrainedModel)
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from layers import CausalSelfAttention

from ._inputs import check_sizes
from ._lm_common import (PAPER, TiedCausalLMHead, cache_wanted, collect_hidden, feed_forward,
                         finish_backbone, input_embeddings, token_positions)
from ._registry import register_model


class TransformerLMConfig(PreTrainedConfig):
    model_type = "paperzoo_transformer_lm"

    vocab_size: int = 30522
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 128
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None


class TransformerBlock(GradientCheckpointingLayer):
    """Pre-norm block: x <- x + Dropout(Attn(LN(x))); x <- x + FFN(LN(x)). Probe point ``attn.probs``.
    ``need_weights``: eager attention, and (x, attention probabilities) returned."""

    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        d = config.hidden_size
        self.ln1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(d, config.num_attention_heads, dropout=config.dropout)
        self.drop = nn.Dropout(config.dropout)
        self.ln2 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn = feed_forward(d, config.intermediate_size, config.dropout)

    def forward(self, x, mask=None, cache=None, layer_idx=0, need_weights=False):
        attended = self.attn(self.ln1(x), mask=mask, cache=cache, layer_idx=layer_idx, need_weights=need_weights)
        attended, probs = attended if need_weights else (attended, None)
        x = x + self.drop(attended)
        x = x + self.ffn(self.ln2(x))
        return (x, probs) if need_weights else x


class TransformerLMPreTrainedModel(PreTrainedModel):
    config_class = TransformerLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["TransformerBlock"]
    _supports_sdpa = True
    supports_gradient_checkpointing = True  # gradient_checkpointing_enable() recomputes each block in backward


class TransformerLMModel(TransformerLMPreTrainedModel):
    """Embeddings + blocks + final LayerNorm; returns the last hidden state (B, T, d) and the KV cache."""

    def __init__(self, config: TransformerLMConfig):
        super().__init__(config)
        check_sizes(config, "vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
                    "max_position_embeddings")
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def _mask(self, attention_mask, past: int, T: int, device) -> torch.Tensor | None:
        """Bool (B or 1, 1, T, past+T): query i (absolute past+i) may see key s when s <= past+i and s is not
        padding; None when plain causal attention suffices."""
        # compiled: always the masked path (reading the mask on the host would break the graph)
        padded = attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all()))
        if not padded and past == 0:
            return None
        S = past + T
        query = torch.arange(past, S, device=device)[:, None]
        allowed = (torch.arange(S, device=device)[None] <= query)[None, None]
        if padded:
            real = attention_mask[:, -S:].bool()
            # a padding query, left or right, sees nothing (attention output 0, no probabilities: a right-padding
            # one saw the real tokens before it, and its rows counted in the attention entropy)
            allowed = allowed & real[:, None, None, :] & real[:, None, -T:, None]
        return allowed

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Cache | None = None, use_cache: bool | None = None,
                inputs_embeds: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None) -> BaseModelOutputWithPast:
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        # attn_implementation="eager", or weights asked for: softmax(Q K^T / sqrt(d) + M) V as written, not SDPA
        eager = output_attentions or self.config._attn_implementation == "eager"
        x = input_embeddings(self.embed_tokens, input_ids, inputs_embeds)
        use_cache = cache_wanted(self, use_cache)
        if use_cache and cache is None:
            cache = DynamicCache()
        if cache is not None and cache.is_compileable:  # its preallocated slots would be attended as if filled
            raise ValueError(f"Transformer LM: a static cache ({type(cache).__name__}; generate(cache_implementation="
                             "'static')) is not supported; use the default dynamic cache (DynamicCache, or generate() "
                             "without cache_implementation)")
        past = cache.get_seq_length() if cache is not None else 0
        positions = token_positions(x, past, position_ids, attention_mask, self.config.max_position_embeddings)
        mask = self._mask(attention_mask, past, x.shape[1], x.device)
        x = self.drop(x + self.embed_positions(positions))
        hidden = collect_hidden(output_hidden_states, self.config)
        attentions = [] if output_attentions else None
        for i, block in enumerate(self.layers):
            if hidden is not None:
                hidden.append(x)
            if eager:
                x, probs = block(x, mask=mask, cache=cache, layer_idx=i, need_weights=True)
                if attentions is not None:
                    attentions.append(probs)
            else:
                x = block(x, mask=mask, cache=cache, layer_idx=i)
        x = self.norm(x)
        return finish_backbone(x, cache if use_cache else None, hidden, return_dict, self.config, attentions)


class TransformerLMForCausalLM(TiedCausalLMHead, TransformerLMPreTrainedModel, GenerationMixin):
    """Causal LM head (tied to the token embedding) over ``TransformerLMModel``."""

    backbone = TransformerLMModel


AutoConfig.register(TransformerLMConfig.model_type, TransformerLMConfig)
AutoModel.register(TransformerLMConfig, TransformerLMModel)
AutoModelForCausalLM.register(TransformerLMConfig, TransformerLMForCausalLM)


@dataclass
class TransformerLMArgs:
    """Registry config: the fields of ``TransformerLMConfig`` that define a size."""

    num_hidden_layers: int = 6
    hidden_size: int = 256
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    vocab_size: int = 30522
    max_position_embeddings: int = 128
    dropout: float = 0.1


def build_transformer_lm(args: TransformerLMArgs) -> TransformerLMForCausalLM:
    return TransformerLMForCausalLM(TransformerLMConfig(**dataclasses.asdict(args)))


@register_model(TransformerLMArgs(num_hidden_layers=6), PAPER)
def transformer_lm_13m(args: TransformerLMArgs) -> TransformerLMForCausalLM:
    """6 layers, d=256, 4 heads: 12,585,472 parameters (the paper's 12.59M Transformer baseline)."""
    return build_transformer_lm(args)


@register_model(TransformerLMArgs(num_hidden_layers=12), PAPER)
def transformer_lm_17m(args: TransformerLMArgs) -> TransformerLMForCausalLM:
    """12 layers: 17,324,032 parameters with 128 position rows (the paper's 17.32M)."""
    return build_transformer_lm(args)
