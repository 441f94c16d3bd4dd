"""SNLI read from a local directory (it is never downloaded here; the error says what to fetch)."""
from __future__ import annotations

import json
from pathlib import Path

FILES = {"train": "snli_1.0_train.jsonl", "valid": "snli_1.0_dev.jsonl", "test": "snli_1.0_test.jsonl"}
LABELS = ("entailment", "neutral", "contradiction")
HOW_TO_GET = ("Download SNLI 1.0 (https://nlp.stanford.edu/projects/snli/snli_1.0.zip), unzip it and point data.path "
              "at the folder that holds {files}, e.g. `zoo train grassmann-nli-snli --set data.path=/data/snli_1.0`.")


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


def read_snli(file: Path) -> tuple[list[str], list[str], list[int]]:
    """Premises, hypotheses and label indices (entailment 0, neutral 1, contradiction 2); pairs without a gold
    label ("-") are dropped, as is standard."""
    premises, hypotheses, labels = [], [], []
    with open(file, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["gold_label"] in LABELS:
                premises.append(row["sentence1"])
                hypotheses.append(row["sentence2"])
                labels.append(LABELS.index(row["gold_label"]))
    return premises, hypotheses, labels
