"""safetensors checkpoints that know which model they hold: save, load (rebuild), load into a model."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import socket
import tempfile
import warnings
from pathlib import Path

import safetensors
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from zoo import __version__
from zoo._registry import RATE_KEYS, build, config_from_dict

FORMAT = "paperzoo/1"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable or does not match the model it is loaded into."""


class NonFiniteWeightsWarning(UserWarning):
    """A loaded checkpoint holds NaN or inf weights (named in the message)."""


class ConfigMismatchWarning(UserWarning):
    """``load_into`` put weights saved from another registered model or config into a model of matching shapes."""


def current_config(model: nn.Module) -> dict | None:
    """The model's settings as a checkpoint records them (JSON values): its registry config (``zoo_config``) with
    what a standard API changed since it was built taken from the live model (a Hugging Face config's
    ``vocab_size`` after ``resize_token_embeddings``, timm's ``num_classes`` after ``reset_classifier``); for a
    model built outside the registry (``from_pretrained``), its Hugging Face config; else None."""
    hf = getattr(model, "config", None)
    hf = hf.to_dict() if callable(getattr(hf, "to_dict", None)) else {}
    if not hasattr(model, "zoo_config"):
        return json.loads(json.dumps(hf, default=str)) if hf else None
    config = dataclasses.asdict(model.zoo_config)
    if "vocab_size" in config and isinstance(hf.get("vocab_size"), int):
        config["vocab_size"] = hf["vocab_size"]
    classes = getattr(model, "num_classes", None)
    if "num_classes" in config and isinstance(classes, int) and not isinstance(classes, bool):
        config["num_classes"] = classes
    return json.loads(json.dumps(config))


def config_differences(model: nn.Module, saved_config: str) -> dict:
    """{key: (file's value, model's value)} for every setting of a checkpoint's recorded config (JSON) that the
    model (``current_config``) does not share, dropout rates aside (``zoo._registry.RATE_KEYS``: no weight depends
    on them); settings the file does not record (added since), or a model built outside the registry lacks, are
    not compared. A model without any config (a plain module) differs in nothing."""
    ours = current_config(model)
    if ours is None:
        return {}
    saved = json.loads(saved_config)
    if not isinstance(saved, dict):
        raise TypeError(f"the recorded config must be a mapping of settings, got {saved!r}")
    outside = not hasattr(model, "zoo_config")  # its Hugging Face config need not hold every recorded key
    return {k: (v, ours.get(k)) for k, v in saved.items()
            if not (outside and k not in ours) and ours.get(k) != v and k not in RATE_KEYS}


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)``, flush it to disk, then rename onto ``path`` and flush the folder: readers never
    see a half-written file, and after a crash or power loss ``path`` holds the old or the new file, whole. A
    ``path`` that is a symbolic link stays one: the file it points to is replaced; a file replaced keeps its
    permissions. ``~`` is the home folder. The temporary file (``.NAME.HOST.PID.*.tmp`` beside the target) of a
    writer on this host whose process has died (killed mid-write) is removed by the next write of that file."""
    path = Path(path).expanduser()
    target = Path(os.path.realpath(path))  # the rename replaces the link's file, not the link
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; give a file path inside it")
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{socket.gethostname()}."
    _remove_orphans(target.parent, prefix)
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        if target.exists():
            mode = target.stat().st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp creates 0600; give a new file the usual permissions
        os.chmod(tmp, mode)
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent, folder=True)  # the rename itself
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _remove_orphans(folder: Path, prefix: str) -> None:
    """Delete ``folder``'s temporary files named ``PREFIX<pid>.*.tmp`` whose process is gone (POSIX only: elsewhere
    a signal-0 probe is not harmless). Another host's files have another prefix and are never touched."""
    if os.name != "posix":
        return
    for tmp in folder.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive, another user's
            pass


def fsync_path(path, folder: bool = False) -> None:
    """Flush a file (errors raise) or a folder's entries (best effort: Windows and some network file systems
    cannot open or flush a folder) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not folder:
            raise


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically, its JSON header's keys sorted: equal content gives equal bytes (and
    sha256). safetensors itself writes the metadata in a random order. Builds the file in memory first."""
    blob = memoryview(safetensors_bytes(tensors, metadata=metadata))
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(bytes(blob[8:8 + n]))
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(dict(sorted(header.items())), separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned; tensor offsets count from the data's start

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(len(text).to_bytes(8, "little") + text)
            f.write(blob[8 + n:])

    return atomic_write(path, write)


def _same_tensor_key(t: torch.Tensor) -> tuple:
    """Equal for two tensors that are one tensor (tied weights): same storage, offset, shape, strides and dtype.
    Its first two elements, device and storage, are shared by any two views into one storage."""
    return t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype


def store_once(t: torch.Tensor, key: str, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> str:
    """Put ``t`` (detached, contiguous, on the CPU) into ``tensors`` under ``key`` (``key#n`` when taken) and return
    the key. A tensor stored already (``seen``: one tensor, as tied weights are) returns its key instead; a view
    that only overlaps one is stored as a copy, since safetensors refuses shared memory."""
    t = t.detach()
    ident = _same_tensor_key(t)
    if t.numel() and ident in seen:
        return seen[ident]
    stored = t.contiguous().cpu()
    if t.numel() and any(i[:2] == ident[:2] for i in seen) and stored.data_ptr() == t.data_ptr():
        stored = stored.clone()
    unique, n = key, 1
    while unique in tensors:
        unique, n = f"{key}#{n}", n + 1
    tensors[unique] = stored
    seen[ident] = unique
    return unique


def _unique_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with tied tensors stored once under their first name."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict().items():
        store_once(t, key, out, seen)
    return out


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` (``_orig_mod``) and DistributedDataParallel/DataParallel (``module``)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def model_metadata(model: nn.Module) -> dict[str, str]:
    """The file's own fields: format and versions; the registry name and config of a model built by the registry,
    or the Hugging Face config of one built outside it (so ``load_into`` can compare settings)."""
    meta = {"format": FORMAT, "paperzoo": __version__, "torch": torch.__version__}
    if getattr(model, "zoo_name", None):
        meta["model"] = model.zoo_name
    config = current_config(model)
    if meta.get("model") or config is not None:
        meta["config"] = json.dumps(config, sort_keys=True)
    return meta


OWN_FIELDS = ("format", "paperzoo", "torch", "model", "config")  # written by save_checkpoint, never by extra_metadata


def save_checkpoint(model: nn.Module, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model``'s weights to ``path`` (safetensors) with its registry name and config, atomically. A
    ``torch.compile``d or DistributedDataParallel/DataParallel wrapper is unwrapped: the file holds the model's
    own keys."""
    model = unwrap(model)
    meta = model_metadata(model)
    extra = extra_metadata or {}
    bad = {k: v for k, v in extra.items() if not (isinstance(k, str) and isinstance(v, str)) or k in OWN_FIELDS}
    if bad:  # a "model" without its config would make a file that load_checkpoint cannot rebuild
        raise ValueError(f"save_checkpoint: extra_metadata must map new names to strings (the file's own are "
                         f"{list(OWN_FIELDS)}), got {bad}")
    if "model" not in meta:
        warnings.warn(f"save_checkpoint: this {type(model).__name__} was not built by zoo.create_model, so {path} "
                      "records no registry name and load_checkpoint cannot rebuild it; load it into a model you "
                      "build with weights.load_into(model, path)", stacklevel=2)
    meta |= extra
    tensors = _unique_state(model)
    return save_safetensors(tensors, path, meta)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The file's safetensors metadata (strings); a clear error for a missing, corrupt or torch.save file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file; pass the .safetensors file in it")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises several types for a corrupt header
        raise _unreadable(path, err) from err


def read_own_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``read_metadata`` for loading: a file written in another paperzoo checkpoint format (by a newer paperzoo)
    is refused by name, as its keys or layout may mean something this version does not know."""
    meta = read_metadata(path)
    if meta.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"{Path(path).expanduser()} is in checkpoint format {meta['format']!r} (written by "
                              f"paperzoo {meta.get('paperzoo', '?')}); paperzoo {__version__} reads {FORMAT!r}: "
                              "upgrade paperzoo to load it")
    return meta


TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")  # how a torch.save file starts: a zip archive, or (legacy) a pickle


def _unreadable(path, err: Exception) -> CheckpointError:
    """The error for a file safetensors cannot read; a torch.save file (zip or pickle) is named as one, with the
    way to convert it."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head.startswith(TORCH_SAVE_MAGIC):
        return CheckpointError(f"{path} is a PyTorch torch.save file, not safetensors; convert it first with "
                               f"`zoo convert {path} --model NAME` (weights.convert.convert in Python), which also "
                               "maps an original checkpoint's key layout onto the model's")
    return CheckpointError(f"{path} is not a readable safetensors file ({err})")


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file (a clear error if it is unreadable)."""
    try:
        return load_file(str(Path(path).expanduser()))
    except Exception as err:
        raise _unreadable(path, err) from err


def _kind(dtype: torch.dtype) -> str:
    return "bool" if dtype == torch.bool else "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "integer"


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values, NaN equal to NaN (a diverged model's tied weights are still one tensor)."""
    if a.is_floating_point() or a.is_complex():
        return a.shape == b.shape and bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())
    return torch.equal(a, b)


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> nn.Module:
    """Copy ``state`` into ``model``; any missing, unexpected, mis-shaped or mis-typed key (an integer or bool tensor
    for a floating one, or the reverse) is one error naming them all. Floating values take the model's dtype.

    A key may be absent when it is tied to (shares storage with) a key that is present; when both are present they
    must hold equal values (one of them would silently overwrite the other). A submodule whose layout
    changed may define ``upgrade_state(state, prefix) -> state`` to rewrite older checkpoints' keys under its prefix.
    """
    for prefix, module in model.named_modules():
        if hasattr(module, "upgrade_state"):
            state = module.upgrade_state(state, f"{prefix}." if prefix else "")
    own = model.state_dict()
    tied_to: dict[str, str] = {}  # a key -> the first key of its tie group (same storage, offset, shape, strides)
    by_storage: dict[tuple, str] = {}
    for key, t in own.items():
        ident = _same_tensor_key(t)
        if t.numel() and ident in by_storage:
            tied_to[key] = by_storage[ident]
        else:
            by_storage[ident] = key
    given = {tied_to.get(k, k) for k in state}  # the tie groups the state fills (any one name of a group does)
    missing = [k for k in own if k not in state and tied_to.get(k, k) not in given]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in state if k in own and state[k].shape != own[k].shape]
    # floating values may change precision (a bf16 file into a float32 model); other kinds may not be cast
    mistyped = [f"{k}: checkpoint {state[k].dtype} vs model {own[k].dtype}"
                for k in state if k in own and _kind(state[k].dtype) != _kind(own[k].dtype)]
    untied = [f"{k} vs {t}" for k, t in tied_to.items() if k in state and t in state and not misshaped
              and not _same_values(state[k].to(state[t].dtype), state[t])]
    if missing or unexpected or misshaped or mistyped or untied:
        parts = [f"{source} does not match {type(model).__name__}"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped),
                             ("mis-typed", mistyped), ("tied in the model, unequal in the checkpoint", untied)):
            if items:  # every one by name: a converter's user fixes them from this message
                parts.append(f"{label} keys ({len(items)}): {', '.join(map(str, items))}")
        raise CheckpointError("; ".join(parts))
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if nonfinite:  # loaded as they are (a diverged run is worth inspecting), but never unnoticed
        warnings.warn(f"{source}: {len(nonfinite)} tensors hold NaN or inf: {', '.join(nonfinite[:10])}"
                      + (", ..." if len(nonfinite) > 10 else ""), NonFiniteWeightsWarning, stacklevel=3)
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(dtype=own[key].dtype))
    return model


def load_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load the weights at ``path`` into an existing ``model`` (strict; errors name every differing key). When the
    file records another registered model or another config than ``model``'s (dropout rates aside), the shapes
    may still match (ib_mlp_relu into ib_mlp_tanh, 2 heads into 4): that loads, with a ``ConfigMismatchWarning``
    naming the differences."""
    path, wrapper, model = Path(path).expanduser(), model, unwrap(model)  # a compiled/DataParallel model: own keys
    meta = read_own_metadata(path)  # clear error for a missing, corrupt or newer-format file before reading tensors
    mismatch = None
    if "config" in meta:
        try:  # read before any weight is copied: a bad record must not leave the model half loaded
            differs = config_differences(model, meta["config"])
        except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            raise CheckpointError(f"{path} (written by paperzoo {meta.get('paperzoo')}): its recorded config is not "
                                  f"a readable mapping of settings: {type(err).__name__}: {err}") from err
        name = getattr(model, "zoo_name", None)  # None: built outside the registry, compared by its config only
        if differs or name is not None and "model" in meta and meta["model"] != name:
            into = repr(name) if name else f"a {type(model).__name__} built outside the registry"
            source = repr(meta["model"]) if "model" in meta else "a model built outside the registry"
            mismatch = (f"{path} was saved from {source} and is loaded into {into}"
                        + (f"; (file, model) config per key: {differs}" if differs else ""))
    load_state_into(model, read_tensors(path), source=str(path))
    if mismatch:
        warnings.warn(mismatch, ConfigMismatchWarning, stacklevel=2)
    return wrapper


def in_state_dtype(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``model`` moved to the dtype of ``state``'s floating tensors where they share one (a bf16 or float64 model
    saved as such); left in the dtypes it is built with where they are mixed."""
    floating = {t.dtype for t in state.values() if t.is_floating_point()}
    return model.to(floating.pop()) if len(floating) == 1 else model


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model recorded in the checkpoint's metadata and load its weights. A file whose floating tensors
    share one dtype (a bf16 or float64 model saved as such) gives the model in that dtype; a file of mixed floating
    dtypes gives the model in the dtypes it is built with, each value cast to them. ``map_location`` is the device
    the model goes to (torch.load's mapping and callable forms do not apply: the model is rebuilt, then moved)."""
    if not isinstance(map_location, (str, torch.device)):
        raise TypeError(f"load_checkpoint: map_location must be a device or its name ('cpu', 'cuda:0'), got "
                        f"{type(map_location).__name__}; the model is rebuilt from the file, then moved there")
    device = torch.device(map_location)
    meta = read_own_metadata(path)
    if "model" not in meta:
        if "tree" in meta:
            raise CheckpointError(f"{path} is training state (optimizer, scheduler), not a model; "
                                  "weights.tree.load_tree reads it, and the model.safetensors beside it is the model")
        raise CheckpointError(f"{path} has no paperzoo metadata (model name, config); build the model yourself "
                              "and use weights.load_into(model, path)")
    try:
        recorded = json.loads(meta["config"]) if "config" in meta else None
        if not isinstance(recorded, dict):
            raise TypeError(f"the recorded config must be a mapping of settings, got {recorded!r}")
        model = build(meta["model"], config_from_dict(meta["model"], recorded))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # json.JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} (written by paperzoo {meta.get('paperzoo')}): its recorded config does not "
                              f"build {meta['model']!r}: {type(err).__name__}: {err}") from err
    state = read_tensors(path)
    return load_state_into(in_state_dtype(model, state), state, source=str(path)).to(device)
