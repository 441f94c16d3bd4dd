"""Small tabular classification sets shipped inside scikit-learn (UCI breast cancer, wine, iris)."""
from __future__ import annotations

import numpy as np
import torch

DATASETS = ("breast_cancer", "wine", "iris")


def load_tabular(name: str, test_fraction: float = 0.25, seed: int = 0) -> dict[str, torch.Tensor]:
    """A stratified train/test split of a scikit-learn UCI set, standardised with the training statistics.

    Returns x_train, y_train, x_test, y_test (features float32, labels int64).
    """
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    if name not in DATASETS:
        raise KeyError(f"unknown tabular set {name!r}; available: {list(DATASETS)}")
    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    classes = len(np.unique(y))
    if not classes / len(y) <= test_fraction <= 1 - classes / len(y):
        raise ValueError(f"data.test_fraction must leave at least one example of each of the {classes} classes on "
                         f"both sides, in [{classes / len(y):.3g}, {1 - classes / len(y):.3g}] for {name}, got "
                         f"{test_fraction!r}")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-8
    as_x = lambda a: torch.as_tensor((a - mean) / std, dtype=torch.float32)
    as_y = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)
    return {"x_train": as_x(x_tr), "y_train": as_y(y_tr), "x_test": as_x(x_te), "y_test": as_y(y_te)}
