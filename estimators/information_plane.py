"""The information plane (Shwartz-Ziv & Tishby 2017): I(X;T) against I(T;Y) for every layer T over training.

A model names its layers with ``layers.ProbePoint``; ``information_plane`` runs it once on a fixed
evaluation set (x, y), reads every matching probe point and estimates both MIs by binning (equal-width:
Shwartz-Ziv & Tishby; equal-mass: Chelombiev et al. 2019). X is treated as discrete (each distinct input
row one symbol), so for distinct inputs I(X;T) = H(T_binned). Call it at evaluation steps and keep the
rows; ``plot_information_plane`` draws them.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from torch import nn

from .binning import codes, entropy_of_symbols, mutual_information_of_symbols, symbols
from .estimator import log_base, unit_name


@torch.no_grad()
def layer_activations(model: nn.Module, x: torch.Tensor, points: str = "*") -> dict[str, torch.Tensor]:
    """Outputs (N, ...) of every ProbePoint of ``model`` whose name matches the glob ``points``, from ``model(x)``
    in eval mode (the deterministic map that I(X;T) measures: no dropout, BatchNorm's running statistics read and
    left as they were); every module's mode is restored afterwards."""
    names = [n for n, m in model.named_modules() if type(m).__name__ == "ProbePoint" and fnmatch.fnmatchcase(n, points)]
    if not names:
        raise KeyError(f"information plane: {points!r} matches no ProbePoint of {type(model).__name__}")
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o.detach())) for n in names]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
    return {n: out[n] for n in names if n in out}


def information_plane(model: nn.Module, x: torch.Tensor, y: torch.Tensor, points: str = "*", n_bins: int = 30,
                      strategy: str = "equal_width", value_range: tuple[float, float] | None = None,
                      base: float | str = "bits") -> dict[str, dict[str, float]]:
    """{layer: {"I_XT": I(X;T), "I_TY": I(T;Y)}} for every ProbePoint T matching ``points``, in bits by default.

    ``y`` holds class labels (N,); ``x`` the N evaluation inputs. Bias: that of binned MI (depends on
    n_bins; I(X;T) <= log2 of the number of distinct inputs). Cost one forward pass plus O(N D log N)
    per layer.
    """
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    x_symbols = symbols(x)
    y_symbols = symbols(codes(y, "y", n_bins, strategy, None))  # labels as they are (floats binned on their range)
    out = {}
    for name, t in layer_activations(model, x, points).items():
        t = t.float()
        if not torch.isfinite(t).all():
            raise ValueError(f"information_plane: layer {name!r} has {int((~torch.isfinite(t)).sum())} NaN/inf "
                             "activations on these inputs (a diverged model?)")
        t_symbols = symbols(codes(t, name, n_bins, strategy, value_range))  # once per layer, for both MIs
        h_t = entropy_of_symbols(t_symbols)
        out[name] = {key: float((mutual_information_of_symbols(t_symbols, other.to(t.device), h_t)
                                 / log_base(base)).float()) for key, other in (("I_XT", x_symbols), ("I_TY", y_symbols))}
    return out


def plot_information_plane(rows: list[dict], path: str | Path, title: str = "", base: float | str = "bits") -> Path:
    """Draw rows {step, point, I_XT, I_TY} as the information plane: one marker per layer and step, coloured by
    step, each step's layers joined by a line (as Shwartz-Ziv & Tishby's Fig. 3). ``base`` is the unit the
    rows are in (``information_plane``'s base), named on the axes. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_information_plane: no rows to draw")
    unit = unit_name(base)
    steps = sorted({r["step"] for r in rows})
    layers = list(dict.fromkeys(r["point"] for r in rows))
    cmap = plt.get_cmap("viridis")
    norm = matplotlib.colors.Normalize(min(steps), max(max(steps), min(steps) + 1))
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    by = {(r["step"], r["point"]): r for r in rows}
    markers = "osD^v<>ph*"
    for s in steps:
        pts = [by[(s, layer)] for layer in layers if (s, layer) in by]
        ax.plot([p["I_XT"] for p in pts], [p["I_TY"] for p in pts], color=cmap(norm(s)), lw=0.4, alpha=0.6)
    for i, layer in enumerate(layers):
        pts = [by[(s, layer)] for s in steps if (s, layer) in by]
        ax.scatter([p["I_XT"] for p in pts], [p["I_TY"] for p in pts], c=[p["step"] for p in pts], cmap=cmap,
                   norm=norm, s=18, marker=markers[i % len(markers)], label=layer, edgecolors="none")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="training step")
    ax.set(xlabel=f"I(X;T) [{unit}]", ylabel=f"I(T;Y) [{unit}]", title=title)
    ax.legend(fontsize=7, markerscale=0.8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
