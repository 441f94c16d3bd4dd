"""What the language models of the Grassmann family (``zoo.transformer_lm``, ``zoo.grassmann``) and their NLI
heads (``zoo.nli_head``) share: the paper, input checks, positions, Hugging Face output plumbing, the tied LM head
and the next-token loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ._inputs import check_dtype
from ._registry import Paper

PAPER = Paper(family="grassmann", title="Attention Is Not What You Need: Grassmann Flows as an Attention-Free "
              "Alternative for Sequence Modeling", arxiv="2512.19428", authors="Zhang Chong", year=2025)


def feed_forward(d_model: int, d_ff: int, dropout: float) -> nn.Sequential:
    """FFN(x) = W_2 GELU(W_1 x + b_1) + b_2, then dropout."""
    return nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model), nn.Dropout(dropout))


def token_positions(inputs: torch.Tensor, past: int, position_ids: torch.Tensor | None,
                    attention_mask: torch.Tensor | None, max_positions: int) -> torch.Tensor:
    """Absolute positions (B, T) of the tokens of ``inputs`` (ids (B, T) or embeddings (B, T, d)): given, or counted
    over ``attention_mask`` (padding does not count), or past..past+T-1. Positions at or beyond ``max_positions``
    are an error."""
    B, T = inputs.shape[:2]
    if attention_mask is not None and attention_mask.shape != (B, past + T):
        raise ValueError(f"attention_mask must cover the cached and the new tokens, shape (batch={B}, "
                         f"past + new = {past + T}), got {tuple(attention_mask.shape)}")
    if attention_mask is not None:
        check_mask_values(attention_mask)
    if position_ids is None:
        if attention_mask is not None:
            position_ids = positions_from_mask(attention_mask)[:, -T:]
        else:
            position_ids = torch.arange(past, past + T, device=inputs.device)[None].expand(B, T)
        # an upper bound on the positions known on the host, so the check below needs no device sync
        bound = past + T - 1 if attention_mask is None else attention_mask.shape[-1] - 1
    elif position_ids.shape[-1] != T:
        raise ValueError(f"position_ids must have last dim {T} (the number of input tokens), got {tuple(position_ids.shape)}")
    else:
        bound = None  # given positions: only reading them tells
    if not T or bound is not None and bound < max_positions or torch.compiler.is_compiling():
        return position_ids
    low, high = torch.stack(torch.aminmax(position_ids)).tolist()  # one device sync for both bounds
    if low < 0:
        raise ValueError(f"position_ids must be >= 0, got {int(low)}")
    if high >= max_positions:
        raise ValueError(f"position {int(high)} is beyond max_position_embeddings={max_positions}; "
                         f"shorten the input or build the model with a larger max_position_embeddings")
    return position_ids


def check_mask_values(attention_mask: torch.Tensor) -> None:
    """An attention mask marks real tokens with 1 (or True) and padding with 0; any other value is an error: positions
    count the ones, attention keeps the non-zeros, and a mask of 0.5 or 2 would make them disagree silently."""
    if torch.compiler.is_compiling():  # the value checks read the device: eager runs make them, compiled graphs don't
        return
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        values = torch.unique(attention_mask)[:5].tolist()
        raise ValueError(f"attention_mask must hold 1 (a real token) or 0 (padding), or be bool; got values {values}")


def check_labels(labels: torch.Tensor, classes: int, what: str, who: str = "") -> None:
    """Labels lie in [0, classes) or are -100 (ignored, as by the cross-entropy); else an error naming the values
    (an IndexError on the CPU, a device-side assert on a GPU otherwise). One device sync."""
    if torch.compiler.is_compiling():
        return
    outside = (labels != -100) & ((labels < 0) | (labels >= classes))
    if bool(outside.any()):
        raise ValueError(f"{who}labels must lie in [0, {what}={classes}) or be -100 (ignored), got "
                         f"{labels[outside][:5].tolist()}")


def is_integer(t: torch.Tensor) -> bool:
    """An integer dtype of any width (uint8 ... int64); bool is not one."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_ids(input_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``input_ids`` (B, T) checked to lie in [0, vocab_size), as int64 (the dtype embeddings and losses index with)."""
    if input_ids.dim() != 2 or not is_integer(input_ids):
        raise ValueError(f"input_ids must be an integer tensor of shape (batch, time), got {input_ids.dtype} "
                         f"{tuple(input_ids.shape)}")
    if input_ids.numel() and not torch.compiler.is_compiling():
        low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one device sync for both bounds
        if low < 0 or high >= vocab_size:
            raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), got range [{low}, {high}]")
    return input_ids.long()


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the real tokens of a 0/1 mask (B, T): left padding shifts nothing (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def as_requested(out, return_dict: bool | None, config):
    """A model output as transformers' callers ask for it: ``out``, or its tuple when ``return_dict`` (default the
    config's) is False."""
    return out if (config.return_dict if return_dict is None else return_dict) else out.to_tuple()


def input_embeddings(embed: nn.Embedding, input_ids: torch.Tensor | None,
                     inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """The token embeddings (B, T, d) of ``input_ids``, or ``inputs_embeds`` as given (soft prompts): exactly one."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None:
        return embed(check_ids(input_ids, embed.num_embeddings))
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != embed.embedding_dim \
            or not inputs_embeds.is_floating_point():
        raise ValueError(f"inputs_embeds must be floating (batch, time, {embed.embedding_dim}), got "
                         f"{inputs_embeds.dtype} {tuple(inputs_embeds.shape)}")
    check_dtype(inputs_embeds, embed.weight, "language model", "inputs_embeds")
    return inputs_embeds


def collect_hidden(wanted: bool | None, config) -> list | None:
    """A list to gather ``hidden_states`` into (HF convention: the embeddings, then every block's output, the last
    one after the final norm), or None when not asked for (``output_hidden_states``, default the config's)."""
    return [] if (config.output_hidden_states if wanted is None else wanted) else None


def refuse_attentions(output_attentions: bool | None, what: str) -> None:
    if output_attentions:
        raise ValueError(f"output_attentions: {what}")


def finish_backbone(x: torch.Tensor, cache, hidden: list | None, return_dict: bool | None, config,
                    attentions: list | None = None):
    """A backbone's output: the final (normed) hidden state, the cache, and ``hidden_states`` and ``attentions``
    when collected; a tuple of those present when ``return_dict`` (default the config's) is False."""
    if hidden is not None:
        hidden.append(x)
    out = BaseModelOutputWithPast(last_hidden_state=x, cache=cache, hidden_states=None if hidden is None else tuple(hidden),
                                  attentions=None if attentions is None else tuple(attentions))
    return as_requested(out, return_dict, config)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, in_range: bool = False,
            num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy: logits at t predict labels at t+1; label -100 is ignored. ``labels`` is
    (B, T) like the input ids, T >= 2 (one token predicts nothing: the mean would be 0/0). Labels outside the
    vocabulary are an error (one device sync), unless ``in_range`` says they were checked (they are the input ids,
    as in training). ``num_items`` (transformers Trainer's ``num_items_in_batch``, the labelled tokens of all the
    micro-batches of one accumulated step) divides the sum instead, so the step's gradient is the mean over all
    its tokens however they fall into micro-batches."""
    if labels.shape != logits.shape[:2] or not is_integer(labels):
        raise ValueError(f"labels must be integer (batch, length) = {tuple(logits.shape[:2])} like input_ids, got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    if labels.shape[1] < 2:
        raise ValueError("labels need at least 2 tokens: the loss predicts token t+1 from tokens up to t")
    if not in_range:
        check_labels(labels[:, 1:], logits.shape[-1], "vocab_size")
    # the targets shifted left, the last position ignored: logits stay a view (logits[:, :-1] would copy B T V)
    targets = F.pad(labels[:, 1:].long(), (0, 1), value=-100)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                           reduction="mean" if num_items is None else "sum")
    if num_items is None:
        return loss
    return loss / (num_items.to(loss.device) if torch.is_tensor(num_items) else num_items)


def cache_wanted(backbone: nn.Module, use_cache: bool | None) -> bool:
    """``use_cache`` as transformers' models read it (the config's, off in training, unless given), and off while
    activation checkpointing recomputes blocks in training: the blocks skip the cache then, so a returned one would
    claim tokens it does not hold."""
    wanted = backbone.config.use_cache and not backbone.training if use_cache is None else use_cache
    checkpointing = backbone.training and any(getattr(b, "gradient_checkpointing", False) for b in backbone.layers)
    return bool(wanted) and not checkpointing


class TiedCausalLMHead:
    """The causal-LM head both LMs share: ``lm_head`` tied to ``model.embed_tokens``; ``labels`` gives the mean
    next-token cross-entropy. A subclass names its backbone class in ``backbone``."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    accepts_loss_kwargs = True  # transformers' Trainer then passes num_items_in_batch (see lm_loss)
    backbone: type

    def __init__(self, config):
        super().__init__(config)
        self.model = self.backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: Cache | None = None, use_cache: bool | None = None,
                labels: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, output_attentions: bool | None = None,
                return_dict: bool | None = None,
                num_items_in_batch: int | torch.Tensor | None = None) -> CausalLMOutputWithPast:
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         use_cache=use_cache, inputs_embeds=inputs_embeds, output_hidden_states=output_hidden_states,
                         output_attentions=output_attentions, return_dict=True)
        logits = self.lm_head(out.last_hidden_state)
        loss = (lm_loss(logits, labels, in_range=labels is input_ids, num_items=num_items_in_batch)
                if labels is not None else None)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states,
                                        attentions=out.attentions)
        return as_requested(result, return_dict, self.config)
