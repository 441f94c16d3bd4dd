"""Image classification: scikit-learn's digits (8x8, shipped with the package) resized to a square size, or any
ImageNet-style image folder read on demand."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Task, draw_split, real, whole


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


def _check_input_size(model: nn.Module, size: tuple, given: str) -> None:
    """A fixed-size ViT (timm's strict patch embedding) must get images of its img_size: named here, not as timm's
    assertion from inside the first forward."""
    embed = getattr(model, "patch_embed", None)
    if embed is not None and getattr(embed, "strict_img_size", False) and size != tuple(embed.img_size):
        raise ValueError(f"the model takes {embed.img_size[0]}x{embed.img_size[1]} images "
                         f"(model_args.img_size={embed.img_size[0]}) but the data are {size[0]}x{size[1]} "
                         f"({given}); set data.size={embed.img_size[0]}, or model_args.img_size={size[0]} "
                         "to train at that size")


class ImageClassificationTask(Task):
    """Batches {x (B, C, S, S), y (B,)} drawn with replacement from the training images (for a folder:
    {index, seed, y}, decoded in ``loss``); loss = cross-entropy with ``task_args.label_smoothing``.

    ``data.dataset``: ``digits`` (offline: ``data.size``, ``data.test_fraction``, ``data.seed``; evaluation:
    test and train accuracy, test loss) or ``folder`` (``data.path`` holding ``data.train_split`` and
    ``data.eval_split`` class folders, timm's transforms for the model at ``data.size``, training augmentation
    ``data.augment`` (create_transform arguments), ``data.workers`` decoding processes; evaluation: top-1/top-5
    accuracy and loss on the evaluation split, or a fixed subset of ``data.eval_limit`` images spread over its
    classes).
    Report: the coordinate attention gates a_h a_w of the model's first CoordAttention block on six evaluation
    images spread over the classes (attention.png).
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        self.dataset = d.get("dataset", "digits")
        self.label_smoothing = real(self.args, "task_args", "label_smoothing", 0.0)
        if self.dataset == "digits":
            self.data = load_digits_images(whole(d, "data", "size", 32), real(d, "data", "test_fraction", 0.25),
                                           whole(d, "data", "seed", 0))
        elif self.dataset == "folder":
            from ..data.image_folder import ImageFolderData

            self.folder = ImageFolderData(d.get("path"), d.get("train_split", "train"), d.get("eval_split", "val"),
                                          d.get("size"), d.get("augment"), whole(d, "data", "workers", 4))
            self.eval_limit = d.get("eval_limit")
            if self.eval_limit is not None and (not isinstance(self.eval_limit, int) or self.eval_limit < 1):
                raise ValueError(f"data.eval_limit must be a positive number of images (or null: all), "
                                 f"got {self.eval_limit!r}")
        else:
            raise ValueError(f"image task: data.dataset must be 'digits' (offline) or 'folder' (data.path), got {self.dataset!r}")

    def model_args(self, args):
        if self.dataset == "folder" and args.get("num_classes", 0) is None:
            return {**args, "num_classes": len(self.folder.classes)}
        return args

    def prepare(self, model):
        if self.dataset == "folder":
            self._configure(model)
        else:  # the digits, at data.size
            size = tuple(self.data["x_train"].shape[-2:])
            _check_input_size(model, size, f"data.size={size[0]}")

    def _configure(self, model: nn.Module) -> None:
        """Check that ``model`` fits the folder (its class count; a fixed-size ViT's input size), then set up the
        folder's transforms for it. Training, ``zoo eval`` and ``zoo estimate`` all come through here."""
        classes = len(self.folder.classes)
        if getattr(model, "num_classes", classes) != classes:
            raise ValueError(f"{self.folder.root} has {classes} classes but the model predicts {model.num_classes}; "
                             f"set model_args.num_classes={classes} (to evaluate a checkpoint: point data.path at a "
                             f"folder with its {model.num_classes} classes)")
        size = tuple(self.folder.data_config(model)["input_size"][1:])
        given = f"data.size={self.folder.size}" if self.folder.size else "data.size unset: the model's default"
        _check_input_size(model, size, given)
        self.folder.configure(model)

    def _ready(self, model: nn.Module) -> None:
        """Set up the folder for ``model`` if no run did (evaluation or batches outside a run)."""
        if self.folder.transforms is None:
            self._configure(model)

    def batch(self, size, generator):
        if self.dataset == "folder":
            return self.folder.batch(size, generator)
        return draw_split(self.data, "train", size, generator)

    def train_sample(self, size, generator):
        if self.dataset == "folder":
            return self.folder.batch(size, generator, replace=False)
        return draw_split(self.data, "train", size, generator, replace=False)

    def held_out_batch(self, size, generator):
        if self.dataset == "folder":  # from the evaluation split (val/)
            return self.folder.eval_sample(size, generator)
        return draw_split(self.data, "test", size, generator, replace=False)

    def prefetch(self, batch):
        if self.dataset == "folder":
            self.folder.prefetch(batch["index"], batch["seed"])

    def loss(self, model, batch):
        if "x" in batch:
            x = batch["x"]
        else:  # a folder's batch: decoded here, after the transforms are set up for this model (also outside a run)
            self._ready(model)
            x = (self.folder.eval_images(batch["eval_index"]) if "eval_index" in batch else
                 self.folder.train_images(batch["index"], batch["seed"])).to(batch["y"].device)
        logits = model(x).float()
        loss = F.cross_entropy(logits, batch["y"], label_smoothing=self.label_smoothing)
        return loss, {"acc": (logits.argmax(-1) == batch["y"]).float().mean().detach()}

    def _chunks(self, split: str, model: nn.Module):
        if self.dataset == "folder":
            self._ready(model)  # evaluation without training (zoo eval): transforms for this model
            return self.folder.eval_chunks(limit=self.eval_limit)
        return zip(self.data[f"x_{split}"].split(256), self.data[f"y_{split}"].split(256))

    @torch.no_grad()
    def evaluate(self, model):
        device = next(model.parameters()).device
        out = {}
        for split in ("eval",) if self.dataset == "folder" else ("test", "train"):
            loss, top1, top5, n = 0.0, 0, 0, 0
            for x, y in self._chunks(split, model):
                logits = model(x.to(device)).float().cpu()
                loss += float(F.cross_entropy(logits, y, reduction="sum"))
                ranked = logits.topk(min(5, logits.shape[-1]), -1).indices
                top1 += int((ranked[:, 0] == y).sum())
                top5 += int((ranked == y[:, None]).any(-1).sum())
                n += len(y)
            out[f"{split}_acc"] = top1 / n
            if split != "train":
                out[f"{split}_loss"] = loss / n
            if self.dataset == "folder":
                out[f"{split}_top5"] = top5 / n
        return out

    @torch.no_grad()
    def report(self, model: nn.Module, out: Path) -> list[Path]:
        from layers import CoordAttention

        found = [(name, m) for name, m in model.named_modules() if isinstance(m, CoordAttention)]
        if not found:
            return []
        name, block = found[0]
        if self.dataset == "folder":  # six images spread over the classes, not the first class's
            self._ready(model)
            index = torch.tensor(self.folder.eval_subset(6))
            samples = self.folder.splits["eval"].samples
            x, labels = self.folder.eval_images(index), torch.tensor([samples[i][1] for i in index.tolist()])
        else:
            x, labels = next(iter(self._chunks("test", model)))
            x, labels = x[:6], labels[:6]
        gates = {}
        hooks = [block.attn_h.register_forward_hook(lambda m, i, o: gates.__setitem__("h", o)),
                 block.attn_w.register_forward_hook(lambda m, i, o: gates.__setitem__("w", o))]
        try:
            model.eval()(x.to(next(model.parameters()).device))
        finally:
            for h in hooks:
                h.remove()
        attention = (gates["h"] * gates["w"]).mean(1).cpu()  # (6, H, W): a_h a_w averaged over channels

        import matplotlib.pyplot as plt  # headless: train.plots, imported with the loop, sets the Agg backend

        from ..plots import save_figure

        fig, axes = plt.subplots(2, len(x), figsize=(2 * len(x), 4.2))
        for k in range(len(x)):
            image = x[k].permute(1, 2, 0).numpy()
            image = (image - image.min()) / (image.max() - image.min() + 1e-8)  # undo the normalisation for display
            axes[0, k].imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
            axes[0, k].set_title(f"label {int(labels[k])}")
            im = axes[1, k].imshow(attention[k].numpy(), cmap="viridis")
            fig.colorbar(im, ax=axes[1, k], fraction=0.046)
        for ax in axes.flat:
            ax.set_xticks([]), ax.set_yticks([])
        axes[1, 0].set_ylabel(f"{name}\nmean_c a_h a_w")
        fig.tight_layout()
        path = Path(out) / "attention.png"
        return [save_figure(fig, path, dpi=100)]
