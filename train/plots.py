"""PNG plots written at the end of a run (matplotlib, headless)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

from weights.checkpoint import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (a kill leaves the old picture or the new one), then close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    plt.close(fig)
    return Path(path)


def plot_metrics(metrics_jsonl: Path, out: Path) -> Path:
    """Training loss against step, and every eval metric against step, one panel each."""
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    keys = sorted({k for r in evals for k in r if k not in ("step", "split")})
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4 * (1 + len(keys)), 3.2), squeeze=False)
    axes[0, 0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0, 0].set(xlabel="step", ylabel="training loss", yscale="log")
    for ax, key in zip(axes[0, 1:], keys):
        ax.plot([r["step"] for r in evals], [r.get(key) for r in evals], marker="o")
        ax.set(xlabel="step", ylabel=key)
    fig.tight_layout()
    return save_figure(fig, out)


def plot_attractor(x_true, x_gen, codes, out: Path, title: str = "") -> Path:
    """True attractor beside the generated one, the latter coloured by linear subregion (symbolic code)."""
    fig = plt.figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 2, 1, projection="3d")
    ax.plot(*x_true[:, :3].T.numpy(), lw=0.3, color="k")
    ax.set_title("ground truth (test)")
    ax = fig.add_subplot(1, 2, 2, projection="3d")
    sc = ax.scatter(*x_gen[:, :3].T.numpy(), c=codes.numpy(), s=0.3, cmap="viridis")
    ax.set_title("generated, coloured by subregion")
    fig.colorbar(sc, ax=ax, shrink=0.6, label="subregion code")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)
