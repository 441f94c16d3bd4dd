"""Wikitext-2 from a folder of the original token files, or from the Hugging Face dataset (hub id or a local copy
of its repository; see ``hub.py``). Nothing is downloaded unless the hub is reachable; the error says what to get."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .hub import folder_files, hub_folder, hub_splits, is_hub_source

FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
HUB_CONFIG = "wikitext-2-v1"
HOW_TO_GET = (
    "Download Wikitext-2 (https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip), unzip it and "
    "point data.path at the folder that holds {files}, e.g. `--set data.path=/data/wikitext-2` "
    "after the recipe's name; or set data.path to the Hugging Face dataset 'Salesforce/wikitext' "
    f"(configuration data.hub_config, default {HUB_CONFIG!r}) after `hf download Salesforce/wikitext "
    "--repo-type dataset`.")


def wikitext2_files(path: str | Path | None) -> dict[str, Path]:
    """{"train", "valid", "test"} -> the three Wikitext-2 token files in ``path``; a clear error when absent."""
    files = ", ".join(FILES.values())
    if not path:
        raise FileNotFoundError("data.path is not set for Wikitext-2. " + HOW_TO_GET.format(files=files))
    folder = Path(path).expanduser()
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Wikitext-2 not found: {folder} lacks {', '.join(missing)}. "
                                + HOW_TO_GET.format(files=files))
    return {split: folder / name for split, name in FILES.items()}


def _read_tokens(path: Path) -> str:
    """The text of one token file; an error naming it when it is not UTF-8 or holds no text."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); the Wikitext-2 token files "
                         "are UTF-8: download them again") from err
    if not text.strip():
        raise ValueError(f"{path} holds no text; download Wikitext-2 again")
    return text


def wikitext2_source(path: str | Path | None, config: str = HUB_CONFIG) -> tuple[dict, Callable[[], dict[str, str]]]:
    """What identifies the data (for the token cache) and a reader of its {"train", "valid", "test"} text.
    ``path``: a folder of the token files, else a hub id or a folder holding the hub repository's files."""
    if not is_hub_source(path, config):
        files = wikitext2_files(path)
        # path, size and modification time: an edited file (even of the same size) is tokenised again
        return ({"files": {s: [str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for s, f in files.items()}},
                lambda: {s: _read_tokens(f) for s, f in files.items()})
    advice = HOW_TO_GET.format(files=", ".join(FILES.values()))
    folder = hub_folder(str(path), config, "Wikitext-2", advice)

    def read():  # each row is one line of the token file, newline included
        return {s: "".join(d["text"]) for s, d in hub_splits(folder, config, "Wikitext-2", advice).items()}

    return {"hub": str(folder.resolve()), "config": config, "files": folder_files(folder / config)}, read
