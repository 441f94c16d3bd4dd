"""Wikitext-2 read from a local directory (it is never downloaded here; the error says what to fetch)."""
from __future__ import annotations

from pathlib import Path

FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
HOW_TO_GET = (
    "Download Wikitext-2 (https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip, or the "
    "Hugging Face dataset 'Salesforce/wikitext', config 'wikitext-2-v1', one text file per split), unzip it and "
    "point data.path at the folder that holds {files}, e.g. `zoo train grassmann-lm-wikitext2 "
    "--set data.path=/data/wikitext-2`.")


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


def read_wikitext2(path: str | Path | None) -> dict[str, str]:
    """{"train", "valid", "test"} -> text of the three Wikitext-2 token files in ``path``."""
    return {split: file.read_text(encoding="utf-8") for split, file in wikitext2_files(path).items()}
