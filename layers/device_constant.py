"""Python numbers sent to a device without waiting for it."""
from __future__ import annotations

import torch


def device_constant(values, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``values`` (numbers or nested lists) as a tensor of ``dtype`` on ``device``, built on the host and copied
    non-blocking: ``torch.tensor(values, device=...)`` or ``new_tensor`` copy blocking, which on a GPU waits for
    every queued kernel (a per-forward constant would stall each training step)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)
