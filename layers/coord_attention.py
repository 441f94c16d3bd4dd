"""Coordinate attention (Hou, Zhou, Feng, CVPR 2021, arXiv 2103.02907)."""
from __future__ import annotations

import torch
from torch import nn

from .probe_point import ProbePoint


class CoordAttention(nn.Module):
    """y_c(i, j) = x_c(i, j) * g^h_c(i) * g^w_c(j)  (paper eq. 7), dimensionless gates in (0, 1), with

        z^h_c(h) = 1/W sum_i x_c(h, i),   z^w_c(w) = 1/H sum_j x_c(j, w)      (eqs. 2, 3: strip pooling)
        f = h_swish(BN(F_1([z^h, z^w])))                                    (eq. 4: shared 1x1 conv to mip channels)
        g^h = sigmoid(F_h(f^h)),  g^w = sigmoid(F_w(f^w))                    (eqs. 5, 6: split, 1x1 convs back to C)

    The paper's defaults: mip = max(min_mip, C // reduction) = max(8, C // 32), 1x1 convs with bias,
    BatchNorm and h-swish(x) = x * ReLU6(x + 3) / 6. The gates are named probe points ``attn_h``
    (N, C, H, 1) and ``attn_w`` (N, C, 1, W).
    """

    def __init__(self, channels: int, reduction: int = 32, min_mip: int = 8, bias: bool = True):
        super().__init__()
        for name, value in (("channels", channels), ("reduction", reduction), ("min_mip", min_mip)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"CoordAttention: {name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"CoordAttention: {name} must be >= 1, got {value}")
        self.channels = channels
        self.mip = max(min_mip, channels // reduction)
        self.conv1 = nn.Conv2d(channels, self.mip, 1, bias=bias)
        self.bn1 = nn.BatchNorm2d(self.mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(self.mip, channels, 1, bias=bias)
        self.conv_w = nn.Conv2d(self.mip, channels, 1, bias=bias)
        self.attn_h = ProbePoint()
        self.attn_w = ProbePoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels or not x.is_floating_point():
            raise ValueError(f"CoordAttention: x must be a floating tensor of shape (batch, {self.channels}, H, W), "
                             f"got {x.dtype} {tuple(x.shape)}")
        H, W = x.shape[2:]
        z_h = x.mean(3, keepdim=True)                    # (N, C, H, 1)
        z_w = x.mean(2, keepdim=True).transpose(2, 3)    # (N, C, W, 1)
        f = self.act(self.bn1(self.conv1(torch.cat([z_h, z_w], dim=2))))
        f_h, f_w = f.split([H, W], dim=2)
        a_h = self.attn_h(self.conv_h(f_h).sigmoid())                    # (N, C, H, 1)
        a_w = self.attn_w(self.conv_w(f_w).sigmoid().transpose(2, 3))    # (N, C, 1, W)
        if torch.is_grad_enabled() or torch.jit.is_tracing():  # one graph for torch.jit.trace, with or without grad
            return x * a_h * a_w
        return torch.mul(x, a_h).mul_(a_w)  # inference: the same values with one full-size allocation, not two

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mip={self.mip}"
