"""Nested state (optimizer, scheduler) as safetensors: tensors stored flat, the rest as JSON. No pickle."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from .checkpoint import CheckpointError, read_metadata, read_tensors, save_safetensors, store_once

_TENSOR = "__tensor__"


_KEY_TYPES = (str, int, float, bool, type(None))  # dict keys that JSON gives back as they were


def flatten(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``obj`` into a JSON skeleton and a flat ``{key: tensor}``; dict keys keep their type via a tag.
    Tensor keys are paths (``optimizer.state.0.exp_avg``), made unique where two paths spell the same (``a.b``
    and ``a: {b}``); one tensor in two places is stored once and comes back as one."""
    tensors: dict[str, torch.Tensor] = {}
    return _flatten(obj, "", tensors, {}), tensors


def _flatten(obj: Any, prefix: str, tensors: dict, seen: dict) -> Any:
    if torch.is_tensor(obj):
        return {_TENSOR: store_once(obj, prefix or "root", tensors, seen)}
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, _KEY_TYPES)]
        if bad:
            raise TypeError(f"cannot store the key {bad[0]!r} ({type(bad[0]).__name__}) at {prefix or 'the top'!r}: "
                            "keys must be str, int, float, bool or None")
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors, seen)]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors, seen) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
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
    meta = read_metadata(path)  # a folder, a missing or an unreadable file: named as such
    if "tree" not in meta:
        raise CheckpointError(f"{path} holds no training state (no 'tree' record)"
                              + ("; it is a model checkpoint: weights.load_checkpoint reads it" if "model" in meta
                                 else ""))
    tensors = read_tensors(path)  # an unreadable file: named by read_tensors, not wrapped again below
    try:
        return unflatten(json.loads(meta["tree"]), tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable training-state file ({err})") from err
