"""Published checkpoints: where each comes from, its sha256, and how ``pretrained=True`` finds it.

Resolution order for a manifest entry: a file shipped inside this package (``weights/files/``),
then the cache (``$PAPERZOO_CACHE`` or ``~/.cache/paperzoo``), then a download from its URL.
The full sha256 of the file is checked on every load.

An entry converted from an authors' original (``"original": {url, file, git_blob_sha1}``) has no hosted
safetensors: the original is taken from the cache (or downloaded), identified by the id git gives its
content in the authors' repository, converted once into the cache, and the sha256 of that conversion is
recorded beside it (``<file>.sha256``) and checked on every later load.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.request
from pathlib import Path

from torch import nn

from zoo._registry import PlainKeyError

from .checkpoint import CheckpointError, atomic_write, config_differences, load_state_into, read_metadata, read_tensors

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST_PATH = PACKAGE_DIR / "manifest.json"


def published_checkpoints() -> list[dict]:
    """All published checkpoint entries (name, model, file, url, sha256, source, license, reported)."""
    return json.loads(MANIFEST_PATH.read_text())["checkpoints"]


def checkpoints_for(model_name: str) -> list[dict]:
    return [c for c in published_checkpoints() if c["model"] == model_name]


def cache_dir() -> Path:
    return Path(os.environ.get("PAPERZOO_CACHE", Path.home() / ".cache" / "paperzoo"))


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The id git gives a file's content, sha1(b"blob <size>\\0" + content): identifies a file published in a
    git repository without the file being hosted anywhere else."""
    digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LFS_POINTER = b"version https://git-lfs"


def verify_sha256(path: Path, expected: str, remedy: str = "delete it and fetch it again") -> None:
    actual = sha256_of(path)
    if actual != expected:
        with open(path, "rb") as f:
            pointer = f.read(len(LFS_POINTER)) == LFS_POINTER
        what = (f"it is a Git LFS pointer, not the file; {remedy}" if pointer else
                f"the file is corrupt or not the published one; {remedy}")
        raise CheckpointError(f"sha256 mismatch for {path}: expected {expected}, file has {actual}; {what}.")


def _download(url: str, dest: Path, what: str) -> None:
    def write(tmp):
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)

    try:
        atomic_write(dest, write)
    except OSError as err:
        raise FileNotFoundError(
            f"could not download {what} ({err}). Download {url} by hand and save it as {dest} "
            f"(or set PAPERZOO_CACHE to the folder that holds {dest.name}).") from err


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def install_original(entry: dict, source: str | os.PathLike, dest: Path | None = None) -> Path:
    """Check that ``source`` is ``entry``'s published original (git blob id), convert it into ``dest`` (default:
    the entry's file in the cache) and record the conversion's sha256 beside it. The record is written before
    the file appears, so an interrupted conversion leaves no unverifiable file."""
    from .convert import convert

    original, source = entry["original"], Path(source)
    dest = dest or cache_dir() / entry["file"]
    found = git_blob_sha1(source)
    if found != original["git_blob_sha1"]:
        raise CheckpointError(f"{source} is not the published original of {entry['name']!r}: its git blob id is "
                              f"{found}, the authors' repository has {original['git_blob_sha1']}. Delete it and "
                              f"download {original['url']} again.")

    def write(tmp):  # atomic_write's own temporary file: torchrun ranks may convert the same original at once
        convert(source, entry["model"], tmp, **entry.get("config", {}))  # the config it was trained with
        atomic_write(_sidecar(dest), lambda t: Path(t).write_text(sha256_of(tmp) + "\n"))

    atomic_write(dest, write)
    return dest


def resolve(entry: dict) -> Path:
    """Local path of a manifest entry's file, downloading (or converting) it into the cache if needed;
    sha256 verified."""
    shipped = PACKAGE_DIR / "files" / entry["file"]
    cached = cache_dir() / entry["file"]
    if shipped.is_file():
        path = shipped
    elif cached.is_file():
        path = cached
    elif entry.get("original"):
        source = cache_dir() / entry["original"]["file"]
        if not source.is_file():
            _download(entry["original"]["url"], source, f"the original of checkpoint {entry['name']!r}")
        path = install_original(entry, source)
    elif entry.get("url"):
        _download(entry["url"], cached, f"checkpoint {entry['name']!r}")
        path = cached
    else:
        raise FileNotFoundError(f"checkpoint {entry['name']!r} is not shipped and has no download URL; "
                                f"place {entry['file']} in {cache_dir()}")
    expected = entry.get("sha256")
    if expected is None:  # converted here from an original: the hash recorded at conversion
        if not _sidecar(path).is_file():
            raise CheckpointError(f"{path} has no recorded sha256 ({_sidecar(path).name} is missing); delete it "
                                  "so that it is converted again from the original")
        expected = _sidecar(path).read_text().strip()
    remedy = ("restore it from the paperzoo repository (`git lfs pull` in a checkout), or reinstall paperzoo"
              if path == shipped else
              "delete it and fetch it again" if entry.get("url") or entry.get("original") else
              "replace it with the published file")
    verify_sha256(path, expected, remedy)
    return path


class NoCheckpointError(PlainKeyError):
    """A model (or checkpoint name) without a published checkpoint; the message says which ones exist."""


def pretrained_entry(name: str, checkpoint: str | None = None) -> dict:
    """The manifest entry for model ``name``: the first one listed, or the one called ``checkpoint``. An entry's
    optional ``config`` holds the config fields it was trained with that differ from the model's defaults."""
    options = checkpoints_for(name)
    if checkpoint is not None:
        options = [c for c in options if c["name"] == checkpoint]
    if not options:
        known = [c["name"] for c in checkpoints_for(name)]
        which = f"checkpoint {checkpoint!r}" if checkpoint is not None else "checkpoint"
        with_weights = sorted({c["model"] for c in published_checkpoints()})
        raise NoCheckpointError(f"no published {which} for model {name!r}; its checkpoints: {known or 'none'}. "
                                f"Models with published weights: {with_weights}. For weights of your own, build "
                                "it with pretrained=False and load them with weights.load_into(model, FILE), or "
                                "weights.load_checkpoint(FILE) for a file that save_checkpoint wrote")
    return options[0]


def _classifier_prefix(model: nn.Module) -> str | None:
    """Module name of a timm-style model's classifier (``model.get_classifier()``), if it has one."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return next((name for name, m in model.named_modules() if m is head and name), None)


def load_pretrained(model: nn.Module, checkpoint: str | None = None, name: str | None = None) -> nn.Module:
    """Load a published checkpoint into ``model`` (the first one listed for its name, or the one named).

    The model's config must equal the checkpoint's, except for dropout rates (``zoo._registry.RATE_KEYS``: no weights
    depend on them), ``num_classes`` on a model with a classifier (timm's ``get_classifier``: everything but the
    classifier is loaded and the classifier keeps its fresh initialisation, for fine-tuning on another label set)
    and ``in_chans`` on a model whose ``pretrained_cfg`` names its ``first_conv`` (that kernel is adapted to the
    new channel count with timm's ``adapt_input_conv``, as ``timm.create_model`` does)."""
    entry = pretrained_entry(name or getattr(model, "zoo_name", type(model).__name__), checkpoint)
    path = resolve(entry)
    saved = read_metadata(path).get("config")
    state = read_tensors(path)
    if saved is not None and hasattr(model, "zoo_config"):
        differs = config_differences(model, saved)
        first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
        if "in_chans" in differs and first_conv:
            from timm.models import adapt_input_conv

            state = {**state, f"{first_conv}.weight": adapt_input_conv(differs.pop("in_chans")[1],
                                                                       state[f"{first_conv}.weight"])}
        head = _classifier_prefix(model) if "num_classes" in differs else None
        if head is not None:
            fresh = {k: v for k, v in model.state_dict().items() if k.startswith(head + ".")}
            state = {k: v for k, v in state.items() if not k.startswith(head + ".")} | fresh
            fate = f"the classifier '{head}' keeps its initialisation" if fresh else "the model has no classifier"
            print(f"load_pretrained: {entry['name']} has {differs.pop('num_classes')[0]} classes; {fate}",
                  file=sys.stderr)
        if differs:
            raise CheckpointError(f"checkpoint {entry['name']!r} was trained with a different config; "
                                  f"(checkpoint, requested) per key: {differs}. Drop those overrides to load it.")
    return load_state_into(model, state, source=str(path))
