"""Checks the zoo's models share: config sizes are integers >= 1, a model's floating input has its dtype, and
images are (batch, C, H, W)."""
from __future__ import annotations

import numbers

import torch
from torch import nn


def is_int(value) -> bool:
    """An integer (Python's or numpy's), and not a bool (which Python counts as one)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sizes(config, *names: str) -> None:
    """The config's sizes ``names`` (integers, or tuples or lists of them) are >= 1: 0 heads divided by zero, and 0
    features, classes or widths built a model whose output no input changes. A ValueError naming the key."""
    for name in names:
        value = getattr(config, name)
        many = isinstance(value, (tuple, list))
        if not all(is_int(v) and v >= 1 for v in (value if many else (value,))):
            raise ValueError(f"{type(config).__name__}: {name} must be {'integers' if many else 'an integer'} >= 1, "
                             f"got {value!r}")


def check_dtype(x: torch.Tensor, like: torch.Tensor, who: str, name: str = "x") -> None:
    """A floating input must have the model's dtype (that of ``like``, one of its parameters), unless autocast casts
    both (it never casts float64): a TypeError naming the fix, not torch's "mat1 and mat2 must have the same dtype"."""
    cast = torch.is_autocast_enabled(x.device.type) and torch.float64 not in (x.dtype, like.dtype)
    if x.dtype != like.dtype and not cast:
        raise TypeError(f"{who}: {name} is {x.dtype} but the model is {like.dtype}; convert one to the other "
                        f"(x.to({like.dtype}) or model.to(x.dtype))")


def check_images(stem: nn.Module, args: tuple) -> None:
    """Forward pre-hook: the stem's (a Conv2d's, or a patch embedding's ``proj``'s) input must be floating images
    (batch, in_chans, H, W) of the model's dtype, a named error rather than the conv's own."""
    x, channels = args[0], (stem if isinstance(stem, nn.Conv2d) else stem.proj).in_channels
    if x.dim() != 4 or x.shape[1] != channels or not x.is_floating_point():
        raise ValueError(f"x must be floating images of shape (batch, {channels}, H, W), got {x.dtype} "
                         f"{tuple(x.shape)}")
    check_dtype(x, next(stem.parameters()), "images")
