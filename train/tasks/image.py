"""Image classification on scikit-learn's digits (8x8, shipped with the package) resized to a square size."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Task


def load_digits_images(size: int, test_fraction: float, seed: int) -> dict[str, torch.Tensor]:
    """The 1,797 digits as (N, 1, size, size) float images (bilinear upsampling of the 8x8 originals,
    standardised with the training split's mean and std) and int64 labels, split at random by ``seed``."""
    from sklearn.datasets import load_digits

    if size < 8 or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits: size must be >= 8 and test_fraction in (0, 1), got {size}, {test_fraction}")
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


class ImageClassificationTask(Task):
    """Batches {x (B, 1, S, S), y (B,)} drawn with replacement from the training split of the digits
    (``data.size``, ``data.test_fraction``, ``data.seed``); loss = cross-entropy with
    ``task_args.label_smoothing``. Evaluation: test and train accuracy, test loss. Report: the coordinate
    attention gates a_h a_w of the model's first CoordAttention block on a few test images (attention.png).
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        if d.get("dataset", "digits") != "digits":
            raise ValueError(f"the image task ships only data.dataset='digits' offline, got {d['dataset']!r}")
        self.data = load_digits_images(int(d.get("size", 32)), float(d.get("test_fraction", 0.25)), int(d.get("seed", 0)))
        self.label_smoothing = float(self.args.get("label_smoothing", 0.0))

    def batch(self, size, generator):
        idx = torch.randint(0, len(self.data["y_train"]), (size,), generator=generator)
        return {"x": self.data["x_train"][idx], "y": self.data["y_train"][idx]}

    def loss(self, model, batch):
        logits = model(batch["x"]).float()
        loss = F.cross_entropy(logits, batch["y"], label_smoothing=self.label_smoothing)
        return loss, {"acc": float((logits.argmax(-1) == batch["y"]).float().mean())}

    @torch.no_grad()
    def evaluate(self, model):
        device = next(model.parameters()).device
        out = {}
        for split in ("test", "train"):
            x, y = self.data[f"x_{split}"], self.data[f"y_{split}"]
            logits = torch.cat([model(chunk.to(device)).float().cpu() for chunk in x.split(256)])
            out[f"{split}_acc"] = float((logits.argmax(-1) == y).float().mean())
            if split == "test":
                out["test_loss"] = float(F.cross_entropy(logits, y))
        return out

    @torch.no_grad()
    def report(self, model: nn.Module, out: Path) -> list[Path]:
        from layers import CoordAttention

        found = [(name, m) for name, m in model.named_modules() if isinstance(m, CoordAttention)]
        if not found:
            return []
        name, block = found[0]
        gates = {}
        hooks = [block.attn_h.register_forward_hook(lambda m, i, o: gates.__setitem__("h", o)),
                 block.attn_w.register_forward_hook(lambda m, i, o: gates.__setitem__("w", o))]
        x = self.data["x_test"][:6]
        try:
            model.eval()(x.to(next(model.parameters()).device))
        finally:
            for h in hooks:
                h.remove()
        attention = (gates["h"] * gates["w"]).mean(1).cpu()  # (6, H, W): a_h a_w averaged over channels

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, len(x), figsize=(2 * len(x), 4.2))
        for k in range(len(x)):
            axes[0, k].imshow(x[k, 0].numpy(), cmap="gray")
            axes[0, k].set_title(f"label {int(self.data['y_test'][k])}")
            im = axes[1, k].imshow(attention[k].numpy(), cmap="viridis")
            fig.colorbar(im, ax=axes[1, k], fraction=0.046)
        for ax in axes.flat:
            ax.set_xticks([]), ax.set_yticks([])
        axes[1, 0].set_ylabel(f"{name}\nmean_c a_h a_w")
        fig.tight_layout()
        path = Path(out) / "attention.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return [path]
