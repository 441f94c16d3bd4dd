"""Multivariate sequences from a file, for sequence models trained per sequence (PV-RNN's adaptive vectors): the
paper's second data set, or any other, taken by path."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch


def load_sequences(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training sequences (N, T, D) and optional test streams (M, T', D) as float32 tensors.

    ``.npy``: one array (N, T, D), training sequences only. ``.npz``: ``train`` (N, T, D) and optionally ``test``
    (M, T', D) with the same D. Every value must be a finite real number (no pickled object arrays). ``~`` in
    ``path`` is expanded.
    """
    path = Path(path).expanduser()
    expected = ".npy (N, T, D) or .npz with 'train' (N, T, D) and optionally 'test' (M, T', D)"
    if path.is_dir():
        raise IsADirectoryError(f"sequence path {path} is a directory; data.path must name a file, {expected} "
                                "(--set data.path=...)")
    if not path.is_file():
        raise FileNotFoundError(f"sequence file {path} not found. Put the sequences there as {expected}, or point "
                                "data.path at them (--set data.path=...).")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"sequence file {path} must be {expected}")
    magic = b"\x93NUMPY" if suffix == ".npy" else b"PK\x03\x04"
    with open(path, "rb") as f:  # numpy takes a file without its header for a pickle: name what it is instead
        head = f.read(len(magic))
    if head != magic:
        kind = "numpy's .npy header" if suffix == ".npy" else "a zip archive's header (np.savez writes one)"
        raise ValueError(f"sequence file {path} is not a {suffix} file: it does not start with {kind} "
                         f"(it starts with {head!r}); save it with np.save / np.savez, {expected}")
    try:
        if suffix == ".npy":
            arrays = {"train": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as f:
                if "train" not in f.files:
                    raise KeyError(f"{path} has no 'train' array (found {sorted(f.files)})")
                arrays = {k: f[k] for k in ("train", "test") if k in f.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        if "allow_pickle" not in str(err):  # a truncated file, a damaged archive
            raise ValueError(f"sequence file {path} cannot be read ({type(err).__name__}: {err}); save it again with "
                             f"np.save / np.savez, {expected}") from None
        raise ValueError(f"{path} holds an object array, which would need pickle to load; save the sequences as "
                         f"numbers, {expected} (e.g. np.save(path, np.asarray(x, dtype=np.float32)))") from None
    out = {}
    for name, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{path}: '{name}' must hold real numbers, got dtype {a.dtype}")
        if a.ndim != 3 or min(a.shape) < 1:
            raise ValueError(f"{path}: '{name}' must have shape (sequences, steps, dims), got {a.shape}")
        out[name] = torch.as_tensor(a, dtype=torch.float32)
        if not torch.isfinite(out[name]).all():  # after the cast: 1e39 is finite in float64, inf in float32
            raise ValueError(f"{path}: '{name}' holds NaN or infinite values (or values beyond float32's range, "
                             "3.4e38)")
    if "test" in out and out["test"].shape[-1] != out["train"].shape[-1]:
        raise ValueError(f"{path}: 'train' has {out['train'].shape[-1]} dims but 'test' has {out['test'].shape[-1]}")
    return out["train"], out.get("test")
