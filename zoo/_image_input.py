"""The input check that the zoo's image models share: floating images (batch, in_chans, H, W), named."""
from __future__ import annotations

from torch import nn


def check_images(stem: nn.Module, args: tuple) -> None:
    """Forward pre-hook: the stem's (a Conv2d's, or a patch embedding's ``proj``'s) input must be floating images
    (batch, in_chans, H, W), a named error rather than the conv's own."""
    x, channels = args[0], getattr(stem, "in_channels", None) or stem.proj.in_channels
    if x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        raise ValueError(f"x must be floating images of shape (batch, {channels}, H, W), got {x.dtype} "
                         f"{tuple(x.shape)}")
