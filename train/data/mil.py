"""Multiple-instance data: bags of scikit-learn digits (offline), and the MIL benchmark sets read from disk."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ANDREWS_URL = "http://www.cs.columbia.edu/~andrews/mil/data/MIL-Data-2002-Musk-Corel-Trec9-MATLAB.tgz"


def pad_bags(bags: list[np.ndarray], labels) -> dict[str, torch.Tensor]:
    """Stack bags of different sizes into x (N, S_max, F), mask (N, S_max) (True = padding) and y (N,)."""
    s_max, f = max(len(b) for b in bags), bags[0].shape[1]
    x = torch.zeros(len(bags), s_max, f)
    mask = torch.ones(len(bags), s_max, dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, :len(b)] = torch.as_tensor(np.asarray(b), dtype=torch.float32)
        mask[i, :len(b)] = False
    return {"x": x, "mask": mask, "y": torch.as_tensor(np.asarray(labels), dtype=torch.float32)}


def digit_bags(n_bags: int, target: int = 9, mean_length: float = 10.0, std_length: float = 2.0,
               split: str = "train", seed: int = 0) -> dict[str, torch.Tensor]:
    """Bags of 8x8 scikit-learn digits (pixels / 16), a bag positive when it holds the digit ``target``
    (the MNIST-bags construction of Ilse et al. 2018 on the digits shipped with scikit-learn).

    Bag lengths ~ round(N(mean_length, std_length)), at least 2. The 1797 images are split once (fixed
    permutation) into 1200 for ``split="train"`` and 597 for ``"test"``; half of the bags are positive.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"digit_bags: split must be 'train' or 'test', got {split!r}")
    images, digits = load_digits(return_X_y=True)
    order = np.random.default_rng(12345).permutation(len(digits))
    order = order[:1200] if split == "train" else order[1200:]
    images, digits = images[order] / 16.0, digits[order]
    rng = np.random.default_rng(seed + (0 if split == "train" else 10_000))
    pos, neg = np.flatnonzero(digits == target), np.flatnonzero(digits != target)
    bags, labels = [], []
    for i in range(n_bags):
        length = max(2, int(round(rng.normal(mean_length, std_length))))
        idx = rng.choice(neg, length, replace=False)
        if i % 2 == 0:  # positive: 1 .. length/2 target digits
            k = rng.integers(1, max(2, length // 2 + 1))
            idx[:k] = rng.choice(pos, k, replace=False)
        bags.append(images[idx])
        labels.append(float(i % 2 == 0))
    return pad_bags(bags, labels)


def load_mil_file(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags and labels (0/1) from a MIL benchmark file with ``features`` (instances x F, dense or sparse),
    ``labels`` (one per instance, the bag's label, +-1 or 0/1) and ``bag_ids`` (one per instance):
    a MATLAB ``.mat`` file as distributed by Andrews et al. (Tiger/Fox/Elephant) or an ``.npz`` with these keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MIL data file {path} not found. Tiger, Fox and Elephant: download {ANDREWS_URL}, unpack it and put "
            "tiger_100x100_matlab.mat, fox_100x100_matlab.mat, elephant_100x100_matlab.mat where data.path points "
            "(default data/mil/). UCSB breast cancer: convert it to an .npz with arrays features, labels, bag_ids "
            "(one row per instance).")
    if path.suffix == ".mat":
        from scipy.io import loadmat

        raw = loadmat(str(path))
    elif path.suffix == ".npz":
        raw = dict(np.load(path, allow_pickle=False))
    else:
        raise ValueError(f"MIL data file must be .mat or .npz, got {path.name}")
    missing = [k for k in ("features", "labels", "bag_ids") if k not in raw]
    if missing:
        raise KeyError(f"{path} lacks {missing}; it must hold features, labels and bag_ids")
    dense = lambda a: np.asarray(a.todense() if hasattr(a, "todense") else a)
    features = dense(raw["features"]).astype(np.float32)
    labels, ids = dense(raw["labels"]).ravel(), dense(raw["bag_ids"]).ravel()
    if not len(features) == len(labels) == len(ids):
        raise ValueError(f"{path}: features ({len(features)}), labels ({len(labels)}) and bag_ids ({len(ids)}) "
                         "must have one entry per instance")
    bag_ids = np.unique(ids)
    bags = [features[ids == b] for b in bag_ids]
    return bags, np.array([float(labels[ids == b].max() > 0) for b in bag_ids])


def fold_split(labels: np.ndarray, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of fold ``fold`` of a stratified ``folds``-fold split shuffled by ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    if not 0 <= fold < folds:
        raise ValueError(f"data.fold must be in [0, {folds}), got {fold}")
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    return list(splits)[fold]
