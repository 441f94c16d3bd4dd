"""Information-theoretic estimators as pure tensor functions, and the Probe that attaches them to models."""
from .conditioning import condition_number, covariance_condition_number, matrix_condition_number
from .entropy import entropy, shannon_entropy
from .estimator import Estimator
from .probe import Probe

ESTIMATORS = {"entropy": entropy, "condition_number": condition_number}


def make_estimator(spec) -> Estimator:
    """An estimator from a recipe entry: a name (``"entropy"``) or ``{name: {kwargs}}``."""
    if isinstance(spec, Estimator):
        return spec
    name, kwargs = (spec, {}) if isinstance(spec, str) else next(iter(spec.items()))
    if name not in ESTIMATORS:
        raise KeyError(f"unknown estimator {name!r}; available: {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](**(kwargs or {}))


__all__ = ["ESTIMATORS", "make_estimator", "Probe", "Estimator", "entropy", "shannon_entropy", "condition_number", "matrix_condition_number",
           "covariance_condition_number"]
