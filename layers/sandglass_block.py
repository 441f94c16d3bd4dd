"""MobileNeXt's sandglass block (Zhou, Hou, Chen, Feng, Yan, "Rethinking Bottleneck Structure for Efficient Mobile
Network Design", ECCV 2020), with an optional attention module as the coordinate-attention paper places it."""
from __future__ import annotations

import torch
from timm.layers import ConvNormAct, DropPath
from torch import nn


class SandglassBlock(nn.Module):
    """MobileNeXt's sandglass block, y = dw2_bn(expand_relu6(reduce_bn(attn(dw1_relu6(x))))) + DropPath skip:
    depthwise 3x3 (BN, ReLU6) -> 1x1 to ``reduce_chs`` (BN, linear) -> 1x1 to ``out_chs`` (BN, ReLU6) ->
    depthwise 3x3 with the stride (BN, linear); the skip (input plus the branch, dropped per sample with
    probability ``drop_path_rate`` in training) only when stride is 1 and ``in_chs == out_chs``. Following the
    authors' code, either depthwise conv may be absent (``dw_first``/``dw_last``). Attention sits after the
    first depthwise conv (``attn_position="first_dw"``, the coordinate-attention paper's Fig. 4b) or before
    the last one (``"last_dw"``)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, reduce_chs: int, dw_first: bool = True,
                 dw_last: bool = True, attn_layer=None, attn_position: str = "first_dw", drop_path_rate: float = 0.0):
        super().__init__()
        if stride not in (1, 2) or (stride == 2 and not dw_last):
            raise ValueError(f"SandglassBlock: stride must be 1, or 2 with dw_last=True; got stride={stride}, "
                             f"dw_last={dw_last}")
        if attn_position not in ("first_dw", "last_dw"):
            raise ValueError(f"SandglassBlock: attn_position must be 'first_dw' or 'last_dw', got {attn_position!r}")
        relu6 = nn.ReLU6
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw1 = ConvNormAct(in_chs, in_chs, 3, groups=in_chs, act_layer=relu6) if dw_first else nn.Identity()
        use = attn_layer is not None
        self.attn1 = attn_layer(in_chs) if use and dw_first and attn_position == "first_dw" else nn.Identity()
        self.conv_reduce = ConvNormAct(in_chs, reduce_chs, 1, apply_act=False)
        self.conv_expand = ConvNormAct(reduce_chs, out_chs, 1, act_layer=relu6)
        self.attn2 = attn_layer(out_chs) if use and dw_last and attn_position == "last_dw" else nn.Identity()
        self.conv_dw2 = (ConvNormAct(out_chs, out_chs, 3, stride=stride, groups=out_chs, apply_act=False)
                         if dw_last else nn.Identity())
        self.drop_path = DropPath(drop_path_rate) if self.has_skip and drop_path_rate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attn1(self.conv_dw1(x))
        y = self.conv_dw2(self.attn2(self.conv_expand(self.conv_reduce(y))))
        return self.drop_path(y) + x if self.has_skip else y
