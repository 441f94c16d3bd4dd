"""Converting original checkpoints (.pth/.pt/.bin, read without unpickling) into our safetensors format.

A family maps an original key layout onto its own by defining ``checkpoint_filter_fn(state, model)``
in its zoo module (as timm does); without one, keys must already match.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

import zoo
from zoo._registry import get_entry

from .checkpoint import (TORCH_SAVE_MAGIC, CheckpointError, in_state_dtype, load_state_into, model_metadata,
                         read_metadata, save_checkpoint)


def _first_sentence(err: Exception) -> str:
    """What went wrong, in the first sentence of the message of the unpickler's error that torch hides (``raise
    ... from None``) behind advice to load with weights_only=False, else of ``err``; without colour codes."""
    reason = err.__context__ if err.__suppress_context__ and err.__context__ is not None else err
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(reason)).strip()
    sentence = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return f"{type(reason).__name__}: {sentence}"


def read_original(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an original PyTorch checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers
    only, nothing is unpickled. A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped, and the
    ``module.`` prefix of a state dict saved from a DDP / DataParallel wrapper is dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"original checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(24)
    if head[8:9] == b"{" and not is_safetensors(path):
        raise CheckpointError(f"{path} is a truncated safetensors file: its header needs "
                              f"{8 + int.from_bytes(head[:8], 'little')} bytes, the file has {path.stat().st_size}")
    if is_safetensors(path):  # by content, whatever the name
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # safetensors' own error type is not exported stably
            raise CheckpointError(f"{path} is not a readable safetensors file ({type(err).__name__}: "
                                  f"{str(err)[:300]}); it may be truncated or corrupt") from err
    if not head.startswith(TORCH_SAVE_MAGIC):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.save) or safetensors file: it starts "
                              f"with {head!r}" + ("; it is a Git LFS pointer: run `git lfs pull` to fetch the file"
                                                  if head.startswith(b"version https://git-lfs") else ""))
    try:
        with open(path, "rb") as f:  # a file object: torch.load would read a *.safetensors path as safetensors
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path} could not be read with torch.load(weights_only=True): it holds pickled "
                              f"objects beyond tensors, or is corrupt ({_first_sentence(err)}). "
                              "Refusing to unpickle it.") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (found {type(obj).__name__})")
    others = sorted(str(k) for k, v in obj.items() if not torch.is_tensor(v))
    if others:
        raise CheckpointError(f"{path} does not hold a state dict of tensors: entries {others[:10]} are not "
                              "tensors (a training checkpoint? save its model's state_dict() alone)")
    if obj and all(str(k).startswith("module.") for k in obj):  # saved from a DDP / DataParallel wrapper
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether the file starts as safetensors does: an 8-byte header length, then a JSON header that fits."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 8 + int.from_bytes(head[:8], "little") <= os.path.getsize(path)


def convert(original: str | os.PathLike, model_name: str, out: str | os.PathLike, **overrides) -> Path:
    """Original checkpoint -> our safetensors: read safely, remap keys with the family's filter, load strictly, save.
    ``overrides``: the config the original was trained with, where it is not the registered default (recorded in
    the file, so ``load_checkpoint`` rebuilds that model). An original whose floating tensors share one dtype
    keeps it; one of mixed dtypes takes the model's. A safetensors original keeps its metadata (a recipe name, say)
    beside the new file's own."""
    state = read_original(original)
    model = zoo.create_model(model_name, **overrides)
    filter_fn = getattr(sys.modules[get_entry(model_name).factory.__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    load_state_into(in_state_dtype(model, state), state, source=str(original))  # a float64 or half original stays so
    kept = read_metadata(original) if is_safetensors(original) else {}
    extra = {k: v for k, v in kept.items() if k not in model_metadata(model)} | {"converted_from": Path(original).name}
    return save_checkpoint(model, out, extra_metadata=extra)
