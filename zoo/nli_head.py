"""NLI heads of "Attention Is Not What You Need" (arXiv 2512.19428): Grassmann or Transformer blocks over a frozen
pretrained encoder (DistilBERT in the paper), mean-pooled, classifying SNLI premise/hypothesis pairs, as Hugging
Face models (``AutoModelForSequenceClassification``)."""
from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from ._lm_common import PAPER, as_requested, check_ids, check_labels, check_mask_values, is_integer, positions_from_mask
from ._registry import register_model
from .grassmann import WINDOWS, GrassmannBlock, GrassmannLMConfig, check_no_gap
from .transformer_lm import TransformerBlock, TransformerLMConfig


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
    from weights.hub import hub_resolvable  # zoo reaches weights only when a call loads weights

    folder = Path(name).expanduser()
    if name.startswith((".", "~")) or folder.is_absolute() or name.count("/") > 1:  # a folder, not a hub id
        if not (folder / "config.json").is_file():
            why = "does not exist" if not folder.is_dir() else "holds no saved model (no config.json)"
            raise FileNotFoundError(f"encoder folder {name!r} {why}; give a folder written by save_pretrained, or "
                                    "a hub id such as 'distilbert-base-uncased'")
        return AutoModel.from_pretrained(folder)
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
    supports_gradient_checkpointing = True  # the blocks recompute in backward (the frozen encoder runs in eval)
    _no_split_modules = ["GrassmannBlock", "TransformerBlock"]

    def __init__(self, config: NLIHeadConfig):
        super().__init__(config)
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
        takes = inspect.signature(self.encoder.forward).parameters
        self._encoder_takes_positions, self._encoder_takes_segments = "position_ids" in takes, "token_type_ids" in takes

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
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                return_dict: bool | None = None) -> SequenceClassifierOutput:
        """Class logits (B, num_labels) for token ids (B, T) of "[CLS] premise [SEP] hypothesis [SEP]"; with
        ``labels`` (B,) also the mean cross-entropy as ``loss``. ``token_type_ids`` (a BERT tokenizer's segment
        ids) go to an encoder that takes them; DistilBERT, which has no segment embeddings, refuses them."""
        if token_type_ids is not None and not self._encoder_takes_segments:
            raise ValueError(f"NLI head: the encoder ({type(self.encoder).__name__}) has no segment embeddings, so "
                             "token_type_ids would be ignored; drop them (its own tokenizer does not emit them)")
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
        check_no_gap(attention_mask, "NLI head")
        # positions counted over real tokens: a left-padded pair reads as the unpadded one, in the encoder too
        positions = positions_from_mask(attention_mask)
        with torch.no_grad():
            extra = {"position_ids": positions} if self._encoder_takes_positions else {}
            extra |= {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
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
            # a padding query, left or right, sees nothing (attention output 0, no probabilities): right padding
            # queried the real tokens, and their rows counted in the attention entropy
            mask = causal & keep[:, None, None, :] & keep[:, None, :, None]
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
    as_value = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731  (windows: list or tuple)
    default = dataclasses.asdict(NLIHeadArgs())
    other = {"grassmann": ("num_attention_heads",), "transformer": ("reduced_dim", "windows", "out_proj")}
    ignored = [k for k in other.get(args.mixer, ()) if as_value(fields[k]) != as_value(default[k])]
    if ignored:  # an ablation that sets them would otherwise build the same model without a word
        raise ValueError(f"NLI head: the {args.mixer} head does not use {', '.join(ignored)}; drop the setting or "
                         f"use the other head")
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
