"""Published checkpoints: where each comes from, its sha256, and how ``pretrained=True`` finds it.

Resolution order for a manifest entry: a file shipped inside this package (``weights/files/``),
then the cache (``$PAPERZOO_CACHE`` or ``~/.cache/paperzoo``), then a download from its URL.
The full sha256 of the file is checked on every load.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from pathlib import Path

from torch import nn

from .checkpoint import CheckpointError, atomic_write, load_into, read_metadata

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


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise CheckpointError(f"sha256 mismatch for {path}: expected {expected}, file has {actual}. "
                              "The file is corrupt or not the published one; delete it and fetch it again.")


def _download(url: str, dest: Path) -> None:
    def write(tmp):
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)

    atomic_write(dest, write)


def resolve(entry: dict) -> Path:
    """Local path of a manifest entry's file, downloading it to the cache if needed; sha256 verified."""
    shipped = PACKAGE_DIR / "files" / entry["file"]
    cached = cache_dir() / entry["file"]
    if shipped.is_file():
        path = shipped
    elif cached.is_file():
        path = cached
    else:
        url = entry.get("url")
        if not url:
            raise FileNotFoundError(f"checkpoint {entry['name']!r} is not shipped and has no download URL; "
                                    f"place {entry['file']} in {cache_dir()}")
        try:
            _download(url, cached)
        except OSError as err:
            raise FileNotFoundError(
                f"could not download checkpoint {entry['name']!r} ({err}). Download {url} by hand and save it as "
                f"{cached} (or set PAPERZOO_CACHE to the folder that holds {entry['file']}).") from err
        path = cached
    verify_sha256(path, entry["sha256"])
    return path


def pretrained_entry(name: str, checkpoint: str | None = None) -> dict:
    """The manifest entry for model ``name``: the first one listed, or the one called ``checkpoint``. An entry's
    optional ``config`` holds the config fields it was trained with that differ from the model's defaults."""
    options = checkpoints_for(name)
    if checkpoint is not None:
        options = [c for c in options if c["name"] == checkpoint]
    if not options:
        known = [c["name"] for c in checkpoints_for(name)]
        raise KeyError(f"no published checkpoint {checkpoint or ''!r} for model {name!r}; available: {known or 'none'}")
    return options[0]


def load_pretrained(model: nn.Module, checkpoint: str | None = None) -> nn.Module:
    """Load a published checkpoint into ``model`` (the first one listed for its name, or the one named)."""
    entry = pretrained_entry(getattr(model, "zoo_name", type(model).__name__), checkpoint)
    path = resolve(entry)
    saved = read_metadata(path).get("config")
    if saved is not None and hasattr(model, "zoo_config"):
        import dataclasses

        ours = json.loads(json.dumps(dataclasses.asdict(model.zoo_config)))
        differs = {k: (v, ours.get(k)) for k, v in json.loads(saved).items() if ours.get(k) != v}
        if differs:
            raise CheckpointError(f"checkpoint {entry['name']!r} was trained with a different config; "
                                  f"(checkpoint, requested) per key: {differs}. Drop those overrides to load it.")
    return load_into(model, path)
