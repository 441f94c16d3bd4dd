import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache, so nothing depends on what an earlier run downloaded or built."""
    monkeypatch.setenv("PAPERZOO_CACHE", str(tmp_path / "cache"))


def write_mil_npz(path: Path, bags: int = 24, per_bag: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A MIL file as ``load_mil_file`` reads a .npz (features, per-instance labels, bag ids): bag b is positive
    when b is even, its 5 features (mean 0..4, std 3) shifted by 4; returns (features, bag id per instance)."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(1, bags + 1), per_bag)
    labels = (ids % 2 == 0).astype(float)
    features = 3.0 * rng.standard_normal((len(ids), 5)) + np.arange(5) + 4.0 * labels[:, None]
    np.savez(path, features=features, labels=labels, bag_ids=ids)
    return features, ids


NLI_WORDS = "a man woman dog cat is are on the in park running sleeping sitting outside inside".split()
NLI_LABELS = ["entailment", "neutral", "contradiction"]


def random_snli_rows(n: int, rng, unlabeled_every: int = 0) -> list[dict]:
    """``n`` SNLI rows of random words (premise 6, hypothesis 4), labels in turn; every ``unlabeled_every``-th row
    has no gold label ("-"), as SNLI's own files do."""
    return [{"sentence1": " ".join(rng.choices(NLI_WORDS, k=6)), "sentence2": " ".join(rng.choices(NLI_WORDS, k=4)),
             "gold_label": "-" if unlabeled_every and i % unlabeled_every == unlabeled_every - 1 else NLI_LABELS[i % 3]}
            for i in range(n)]


def write_snli(root: Path, splits: dict[str, list[dict]]) -> list[str]:
    """SNLI's files snli_1.0_{train,dev,test}.jsonl under ``root`` holding ``splits``' rows, and a WordPiece
    vocabulary of [PAD] [UNK] [CLS] [SEP] [MASK] and NLI_WORDS (ids 5 on) in root/tok, all offline; returns the
    overrides that point an NLI recipe at them."""
    from transformers import BertTokenizerFast

    (root / "tok").mkdir(parents=True)
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *NLI_WORDS]
    (root / "tok" / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    BertTokenizerFast(str(root / "tok" / "vocab.txt")).save_pretrained(root / "tok")
    for split, rows in splits.items():
        (root / f"snli_1.0_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [f"data.path={root}", f"data.tokenizer={root / 'tok'}"]


SMALL_DSR = [
    "data.train_steps=3000", "data.test_steps=2000", "data.transient=200",
    "task_args.seq_len=40", "task_args.forcing_interval=8",
    "train.steps=30", "train.batch_size=8", "train.eval_every=0", "train.ckpt_every=10", "train.log_every=1",
    "probe.every=10",
]


@contextlib.contextmanager
def killed_at_call(cls, method: str, call: int):
    """Inside the block, the ``call``-th call of ``cls.method`` raises KeyboardInterrupt (a run killed mid-step);
    the method is restored on leaving."""
    original, calls = getattr(cls, method), {"n": 0}

    def dying(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    setattr(cls, method, dying)
    try:
        yield
    finally:
        setattr(cls, method, original)


def free_port() -> str:
    """A TCP port free now, for a torchrun rendezvous: a fixed one clashes with another run of the same test."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def train_losses(out: Path) -> dict[int, float]:
    """{step: loss} of the training rows in a run directory's metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def gaussian_pair(n, rho, seed=0, dim=1):
    """(X, Y), (n, dim) float64 each, per-component correlation rho: I(X;Y) = -dim/2 log(1 - rho^2) nats."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, y


def randomize_batchnorm(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode BN is a real affine map."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                nn.init.normal_(m.weight, 1.0, 0.1, generator=gen)
                nn.init.normal_(m.bias, 0.0, 0.1, generator=gen)
