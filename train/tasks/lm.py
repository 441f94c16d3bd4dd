"""Causal language modelling: random windows of a tokenised corpus, next-token cross-entropy, perplexity."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from weights.checkpoint import atomic_write
from zoo._registry import resolve_config

from ..data.pytext import corpus_version, pytext_splits
from ..data.wikitext import HUB_CONFIG, wikitext2_source
from ..data.wordpiece import tokenized_splits
from ..recipe import check_number
from .base import Task, draw_indices, real, whole

SOURCES = ("pytext", "wikitext2")


class CausalLMTask(Task):
    """Batches {input_ids (B, seq_len)} cut at random offsets of the training token stream; loss = mean
    next-token cross-entropy (nats). Evaluation: loss and perplexity exp(loss) on the valid and test streams,
    cut into consecutive windows of seq_len tokens (each window predicts its last seq_len - 1 tokens), over at
    most ``task_args.eval_tokens`` tokens per split.

    ``data.source``: ``pytext`` (CPython's own text, offline; ``data.docstrings`` adds the stdlib docstrings to
    the pydoc topics) or ``wikitext2`` (``data.path``: a folder with the three wiki.*.tokens files).
    ``data.tokenizer``: ``wordpiece`` (trained on the training split, ``data.vocab_size`` pieces), ``bert`` or a
    tokenizer.json file. A run keeps its tokenizer as tokenizer.json, and ``zoo eval`` reads any data with it.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        source, kind = d.get("source", "pytext"), d.get("tokenizer", "wordpiece")
        vocab = whole(d, "data", "vocab_size", 8192)
        if source == "pytext":
            docstrings = bool(d.get("docstrings", True))
            valid, test = real(d, "data", "valid", 0.05), real(d, "data", "test", 0.05)
            settings = {"corpus": corpus_version(), "docstrings": docstrings, "valid": valid, "test": test,
                        "split_by": "text"}  # a new key, so caches split by document id (until 2026-11-29) go unused
            self.tokenizer, ids = tokenized_splits("pytext", settings, lambda: pytext_splits(docstrings, valid, test),
                                                   kind, vocab)
        elif source == "wikitext2":
            settings, read = wikitext2_source(d.get("path"), d.get("hub_config", HUB_CONFIG))
            self.tokenizer, ids = tokenized_splits("wikitext2", settings, read, kind, vocab)
        else:
            raise ValueError(f"data.source must be one of {SOURCES}, got {source!r}")
        self.train_ids, self.valid_ids, self.test_ids = ids["train"], ids["valid"], ids["test"]
        model_vocab = resolve_config(recipe["model"], **recipe.get("model_args", {})).vocab_size
        if self.tokenizer.get_vocab_size() > model_vocab:
            raise ValueError(f"the tokenizer has {self.tokenizer.get_vocab_size()} pieces but {recipe['model']} has "
                             f"vocab_size={model_vocab}; set model_args.vocab_size to data.vocab_size")
        self.seq_len = int(check_number("task_args", "seq_len", self.args.get("seq_len", 128), low=2, integer=True))
        # None: whole splits; else at least one window, or evaluation would score no token
        self.eval_tokens = check_number("task_args", "eval_tokens", self.args.get("eval_tokens"), low=self.seq_len,
                                        integer=True, optional=True)
        self.eval_batch = whole(self.args, "task_args", "eval_batch_size", 32)
        split, shortest = min(((s, len(ids[s])) for s in ("train", "valid", "test")), key=lambda pair: pair[1])
        if shortest < self.seq_len + 1:
            raise ValueError(f"task_args.seq_len={self.seq_len} is longer than the {split} split of the {source} corpus "
                             f"({shortest} tokens); lower task_args.seq_len or give a larger split")

    run_files = {"tokenizer.json": "tokenizer"}

    def write_run_files(self, run: Path) -> None:
        atomic_write(Path(run) / "tokenizer.json", lambda tmp: self.tokenizer.save(tmp))

    def digest(self) -> str:
        return hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()

    def batch(self, size, generator):
        return self._windows(self.train_ids, size, generator)

    def train_sample(self, size, generator):
        return self._windows(self.train_ids, size, generator, replace=False)

    def held_out_batch(self, size, generator):
        return self._windows(self.valid_ids, size, generator, replace=False)

    def _windows(self, ids, size, generator, replace=True):
        """``size`` windows of seq_len tokens: at uniform starts (training batches), or at distinct starts."""
        starts = draw_indices(len(ids) - self.seq_len + 1, size, generator, replace)
        return {"input_ids": ids[starts[:, None] + torch.arange(self.seq_len)]}

    def loss(self, model, batch):
        out = model(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False)
        return out.loss, {}

    @torch.no_grad()
    def stream_loss(self, model, ids: torch.Tensor) -> float:
        """Mean next-token cross-entropy (nats) over consecutive windows of ``ids``."""
        device = next(model.parameters()).device
        n = len(ids) if self.eval_tokens is None else min(len(ids), int(self.eval_tokens))
        windows = ids[: n // self.seq_len * self.seq_len].view(-1, self.seq_len)
        total, count = 0.0, 0
        for chunk in windows.split(self.eval_batch):
            chunk = chunk.to(device)
            logits = model(input_ids=chunk, use_cache=False).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"))
            count += chunk[:, 1:].numel()
        return total / count

    def evaluate(self, model):
        out = {}
        for split, ids in (("valid", self.valid_ids), ("test", self.test_ids)):
            loss = self.stream_loss(model, ids)
            out[f"{split}_loss"], out[f"{split}_ppl"] = loss, math.exp(loss)
        return out

    @torch.no_grad()
    def report(self, model, out: Path):
        """samples.txt: greedy continuations of three validation prompts of 16 tokens (shorter ones, and fewer, for
        a validation split of under 48 tokens: one of 12 tokens crashed the run's report)."""
        device = next(model.parameters()).device
        size = min(16, len(self.valid_ids))
        n = min(3, len(self.valid_ids) // size)
        prompts = self.valid_ids[: n * size].view(n, size).to(device)
        generated = model.generate(prompts, max_new_tokens=32, do_sample=False)
        lines = [f"PROMPT: {self.tokenizer.decode(p.tolist())}\nMODEL: {self.tokenizer.decode(g[size:].tolist())}\n"
                 for p, g in zip(prompts, generated)]
        path = Path(out) / "samples.txt"
        return [atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines)))]
