"""A block without mixed precision: for recursions and estimates that must keep their parameters' dtype."""
from __future__ import annotations

import contextlib

import torch


def autocast_off(device_type: str):
    """A block without autocast for ``device_type``; a no-op where autocast is off or does not exist (meta, where
    ``torch.autocast(..., enabled=False)`` itself fails)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
