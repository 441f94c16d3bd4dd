"""Image folders read on demand: pure batches across worker counts, evaluation, and a run through the loop."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zoo
from train import fit, load_recipe
from train.tasks import make_task

from .conftest import killed_at_call


def _folder(root, classes=3, per=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"class_{c}").mkdir(parents=True)
            for i in range(per):
                pixels = rng.integers(0, 60, (36, 44, 3), dtype=np.uint8)
                pixels[..., c] += np.uint8(120 + 20 * i)  # the class is the brightest channel
                Image.fromarray(pixels).save(root / split / f"class_{c}" / f"{i}.png")
    return root


def _task(root, **data):
    overrides = [f"data.path={root}", "data.size=32", *(f"data.{k}={v}" for k, v in data.items())]
    return make_task(load_recipe("mbv2-ca-finetune", overrides))


@pytest.fixture
def inline_and_pooled(tmp_path):
    """Two image tasks on one small folder, prepared for the same model: decoding inline and in 2 workers."""
    root = _folder(tmp_path)
    model = zoo.create_model("mobilenetv2_100", num_classes=3)
    inline, pooled = _task(root, workers=0), _task(root, workers=2)
    for task in (inline, pooled):
        task.prepare(model)
    yield inline, pooled
    pooled.folder.close()


def test_batches_are_pure_and_identical_for_any_number_of_workers(inline_and_pooled):
    inline, pooled = inline_and_pooled
    a = inline.batch(6, torch.Generator().manual_seed(1))
    b = pooled.batch(6, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    x_a = inline.folder.train_images(a["index"], a["seed"])
    x_b = pooled.folder.train_images(b["index"], b["seed"])
    assert x_a.shape == (6, 3, 32, 32) and torch.equal(x_a, x_b)  # the same crops and flips in any process
    rng = torch.get_rng_state()
    assert torch.equal(inline.folder.train_images(a["index"], a["seed"]), x_a)
    assert torch.equal(torch.get_rng_state(), rng)  # decoding leaves the training RNG alone
    other = inline.folder.train_images(a["index"], a["seed"] + 1)
    assert not torch.equal(other, x_a)  # another seed, another augmentation
    many = inline.batch(64, torch.Generator().manual_seed(2))
    assert len(set(many["seed"].tolist())) == 64  # each image its own augmentation, not one crop for the batch


def test_evaluation_is_top1_top5_and_loss_over_the_eval_split(tmp_path):
    task = _task(_folder(tmp_path), workers=0)
    model = zoo.create_model("mobilenetv2_100", num_classes=3).eval()
    task.prepare(model)
    out = task.evaluate(model)
    xs, ys = zip(*task.folder.eval_chunks())
    logits = model(torch.cat(xs))
    y = torch.cat(ys)
    assert len(y) == 12 and sorted(out) == ["eval_acc", "eval_loss", "eval_top5"]
    assert out["eval_acc"] == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    assert out["eval_loss"] == pytest.approx(float(F.cross_entropy(logits.detach(), y)), rel=1e-5)
    assert out["eval_top5"] == 1.0  # 3 classes


def test_class_count_is_filled_in_or_checked_and_bad_paths_are_named(tmp_path, monkeypatch):
    root = _folder(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    assert _task(f"~/{tmp_path.name}", workers=0).folder.root == tmp_path  # data.path=~/..., as a shell expands it
    task = _task(root, workers=0)
    assert task.model_args({"num_classes": None}) == {"num_classes": 3}
    with pytest.raises(ValueError, match="set model_args.num_classes=3"):
        task.prepare(zoo.create_model("mobilenetv2_100", num_classes=5))
    with pytest.raises(ValueError, match="data.path is not set"):
        make_task(load_recipe("mbv2-ca-imagenet"))
    with pytest.raises(FileNotFoundError, match="val"):
        _task(tmp_path / "train")
    (root / "val" / "class_2").rename(root / "val" / "class_9")
    with pytest.raises(ValueError, match=r"only in 'train': \['class_2'\]; only in 'val': \['class_9'\]"):
        _task(root, workers=0)


def test_finetune_recipe_runs_through_the_loop_and_resumes_exactly(tmp_path):
    from train.tasks.image import ImageClassificationTask

    root = _folder(tmp_path / "data")
    recipe = load_recipe("mbv2-ca-finetune", [
        f"data.path={root}", "data.size=32", "data.workers=0", "pretrained=null", "model=mobilenetv2_ca_100",
        "train.steps=4", "train.batch_size=8", "train.eval_every=2", "train.ckpt_every=2", "train.log_every=1",
        "schedule.warmup=0", "optim.lr=0.001"])
    full = fit(recipe, out=tmp_path / "full")
    assert set(full) >= {"eval_acc", "eval_top5", "eval_loss"} and (tmp_path / "full" / "attention.png").is_file()

    # dies during step 4, after the checkpoint at step 2
    with killed_at_call(ImageClassificationTask, "loss", 4), pytest.raises(KeyboardInterrupt):
        fit(recipe, out=tmp_path / "resumed")
    assert fit(recipe, out=tmp_path / "resumed", resume=True) == full


def test_zoo_eval_of_a_folder_checkpoint_needs_no_training_run(tmp_path, capsys):
    import json

    from train.cli import main
    from weights import save_checkpoint

    root = _folder(tmp_path / "data")
    model = zoo.create_model("mobilenetv2_100", num_classes=3)
    save_checkpoint(model, tmp_path / "m.safetensors", extra_metadata={"recipe": "mbv2-ca-finetune"})
    main(["eval", str(tmp_path / "m.safetensors"), "--set", f"data.path={root}", "--set", "data.size=32",
          "--set", "data.workers=0"])
    out = json.loads(capsys.readouterr().out)
    assert sorted(out) == ["eval_acc", "eval_loss", "eval_top5"] and out["eval_top5"] == 1.0
    # batches outside a run, from val/ (the default) or train/: the task sets up the model's transforms itself
    for split in ("held-out", "train"):
        main(["estimate", str(tmp_path / "m.safetensors"), "--set", f"data.path={root}", "--set", "data.size=32",
              "--set", "data.workers=0", "--split", split, "--batch", "4", "--probe", "conv_head.weight=effective_rank"])
        point, name, value, _ = capsys.readouterr().out.split()
        assert (point, name) == ("conv_head.weight", "effective_rank") and float(value) > 0
    task = make_task(load_recipe("mbv2-ca-finetune", [f"data.path={root}", "data.size=32", "data.workers=0"]))
    batch = task.held_out_batch(100, torch.Generator().manual_seed(0))  # every val image once, no more
    val = task.folder.splits["eval"].samples
    assert sorted(batch["eval_index"].tolist()) == list(range(len(val)))
    assert batch["y"].tolist() == [val[i][1] for i in batch["eval_index"].tolist()]
    train = task.folder.splits["train"].samples  # zoo estimate --split train: distinct training images
    distinct = task.train_sample(1000, torch.Generator().manual_seed(0))
    assert sorted(distinct["index"].tolist()) == list(range(len(train)))
    assert len(distinct["seed"]) == len(distinct["y"]) == len(train)  # every tensor has the batch on dim 0


@pytest.mark.parametrize("recipe_name, model_overrides", [
    ("mbv2-ca-imagenet", ["model_args.num_classes=3"]),
    ("sigma-vit-imagenet", ["model=vit_tiny_patch16_224_sigma", "model_args.num_classes=3", "model_args.img_size=32",
                            "model_args.patch_size=8", "model_args.depth=2", "probe.every=1"]),
])
def test_imagenet_recipes_run_on_a_small_folder(tmp_path, recipe_name, model_overrides):
    root = _folder(tmp_path / "data")
    recipe = load_recipe(recipe_name, [
        f"data.path={root}", "data.size=32", "data.workers=2", "train.steps=2", "train.batch_size=8",
        "train.eval_every=0", "train.ckpt_every=0", "train.log_every=1", "schedule.warmup=0", *model_overrides])
    final = fit(recipe, out=tmp_path / "run")
    assert 0.0 <= final["eval_acc"] <= 1.0 and final["eval_top5"] == 1.0
    if recipe.get("probe"):
        assert (tmp_path / "run" / "probe.csv").read_text().count("attention_entropy") >= 2


def test_prefetched_images_equal_images_decoded_on_demand(inline_and_pooled):
    """prefetch starts decoding in the pool; train_images collects exactly what an inline decode gives."""
    inline, pooled = inline_and_pooled
    batches = [pooled.batch(5, torch.Generator().manual_seed(s)) for s in (1, 2)]
    for b in batches:
        pooled.prefetch(b)
    assert len(pooled.folder.pending) == 2
    for b in batches:
        assert torch.equal(pooled.folder.train_images(b["index"], b["seed"]),
                           inline.folder.train_images(b["index"], b["seed"]))
    assert not pooled.folder.pending
    inline.prefetch(batches[0])  # without workers there is nothing to overlap
    assert not inline.folder.pending


def test_the_loop_prefetches_the_next_step_for_tasks_that_ask(tmp_path, monkeypatch):
    from train.data.image_folder import ImageFolderData

    root = _folder(tmp_path)
    calls = {"prefetch": 0, "hit": 0}
    prefetch, train_images = ImageFolderData.prefetch, ImageFolderData.train_images

    def counting_prefetch(self, index, seed):
        calls["prefetch"] += 1
        return prefetch(self, index, seed)

    def counting_train_images(self, index, seed):
        calls["hit"] += self._key(index, seed) in self.pending
        return train_images(self, index, seed)

    monkeypatch.setattr(ImageFolderData, "prefetch", counting_prefetch)
    monkeypatch.setattr(ImageFolderData, "train_images", counting_train_images)
    recipe = load_recipe("mbv2-ca-finetune", [
        f"data.path={root}", "data.size=32", "data.workers=2", "pretrained=null", "model=mobilenetv2_100",
        "train.steps=3", "train.batch_size=4", "train.grad_accum=2", "train.eval_every=0", "train.ckpt_every=0",
        "train.clip=1.0"])  # from scratch on micro-batches of 2 tiny images the first gradients explode
    fit(recipe, tmp_path / "run")
    assert calls == {"prefetch": 4, "hit": 4}  # steps 2 and 3, two micro-batches each, all collected


def test_a_limited_evaluation_is_a_fixed_subset_over_every_class(tmp_path):
    task = _task(_folder(tmp_path, classes=3, per=4), workers=0, eval_limit=3)
    model = zoo.create_model("mobilenetv2_100", num_classes=3).eval()
    task.prepare(model)
    ys = torch.cat([y for _, y in task.folder.eval_chunks(limit=3)])
    assert sorted(ys.tolist()) == [0, 1, 2]  # the first 3 images of the sorted split are all of class 0
    subset = task.folder.eval_subset(3)
    assert subset == task.folder.eval_subset(3)  # the same images on every call
    assert sorted(task.folder.eval_subset()) == list(range(12))
    assert task.evaluate(model) == task.evaluate(model)
    with pytest.raises(ValueError, match="data.eval_limit must be a positive number"):
        _task(tmp_path, eval_limit=0)


def test_the_attention_report_shows_images_of_every_class(tmp_path):
    task = _task(_folder(tmp_path / "data"), workers=0)
    model = zoo.create_model("mobilenetv2_ca_100", num_classes=3).eval()
    task.prepare(model)
    shown = []
    eval_images = task.folder.eval_images
    task.folder.eval_images = lambda index: shown.extend(index.tolist()) or eval_images(index)
    assert task.report(model, tmp_path) == [tmp_path / "attention.png"]
    samples = task.folder.splits["eval"].samples
    assert len(shown) == 6 and {samples[i][1] for i in shown} == {0, 1, 2}


def test_16_bit_greyscale_images_keep_their_contrast(tmp_path):
    """PIL's convert("RGB") clips a 16-bit image (mode I;16) at 255, so one of values 0..65535 came out white:
    it is mapped onto 0..255 instead (65535 -> 255, 32896 -> 128), and a float image is refused by name."""
    from PIL import Image

    from train.data.image_folder import _as_rgb

    ramp = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    assert np.asarray(_as_rgb(image))[0, :, 0].tolist() == [0, 1, 128, 255]
    assert np.asarray(_as_rgb(image.convert("I")))[0, :, 0].tolist() == [0, 1, 128, 255]
    eight_bit = Image.fromarray(np.array([[0, 16, 255]], dtype=np.uint8)).convert("I")  # 8-bit values in mode I
    assert np.asarray(_as_rgb(eight_bit))[0, :, 0].tolist() == [0, 16, 255]
    with pytest.raises(OSError, match="image of mode F with values in .* has no fixed intensity range"):
        _as_rgb(Image.fromarray(ramp.astype(np.float32)))


def test_a_corrupt_image_is_named_with_a_remedy(tmp_path):
    root = _folder(tmp_path)
    (root / "val" / "class_1" / "x.jpg").write_bytes(b"not an image at all" * 10)
    task = _task(root, workers=0)
    task.prepare(zoo.create_model("mobilenetv2_100", num_classes=3))
    with pytest.raises(ValueError, match=r"cannot decode image .*class_1/x\.jpg.*remove the file .* or re-encode it"):
        list(task.folder.eval_chunks())


def test_evaluation_checks_the_class_count_and_a_vit_checks_its_image_size(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(ValueError, match="has 3 classes but the model predicts 5"):  # zoo eval: no prepare
        _task(root, workers=0).evaluate(zoo.create_model("mobilenetv2_100", num_classes=5).eval())
    vit = zoo.create_model("vit_tiny_patch16_224_sigma", num_classes=3, img_size=32, patch_size=8, depth=1)
    with pytest.raises(ValueError, match=r"takes 32x32 images .* data are 48x48 \(data.size=48\); set data.size=32, "
                                         r"or model_args.img_size=48"):
        _task(root, workers=0, size=48).prepare(vit)
    with pytest.raises(ValueError, match=r"data are 224x224 \(data.size unset: the model's default\)"):
        _task(root, workers=0, size="null").prepare(vit)
    task = _task(root, workers=0)
    task.prepare(vit)
    assert task.evaluate(vit.eval())["eval_top5"] == 1.0


# ---------------- added by the mutation sweep ----------------

def _uneven_folder(root, counts=(1, 2, 4, 1, 3, 2, 1)):
    """Seven classes, class c holding counts[c] images in each split (uneven on purpose), of random colours."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c, n in enumerate(counts):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return root


def test_top5_subsets_and_batches_with_more_classes_than_five(tmp_path):
    """With 7 classes, eval_top5 is the fraction of images whose label is among the 5 largest logits (here more
    than the top-3 fraction); eval_subset on uneven classes lists every image once and any subset of >= 7 images
    holds every class; training batches reach every image, the last one included."""
    task = _task(_uneven_folder(tmp_path), workers=0)
    assert task.model_args({"num_classes": 3}) == {"num_classes": 3}  # a count that is set is kept (prepare checks it)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 7)).eval()
    out = task.evaluate(model)
    xs, ys = zip(*task.folder.eval_chunks())
    with torch.no_grad():
        logits, y = model(torch.cat(xs)), torch.cat(ys)
    rank = (logits > logits.gather(1, y[:, None])).sum(1)  # how many classes score above the label
    assert len(y) == 14 and out["eval_top5"] == pytest.approx(float((rank < 5).float().mean()))
    assert float((rank < 3).float().mean()) < out["eval_top5"] < 1.0
    samples = task.folder.splits["eval"].samples
    assert sorted(task.folder.eval_subset()) == list(range(14))
    assert {samples[i][1] for i in task.folder.eval_subset(7)} == set(range(7))
    drawn = task.folder.batch(400, torch.Generator().manual_seed(0))["index"]
    assert set(drawn.tolist()) == set(range(len(task.folder.splits["train"].samples)))


def test_training_augmentation_is_crop_and_flip_unless_asked(tmp_path):
    """Without data.augment, ImageFolderData gives training images random-resized crops and flips only (timm would
    add colour jitter): a one-colour image stays that colour (the evaluation transform's value). data.augment
    passes timm's options on, colour jitter included."""
    from PIL import Image

    from train.data.image_folder import ImageFolderData

    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 40, 90)).save(tmp_path / split / "a" / "0.png")
    model = zoo.create_model("mobilenetv2_100", num_classes=1)
    plain = ImageFolderData(str(tmp_path), size=32, workers=0)
    plain.configure(model)
    jittered = _task(tmp_path, workers=0, augment="{color_jitter: 0.4}")
    jittered.prepare(model)
    colour = plain.eval_images(torch.tensor([0]))[0, :, 0, 0]
    assert colour.std() > 0.5  # three distinct normalised channel values
    index, seeds = torch.zeros(8, dtype=torch.long), torch.arange(8)
    x = plain.train_images(index, seeds)
    assert torch.allclose(x, colour[None, :, None, None].expand_as(x), atol=1e-5)
    y = jittered.folder.train_images(index, seeds)
    assert (y - colour[None, :, None, None]).abs().amax() > 0.05


def test_dark_16_bit_and_negative_integer_images(tmp_path):
    """A 16-bit image is scaled by 1/257 whatever its values, so a dark one (all <= 255) stays dark, not bright;
    a 32-bit integer image with negative values has no fixed range and is refused by name."""
    from PIL import Image

    from train.data.image_folder import _as_rgb

    dark = Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint16))
    assert dark.mode.startswith("I;16")
    assert np.asarray(_as_rgb(dark))[0, :, 0].tolist() == [0, 0, 1]
    negative = Image.fromarray(np.array([[-5, 0, 100]], dtype=np.int32))
    assert negative.mode == "I"
    with pytest.raises(OSError, match=r"image of mode I with values in \[-5, 100\] has no fixed intensity range"):
        _as_rgb(negative)


def test_reconfiguring_forgets_images_prefetched_with_the_old_transforms(inline_and_pooled):
    """configure (another model or size) closes the pool and drops prefetched batches, so no image decoded with
    the old transforms is served after it."""
    _, pooled = inline_and_pooled
    batch = pooled.batch(4, torch.Generator().manual_seed(0))
    pooled.prefetch(batch)
    assert len(pooled.folder.pending) == 1
    pooled.folder.size = 48
    pooled.folder.configure(zoo.create_model("mobilenetv2_100", num_classes=3))
    assert not pooled.folder.pending
    assert pooled.folder.train_images(batch["index"], batch["seed"]).shape == (4, 3, 48, 48)


def test_evaluation_images_are_centre_crops_without_flips(tmp_path):
    """The evaluation transform resizes and crops at the centre, never at random: a left-to-right linear ramp
    (0 .. 252) comes out increasing, with the mean of the whole ramp (126, a centred crop of a linear ramp), on
    every call; a seeded training crop of the same image is off centre or flipped."""
    from PIL import Image

    ramp = np.repeat(np.repeat((4 * np.arange(64)).astype(np.uint8)[None, :, None], 64, 0), 3, 2)
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(ramp).save(tmp_path / split / "a" / "0.png")
    task = _task(tmp_path, workers=0)
    task.prepare(zoo.create_model("mobilenetv2_100", num_classes=1))
    config = task.folder.data_config(torch.nn.Identity())
    mean, std = config["mean"][0], config["std"][0]
    row = task.folder.eval_images(torch.tensor([0]))[0, 0].mean(0) * std + mean  # back to [0, 1], by column
    assert (row.diff() > 0).all() and float(row.mean()) == pytest.approx(126 / 255, abs=1 / 255)
    train_row = task.folder.train_images(torch.tensor([0]), torch.tensor([0]))[0, 0].mean(0) * std + mean
    assert abs(float(train_row.mean()) - 126 / 255) > 2 / 255 or (train_row.diff() < 0).all()


def test_gif_images_are_read_and_an_empty_class_names_its_folder(tmp_path):
    """torchvision's extension list lacks .gif, so GIFs were skipped without a word (a folder of GIFs alone was
    'Found no valid file'); an empty class folder gave torchvision's message, which names no folder."""
    from PIL import Image

    root = _folder(tmp_path, classes=2, per=2)
    for split in ("train", "val"):
        Image.fromarray(np.full((36, 44, 3), 200, dtype=np.uint8)).convert("P").save(
            root / split / "class_1" / "extra.gif")
    task = _task(root, workers=0)
    assert sum(path.endswith(".gif") for path, _ in task.folder.splits["train"].samples) == 1
    task.prepare(zoo.create_model("mobilenetv2_100", num_classes=2))
    gif = [i for i, (path, _) in enumerate(task.folder.splits["train"].samples) if path.endswith(".gif")]
    images = task.folder.train_images(torch.tensor(gif), torch.tensor([0]))
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    (root / "val" / "class_9").mkdir()
    (root / "train" / "class_9").mkdir()
    with pytest.raises(FileNotFoundError, match=r"image folder .*train: Found no valid file for the classes class_9"):
        _task(root, workers=0)
