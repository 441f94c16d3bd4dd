"""Estimator: a named, configured tensor function that a Probe can schedule."""
from __future__ import annotations

import math
from typing import Callable

import torch


def log_base(base: float | str) -> float:
    """ln(base) for converting nats; ``base`` is 2/"bits", e/"nats", or a number."""
    if base in ("bits", 2):
        return math.log(2.0)
    if base in ("nats", "e", math.e):
        return 1.0
    if isinstance(base, (int, float)) and base > 1:
        return math.log(base)
    raise ValueError(f"base must be 2, 'bits', 'nats', 'e' or a number > 1, got {base!r}")


def unit_name(base: float | str) -> str:
    """The name of the unit of information in ``base``: "bits", "nats", or e.g. "base-10 units"."""
    ln = log_base(base)
    return "bits" if ln == math.log(2.0) else "nats" if ln == 1.0 else f"base-{base:g} units"


class Estimator:
    """``fn(tensor, **kwargs)`` under a name; ``est(x)`` computes it directly, a Probe calls it on schedule.

    ``fn`` returns a scalar tensor/float or a dict of them (e.g. one value per head).
    """

    def __init__(self, name: str, fn: Callable, **kwargs):
        self.name, self.fn, self.kwargs = name, fn, kwargs

    def __call__(self, x: torch.Tensor):
        return self.fn(x, **self.kwargs)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{self.name}({args})"


class ModuleEstimator(Estimator):
    """``fn(module, x, **kwargs)``: a property of a module around the inputs it receives (x, its first input).
    A Probe matches its glob against every submodule's name and records that module's inputs; ``est(module,
    x)`` computes it directly. While it runs, the Probe records nothing, so its own forward passes are not
    measured."""

    def __call__(self, module, x: torch.Tensor):
        return self.fn(module, x, **self.kwargs)
