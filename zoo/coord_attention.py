"""Coordinate attention in mobile networks (Hou, Zhou, Feng, CVPR 2021, arXiv 2103.02907), as timm models.

MobileNetV2 variants are timm ``EfficientNet`` models whose inverted residuals with expansion 6 carry an
attention module after the depthwise conv (timm's ``se`` slot, so keys read ``blocks.S.I.se.*``):
coordinate attention (ours), squeeze-excitation or CBAM for the paper's ablation (reduction 24, which
gives the 3.89M parameters the paper reports for both). MobileNeXt (Zhou et al., ECCV 2020) is built
from sandglass blocks with the block structure of the authors' code. Every name is registered with our
registry and with timm's, so ``timm.create_model``, ``features_only=True``, ``reset_classifier`` and
timm's data config work.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import timm
import torch
from timm.layers import ConvNormAct, SelectAdaptivePool2d, get_device_dtype, make_divisible
from timm.layers.cbam import CbamModule
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import feature_take_indices
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import decode_arch_def, efficientnet_init_weights, round_channels
from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
from torch import nn

from layers import CoordAttention, SandglassBlock

from ._inputs import check_images
from ._registry import Paper, register_timm_model

PAPER = Paper(family="coord_attention", title="Coordinate Attention for Efficient Mobile Network Design",
              arxiv="2103.02907", authors="Hou, Zhou, Feng", year=2021)

OFFICIAL_URL = "https://github.com/houqb/CoordAttention/raw/main/mbv2_ca.pth"

# MobileNetV2 (Sandler et al. 2018, Table 2): t, c, n, s per stage, in timm's arch-string notation
MBV2_ARCH = ("ds_r1_k3_s1_c16", "ir_r2_k3_s2_e6_c24", "ir_r3_k3_s2_e6_c32", "ir_r4_k3_s2_e6_c64",
             "ir_r3_k3_s1_e6_c96", "ir_r3_k3_s2_e6_c160", "ir_r1_k3_s1_e6_c320")
# MobileNeXt (Zhou et al. 2020, Table 3): t (reduction), c, n, s per stage; the stem has 32 channels
MOBILENEXT_STAGES = ((2, 96, 1, 2), (6, 144, 1, 1), (6, 192, 3, 2), (6, 288, 3, 2), (6, 384, 4, 1),
                     (6, 576, 4, 2), (6, 960, 3, 1), (6, 1280, 1, 1))
ABLATION_REDUCTION = 24  # SE / CBAM hidden width C // 24: 3,888,208 / 3,889,808 parameters (paper: 3.89M)


def attention_layer(kind: str):
    """A module factory ``f(channels) -> nn.Module`` for ``kind`` in {"ca", "se", "cbam"}; it accepts and ignores
    the block's activation, device and dtype keywords that timm's builder passes."""
    makers = {
        "ca": lambda ch: CoordAttention(ch),
        "se": lambda ch: SqueezeExcite(ch, rd_ratio=1 / ABLATION_REDUCTION, act_layer=nn.ReLU),
        "cbam": lambda ch: CbamModule(ch, rd_ratio=1 / ABLATION_REDUCTION, mlp_bias=True),
    }
    if kind not in makers:
        raise ValueError(f"attention kind must be one of {sorted(makers)}, got {kind!r}")

    def make(channels: int, act_layer=None, device=None, dtype=None) -> nn.Module:
        return makers[kind](channels)

    return make


class MobileNeXt(nn.Module):
    """MobileNeXt-1.0 (Zhou et al., ECCV 2020): stem conv 3x3/2 (32, BN, ReLU6), the sandglass stages of
    ``MOBILENEXT_STAGES``, global pooling, dropout, linear classifier (no 1x1 head conv: the last stage has
    1280 channels). A stage's first block follows the authors' code: both depthwise convs only when t == 2
    or the stage has a single stride-1 block; otherwise the first is dropped, and the last too at stride 1.
    The reduced width is in_chs // t, raised to make_divisible(ceil(out_chs / 6), 16) when smaller.
    As in timm's EfficientNet: block k of K drops its residual branch at rate drop_path_rate * k / K, weights
    start from timm's ``_init_weight_goog``, and ``feature_info`` lists the stem and the last stage at each stride."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.2, global_pool: str = "avg",
                 attn_layer=None, attn_position: str = "first_dw", drop_path_rate: float = 0.0):
        super().__init__()
        self.in_chans, self.drop_rate, self.grad_checkpointing = in_chans, drop_rate, False
        self.conv_stem = ConvNormAct(in_chans, 32, 3, stride=2, act_layer=nn.ReLU6)
        self.conv_stem.conv.register_forward_pre_hook(check_images)  # also under timm's features_only wrapper
        features = {2: dict(num_chs=32, reduction=2, module="conv_stem")}  # reduction -> the last module reaching it
        stages, chs, reduction, k, num_blocks = [], 32, 2, 0, sum(n for _, _, n, _ in MOBILENEXT_STAGES)
        for t, c, n, s in MOBILENEXT_STAGES:
            blocks = []
            for i in range(n):
                stride = s if i == 0 else 1
                full = i > 0 or t == 2 or (n == 1 and s == 1)
                reduce_chs = chs // t
                if reduce_chs < c / 6:
                    reduce_chs = make_divisible(math.ceil(c / 6), 16)
                blocks.append(SandglassBlock(chs, c, stride, reduce_chs, dw_first=full, dw_last=full or stride == 2,
                                             attn_layer=attn_layer, attn_position=attn_position,
                                             drop_path_rate=drop_path_rate * k / num_blocks))
                chs, k = c, k + 1
            reduction *= s
            features[reduction] = dict(num_chs=c, reduction=reduction, module=f"blocks.{len(stages)}")
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.feature_info = list(features.values())
        self.num_features = self.head_hidden_size = chs
        self.reset_classifier(num_classes, global_pool)
        efficientnet_init_weights(self)

    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^conv_stem", blocks=r"^blocks\.(\d+)" if coarse else r"^blocks\.(\d+)\.(\d+)")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            # timm's convention: no pooling (global_pool='') leaves the feature map unflattened
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.classifier = (nn.Linear(self.num_features, num_classes, **get_device_dtype(self)) if num_classes > 0
                           else nn.Identity())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)  # each stage recomputed in backward
        return self.blocks(x)

    def _stage_ends(self) -> list[int]:
        """For each ``feature_info`` entry, how many stages run before it is reached (0: the stem)."""
        return [0] + [int(f["module"].split(".")[1]) + 1 for f in self.feature_info[1:]]

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's interface: the maps of the ``feature_info`` entries ``indices`` (None: all; n: the last n), and,
        unless ``intermediates_only``, the final features (after the last stage run; ``stop_early`` runs no
        stage past the last index taken). MobileNeXt has no final norm, so ``norm`` changes nothing."""
        if output_fmt != "NCHW":
            raise ValueError(f"MobileNeXt.forward_intermediates: output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        ends = self._stage_ends()
        x = self.conv_stem(x)
        intermediates = [x] if 0 in take else []
        taken_after = {ends[i] - 1: i for i in take if i}
        stages = self.blocks[:ends[max_index]] if stop_early or intermediates_only else self.blocks
        for k, stage in enumerate(stages):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if k in taken_after:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last of ``indices`` (and, with ``prune_head``, the classifier); returns the
        indices kept, as timm's models do."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        stages = len(self.blocks)
        self.blocks = self.blocks[:self._stage_ends()[max_index]]
        if prune_head or len(self.blocks) < stages:  # a truncated model's classifier no longer fits its features
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.reset_classifier(0, "")
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = nn.functional.dropout(self.global_pool(x), self.drop_rate, self.training)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---- the official checkpoint's key layout (houqb/CoordAttention mbv2_ca.py) onto timm's EfficientNet ----

_OFFICIAL_DEPTHS = tuple(int(re.search(r"_r(\d+)_", s)[1]) for s in MBV2_ARCH)  # official features.1 .. 17
_OFFICIAL_BLOCK = dict(enumerate((f"blocks.{s}.{i}" for s, d in enumerate(_OFFICIAL_DEPTHS) for i in range(d)), 1))
_DS_PARTS = {"0": "conv_dw", "1": "bn1", "3": "conv_pw", "4": "bn2"}
_IR_PARTS = {"0": "conv_pw", "1": "bn1", "3": "conv_dw", "4": "bn2", "6.conv1": "se.conv1", "6.bn1": "se.bn1",
             "6.conv2": "se.conv_h", "6.conv3": "se.conv_w", "7": "conv_pwl", "8": "bn3"}
_FIXED = {"features.0.0": "conv_stem", "features.0.1": "bn1", "conv.0": "conv_head", "conv.1": "bn2",
          "classifier.1": "classifier"}
_BLOCK_KEY = re.compile(r"features\.(\d+)\.conv\.(.+)")


def _official_to_timm(module: str) -> str | None:
    if module in _FIXED:
        return _FIXED[module]
    match = _BLOCK_KEY.fullmatch(module)
    if not match or int(match[1]) not in _OFFICIAL_BLOCK:
        return None
    parts = _DS_PARTS if match[1] == "1" else _IR_PARTS
    return f"{_OFFICIAL_BLOCK[int(match[1])]}.{parts[match[2]]}" if match[2] in parts else None


def checkpoint_filter_fn(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map the authors' MBV2-CA keys (``features.2.conv.6.conv1.weight``, 490 tensors) onto timm's layout
    (``blocks.1.0.se.conv1.weight``); a state already in timm's layout keeps its keys. A key that maps to
    nothing keeps its name, so the strict load that follows names it as unexpected. For a feature model the
    head it lacks (``conv_head``, ``bn2``, ``classifier``) is then dropped, and the rest loads strictly too."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("features.") for k in state):
        mapped = {}
        for key, value in state.items():
            module, _, leaf = key.rpartition(".")
            ours = _official_to_timm(module)
            mapped[f"{ours}.{leaf}" if ours else key] = value
        state = mapped
    if isinstance(model, EfficientNetFeatures):
        state = {k: v for k, v in state.items() if not k.startswith(("conv_head.", "bn2.", "classifier."))}
    return state


# ---- builders (timm style: one private builder per architecture, short registered functions) ----

def _cfg(url: str = "", **kwargs) -> dict:
    return {"url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
            "interpolation": "bilinear", "mean": timm.data.IMAGENET_DEFAULT_MEAN, "std": timm.data.IMAGENET_DEFAULT_STD,
            "first_conv": "conv_stem.conv", "classifier": "classifier", "license": "mit", **kwargs}


default_cfgs = generate_default_cfgs({
    "mobilenetv2_ca_100.in1k": _cfg(url=OFFICIAL_URL, first_conv="conv_stem"),
    "mobilenetv2_se_100": _cfg(first_conv="conv_stem"),
    "mobilenetv2_cbam_100": _cfg(first_conv="conv_stem"),
    "mobilenext_100": _cfg(),
    "mobilenext_ca_100": _cfg(),
})


def _create_mobilenetv2(variant: str, attn: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's MobileNetV2-1.0 with ``attn`` after the depthwise conv of every expansion-6 inverted residual.
    ``pretrained=True`` reads our manifest's checkpoint (converted from the authors' file on first use) unless
    ``pretrained_cfg_overlay`` names a ``file`` or ``url``; timm then adapts the classifier and stem."""
    kwargs.setdefault("drop_rate", 0.1)  # the authors' classifier dropout (mbv2_ca.py)
    features_only = kwargs.pop("features_only", False)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained and not (overlay.get("file") or overlay.get("url")):
        from weights.manifest import pretrained_entry, resolve

        overlay["file"] = str(resolve(pretrained_entry(variant)))
    if features_only:
        overlay["classifier"] = None  # the filter drops the head, so timm must not relax the load for its classifier
    arch = [[s + "_se1" if s.startswith("ir_") else s] for s in MBV2_ARCH]
    model = build_model_with_cfg(
        EfficientNetFeatures if features_only else EfficientNet, variant, pretrained, pretrained_cfg_overlay=overlay,
        kwargs_filter=("num_classes", "num_features", "head_conv", "global_pool") if features_only else None,
        pretrained_filter_fn=checkpoint_filter_fn, block_args=decode_arch_def(arch), num_features=1280, stem_size=32,
        round_chs_fn=round_channels, act_layer=nn.ReLU6, norm_layer=nn.BatchNorm2d, se_layer=attention_layer(attn),
        **kwargs)
    if features_only:  # as timm's _create_effnet
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    model.conv_stem.register_forward_pre_hook(check_images)
    return model


def _create_mobilenext(variant: str, pretrained: bool = False, **kwargs) -> MobileNeXt:
    return build_model_with_cfg(MobileNeXt, variant, pretrained,
                                feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4)), **kwargs)


@timm.models.register_model
def mobilenetv2_ca_100(pretrained: bool = False, **kwargs) -> EfficientNet:
    """MobileNetV2-1.0 with coordinate attention (mip = max(8, C // 32)): 3,950,648 parameters."""
    return _create_mobilenetv2("mobilenetv2_ca_100", "ca", pretrained, **kwargs)


@timm.models.register_model
def mobilenetv2_se_100(pretrained: bool = False, **kwargs) -> EfficientNet:
    """MobileNetV2-1.0 with squeeze-excitation (hidden C // 24, ReLU, sigmoid): 3,888,208 parameters."""
    return _create_mobilenetv2("mobilenetv2_se_100", "se", pretrained, **kwargs)


@timm.models.register_model
def mobilenetv2_cbam_100(pretrained: bool = False, **kwargs) -> EfficientNet:
    """MobileNetV2-1.0 with CBAM (channel MLP C // 24 with biases, 7x7 spatial conv + BN): 3,889,808 parameters."""
    return _create_mobilenetv2("mobilenetv2_cbam_100", "cbam", pretrained, **kwargs)


@timm.models.register_model
def mobilenext_100(pretrained: bool = False, **kwargs) -> MobileNeXt:
    """MobileNeXt-1.0: 3,535,416 parameters."""
    return _create_mobilenext("mobilenext_100", pretrained, **kwargs)


@timm.models.register_model
def mobilenext_ca_100(pretrained: bool = False, **kwargs) -> MobileNeXt:
    """MobileNeXt-1.0 with coordinate attention after the first depthwise conv: 3,971,626 parameters
    (``attn_position="last_dw"``: 4,088,113, the paper's 4.09M)."""
    kwargs.setdefault("attn_layer", attention_layer("ca"))
    return _create_mobilenext("mobilenext_ca_100", pretrained, **kwargs)


# ---- our registry: the same names (plus timm's own mobilenetv2_100 baseline) ----

@dataclass
class ImageClassifierConfig:
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.2
    drop_path_rate: float = 0.0  # stochastic depth, as timm's own create_model takes it


@dataclass
class MobileNeXtCAConfig(ImageClassifierConfig):
    attn_position: str = "first_dw"  # or "last_dw" (reproduces the paper's 4.09M parameters)


def _check_inputs(model: nn.Module) -> None:
    """timm's own mobilenetv2_100 gets the input check that ours carry."""
    model.conv_stem.register_forward_pre_hook(check_images)


# the MobileNetV2 variants share the CA authors' classifier dropout of 0.1, so the ablation compares like with like
register_timm_model("mobilenetv2_100", ImageClassifierConfig(drop_rate=0.1), PAPER, __name__, finish=_check_inputs)
for _name in ("mobilenetv2_ca_100", "mobilenetv2_se_100", "mobilenetv2_cbam_100"):
    register_timm_model(_name, ImageClassifierConfig(drop_rate=0.1), PAPER, __name__)
register_timm_model("mobilenext_100", ImageClassifierConfig(), PAPER, __name__)
register_timm_model("mobilenext_ca_100", MobileNeXtCAConfig(), PAPER, __name__)
