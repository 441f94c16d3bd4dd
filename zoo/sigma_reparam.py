"""sigmaReparam models (Zhai et al., "Stabilizing Transformer Training by Preventing Attention Entropy Collapse",
ICML 2023, arXiv 2303.06296): existing architectures converted by ``layers.apply_sigma_reparam``.

Vision Transformers: timm's ViT-Ti/S/B with every Linear (qkv, proj, fc1, fc2, head) and the patch-embedding
Conv2d reparametrised, W_hat = (gamma / sigma(W)) W, and every LayerNorm removed, as the paper trains its
"sigmaReparam without LayerNorm" ViT-B. Registered with our registry and with timm's. Headless ViT-B:
85,798,656 parameters in timm, 85,760,305 converted (38,400 norm parameters removed, 49 gammas added).

Language models: the Grassmann paper's Transformer baseline with every Linear reparametrised except ``lm_head``
(its weight is the token embedding, tied); LayerNorms kept unless ``remove_norms=True``. Their own config type
(``paperzoo_transformer_lm_sigma``) makes ``save_pretrained`` / ``AutoModelForCausalLM.from_pretrained`` rebuild
the converted model, so gamma, u and v load back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import adapt_input_conv, build_model_with_cfg, generate_default_cfgs, vision_transformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from layers import SigmaReparam, add_attention_probes, apply_sigma_reparam
from layers.sigma_reparam import top_singular

from ._inputs import check_images
from ._registry import Paper, register_model, register_timm_model
from .transformer_lm import TransformerLMArgs, TransformerLMConfig, TransformerLMForCausalLM, TransformerLMModel

PAPER = Paper(family="sigma_reparam", title="Stabilizing Transformer Training by Preventing Attention Entropy Collapse",
              arxiv="2303.06296", authors="Zhai, Likhomanenko, Littwin, Busbridge, Ramapuram, Zhang, Gu, Susskind",
              year=2023)

# ---- Vision Transformers, timm style ----

VIT_SIZES = {"tiny": dict(embed_dim=192, num_heads=3), "small": dict(embed_dim=384, num_heads=6),
             "base": dict(embed_dim=768, num_heads=12)}


def _cfg(**kwargs) -> dict:
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
            "interpolation": "bicubic", "fixed_input_size": True, "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj", "classifier": "head",
            "license": "apache-2.0", **kwargs}


default_cfgs = generate_default_cfgs({f"vit_{size}_patch16_224_sigma": _cfg() for size in VIT_SIZES})


class SigmaVisionTransformer(VisionTransformer):
    """timm's ``VisionTransformer``, converted as it is built: every Linear/Conv2d sigma-reparametrised and
    (``remove_norms``) every LayerNorm replaced by Identity; ``reparam=False`` (with ``remove_norms=False``) keeps
    timm's plain pre-LN ViT, the paper's baseline. Every block's attention gets the probe point
    ``blocks.N.attn.probs``. Being built converted, it loads a converted checkpoint through timm's own pretrained
    path; ``reset_classifier`` gives a reparametrised model a reparametrised new head."""

    def __init__(self, *args, remove_norms: bool = True, reparam: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.patch_embed.register_forward_pre_hook(check_images)
        add_attention_probes(self)
        if reparam:
            apply_sigma_reparam(self, remove_norms=remove_norms)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if isinstance(self.patch_embed.proj, SigmaReparam) and type(self.head) is nn.Linear:
            apply_sigma_reparam(self, include=("head",))


def _carried_reparam(weight: torch.Tensor, gamma: torch.Tensor, sigma: torch.Tensor) -> dict[str, torch.Tensor]:
    """u, v, gamma for a kernel W' = A(W) that a linear map A (timm's channel adaptation, patch resampling) made
    from a reparametrised W: W' keeps the effective scale, (gamma' / s_1(W')) W' = A((gamma / sigma) W), so
    gamma' = (gamma / sigma) s_1(W'), with u', v' the top singular vectors of W' flattened."""
    start = top_singular(weight)
    return {**start, "gamma": (gamma.float() / sigma.float() * start["gamma"].float()).to(gamma.dtype)}


def _fit_vit_state(state_dict: dict, model: nn.Module, adapt_kernel=None) -> dict:
    """timm's ViT filter (pos_embed resampled to ``img_size``, the patch kernel to ``patch_size``); a patch kernel
    that changes shape, here or in ``adapt_kernel`` (what timm's loader will do to it next), gets u, v and gamma of
    its new shape that keep its effective weight."""
    proj = "patch_embed.proj."
    old = {k: state_dict[proj + k] for k in ("weight", "u", "v", "gamma") if proj + k in state_dict}
    state_dict = vision_transformer.checkpoint_filter_fn(state_dict, model)
    if len(old) == 4:
        kernel = state_dict[proj + "weight"]
        kernel = kernel if adapt_kernel is None else adapt_kernel(kernel)
        if kernel.shape != old["weight"].shape:
            sigma = old["u"] @ old["weight"].flatten(1) @ old["v"]
            state_dict |= {proj + k: v for k, v in _carried_reparam(kernel, old["gamma"], sigma).items()}
    return state_dict


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """A checkpoint of a converted ViT fitted to this model's ``img_size`` and ``patch_size`` (``zoo convert``,
    which then loads it strictly: another ``in_chans`` or ``num_classes`` is a named shape mismatch there)."""
    return _fit_vit_state(state_dict, model)


def _timm_pretrained_filter(state_dict: dict, model: nn.Module) -> dict:
    """``checkpoint_filter_fn`` for timm's ``pretrained=True`` loader, which then adapts the patch kernel to
    ``in_chans`` and drops the head's weight and bias when ``num_classes`` differs from the weights' (its
    config's): the head's gamma, u and v go with them (the new head keeps its own), and the adapted kernel gets
    its u, v and gamma here."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    in_chans, weights_chans = model.patch_embed.proj.in_channels, (cfg.get("input_size") or (3,))[0]

    def adapt(kernel):  # what timm's loader will do next
        if in_chans != weights_chans and kernel.shape[1] != in_chans:
            return adapt_input_conv(in_chans, kernel, base_chans=weights_chans)
        return kernel
    state_dict = _fit_vit_state(state_dict, model, adapt)
    if model.num_classes != cfg.get("num_classes", model.num_classes):  # timm will drop head.weight and head.bias
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    return state_dict


_WEIGHT_SOURCES = ("file", "state_dict", "hf_hub_id", "url")


def _create_vit_sigma(size: str, pretrained: bool = False, remove_norms: bool = True, reparam: bool = True,
                      **kwargs) -> VisionTransformer:
    """timm's VisionTransformer of ``size`` (patch 16, depth 12) as a ``SigmaVisionTransformer``. ``pretrained``
    loads the weights that ``pretrained_cfg_overlay`` names (file, state_dict, hf_hub_id or url) with timm's
    loader: a checkpoint of the converted model, adapted to ``num_classes`` and ``in_chans`` as timm does."""
    variant = f"vit_{size}_patch16_224_sigma"
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not any(overlay.get(k) for k in _WEIGHT_SOURCES):
        raise ValueError(f"{variant}: no published sigmaReparam checkpoint is converted yet; load your own with "
                         f"timm.create_model({variant!r}, pretrained=True, pretrained_cfg_overlay=dict(file="
                         "'converted.safetensors')), a state dict of this converted model (or build with "
                         "pretrained=False and use weights.load_into)")
    if not reparam and remove_norms:
        raise ValueError(f"{variant}: reparam=False is the LayerNorm baseline; pass remove_norms=False with it")
    out_indices = kwargs.pop("out_indices", 3)  # features_only=True: the last 3 blocks, as timm's ViTs
    model_args = dict(patch_size=16, depth=12, **VIT_SIZES[size]) | kwargs
    if not isinstance(model_args["depth"], int) or model_args["depth"] < 1:  # 0 failed later, naming the probes
        raise ValueError(f"{variant}: depth must be an integer >= 1 (transformer blocks), got {model_args['depth']!r}")
    return build_model_with_cfg(SigmaVisionTransformer, variant, pretrained,
                                pretrained_filter_fn=_timm_pretrained_filter,
                                feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
                                remove_norms=remove_norms, reparam=reparam, **model_args)


@timm.models.register_model
def vit_tiny_patch16_224_sigma(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Ti/16 with sigmaReparam and no LayerNorm: 5,707,866 parameters (timm's ViT-Ti: 5,717,416)."""
    return _create_vit_sigma("tiny", pretrained, **kwargs)


@timm.models.register_model
def vit_small_patch16_224_sigma(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 with sigmaReparam and no LayerNorm: 22,031,514 parameters (timm's ViT-S: 22,050,664)."""
    return _create_vit_sigma("small", pretrained, **kwargs)


@timm.models.register_model
def vit_base_patch16_224_sigma(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16 with sigmaReparam and no LayerNorm: 86,529,306 parameters (headless: 85,760,305)."""
    return _create_vit_sigma("base", pretrained, **kwargs)


@dataclass
class ViTSigmaConfig:
    num_classes: int = 1000
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    depth: int = 12
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    remove_norms: bool = True
    reparam: bool = True  # False (with remove_norms False): timm's plain ViT, the paper's baseline


for _size in VIT_SIZES:
    register_timm_model(f"vit_{_size}_patch16_224_sigma", ViTSigmaConfig(), PAPER, __name__)


# ---- language models: the Transformer LM baseline through the same converter ----

class TransformerLMSigmaConfig(TransformerLMConfig):
    model_type = "paperzoo_transformer_lm_sigma"

    remove_norms: bool = False


class TransformerLMSigmaModel(TransformerLMModel):
    """``TransformerLMModel`` with every Linear converted by ``apply_sigma_reparam`` (LayerNorms removed with
    ``config.remove_norms``)."""

    config_class = TransformerLMSigmaConfig

    def __init__(self, config: TransformerLMSigmaConfig):
        super().__init__(config)
        apply_sigma_reparam(self, remove_norms=config.remove_norms)

    def _init_weights(self, module: nn.Module) -> None:
        """``from_pretrained`` of a file without gamma, u, v (the plain LM's, or one folded by
        ``remove_sigma_reparam``): they start as conversion sets them, from the loaded weight, so the model computes
        what the file's weights compute (transformers still lists them as newly initialised)."""
        super()._init_weights(module)
        if isinstance(module, SigmaReparam):
            module.restart_reparam([n for n in ("u", "v", "gamma")
                                    if not getattr(getattr(module, n), "_is_hf_initialized", False)])


class TransformerLMSigmaForCausalLM(TransformerLMForCausalLM):
    """``TransformerLMForCausalLM`` over ``TransformerLMSigmaModel``: every Linear but the tied ``lm_head``
    reparametrised."""

    config_class = TransformerLMSigmaConfig
    backbone = TransformerLMSigmaModel


AutoConfig.register(TransformerLMSigmaConfig.model_type, TransformerLMSigmaConfig)
AutoModel.register(TransformerLMSigmaConfig, TransformerLMSigmaModel)
AutoModelForCausalLM.register(TransformerLMSigmaConfig, TransformerLMSigmaForCausalLM)


@dataclass
class TransformerLMSigmaArgs(TransformerLMArgs):
    remove_norms: bool = False


def build_transformer_lm_sigma(args: TransformerLMSigmaArgs) -> TransformerLMSigmaForCausalLM:
    return TransformerLMSigmaForCausalLM(TransformerLMSigmaConfig(**dataclasses.asdict(args)))


@register_model(TransformerLMSigmaArgs(num_hidden_layers=6), PAPER)
def transformer_lm_13m_sigma(args: TransformerLMSigmaArgs) -> nn.Module:
    """transformer_lm_13m with its 24 block Linears reparametrised: 12,585,496 parameters (12,585,472 + 24)."""
    return build_transformer_lm_sigma(args)


@register_model(TransformerLMSigmaArgs(num_hidden_layers=12), PAPER)
def transformer_lm_17m_sigma(args: TransformerLMSigmaArgs) -> nn.Module:
    """transformer_lm_17m with its 48 block Linears reparametrised: 17,324,080 parameters (17,324,032 + 48)."""
    return build_transformer_lm_sigma(args)
