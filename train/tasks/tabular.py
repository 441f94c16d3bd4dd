"""Tabular classification on small scikit-learn UCI sets, evaluated by test accuracy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.tabular import load_tabular
from .base import Task


class TabularTask(Task):
    """Batches {x (B, F), y (B,)} drawn with replacement from the training split of ``data.dataset``
    (breast_cancer, wine or iris; stratified ``data.test_fraction`` split by ``data.seed``); loss =
    cross-entropy. Evaluation: accuracy and loss on the test split, and training accuracy.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        if "dataset" not in d:
            raise KeyError("the tabular task needs data.dataset (breast_cancer, wine or iris)")
        self.data = load_tabular(d["dataset"], float(d.get("test_fraction", 0.25)), int(d.get("seed", 0)))

    def batch(self, size, generator):
        idx = torch.randint(0, len(self.data["y_train"]), (size,), generator=generator)
        return {"x": self.data["x_train"][idx], "y": self.data["y_train"][idx]}

    def loss(self, model, batch):
        logits = model(batch["x"]).float()
        return F.cross_entropy(logits, batch["y"]), {"acc": float((logits.argmax(-1) == batch["y"]).float().mean())}

    @torch.no_grad()
    def evaluate(self, model):
        device = next(model.parameters()).device
        out = {}
        for split in ("test", "train"):
            logits = model(self.data[f"x_{split}"].to(device)).float().cpu()
            y = self.data[f"y_{split}"]
            out[f"{split}_acc"] = float((logits.argmax(-1) == y).float().mean())
            if split == "test":
                out["test_loss"] = float(F.cross_entropy(logits, y))
        return out
