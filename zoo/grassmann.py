"""Causal Grassmann LM: attention-free language model of "Attention Is Not What You Need" (arXiv 2512.19428).

Same embeddings, feed-forward width, final LayerNorm and tied LM head as the Transformer baseline
(``zoo.transformer_lm``); each block replaces attention by ``layers.CausalGrassmannMixing`` and is post-norm:
u = LN(alpha h + (1 - alpha) g), then h' = LN(u + FFN(u)). Every block uses the offsets {1, 2, 4, 8, 12, 16}.
Parameters (d=256, r=32, d_ff=1024, 128 positions, vocabulary 30,522): 6 layers 12,607,168 as the equations
read, 13,001,920 with the d x d output projection (``out_proj=True``, default, the paper's 13.00M); 12 layers
with it 18,156,928 (the paper's 18.16M).

Generation caches only the last max(windows) reduced vectors z per layer (``GrassmannCache``), so memory per
generated token is constant: (layers x max(windows) x r) numbers per sequence.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, LinearAttentionLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast

from layers import CausalGrassmannMixing

from ._inputs import check_sizes
from ._lm_common import (PAPER, TiedCausalLMHead, cache_wanted, collect_hidden, feed_forward,
                         finish_backbone, input_embeddings, refuse_attentions, token_positions)
from ._registry import register_model

WINDOWS = (1, 2, 4, 8, 12, 16)


class GrassmannLMConfig(PreTrainedConfig):
    model_type = "paperzoo_grassmann_lm"

    vocab_size: int = 30522
    hidden_size: int = 256
    num_hidden_layers: int = 6
    reduced_dim: int = 32
    windows: list[int] | tuple[int, ...] = WINDOWS
    intermediate_size: int = 1024
    max_position_embeddings: int = 128
    out_proj: bool = True
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None


class GrassmannCache(Cache):
    """Per layer the reduced vectors z of the last max(windows) tokens (B, r, max(windows)), plus the number of
    tokens seen (``get_seq_length``). Built on transformers' ``LinearAttentionLayer`` conv-state buffers, so beam
    search reordering works unchanged."""

    def __init__(self, num_layers: int, context: int):
        super().__init__(layers=[LinearAttentionLayer() for _ in range(num_layers)])
        self.context = context
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last -``tokens_to_remove`` tokens (assisted decoding's rejected drafts); the layers keep their
        full history for this only after ``activate_past_recording()``, as transformers' linear-attention layers."""
        super().crop(tokens_to_remove)
        self.seen_tokens += tokens_to_remove  # <= 0: the layers refuse a positive count


def check_no_gap(attention_mask: torch.Tensor, who: str = "Grassmann LM") -> None:
    """Grassmann offsets look back by index, so padding may precede a sequence's real tokens (left padding) or
    follow them (right padding, as transformers' collators pad: a causal model's real tokens never see what
    follows), but not sit between two of them, where it would be mixed into the real tokens after it."""
    if attention_mask.dim() != 2 or torch.compiler.is_compiling():
        return
    real = attention_mask.long()
    after_real = torch.cummax(real, -1).values.bool() & (real == 0)  # a pad that follows a real token
    if bool((torch.cummax(after_real.long(), -1).values[:, :-1].bool() & (real[:, 1:] == 1)).any()):
        raise ValueError(f"{who}: attention_mask has padding between real tokens; pad on the left or the right "
                         "(a masked token between real ones would be mixed into the tokens after it). generate() "
                         "appends new tokens after the padding of a right-padded prompt: pad prompts for generation "
                         "on the left (tokenizer.padding_side = 'left')")


class GrassmannBlock(GradientCheckpointingLayer):
    """u = LN(CausalGrassmannMixing(h)); h' = LN(u + FFN(u)). Probe points ``mixing.plucker``, ``mixing.gate``."""

    def __init__(self, config: GrassmannLMConfig):
        super().__init__()
        d = config.hidden_size
        self.mixing = CausalGrassmannMixing(d, config.reduced_dim, tuple(config.windows), out_proj=config.out_proj,
                                            dropout=config.dropout)
        self.ln1 = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn = feed_forward(d, config.intermediate_size, config.dropout)
        self.ln2 = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, h, positions, cache=None, layer_idx=0):
        past = None
        if cache is not None and (state := cache.get_conv_state(layer_idx)) is not None:
            # the state is left-padded with zeros until `context` tokens were seen: pass only real tokens
            past = state.transpose(1, 2)[:, -min(cache.get_seq_length(), self.mixing.context):].clone()
        u, z = self.mixing(h, positions, past)
        if cache is not None:
            cache.update_conv_state(z.transpose(1, 2), layer_idx, conv_kernel_size=self.mixing.context)
        u = self.ln1(u)
        return self.ln2(u + self.ffn(u))


class GrassmannLMPreTrainedModel(PreTrainedModel):
    config_class = GrassmannLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["GrassmannBlock"]
    supports_gradient_checkpointing = True  # gradient_checkpointing_enable() recomputes each block in backward

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a KV cache: the model builds its GrassmannCache itself

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs) -> None:
        """generate() starts with an empty GrassmannCache (none given, caching on), so that assisted decoding finds
        one to record and crop; an assistant's records its past from the start, as transformers does for its caches."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        if model_kwargs.get("cache") is None and generation_config.use_cache is not False:
            model_kwargs["cache"] = GrassmannCache(self.config.num_hidden_layers, max(self.config.windows))
            if generation_config.is_assistant:
                model_kwargs["cache"].activate_past_recording()


class GrassmannLMModel(GrassmannLMPreTrainedModel):
    """Embeddings + Grassmann blocks + final LayerNorm; returns the last hidden state (B, T, d) and the cache."""

    def __init__(self, config: GrassmannLMConfig):
        super().__init__(config)
        check_sizes(config, "vocab_size", "hidden_size", "reduced_dim", "intermediate_size", "max_position_embeddings")
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(GrassmannBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: GrassmannCache | None = None,
                use_cache: bool | None = None, inputs_embeds: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                return_dict: bool | None = None) -> BaseModelOutputWithPast:
        """Padding is handled through positions: an offset reaches only tokens at position >= 0 of the same
        sequence, so left padding (positions counted over ``attention_mask``) never mixes into real tokens, and
        right padding only follows them. An offset looks back by index, so a mask with a gap between real tokens
        is refused."""
        refuse_attentions(output_attentions, "the Grassmann LM has no attention; its Pluecker features are probe "
                                             "points (layers.N.mixing.*)")
        h = input_embeddings(self.embed_tokens, input_ids, inputs_embeds)
        if attention_mask is not None:
            check_no_gap(attention_mask)
        use_cache = cache_wanted(self, use_cache)
        if cache is not None and not isinstance(cache, GrassmannCache):
            raise TypeError(f"GrassmannLMModel: cache must be a GrassmannCache, got {type(cache).__name__}")
        if use_cache and cache is None:
            cache = GrassmannCache(self.config.num_hidden_layers, max(self.config.windows))
        past = cache.get_seq_length() if cache is not None else 0
        positions = token_positions(h, past, position_ids, attention_mask, self.config.max_position_embeddings)
        h = self.drop(h + self.embed_positions(positions))
        hidden = collect_hidden(output_hidden_states, self.config)
        for i, block in enumerate(self.layers):
            if hidden is not None:
                hidden.append(h)
            h = block(h, positions, cache=cache, layer_idx=i)
        if cache is not None:
            cache.seen_tokens += h.shape[1]
        return finish_backbone(self.norm(h), cache if use_cache else None, hidden, return_dict, self.config)


class GrassmannLMForCausalLM(TiedCausalLMHead, GrassmannLMPreTrainedModel, GenerationMixin):
    """Causal LM head (tied to the token embedding) over ``GrassmannLMModel``; its cache is a ``GrassmannCache``."""

    backbone = GrassmannLMModel


AutoConfig.register(GrassmannLMConfig.model_type, GrassmannLMConfig)
AutoModel.register(GrassmannLMConfig, GrassmannLMModel)
AutoModelForCausalLM.register(GrassmannLMConfig, GrassmannLMForCausalLM)


@dataclass
class GrassmannLMArgs:
    """Registry config: the fields of ``GrassmannLMConfig`` that define a size."""

    num_hidden_layers: int = 6
    hidden_size: int = 256
    reduced_dim: int = 32
    windows: tuple[int, ...] = WINDOWS
    intermediate_size: int = 1024
    vocab_size: int = 30522
    max_position_embeddings: int = 128
    out_proj: bool = True
    dropout: float = 0.1


def build_grassmann_lm(args: GrassmannLMArgs) -> GrassmannLMForCausalLM:
    return GrassmannLMForCausalLM(GrassmannLMConfig(**dataclasses.asdict(args)))


@register_model(GrassmannLMArgs(num_hidden_layers=6), PAPER)
def grassmann_lm_13m(args: GrassmannLMArgs) -> GrassmannLMForCausalLM:
    """6 layers, d=256, r=32: 13,001,920 parameters (12,607,168 with ``out_proj=False``); the paper's 13.00M."""
    return build_grassmann_lm(args)


@register_model(GrassmannLMArgs(num_hidden_layers=12), PAPER)
def grassmann_lm_18m(args: GrassmannLMArgs) -> GrassmannLMForCausalLM:
    """12 layers: 18,156,928 parameters; the paper's 18.16M."""
    return build_grassmann_lm(args)
