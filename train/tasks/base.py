"""The contract between a model family and the one training loop."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from torch import nn

from ..recipe import check_number


def whole(section: dict, name: str, key: str, default: int) -> int:
    """``section[key]`` (``default`` where absent) as an int; a ValueError naming ``name.key`` where it is not a
    whole number (a string, a fraction, a bool: YAML's ``yes`` is not a count)."""
    return int(check_number(name, key, section.get(key, default), low=-math.inf, integer=True))


def real(section: dict, name: str, key: str, default: float) -> float:
    """``section[key]`` (``default`` where absent) as a float; a ValueError naming ``name.key`` where it is not a
    finite number."""
    return float(check_number(name, key, section.get(key, default), low=-math.inf))


def draw_rows(tensors: dict[str, torch.Tensor], size: int, generator: torch.Generator,
              replace: bool = True) -> dict[str, torch.Tensor]:
    """``size`` rows drawn uniformly, the same rows of every tensor: with replacement (training batches), or
    ``size`` distinct rows (the samples that estimators measure: a repeated row is a zero-distance neighbour to a
    k-NN estimator)."""
    idx = draw_indices(len(next(iter(tensors.values()))), size, generator, replace)
    return {k: v[idx] for k, v in tensors.items()}


def draw_indices(n: int, size: int, generator: torch.Generator, replace: bool = True) -> torch.Tensor:
    """``size`` indices of n examples (rows, or a sequence's window starts): uniform with replacement, or distinct."""
    if n <= 0:
        raise ValueError("this split holds no examples to draw a batch from; check the data settings that size it")
    if not replace and size > n:
        raise ValueError(f"the split holds {n} examples, fewer than the {size} distinct ones asked for (--batch {n} "
                         "measures on all of them)")
    if replace:
        return torch.randint(0, n, (size,), generator=generator)
    return torch.randperm(n, generator=generator)[:size]


def draw_split(data: dict[str, torch.Tensor], split: str, size: int, generator: torch.Generator,
               replace: bool = True) -> dict:
    """A batch {x, y} of ``size`` rows of ``data["x_<split>"]`` and ``data["y_<split>"]``."""
    return draw_rows({"x": data[f"x_{split}"], "y": data[f"y_{split}"]}, size, generator, replace)


def check_in_features(model: nn.Module, features: int, data: str) -> None:
    """The model reads ``features`` features (its config's ``in_features``), else an error naming the setting;
    ``data`` says whose features they are ("data.dataset=wine has")."""
    takes = getattr(getattr(model, "config", None), "in_features", features)
    if takes != features:
        raise ValueError(f"{data} {features} features but the model takes in_features={takes}; set "
                         f"model_args.in_features={features} (to evaluate a checkpoint, give it data of {takes} "
                         "features)")


class Task(ABC):
    """A family's batch format, loss, metrics and report. The loop owns everything else.

    ``batch`` must be a pure function of its generator (seeded by the loop from the recipe seed and the
    step), so that a resumed run sees exactly the batches an uninterrupted one would, and every rank
    draws the same global batch and keeps its own slice of it.
    """

    max_batch: int | None = None  # the most examples ``batch`` can draw at once (None: any number)
    # files that evaluating the run's checkpoints needs besides recipe.yaml: run-directory file name -> the data.*
    # key that ``zoo eval`` / ``zoo estimate`` point at it (the LM tokenizer: other data is read with its pieces)
    run_files: dict[str, str] = {}

    def __init__(self, recipe: dict):
        self.recipe = recipe
        self.args = recipe.get("task_args", {})

    def model_args(self, args: dict) -> dict:
        """The recipe's ``model_args``, completed from the data where the recipe leaves a value open (null)."""
        return args

    def write_run_files(self, run: Path) -> None:
        """Write the ``run_files`` into the run directory (rank 0, beside recipe.yaml, before the first step)."""

    def digest(self) -> str:
        """A digest of data state that every torchrun rank must hold the same of, though each builds its own (an
        LM's tokenizer); the loop compares them across ranks. "" for none."""
        return ""

    def prepare(self, model: nn.Module) -> None:
        """Set data-dependent model state (e.g. normalisation statistics) before training; runs on every rank,
        before a resumed run loads its checkpoint."""

    @abstractmethod
    def batch(self, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A global batch of ``size`` examples; every tensor has the batch on dim 0."""

    def train_sample(self, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``size`` distinct training examples in ``batch``'s format, which ``zoo estimate --split train`` measures
        on (a repeated example is a zero-distance neighbour to a k-NN estimator). By default a training batch:
        tasks whose batches can repeat an example (drawn with replacement) override it."""
        return self.batch(size, generator)

    def held_out_batch(self, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A batch of ``size`` distinct examples in ``batch``'s format, drawn from data the model does not train on
        (the test or validation split); ``zoo estimate`` measures on one."""
        raise NotImplementedError(f"the {type(self).__name__} has no held-out data to draw a batch from")

    def prefetch(self, batch: dict[str, torch.Tensor]) -> None:
        """The local (micro-)batch that the next step will pass to ``loss``: a task whose batches are expensive
        to materialise (decoded images) may start on it in the background now. The loop calls this only for
        tasks that override it, during the step before."""

    def sparse_rows(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[nn.Parameter, torch.Tensor]:
        """Parameters whose rows (dim 0) belong to single training examples, each with the rows that this global
        batch uses. The loop's update then changes only those rows: every other row and its optimizer state stay
        as they were (the lazy update of sparse embeddings), so a minibatch never moves the vectors of examples it
        does not contain."""
        return {}

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss (mean over the batch) and extra per-batch metrics as scalar tensors (or floats): the loop
        turns them into numbers only on the steps it logs, so a GPU step waits for none of them."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics; runs on rank 0 with the unwrapped model in eval mode."""
        return {}

    def report(self, model: nn.Module, out: Path) -> list[Path]:
        """Task-specific plots written into the run directory; returns their paths."""
        return []
