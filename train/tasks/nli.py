"""Natural language inference: sentence pairs through a frozen encoder's tokenizer, 3-way classification."""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from zoo._registry import resolve_config

from ..data.snli import HUB_CONFIG, snli_splits
from .base import Task, draw_rows, whole


class NLITask(Task):
    """Batches {input_ids, attention_mask (B, max_len), labels (B,)} drawn with replacement from SNLI train,
    tokenised as "[CLS] premise [SEP] hypothesis [SEP]" by the encoder's tokenizer (``data.tokenizer``, default
    the model's ``encoder``), padded/truncated to ``task_args.max_len`` (48 as the paper). Loss = cross-entropy;
    evaluation: accuracy on the valid (SNLI dev) and test splits.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        from transformers import AutoTokenizer

        from weights.hub import hub_resolvable

        d = recipe["data"]
        pairs = snli_splits(d.get("path"), d.get("hub_config", HUB_CONFIG))
        name = (os.path.expanduser(d["tokenizer"]) if d.get("tokenizer") else  # a hub id, or a folder (~ expanded)
                resolve_config(recipe["model"], **recipe.get("model_args", {})).encoder)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=not hub_resolvable())
        except OSError as err:
            raise FileNotFoundError(f"tokenizer {name!r} is not available offline; download it once with "
                                    f"`hf download {name}` or set data.tokenizer to a local folder") from err
        self.max_len = whole(self.args, "task_args", "max_len", 48)
        self.eval_batch = whole(self.args, "task_args", "eval_batch_size", 256)
        self.splits = {}
        for split, (premises, hypotheses, labels) in pairs.items():
            enc = tokenizer(premises, hypotheses, padding="max_length", truncation=True, max_length=self.max_len,
                            return_tensors="pt")
            self.splits[split] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                  "labels": torch.tensor(labels)}

    def batch(self, size, generator):
        return draw_rows(self.splits["train"], size, generator)

    def train_sample(self, size, generator):
        return draw_rows(self.splits["train"], size, generator, replace=False)

    def held_out_batch(self, size, generator):
        return draw_rows(self.splits["valid"], size, generator, replace=False)

    def loss(self, model, batch):
        logits = model(batch["input_ids"], batch["attention_mask"]).logits.float()
        acc = (logits.argmax(-1) == batch["labels"]).float().mean().detach()
        return F.cross_entropy(logits, batch["labels"]), {"acc": acc}

    @torch.no_grad()
    def evaluate(self, model):
        device = next(model.parameters()).device
        out = {}
        for split in ("valid", "test"):
            data = self.splits[split]
            correct = 0
            for ids, mask, y in zip(*(data[k].split(self.eval_batch) for k in ("input_ids", "attention_mask", "labels"))):
                correct += int((model(ids.to(device), mask.to(device)).logits.argmax(-1).cpu() == y).sum())
            out[f"{split}_acc"] = correct / len(data["labels"])
        return out
