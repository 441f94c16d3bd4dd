"""Two-variable estimators inside a Probe, which hands each estimator one tensor per probe point.

``paired(name, fn, target)`` makes the Estimator ``x -> fn(x, target[:len(x)])``: the probe tensor X
(rows = samples, accumulated by the Probe in forward order) against a target Y that the user binds,
row-aligned with what the probe records: a tensor (e.g. the labels of a fixed evaluation batch that is
fed at every scheduled step), or a zero-argument callable returning the current one (e.g.
``lambda: batch["y"]``). For I(X;T) and I(T;Y) of every layer over training use
``estimators.information_plane`` instead.
"""
from __future__ import annotations

from typing import Callable

import torch

from .estimator import Estimator


class _AgainstTarget:
    def __init__(self, fn: Callable, target):
        if target is None:
            raise ValueError(f"{fn.__name__} is a two-variable estimator: bind target=<tensor aligned with the probe's "
                             "rows> or target=<callable returning one>; for layers vs inputs/labels use information_plane")
        if not (torch.is_tensor(target) or callable(target)):
            raise TypeError(f"target must be a tensor or a zero-argument callable, got {type(target).__name__}")
        self.fn, self.target = fn, target

    def __call__(self, x: torch.Tensor, **kwargs):
        y = self.target() if callable(self.target) and not torch.is_tensor(self.target) else self.target
        if y.shape[0] < x.shape[0]:
            raise ValueError(f"{self.fn.__name__}: the bound target has {y.shape[0]} rows but the probe recorded "
                             f"{x.shape[0]}; the target needs one row per recorded row (the same examples, in "
                             "order): a point whose rows are tokens or atoms does not pair with per-example labels")
        return self.fn(x, y[: x.shape[0]].to(x.device), **kwargs)


def paired(name: str, fn: Callable, target, **kwargs) -> Estimator:
    """Estimator ``name`` computing ``fn(x, target[:len(x)], **kwargs)`` on a probe tensor x."""
    return Estimator(name, _AgainstTarget(fn, target), **kwargs)
