"""Datasets named by Hugging Face hub id (or a local copy of such a repository), read with ``datasets``.

The files of one configuration (``<config>/train-*``, ``validation-*``, ``test-*`` as the hub's parquet
conversions lay them out) come from the Hugging Face cache, or are downloaded when the hub is reachable; offline
and not cached, the error says so at once.
"""
from __future__ import annotations

from pathlib import Path


def is_hub_source(path: str | Path | None, config: str) -> bool:
    """Whether ``path`` names a hub dataset (an id, or a folder holding the configuration's subfolder) rather than
    a folder of the original files (or nothing, which the original files' loader reports)."""
    folder = Path(path).expanduser() if path else None
    return folder is not None and (not folder.is_dir() or (folder / config).is_dir())


def hub_folder(source: str, config: str, what: str, advice: str) -> Path:
    """The folder holding the dataset repository ``source`` (a hub id such as ``stanfordnlp/snli``, or a folder
    holding the repository's files), with the configuration's subfolder ``config``."""
    from huggingface_hub import snapshot_download

    from weights.hub import hub_resolvable

    folder = Path(source).expanduser()
    if not folder.is_dir():
        try:
            folder = Path(snapshot_download(source, repo_type="dataset", allow_patterns=[f"{config}/*"],
                                            local_files_only=not hub_resolvable()))
        except (OSError, ValueError) as err:  # hub errors are OSErrors; a malformed id is a ValueError
            where = "on the hub" if hub_resolvable() else "in the local cache (the hub is unreachable)"
            raise FileNotFoundError(f"{what}: {source!r} is not a folder, and no Hugging Face dataset of that name "
                                    f"is {where} ({err.__class__.__name__}). " + advice) from err
    if not (folder / config).is_dir():
        raise FileNotFoundError(f"{what}: {folder} has no folder {config!r} (the dataset's configuration). " + advice)
    return folder


def folder_files(folder: Path) -> dict[str, list]:
    """{relative path: [size, mtime_ns]} of every file under ``folder``: what identifies its content for a cache."""
    return {str(f.relative_to(folder)): [f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(folder.rglob("*")) if f.is_file()}


def hub_splits(folder: Path, config: str, what: str, advice: str) -> dict:
    """{"train", "valid", "test"} -> ``datasets.Dataset`` of the configuration ``config`` in ``folder`` (from
    ``hub_folder``)."""
    from datasets import load_dataset

    try:
        splits = load_dataset(str(folder), data_dir=config)
    except Exception as err:  # datasets wraps a damaged parquet file in its own DatasetGenerationError
        files = sorted(str(f.relative_to(folder)) for f in (folder / config).rglob("*") if f.is_file())
        raise ValueError(f"{what}: the files of {folder / config} cannot be read as a dataset ({type(err).__name__}: "
                         f"{err}; files: {', '.join(files[:6])}{', ...' if len(files) > 6 else ''}); a damaged or "
                         "partial download: fetch it again. " + advice) from err
    missing = {"train", "validation", "test"} - set(splits)
    if missing:
        raise FileNotFoundError(f"{what}: {folder / config} lacks the split(s) {sorted(missing)}. " + advice)
    return {"valid" if name == "validation" else name: splits[name] for name in ("train", "validation", "test")}
