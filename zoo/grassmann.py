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
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          GenerationMixin, PreTrainedConfig, PreTrainedModel)
from transformers.cache_utils import Cache, LinearAttentionLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, SequenceClassifierOutput

from layers import CausalGrassmannMixing
from weights.hub import hub_resolvable

from ._registry import register_model
from .transformer_lm import (PAPER, TiedCausalLMHead, as_requested, check_ids, check_labels, check_mask_values,
                             check_sizes, collect_hidden, feed_forward, finish_backbone, input_embeddings, is_integer,
                             positions_from_mask, refuse_attentions, token_positions)

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


def check_left_padded(attention_mask: torch.Tensor) -> None:
    """Grassmann offsets look back by index: padding may only precede a sequence's real tokens."""
    if attention_mask.dim() == 2 and bool((attention_mask[:, 1:].long() < attention_mask[:, :-1].long()).any()):
        raise ValueError("Grassmann LM: attention_mask must be left padding (zeros only before a sequence's real "
                         "tokens); a masked token after a real one would be mixed into the tokens after it")


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

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: GrassmannCache | None = None,
                use_cache: bool | None = None, inputs_embeds: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                return_dict: bool | None = None) -> BaseModelOutputWithPast:
        """Padding is handled through positions: an offset reaches only tokens at position >= 0 of the same
        sequence, so left padding (positions counted over ``attention_mask``) never mixes into real tokens. An
        offset looks back by index, so a mask with a gap between real tokens is refused."""
        refuse_attentions(output_attentions, "the Grassmann LM has no attention; its Pluecker features are probe "
                                             "points (layers.N.mixing.*)")
        h = input_embeddings(self.embed_tokens, input_ids, inputs_embeds)
        if attention_mask is not None:
            check_left_padded(attention_mask)
        use_cache = self.config.use_cache and not self.training if use_cache is None else use_cache
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


# -- NLI heads over a frozen encoder -------------------------------------------------------------------------

class NLIHeadConfig(PreTrainedConfig):
    """A classification head over a frozen encoder. ``encoder`` names where the encoder's weights came from (a hub
    id or local folder); ``encoder_config`` is the encoder's full config (a dict with ``model_type``), from which
    ``from_pretrained`` rebuilds it before loading the saved weights, so a saved head needs no hub access."""

    model_type = "paperzoo_nli_head"

    mixer: str = "grassmann"  # or "transformer"
    encoder: str | None = "distilbert-base-uncased"
    encoder_config: dict | None = None
    hidden_size: int = 256
    num_hidden_layers: int = 2
    reduced_dim: int = 32
    windows: list[int] | tuple[int, ...] = WINDOWS
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    out_proj: bool = True
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02


def build_encoder(spec: dict) -> PreTrainedModel:
    """A randomly initialised encoder from a config dict with ``model_type``."""
    spec = dict(spec)
    return AutoModel.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))


def load_pretrained_encoder(name: str) -> PreTrainedModel:
    try:
        return AutoModel.from_pretrained(name, local_files_only=not hub_resolvable())
    except OSError as err:
        raise FileNotFoundError(
            f"encoder {name!r} is not available offline ({err.__class__.__name__}). Download it once with "
            f"`hf download {name}` (it lands in the Hugging Face cache) or set encoder= to a local folder "
            "saved with save_pretrained.") from err


class NLIHeadForSequenceClassification(PreTrainedModel):
    """logits = W_cls LN(mean over real tokens of Blocks(W_in E(x))), E a frozen encoder (no gradients, always in
    eval mode). Blocks: ``GrassmannBlock`` (mixer="grassmann") or pre-norm ``TransformerBlock`` with causal +
    padding attention (mixer="transformer"), so both heads read the pair left to right. Registered with
    ``AutoConfig`` and ``AutoModelForSequenceClassification``; ``save_pretrained`` stores the encoder too."""

    config_class = NLIHeadConfig
    base_model_prefix = "nli"
    _no_split_modules = ["GrassmannBlock", "TransformerBlock"]

    def __init__(self, config: NLIHeadConfig):
        super().__init__(config)
        from .transformer_lm import TransformerBlock, TransformerLMConfig

        if config.mixer not in ("grassmann", "transformer"):
            raise ValueError(f"NLI head: mixer must be 'grassmann' or 'transformer', got {config.mixer!r}")
        if not config.encoder_config or "model_type" not in config.encoder_config:
            raise ValueError("NLI head: config.encoder_config must be the encoder's config dict with a model_type")
        self.encoder = build_encoder(config.encoder_config).requires_grad_(False)
        d = config.hidden_size
        self.proj = nn.Linear(self.encoder.config.hidden_size, d)
        common = dict(hidden_size=d, intermediate_size=config.intermediate_size, dropout=config.dropout,
                      layer_norm_eps=config.layer_norm_eps)
        if config.mixer == "grassmann":
            cfg = GrassmannLMConfig(reduced_dim=config.reduced_dim, windows=list(config.windows),
                                    out_proj=config.out_proj, **common)
            self.blocks = nn.ModuleList(GrassmannBlock(cfg) for _ in range(config.num_hidden_layers))
        else:
            cfg = TransformerLMConfig(num_attention_heads=config.num_attention_heads, **common)
            self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(d, config.num_labels)
        self.post_init()
        self.encoder.eval()
        self._encoder_takes_positions = "position_ids" in inspect.signature(self.encoder.forward).parameters

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        model.encoder.requires_grad_(False)  # loading materialises fresh parameters, which require gradients
        return model

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: dropout off in the encoder whatever the head does
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, return_dict: bool | None = None) -> SequenceClassifierOutput:
        """Class logits (B, num_labels) for token ids (B, T) of "[CLS] premise [SEP] hypothesis [SEP]"; with
        ``labels`` (B,) also the mean cross-entropy as ``loss``."""
        if input_ids.dim() != 2 or not is_integer(input_ids) or not input_ids.shape[0] or not input_ids.shape[1]:
            raise ValueError(f"NLI head: input_ids must be integer token ids (batch >= 1, tokens >= 1), got "
                             f"{input_ids.dtype} {tuple(input_ids.shape)}")
        input_ids = check_ids(input_ids, self.encoder.config.vocab_size)
        limit = getattr(self.encoder.config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] > limit:
            raise ValueError(f"NLI head: {input_ids.shape[1]} tokens, the encoder takes at most {limit}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(f"NLI head: attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {tuple(attention_mask.shape)}")
        check_mask_values(attention_mask)
        has_token = attention_mask.bool().any(-1)
        if not bool(has_token.all()):
            rows = (~has_token).nonzero().flatten().tolist()
            raise ValueError(f"NLI head: rows {rows} of attention_mask mask every token; a pair needs at least one")
        m = attention_mask.long()
        one_sided = (m[:, 1:] >= m[:, :-1]).all(-1) | (m[:, 1:] <= m[:, :-1]).all(-1)
        if not bool(one_sided.all()):
            raise ValueError("NLI head: attention_mask must pad on one side only (no masked token between real "
                             "tokens)")
        # positions counted over real tokens: a left-padded pair reads as the unpadded one, in the encoder too
        positions = positions_from_mask(m)
        with torch.no_grad():
            extra = {"position_ids": positions} if self._encoder_takes_positions else {}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        x = self.proj(hidden)
        T = x.shape[1]
        keep = attention_mask.bool()
        if self.config.mixer == "grassmann":
            # offsets look back by index: left padding is kept out through positions, right padding comes after
            # the real tokens (causal, and not pooled)
            for block in self.blocks:
                x = block(x, positions)
        else:
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            mask = causal & keep[:, None, None, :]  # a left-padding query sees nothing (attention output 0)
            for block in self.blocks:
                x = block(x, mask=mask)
        pooled = (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp_min(1)
        logits = self.classifier(self.norm(pooled))
        if labels is not None and (labels.shape != logits.shape[:1] or not is_integer(labels)):
            raise ValueError(f"NLI head: labels must be integer class ids of shape ({len(logits)},), got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        if labels is not None:
            check_labels(labels, logits.shape[-1], "num_labels", who="NLI head: ")
        loss = None if labels is None else F.cross_entropy(logits.float(), labels.long())
        return as_requested(SequenceClassifierOutput(loss=loss, logits=logits), return_dict, self.config)


AutoConfig.register(NLIHeadConfig.model_type, NLIHeadConfig)
AutoModel.register(NLIHeadConfig, NLIHeadForSequenceClassification)
AutoModelForSequenceClassification.register(NLIHeadConfig, NLIHeadForSequenceClassification)


@dataclass
class NLIHeadArgs:
    """Registry config. ``encoder`` is a hub id or local folder loaded with ``AutoModel``; ``encoder_config`` (a
    dict with ``model_type``), when given, builds a randomly initialised encoder instead (offline tests)."""

    mixer: str = "grassmann"
    encoder: str = "distilbert-base-uncased"
    encoder_config: dict | None = None
    hidden_size: int = 256
    num_hidden_layers: int = 2
    reduced_dim: int = 32
    windows: tuple[int, ...] = WINDOWS
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    out_proj: bool = True
    dropout: float = 0.1
    num_labels: int = 3


def build_nli_head(args: NLIHeadArgs) -> NLIHeadForSequenceClassification:
    """The head with the pretrained encoder's weights copied in (or a random encoder from ``encoder_config``)."""
    fields = dataclasses.asdict(args)
    pretrained = None
    if args.encoder_config is None:
        pretrained = load_pretrained_encoder(args.encoder)
        fields["encoder_config"] = pretrained.config.to_dict()
    else:
        fields["encoder"] = None
    fields["windows"] = list(args.windows)
    model = NLIHeadForSequenceClassification(NLIHeadConfig(**fields))
    if pretrained is not None:
        model.encoder.load_state_dict(pretrained.state_dict())
    return model


@register_model(NLIHeadArgs(mixer="grassmann"), PAPER)
def grassmann_nli_head(args: NLIHeadArgs) -> NLIHeadForSequenceClassification:
    """Two Grassmann blocks (d=256, r=32) over frozen DistilBERT, mean-pooled, 3 SNLI classes: 1,916,483
    trainable parameters over a 768-wide encoder."""
    return build_nli_head(args)


@register_model(NLIHeadArgs(mixer="transformer"), PAPER)
def transformer_nli_head(args: NLIHeadArgs) -> NLIHeadForSequenceClassification:
    """Two Transformer blocks (d=256, 4 heads) over frozen DistilBERT, mean-pooled, 3 SNLI classes: 1,777,667
    trainable parameters over a 768-wide encoder."""
    return build_nli_head(args)
