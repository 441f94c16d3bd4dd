"""Discrete and discretised estimators: plug-in entropy and binned mutual information.

Every sample (row) of a discretised tensor is one symbol (the tuple of its bin indices), as in
Shwartz-Ziv & Tishby (2017); symbols are ranked by ``symbols``, cost O(N D log N).
"""
from __future__ import annotations

import torch

from .estimator import Estimator, log_base
from .paired import paired
from .samples import as_samples, same_rows

STRATEGIES = ("equal_width", "equal_mass")


def symbols(rows: torch.Tensor) -> torch.Tensor:
    """Row of ``rows`` (N, D) -> integer symbol id 0..m-1, the rank of the row among the m distinct rows in
    lexicographic order: the inverse of ``torch.unique(rows, dim=0)``, without its CPU kernel's row-by-row
    comparisons. One sort ranks every column densely; the ranks are folded into one int64 key column by column
    (key = key * distinct values + rank, re-ranked before it could overflow), and a 1-D unique ranks the keys."""
    rows = rows.flatten(1) if rows.dim() > 1 else rows[:, None]
    ordered, order = rows.sort(0)
    starts = torch.ones_like(ordered, dtype=torch.long)
    starts[1:] = (ordered[1:] != ordered[:-1]).long()
    dense = starts.cumsum(0) - 1  # rank of each sorted entry among its column's distinct values
    ranks = torch.empty_like(dense).scatter_(0, order, dense)
    key, count = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device), 1
    for column, size in zip(ranks.unbind(1), (dense[-1] + 1).tolist() if len(rows) else []):
        if count * size >= 2 ** 62:
            key = torch.unique(key, return_inverse=True)[1]
            count = len(rows)
        key, count = key * size + column, count * size
    return torch.unique(key, return_inverse=True)[1]


def entropy_of_symbols(ids: torch.Tensor, miller_madow: bool = False) -> torch.Tensor:
    """Plug-in H = -sum_s p_s log p_s of integer symbols, in nats, plus the Miller-Madow correction (S - 1) / (2N)
    (S observed symbols, N samples) when ``miller_madow``."""
    counts = torch.bincount(ids).double()
    counts = counts[counts > 0]
    p = counts / counts.sum()
    h = -(p * p.log()).sum()
    return h + (counts.numel() - 1) / (2 * ids.numel()) if miller_madow else h


def _equal_mass_codes(x: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Equal-mass bin index of every entry of x; tied values (atoms) holding more than one share get a bin each.

    Atoms are found as a fixed point: a value is an atom if its count exceeds s = (mass of the non-atoms) /
    (n_bins - number of atoms). The non-atom values between consecutive atoms form runs; run r of mass m_r
    gets b_r bins (cumulative rounding of m_r / s, so sum_r b_r = n_bins - atoms) filled by rank with
    ~m_r / b_r entries each: a value goes, with its ties, to the bin that holds its middle rank (by its first
    rank, small ties ahead of a tied value left a bin empty). Ties are never split; a run with b_r = 0 joins
    the next atom's bin. Integer arithmetic throughout, so the bins are exact.
    """
    _, codes, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    atom = torch.zeros_like(counts, dtype=torch.bool)
    while True:  # the atom set only grows (each new atom lowers s): at most n_bins - 1 rounds
        k, rest = n_bins - int(atom.sum()), counts[~atom].sum()
        grown = atom | (counts * k > rest)
        if torch.equal(grown, atom):
            break
        atom = grown
    free = counts * ~atom
    run = torch.cumsum(atom, 0) - atom.long()  # a non-atom's run = the atoms below it; an atom follows run ``run``
    mass = torch.zeros(int(atom.sum()) + 1, dtype=counts.dtype, device=counts.device).index_add_(0, run, free)
    total = mass.cumsum(0)
    ends = (2 * k * total + rest) // (2 * rest).clamp_min(1)  # bins of runs 0..r: round(k total_r / rest)
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    below = free.cumsum(0) - free - (total - mass)[run]  # mass of the value's run below it
    width = (ends - starts)[run]
    inside = torch.where(width > 0, width * (2 * below + free) // (2 * mass[run]).clamp_min(1), 0)  # middle rank
    bins = torch.where(atom, run + ends[run], run + starts[run] + inside)
    return bins.clamp_max(n_bins - 1)[codes]


def discretise(x: torch.Tensor, n_bins: int = 30, strategy: str = "equal_width",
               value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Bin index (0..n_bins-1) of every entry of x (N, D), with one set of edges for the whole tensor (a layer).

    ``equal_width``: n_bins equal bins on ``value_range`` (default: [min, max] of x), values outside go to
    the end bins (Shwartz-Ziv & Tishby: 30 bins on the activation range). ``equal_mass``: bins by rank of
    the pooled values so every bin holds ~N D / n_bins entries (the adaptive binning of Chelombiev et al.
    2019, one set of edges per layer); a tied value holding more than a bin's share (ReLU zeros, saturated
    tanh) gets a bin of its own and the other bins share the remaining entries equally.
    """
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "equal_mass":
        return _equal_mass_codes(x, n_bins)
    lo, hi = (x.min(), x.max()) if value_range is None else (torch.tensor(value_range[0]), torch.tensor(value_range[1]))
    if value_range is not None and not value_range[0] < value_range[1]:
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    inner = torch.linspace(0, 1, n_bins + 1, dtype=x.dtype, device=x.device)[1:-1] * (hi - lo).to(x) + lo.to(x)
    return torch.bucketize(x.contiguous(), inner.contiguous(), right=True)


def plugin_entropy(x: torch.Tensor, base: float | str = "nats", miller_madow: bool = False) -> torch.Tensor:
    """H = -sum_s p_s log p_s over the empirical frequencies p_s of the distinct rows s of x (N, ...).

    For discrete data (labels, bin indices, binary inputs). Nats (or ``base``). Bias: the plug-in
    estimate is low by about (m - 1) / (2N) nats for m occupied symbols; ``miller_madow`` adds that
    correction. Cost O(N D log N).
    """
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor of symbols (N, ...), got {type(x).__name__}")
    x = as_samples(x, "x", dtype=x.dtype, min_rows=1)
    return (entropy_of_symbols(symbols(x), miller_madow) / log_base(base)).float()


def codes(v: torch.Tensor, name: str, n_bins: int, strategy: str, value_range) -> torch.Tensor:
    """Per-entry bin codes (N, D) of ``v``: floating input discretised (``discretise``), integer/bool input as it
    is; ``symbols`` turns the rows into one symbol each."""
    if torch.is_floating_point(v):
        return discretise(as_samples(v, name, v.dtype if v.dtype == torch.float64 else torch.float32), n_bins,
                          strategy, value_range)
    return as_samples(v, name, v.dtype)


def binned_mutual_information(x: torch.Tensor, y: torch.Tensor, n_bins: int = 30, strategy: str = "equal_width",
                              value_range: tuple[float, float] | None = None, base: float | str = "bits",
                              y_range: tuple[float, float] | None = None) -> torch.Tensor:
    """I(X;Y) = H(X) + H(Y) - H(X,Y) of the discretised rows (Shwartz-Ziv & Tishby 2017; Chelombiev et al. 2019).

    Floating inputs are discretised with ``discretise``, each with its own edges: x on ``value_range`` (e.g. a
    tanh layer's (-1, 1)), y on ``y_range`` (default for both: the variable's own [min, max]); integer/bool
    inputs (labels, binary patterns) are used as symbols as they are. Bits by default, as in both papers.
    Bias: the plug-in MI is biased up by ~(m_xy - m_x - m_y + 1) / (2N ln 2) bits and depends strongly
    on n_bins; with all-distinct inputs I(X;T) = H(T) (a deterministic network loses nothing except by
    binning). Cost O(N D log N).
    """
    x, y = codes(x, "x", n_bins, strategy, value_range), codes(y, "y", n_bins, strategy, y_range)
    same_rows(x, y)
    return (mutual_information_of_symbols(symbols(x), symbols(y)) / log_base(base)).float()


def mutual_information_of_symbols(sx: torch.Tensor, sy: torch.Tensor, hx: torch.Tensor | None = None) -> torch.Tensor:
    """Plug-in I(X;Y) = H(X) + H(Y) - H(X,Y) >= 0 in nats of two symbol columns (N,) from ``symbols``; ``hx``, H(X)
    if already known (a layer measured against both inputs and labels)."""
    hx = entropy_of_symbols(sx) if hx is None else hx
    joint = symbols(torch.stack([sx, sy], 1))
    return (hx + entropy_of_symbols(sy) - entropy_of_symbols(joint)).clamp_min(0)


def binned_plugin_entropy(x: torch.Tensor, n_bins: int = 30, strategy: str = "equal_width", value_range=None,
                          base: float | str = "bits") -> torch.Tensor:
    """H(T) = plug-in entropy of the rows of x discretised by ``discretise`` (bits by default); bias as plugin_entropy."""
    return plugin_entropy(codes(x, "x", n_bins, strategy, value_range), base=base)


def binned_entropy(n_bins: int = 30, strategy: str = "equal_width", value_range=None,
                   base: float | str = "bits") -> Estimator:
    """Probe estimator: plug-in entropy of the probe tensor's discretised rows (its layer entropy H(T))."""
    if strategy not in STRATEGIES:  # checked when built, as the shared settings are
        raise ValueError(f"binned_entropy: strategy must be one of {STRATEGIES}, got {strategy!r}")
    return Estimator("binned_entropy", binned_plugin_entropy, n_bins=n_bins, strategy=strategy,
                     value_range=value_range, base=base)


def binned_mi(target=None, n_bins: int = 30, value_range=None, base: float | str = "bits") -> Estimator:
    """Probe estimator: equal-width binned I(T; target) (Shwartz-Ziv & Tishby) against a bound target;
    ``value_range`` fixes the probe tensor's bins, a floating target gets its own."""
    return paired("binned_mi", binned_mutual_information, target, n_bins=n_bins, strategy="equal_width",
                  value_range=value_range, base=base)


def adaptive_binned_mi(target=None, n_bins: int = 30, base: float | str = "bits") -> Estimator:
    """Probe estimator: equal-mass binned I(T; target) (Chelombiev et al. 2019) against a bound target."""
    return paired("adaptive_binned_mi", binned_mutual_information, target, n_bins=n_bins, strategy="equal_mass",
                  base=base)
