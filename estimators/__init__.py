"""Information-theoretic estimators as pure tensor functions, and the Probe that attaches them to models."""
import inspect

from .conditioning import condition_number, covariance_condition_number, matrix_condition_number
from .entropy import entropy, shannon_entropy
from .estimator import Estimator, ModuleEstimator
from .probe import Probe
from .attention import attention_entropy, attention_entropy_lower_bound, attention_entropy_per_head
from .binning import adaptive_binned_mi, binned_entropy, binned_mi, binned_mutual_information, plugin_entropy
from .compressed import compressed_mi, compressed_mutual_information
from .dse import diffusion_spectral_entropy, diffusion_spectral_mutual_information, dse, dsmi
from .effective_number import effective_feature_count, effective_rank, feature_count, spectral_effective_rank
from .information_plane import information_plane, layer_activations, plot_information_plane
from .knn import knn_entropy, kozachenko_leonenko_entropy, ksg_mi, ksg_mutual_information
from .local_complexity import local_complexity, local_complexity_estimator
from .lyapunov import largest_lyapunov_exponent
from .matrix import (cauchy_schwarz_divergence, cauchy_schwarz_mutual_information, cs_mi, matrix_renyi_entropy,
                     matrix_renyi_mutual_information, renyi_entropy, renyi_mi)
from .neural import neural_mi, neural_mutual_information
from .paired import paired

mi = ksg_mi  # the default MI estimator: KSG-1

ESTIMATORS = {"entropy": entropy, "condition_number": condition_number,
              "binned_entropy": binned_entropy, "binned_mi": binned_mi, "adaptive_binned_mi": adaptive_binned_mi,
              "knn_entropy": knn_entropy, "ksg_mi": ksg_mi, "mi": mi, "renyi_entropy": renyi_entropy,
              "renyi_mi": renyi_mi, "cs_mi": cs_mi, "dse": dse, "dsmi": dsmi, "neural_mi": neural_mi,
              "compressed_mi": compressed_mi, "attention_entropy": attention_entropy,
              "effective_rank": effective_rank, "feature_count": feature_count,
              "local_complexity": local_complexity_estimator}


def make_estimator(spec) -> Estimator:
    """An estimator from a recipe entry: a name (``"entropy"``) or ``{name: {kwargs}}``."""
    if isinstance(spec, Estimator):
        return spec
    if not isinstance(spec, str) and not (isinstance(spec, dict) and len(spec) == 1):
        raise TypeError(f"an estimator is an Estimator, a name or {{name: {{settings}}}} with one name, got {spec!r}; "
                        "give several estimators as a list")
    name, kwargs = (spec, {}) if isinstance(spec, str) else next(iter(spec.items()))
    if not isinstance(kwargs, dict | None):
        raise TypeError(f"estimator {name!r}: its settings must be a mapping {{key: value}}, got {kwargs!r}")
    if name not in ESTIMATORS:
        raise KeyError(f"unknown estimator {name!r}; available: {sorted(ESTIMATORS)}")
    try:
        return ESTIMATORS[name](**(kwargs or {}))
    except TypeError as err:  # a misspelt or missing argument
        raise TypeError(f"estimator {name!r}: {err}; it takes {name}{inspect.signature(ESTIMATORS[name])}") from err


__all__ = ["largest_lyapunov_exponent", "ESTIMATORS", "make_estimator", "Probe", "Estimator", "ModuleEstimator",
           "local_complexity_estimator", "entropy", "shannon_entropy", "condition_number", "matrix_condition_number",
           "covariance_condition_number", "paired", "mi",
           "attention_entropy", "attention_entropy_per_head", "attention_entropy_lower_bound", "plugin_entropy", "binned_mutual_information",
           "binned_entropy", "binned_mi", "adaptive_binned_mi", "compressed_mi", "compressed_mutual_information",
           "dse", "dsmi", "diffusion_spectral_entropy", "diffusion_spectral_mutual_information", "effective_rank",
           "feature_count", "spectral_effective_rank", "effective_feature_count", "information_plane",
           "layer_activations", "plot_information_plane", "knn_entropy", "kozachenko_leonenko_entropy", "ksg_mi",
           "ksg_mutual_information", "local_complexity", "cauchy_schwarz_divergence",
           "cauchy_schwarz_mutual_information", "cs_mi", "matrix_renyi_entropy", "matrix_renyi_mutual_information",
           "renyi_entropy", "renyi_mi", "neural_mi", "neural_mutual_information"]
