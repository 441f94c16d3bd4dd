"""SNLI from a folder of the original jsonl files, or from the Hugging Face dataset (hub id or a local copy of its
repository; see ``hub.py``). Nothing is downloaded unless the hub is reachable; the error says what to get."""
from __future__ import annotations

import json
from pathlib import Path

from .hub import hub_folder, hub_splits, is_hub_source

FILES = {"train": "snli_1.0_train.jsonl", "valid": "snli_1.0_dev.jsonl", "test": "snli_1.0_test.jsonl"}
LABELS = ("entailment", "neutral", "contradiction")  # the hub dataset's label ids 0, 1, 2 (-1: no gold label)
HUB_CONFIG = "plain_text"
HOW_TO_GET = ("Download SNLI 1.0 (https://nlp.stanford.edu/projects/snli/snli_1.0.zip), unzip it and point data.path "
              "at the folder that holds {files}, e.g. `--set data.path=/data/snli_1.0` after the recipe's name; "
              "or set data.path to the Hugging Face dataset 'stanfordnlp/snli' (configuration data.hub_config, "
              f"default {HUB_CONFIG!r}) after `hf download stanfordnlp/snli --repo-type dataset`.")

Pairs = tuple[list[str], list[str], list[int]]


def snli_files(path: str | Path | None) -> dict[str, Path]:
    """{"train", "valid", "test"} -> the three SNLI jsonl files in ``path``; a clear error when absent."""
    files = ", ".join(FILES.values())
    if not path:
        raise FileNotFoundError("data.path is not set for SNLI. " + HOW_TO_GET.format(files=files))
    folder = Path(path).expanduser()
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"SNLI not found: {folder} lacks {', '.join(missing)}. " + HOW_TO_GET.format(files=files))
    return {split: folder / name for split, name in FILES.items()}


def _labelled(pairs: Pairs, where: str) -> Pairs:
    """``pairs``, or a clear error naming ``where`` they come from when there are none."""
    if not pairs[2]:
        raise ValueError(f"{where} holds no labelled SNLI pairs (none, or all without a gold label); point data.path "
                         "at the complete SNLI 1.0 files")
    return pairs


def read_snli(file: Path) -> Pairs:
    """Premises, hypotheses and label indices (entailment 0, neutral 1, contradiction 2); pairs without a gold
    label ("-") are dropped, as is standard; any other label is an error, as is a file without labelled pairs."""
    premises, hypotheses, labels = [], [], []
    with open(file, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{file}, line {number}, is not UTF-8 text ({err.reason} at byte {err.start} of the "
                                 "line); the SNLI 1.0 files are UTF-8: download them again") from None
            if not line.strip():  # a blank line (a trailing one, say) holds no pair
                continue
            try:
                row = json.loads(line)
                row["gold_label"], row["sentence1"], row["sentence2"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{file}, line {number}, is not an SNLI 1.0 record (JSON with gold_label, sentence1 "
                                 f"and sentence2): {type(err).__name__}: {err}") from None
            odd = {k: row[k] for k in ("sentence1", "sentence2") if not isinstance(row[k], str)}
            if odd:
                raise ValueError(f"{file}, line {number}: the sentences must be text, got {odd}")
            if row["gold_label"] == "-":
                continue
            if row["gold_label"] not in LABELS:
                raise ValueError(f"{file}, line {number}: gold_label {row['gold_label']!r} is not one of "
                                 f"{', '.join(LABELS)} or '-' (no gold label)")
            premises.append(row["sentence1"])
            hypotheses.append(row["sentence2"])
            labels.append(LABELS.index(row["gold_label"]))
    return _labelled((premises, hypotheses, labels), str(file))


def snli_splits(path: str | Path | None, config: str = HUB_CONFIG) -> dict[str, Pairs]:
    """{"train", "valid", "test"} -> (premises, hypotheses, labels), pairs without a gold label dropped.
    ``path``: a folder of the jsonl files, else a hub id or a folder holding the hub repository's files."""
    if not is_hub_source(path, config):
        return {split: read_snli(file) for split, file in snli_files(path).items()}
    advice = HOW_TO_GET.format(files=", ".join(FILES.values()))
    splits = hub_splits(hub_folder(str(path), config, "SNLI", advice), config, "SNLI", advice)
    out = {}
    for split, data in splits.items():
        where = f"{path} ({config}, split {split!r})"
        unknown = sorted(set(data["label"]) - {-1, 0, 1, 2})
        if unknown:
            raise ValueError(f"{where}: labels {unknown[:10]} are not SNLI's 0, 1, 2 or -1 (no gold label)")
        rows = [(p, h, y) for p, h, y in zip(data["premise"], data["hypothesis"], data["label"]) if y >= 0]
        out[split] = _labelled(tuple(list(column) for column in zip(*rows)) if rows else ([], [], []), where)
    return out
