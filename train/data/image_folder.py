"""Image folders (``root/<split>/<class>/<image>``, the ImageNet layout) read on demand for the shared loop.

Images are decoded and transformed in a pool of worker processes. Each image's random augmentation is seeded
by a number drawn from the batch generator, so a batch is a pure function of that generator: a resumed run
and every rank see the same images with the same crops and flips as an uninterrupted single-process run.
A batch is drawn as indices and seeds; each rank decodes only its own slice of it, and with workers the next
step's slice is decoded while the current step trains (``prefetch``, called by the loop).
"""
from __future__ import annotations

import itertools
import weakref
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from estimators.seeding import seeded

_TRANSFORMS: dict = {}  # in a worker process: {"train": ..., "eval": ...}, set once by the pool's initializer


def _set_transforms(transforms: dict) -> None:
    _TRANSFORMS.update(transforms)


def _as_rgb(image):
    """An 8-bit RGB copy of a PIL image. 16-bit greyscale (PIL's modes I;16*: scans, microscopy, depth) maps
    0..65535 onto 0..255 (a division by 257, as ImageMagick converts): PIL's convert("RGB") clips it at 255, which
    made a 16-bit image white. A 32-bit integer image (mode I) is read as 8-bit if its values fit, else as 16-bit;
    beyond that, and for float images (mode F), there is no fixed range: an error."""
    from PIL import Image

    if image.mode not in ("F", "I") and not image.mode.startswith("I;16"):
        return image.convert("RGB")
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    high = values.max(initial=0)
    if image.mode == "F" or high > 65535 or values.min(initial=0) < 0:
        raise OSError(f"an image of mode {image.mode} with values in [{values.min(initial=0):g}, {high:g}] has no fixed "
                      "intensity range; save it as 8- or 16-bit")
    if image.mode.startswith("I;16") or high > 255:
        values = values / 257.0
    return Image.fromarray(np.round(values).astype(np.uint8), mode="L").convert("RGB")


def _load(path: str, kind: str, seed: int, transforms: dict | None = None) -> torch.Tensor:
    """Decode and transform one image; ``transforms`` default to the worker's."""
    from PIL import Image

    transforms = transforms or _TRANSFORMS
    try:
        with Image.open(path) as image:
            image = _as_rgb(image)
    except OSError as err:  # not an image, or a truncated one (PIL's UnidentifiedImageError is an OSError)
        raise ValueError(f"cannot decode image {path}: {err}; remove the file from the folder or re-encode it "
                         "(e.g. open and save it again with PIL or ImageMagick)") from err
    if kind == "eval":
        return transforms["eval"](image)
    with seeded(seed):  # torchvision's random transforms draw from the CPU generator and Python's random
        return transforms["train"](image)


EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")  # read by PIL


class ImageFolderData:
    """The ``train_split`` and ``eval_split`` folders under ``root``, with timm's transforms for a model.

    ``configure(model)`` builds the transforms from the model's timm data config (input size, mean, std,
    interpolation, crop_pct), ``size`` overriding the input size and ``augment`` passed to
    ``timm.data.create_transform`` for training (default: random-resized crop and horizontal flip only).
    ``workers=0`` decodes in the calling process.
    """

    def __init__(self, root: str | None, train_split: str = "train", eval_split: str = "val", size: int | None = None,
                 augment: dict | None = None, workers: int = 4):
        from torchvision.datasets import ImageFolder

        if not root:
            raise ValueError("data.path is not set: give the folder that holds the train/ and val/ class folders "
                             "(any image folder, one folder per class; for ImageNet, the ILSVRC2012 train and val "
                             "images sorted so)")
        self.root = Path(root).expanduser()
        self.splits = {}
        for kind, split in (("train", train_split), ("eval", eval_split)):
            folder = self.root / split
            if not folder.is_dir():
                raise FileNotFoundError(f"image folder {folder} not found; expected {self.root}/<split>/<class>/<image> "
                                        f"with splits {train_split!r} and {eval_split!r}")
            try:  # GIF too (torchvision's list lacks it, so GIFs were skipped without a word)
                self.splits[kind] = ImageFolder(str(folder), is_valid_file=lambda f: f.lower().endswith(EXTENSIONS))
            except FileNotFoundError as err:  # torchvision's message names the classes, not the folder
                raise FileNotFoundError(f"image folder {folder}: {err}") from None
        if self.splits["train"].classes != self.splits["eval"].classes:
            train, held_out = set(self.splits["train"].classes), set(self.splits["eval"].classes)
            raise ValueError(f"{self.root}: the class folders of {train_split!r} and {eval_split!r} differ (only in "
                             f"{train_split!r}: {sorted(train - held_out)[:10]}; only in {eval_split!r}: "
                             f"{sorted(held_out - train)[:10]}); labels are folder indices, so both need the same classes")
        self.classes = self.splits["train"].classes
        self.size, self.augment, self.workers = size, {"color_jitter": 0.0, **(augment or {})}, int(workers)
        self.pool: ProcessPoolExecutor | None = None
        self.transforms: dict | None = None  # set by configure(model)
        self.pending: dict[tuple, object] = {}  # prefetched batches: (indices, seeds) -> the pool's result iterator

    def data_config(self, model: torch.nn.Module) -> dict:
        """timm's data config for ``model``, ``size`` overriding its input size."""
        import timm.data

        config = timm.data.resolve_data_config({}, model=model)
        if self.size:
            config["input_size"] = (3, int(self.size), int(self.size))
        return config

    def configure(self, model: torch.nn.Module) -> None:
        import timm.data

        config = self.data_config(model)
        self.transforms = {"train": timm.data.create_transform(**config, is_training=True, **self.augment),
                           "eval": timm.data.create_transform(**config)}
        self.close()
        if self.workers > 0:
            self.pool = ProcessPoolExecutor(self.workers, initializer=_set_transforms, initargs=(self.transforms,))
            weakref.finalize(self, self.pool.shutdown)  # the workers end with the task that owns them

    def _submit(self, jobs: list[tuple[str, str, int]]):
        """Start decoding ``jobs`` in the pool; returns the iterator of their images (in order)."""
        paths, kinds, seeds = zip(*jobs)
        return self.pool.map(_load, paths, kinds, seeds, chunksize=max(1, len(jobs) // (4 * self.workers)))

    def _images(self, jobs: list[tuple[str, str, int]]) -> torch.Tensor:
        if self.transforms is None:
            raise RuntimeError("ImageFolderData.configure(model) must run before images are read")
        if self.pool is None:
            return torch.stack([_load(*job, self.transforms) for job in jobs])
        return torch.stack(list(self._submit(jobs)))

    @staticmethod
    def _key(index: torch.Tensor, seed: torch.Tensor) -> tuple:
        """What identifies a batch of training images: its indices and augmentation seeds."""
        return tuple(index.tolist()), tuple(seed.tolist())

    def _train_jobs(self, index: torch.Tensor, seed: torch.Tensor) -> list[tuple[str, str, int]]:
        samples = self.splits["train"].samples
        return [(samples[i][0], "train", s) for i, s in zip(index.tolist(), seed.tolist())]

    def batch(self, size: int, generator: torch.Generator, replace: bool = True) -> dict[str, torch.Tensor]:
        """A batch as {index, seed, y}: which training images (``replace=False``: distinct ones, all of them if the
        split holds fewer, as ``eval_sample``), and the seed of each one's augmentation. Decoding waits for
        ``train_images`` so that each rank decodes only its own slice."""
        samples = self.splits["train"].samples
        index = (torch.randint(0, len(samples), (size,), generator=generator) if replace else
                 torch.randperm(len(samples), generator=generator)[:size])
        seed = torch.randint(0, 2**31 - 1, (len(index),), generator=generator)
        return {"index": index, "seed": seed, "y": torch.tensor([samples[i][1] for i in index.tolist()])}

    def prefetch(self, index: torch.Tensor, seed: torch.Tensor) -> None:
        """Start decoding these training images in the pool (nothing without workers); ``train_images`` with the
        same indices and seeds then collects them. At most 8 prefetched batches wait; the oldest is dropped."""
        if self.pool is None or self.transforms is None:
            return
        key = self._key(index, seed)
        if key not in self.pending:
            if len(self.pending) >= 8:
                self.pending.pop(next(iter(self.pending)))
            self.pending[key] = self._submit(self._train_jobs(index, seed))

    def train_images(self, index: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        """The training images with their seeded augmentation: prefetched ones if ``prefetch`` started them."""
        started = self.pending.pop(self._key(index, seed), None)
        if started is not None:
            return torch.stack(list(started))
        return self._images(self._train_jobs(index, seed))

    def eval_sample(self, size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``size`` examples of the evaluation split drawn without replacement (all of them if it holds fewer):
        ``eval_index`` into the split and the labels ``y``; ``eval_images`` decodes them."""
        samples = self.splits["eval"].samples
        index = torch.randperm(len(samples), generator=generator)[:size]
        return {"eval_index": index, "y": torch.tensor([samples[i][1] for i in index.tolist()])}

    def eval_images(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` of the evaluation split, with the evaluation transform."""
        samples = self.splits["eval"].samples
        return self._images([(samples[i][0], "eval", 0) for i in index.tolist()])

    def eval_subset(self, limit: int | None = None, seed: int = 0) -> list[int]:
        """Indices of ``limit`` images of the evaluation split (all if None), spread over the classes and the same
        on every call: each class's images in a seeded order, taken one per class in turn (the classes in a seeded
        order too), so a subset of at least one image per class holds every class."""
        by_class: dict[int, list[int]] = {}
        for i, (_, label) in enumerate(self.splits["eval"].samples):
            by_class.setdefault(label, []).append(i)
        generator = torch.Generator().manual_seed(seed)
        groups = [[members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
                  for members in by_class.values()]
        groups = [groups[j] for j in torch.randperm(len(groups), generator=generator).tolist()]
        return [i for turn in itertools.zip_longest(*groups) for i in turn if i is not None][:limit]

    def eval_chunks(self, chunk: int = 256, limit: int | None = None):
        """(x, y) chunks of the evaluation split, with the evaluation transform: all of it in order, or the
        ``limit`` images of ``eval_subset``."""
        samples = self.splits["eval"].samples
        if limit is not None:
            samples = [samples[i] for i in sorted(self.eval_subset(limit))]
        for start in range(0, len(samples), chunk):
            part = samples[start:start + chunk]
            yield self._images([(p, "eval", 0) for p, _ in part]), torch.tensor([c for _, c in part])

    def close(self) -> None:
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
