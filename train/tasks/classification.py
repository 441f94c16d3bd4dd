"""Classification with cross-entropy; optionally tracks the information plane of the model's probe points."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from estimators.information_plane import information_plane, plot_information_plane

from ..data.ib12bit import ib12bit, split
from .base import Task

DATASETS = {"ib12bit": ib12bit}


class ClassificationTask(Task):
    """Minibatches drawn (with replacement across steps) from the training split of ``data.dataset``;
    loss = cross-entropy of the model's logits. Evaluation reports train/test accuracy and, with
    ``task_args.information_plane: true``, I(X;T) and I(T;Y) in bits of every probe point matching
    ``task_args.points`` on all inputs (``n_bins`` equal-width bins on ``bins_range``, or the layer's
    range when null; ``strategy: equal_mass`` for adaptive bins). ``report`` draws the plane from the
    run's metrics.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        name = d.get("dataset")
        if name not in DATASETS:
            raise KeyError(f"data.dataset must be one of {sorted(DATASETS)}, got {name!r}")
        self.x, self.y = DATASETS[name]()
        self.train_idx, self.test_idx = split(len(self.x), float(d.get("train_fraction", 0.85)), int(d.get("seed", 0)))
        self.plane = bool(self.args.get("information_plane", False))
        self.points = self.args.get("points", "*")
        self.n_bins = int(self.args.get("n_bins", 30))
        self.strategy = self.args.get("strategy", "equal_width")
        rng = self.args.get("bins_range")
        self.bins_range = tuple(rng) if rng is not None else None

    def batch(self, size, generator):
        idx = self.train_idx[torch.randint(0, len(self.train_idx), (size,), generator=generator)]
        return {"x": self.x[idx], "y": self.y[idx]}

    def loss(self, model, batch):
        logits = model(batch["x"])
        loss = F.cross_entropy(logits.float(), batch["y"])
        return loss, {"accuracy": float((logits.argmax(-1) == batch["y"]).float().mean())}

    @torch.no_grad()
    def evaluate(self, model):
        device = next(model.parameters()).device
        x, y = self.x.to(device), self.y.to(device)
        correct = (model(x).argmax(-1) == y).float().cpu()
        out = {"train_accuracy": float(correct[self.train_idx].mean())}
        if len(self.test_idx):
            out["test_accuracy"] = float(correct[self.test_idx].mean())
        if self.plane:
            plane = information_plane(model, x, y, self.points, n_bins=self.n_bins, strategy=self.strategy,
                                      value_range=self.bins_range)
            for point, v in plane.items():
                out[f"I_XT/{point}"], out[f"I_TY/{point}"] = v["I_XT"], v["I_TY"]
        return out

    def report(self, model, out: Path):
        metrics = Path(out) / "metrics.jsonl"
        if not self.plane or not metrics.is_file():
            return []
        rows = []
        for line in metrics.read_text().splitlines():
            r = json.loads(line)
            if r.get("split") == "eval":
                rows += [{"step": r["step"], "point": k[5:], "I_XT": v, "I_TY": r[f"I_TY/{k[5:]}"]}
                         for k, v in r.items() if k.startswith("I_XT/")]
        if not rows:
            return []
        return [plot_information_plane(rows, Path(out) / "information_plane.png",
                                       title=f"{self.recipe['name']}: information plane ({self.strategy} bins)")]
