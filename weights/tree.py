"""Nested state (optimizer, scheduler, RNG) as safetensors: tensors stored flat, the rest as JSON. No pickle."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .checkpoint import CheckpointError, save_safetensors

_TENSOR = "__tensor__"


def flatten(obj: Any, prefix: str = "", tensors: dict | None = None) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``obj`` into a JSON skeleton and a flat ``{key: tensor}``; dict keys keep their type via a tag."""
    tensors = {} if tensors is None else tensors
    if torch.is_tensor(obj):
        key = prefix or "root"
        tensors[key] = obj.detach().contiguous().cpu()
        return {_TENSOR: key}, tensors
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)[0]]
                             for k, v in obj.items()]}, tensors
    if isinstance(obj, (list, tuple)):
        items = [flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors)[0] for i, v in enumerate(obj)]
        return ({"__tuple__": items} if isinstance(obj, tuple) else items), tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} without pickle")


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if _TENSOR in skeleton:
            return tensors[skeleton[_TENSOR]]
        if "__tuple__" in skeleton:
            return tuple(unflatten(v, tensors) for v in skeleton["__tuple__"])
        return {k: unflatten(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    return skeleton


def save_tree(obj: Any, path: str | os.PathLike) -> Path:
    skeleton, tensors = flatten(obj)
    meta = {"tree": json.dumps(skeleton)}
    return save_safetensors(tensors, path, meta)


def load_tree(path: str | os.PathLike) -> Any:
    import safetensors

    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            skeleton = json.loads(f.metadata()["tree"])
        return unflatten(skeleton, load_file(str(path)))
    except (KeyError, OSError, ValueError, safetensors.SafetensorError) as err:
        raise CheckpointError(f"{path} is not a readable training-state file ({err})") from err
