"""Checkpoint I/O (safetensors + metadata), the manifest of published checkpoints, converters."""
from .checkpoint import (CheckpointError, ConfigMismatchWarning, NonFiniteWeightsWarning, load_checkpoint, load_into,
                         load_state_into, read_metadata, save_checkpoint)
from .manifest import checkpoints_for, load_pretrained, published_checkpoints, sha256_of

__all__ = ["save_checkpoint", "load_checkpoint", "load_into", "load_state_into", "read_metadata", "CheckpointError",
           "ConfigMismatchWarning", "NonFiniteWeightsWarning",
           "published_checkpoints", "checkpoints_for", "load_pretrained", "sha256_of"]
