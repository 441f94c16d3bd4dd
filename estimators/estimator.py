"""Estimator: a named, configured tensor function that a Probe can schedule."""
from __future__ import annotations

import math
import numbers
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


def is_whole(v, low: int = 1) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low


def is_ksg_variant(v) -> bool:
    """1 or 2 (KSG's two estimators); a bool is neither."""
    return v in (1, 2) and not isinstance(v, bool)


def _positive(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0  # inf allowed (alpha), NaN not


def is_finite_positive(v) -> bool:
    """A finite number > 0 (a kernel width, a radius); bools, NaN and inf are not."""
    return _positive(v) and math.isfinite(v)


# the settings that several estimators share, each checked when an estimator is built, not when data arrives
_INTEGER = (is_whole, "an integer >= 1", True)
_SETTINGS = {  # setting: (valid?, what it must be, whole floats become ints)
    "k": _INTEGER, "n_bins": _INTEGER, "t": _INTEGER, "n_directions": _INTEGER, "steps": _INTEGER, "batch_size": _INTEGER,
    "variant": (is_ksg_variant, "1 or 2", True),
    "max_samples": (lambda v: v is None or is_whole(v), "None or an integer >= 1", True),
    "sigma": (lambda v: v is None or is_finite_positive(v), "None or a finite number > 0", False),
    "alpha": (_positive, "a number > 0 (inf: the min-entropy)", False),
    "radius": (is_finite_positive, "a finite number > 0", False),
}
_SETTINGS["sigma_x"] = _SETTINGS["sigma_y"] = _SETTINGS["sigma"]


def check_settings(name: str, fn: Callable, settings: dict) -> dict:
    """``settings`` with whole floats of integer settings as ints (``1e2`` from YAML); a clear error, naming the
    estimator and the setting, for a shared setting out of range (``_SETTINGS``) or an unknown ``base``; a
    tensor in a setting's place (``mi(x, y)``) says which function takes tensors."""
    settings = {key: int(v) if key in _SETTINGS and _SETTINGS[key][2] and isinstance(v, float) and v.is_integer() else v
                for key, v in settings.items()}
    for key, value in settings.items():
        if key == "base":
            try:
                log_base(value)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        elif key in _SETTINGS and not _SETTINGS[key][0](value):
            hint = (f"; {name} builds a probe estimator, whose settings are numbers: estimators."
                    f"{getattr(fn, '__name__', name)}(x, ...) computes a value from tensors") if torch.is_tensor(value) else ""
            raise ValueError(f"{name}: {key} must be {_SETTINGS[key][1]}, got "
                             f"{'a tensor' if torch.is_tensor(value) else repr(value)}{hint}")
    return settings


class Estimator:
    """``fn(tensor, **kwargs)`` under a name; ``est(x)`` computes it directly, a Probe calls it on schedule.

    ``fn`` returns a scalar tensor/float or a dict of them (e.g. one value per head). The shared settings
    (k, n_bins, sigma, base, ...) are checked here, when the estimator is built. ``unit`` names what the values
    count: for an estimator with a ``base`` it is that base's unit ("bits", "nats"), else the one given
    ("ratio", "dimensions"; empty if none), and a Probe writes it in every row.
    """

    def __init__(self, name: str, fn: Callable, *, unit: str = "", **kwargs):
        self.name, self.fn, self.kwargs = name, fn, check_settings(name, getattr(fn, "fn", fn), kwargs)
        self.unit = unit_name(self.kwargs["base"]) if "base" in self.kwargs else unit

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
