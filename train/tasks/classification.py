"""Classification of small in-memory sets with cross-entropy: the 12-bit task of the information-plane papers
and scikit-learn's UCI sets; optionally tracks the information plane of the model's probe points."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from estimators.information_plane import information_plane, plot_information_plane

from ..data.ib12bit import ib12bit, split
from ..data.tabular import DATASETS as TABULAR, load_tabular
from .base import Task, check_in_features, draw_split, real, whole


def _ib12bit_split(d: dict) -> dict[str, torch.Tensor]:
    x, y = ib12bit()
    train, test = split(len(x), real(d, "data", "train_fraction", 0.85), whole(d, "data", "seed", 0))
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


def _tabular_split(name: str):
    return lambda d: load_tabular(name, real(d, "data", "test_fraction", 0.25), whole(d, "data", "seed", 0))


DATASETS = {"ib12bit": _ib12bit_split, **{name: _tabular_split(name) for name in TABULAR}}


class ClassificationTask(Task):
    """Batches {x (B, F), y (B,)} drawn with replacement from the training split of ``data.dataset``:
    ``ib12bit`` (a random ``data.train_fraction`` of the 4096 patterns) or a scikit-learn UCI set
    (``breast_cancer``, ``wine``, ``iris``: stratified ``data.test_fraction`` split, standardised), split by
    ``data.seed``; loss = cross-entropy of the model's logits. Evaluation: test and train accuracy, test loss
    and, with ``task_args.information_plane: true``, I(X;T) and I(T;Y) in bits of every probe point matching
    ``task_args.points`` on all inputs (``n_bins`` equal-width bins on ``bins_range``, or the layer's range
    when null; ``strategy: equal_mass`` for adaptive bins). ``report`` draws the plane from the run's metrics.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        name = d.get("dataset")
        if name not in DATASETS:
            raise KeyError(f"data.dataset must be one of {sorted(DATASETS)}, got {name!r}")
        self.name, self.data = name, DATASETS[name](d)
        self.classes = int(torch.cat([self.data["y_train"], self.data["y_test"]]).max()) + 1
        self.plane = bool(self.args.get("information_plane", False))
        self.points = self.args.get("points", "*")
        self.n_bins = whole(self.args, "task_args", "n_bins", 30)
        self.strategy = self.args.get("strategy", "equal_width")
        rng = self.args.get("bins_range")
        self.bins_range = tuple(rng) if rng is not None else None

    def batch(self, size, generator):
        return draw_split(self.data, "train", size, generator)

    def train_sample(self, size, generator):
        return draw_split(self.data, "train", size, generator, replace=False)

    def held_out_batch(self, size, generator):
        return draw_split(self.data, "test", size, generator, replace=False)

    def prepare(self, model):
        self._check_features(model)

    def _check_features(self, model) -> None:
        """The model reads the data's feature count (checked before training and at every evaluation)."""
        check_in_features(model, self.data["x_train"].shape[-1], f"data.dataset={self.name} has")

    def _logits(self, model, x: torch.Tensor) -> torch.Tensor:
        """The model's logits, at least one per class of the data (else an error naming the setting, not an index
        error from inside the cross-entropy)."""
        self._check_features(model)
        logits = model(x).float()
        if logits.shape[-1] < self.classes:  # more logits than labels used is a model that never sees its top class
            raise ValueError(f"data.dataset={self.name} has {self.classes} classes but the model gives "
                             f"{logits.shape[-1]} logits; set model_args.num_classes={self.classes} (to evaluate a "
                             f"checkpoint, give it data of {logits.shape[-1]} classes)")
        return logits

    def loss(self, model, batch):
        logits = self._logits(model, batch["x"])
        return F.cross_entropy(logits, batch["y"]), {"acc": (logits.argmax(-1) == batch["y"]).float().mean().detach()}

    @torch.no_grad()
    def evaluate(self, model):
        device = next(model.parameters()).device
        out = {}
        for split_name in ("test", "train"):
            x, y = self.data[f"x_{split_name}"].to(device), self.data[f"y_{split_name}"].to(device)
            if not len(y):  # ib12bit with train_fraction 1
                continue
            logits = self._logits(model, x)
            out[f"{split_name}_acc"] = float((logits.argmax(-1) == y).float().mean())
            if split_name == "test":
                out["test_loss"] = float(F.cross_entropy(logits, y))
        if self.plane:
            x = torch.cat([self.data["x_train"], self.data["x_test"]]).to(device)
            y = torch.cat([self.data["y_train"], self.data["y_test"]]).to(device)
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
