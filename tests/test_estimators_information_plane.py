"""Information plane helper, the 12-bit task, the IB MLP family and its recipes."""
import json
import math

import pytest
import torch
from torch import nn

import zoo
from estimators import information_plane, layer_activations, plot_information_plane
from layers import ProbePoint
from train import fit, load_recipe
from train.data.ib12bit import ib12bit, icosahedron_vertices, split


class Known(nn.Module):
    """T_bit = first input bit (so I(X;T) = H(bit) = 1 bit), T_pair = first two bits, T_const = 0."""

    def __init__(self):
        super().__init__()
        self.bit, self.pair, self.const = ProbePoint(), ProbePoint(), ProbePoint()

    def forward(self, x):
        self.bit(x[:, :1])
        self.pair(x[:, :2])
        return self.const(torch.zeros_like(x[:, :1]))


def test_information_plane_numbers_on_a_tiny_case(tmp_path):
    x = ((torch.arange(16)[:, None] >> torch.arange(4)) & 1).float()  # all 16 patterns of 4 bits
    y = x[:, 0].long()  # label = first bit
    plane = information_plane(Known(), x, y, n_bins=30)
    assert plane["bit"] == pytest.approx({"I_XT": 1.0, "I_TY": 1.0}, abs=1e-6)
    assert plane["pair"] == pytest.approx({"I_XT": 2.0, "I_TY": 1.0}, abs=1e-6)
    assert plane["const"] == pytest.approx({"I_XT": 0.0, "I_TY": 0.0}, abs=1e-6)
    assert list(layer_activations(Known(), x, "p*")) == ["pair"]
    rows = [{"step": s, "point": p, **v} for s in (0, 10) for p, v in plane.items()]
    png = plot_information_plane(rows, tmp_path / "plane.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(KeyError, match="matches no ProbePoint"):
        information_plane(Known(), x, y, points="nothing")


def test_information_plane_measures_the_model_in_eval_mode_and_restores_its_modes():
    """Dropout off and BatchNorm's running statistics untouched, so two calls agree; the modes come back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8), ProbePoint(), nn.Linear(8, 2))
    model[1].eval()  # a mixed state, restored module by module
    x, y = torch.randn(200, 4), torch.randint(0, 2, (200,))
    running = model[2].running_mean.clone()
    assert information_plane(model, x, y) == information_plane(model, x, y)
    assert torch.equal(model[2].running_mean, running)
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]


def test_ib12bit_data_facts():
    v = icosahedron_vertices()
    dots = (v @ v.T).round(decimals=6)
    assert torch.allclose(v.norm(dim=1), torch.ones(12, dtype=torch.float64))
    assert sorted(set(dots.flatten().tolist())) == pytest.approx([-1, -1 / math.sqrt(5), 1 / math.sqrt(5), 1], abs=1e-6)
    x, y = ib12bit()
    assert x.shape == (4096, 12) and torch.unique(x, dim=0).shape[0] == 4096
    p = y.float().mean().item()
    assert p == pytest.approx(0.5171, abs=1e-4)
    assert -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) == pytest.approx(0.9992, abs=1e-4)  # I(X;Y) = H(Y)
    ones = x.sum(1)
    assert y[ones <= 5].sum() == 0 and y[ones >= 7].all() and y[ones == 6].float().mean().item() == pytest.approx(0.576, abs=1e-3)


@pytest.mark.parametrize("fraction", [0.05, 0.7, 0.85, 1.0])
def test_ib12bit_split_is_disjoint_and_covers_every_pattern_once(fraction):
    """The train and test index sets of the 12-bit task share no pattern, have round(fraction * 4096) and the rest,
    and together hold each of the 4096 patterns exactly once."""
    train, test = split(4096, fraction, seed=3)
    assert len(train) == round(fraction * 4096) and len(train) + len(test) == 4096
    assert not set(train.tolist()) & set(test.tolist())
    assert torch.equal(torch.cat([train, test]).sort().values, torch.arange(4096))


def test_ib_mlp_family_shapes_params_and_probe_points():
    for name, act in (("ib_mlp_tanh", nn.Tanh), ("ib_mlp_relu", nn.ReLU)):
        m = zoo.create_model(name)
        assert sum(p.numel() for p in m.parameters()) == 294  # 12-10-7-5-4-3-2 with biases
        assert isinstance(m.acts[0], act)
        acts = layer_activations(m, torch.rand(5, 12), "t.*")
        assert [tuple(a.shape) for a in acts.values()] == [(5, 10), (5, 7), (5, 5), (5, 4), (5, 3), (5, 2)]
        assert torch.allclose(acts["t.5"].sum(1), torch.ones(5))
    with pytest.raises(ValueError, match="shape"):
        zoo.create_model("ib_mlp_tanh")(torch.rand(5, 11))


def test_ib_mlp_probe_points_record_the_activations_not_the_pre_activations():
    """Probe point t.l holds T_l = act(W_l T_{l-1} + b_l): tanh of the linear layer's output for ib_mlp_tanh
    (so within [-1, 1]), relu of it (so >= 0) for ib_mlp_relu."""
    x = torch.rand(16, 12, generator=torch.Generator().manual_seed(0)) * 8 - 4
    for name, act in (("ib_mlp_tanh", torch.tanh), ("ib_mlp_relu", torch.relu)):
        torch.manual_seed(0)
        m = zoo.create_model(name).eval()
        acts = layer_activations(m, x, "t.*")
        t = x
        for layer, linear in enumerate(m.linears[:-1]):
            t = act(linear(t))
            torch.testing.assert_close(acts[f"t.{layer}"], t.detach(), atol=1e-6, rtol=0)
            if name == "ib_mlp_tanh":
                assert acts[f"t.{layer}"].abs().max() <= 1
            else:
                assert acts[f"t.{layer}"].min() >= 0


# 60 steps: the tanh network's loss falls at lr 0.5; the ReLU network sits on its ln 2 plateau that long (the
# recipe trains 8,000 steps), so there the test checks the plane with per-layer binning ranges
@pytest.mark.parametrize("name, extra", [("ib-tanh-12bit", ["optim.lr=0.5"]), ("ib-relu-12bit", [])])
def test_ib_recipe_trains_and_draws_the_plane(tmp_path, name, extra):
    recipe = load_recipe(name, ["train.steps=60", "train.eval_every=30", "train.log_every=30", *extra])
    final = fit(recipe, tmp_path / "run")
    assert (tmp_path / "run" / "information_plane.png").is_file()
    assert final["I_XT/t.0"] <= 12.0 and final["I_TY/t.0"] <= 0.9993
    for l in range(5):  # data processing: information only falls along the chain X -> T_1 -> ... (binning aside)
        assert final[f"I_TY/t.{l}"] <= 0.9993
    losses = [json.loads(r)["loss"] for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"train"' in r]
    assert recipe["model"] == {"ib-tanh-12bit": "ib_mlp_tanh", "ib-relu-12bit": "ib_mlp_relu"}[name]
    assert losses[-1] < losses[0] if name == "ib-tanh-12bit" else abs(losses[-1] - math.log(2)) < 0.01


def test_information_plane_axes_name_the_unit(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to read their labels
    rows = [{"step": 0, "point": "t.0", "I_XT": 1.0, "I_TY": 0.5}]
    for base, unit in (("bits", "bits"), (2, "bits"), ("nats", "nats"), (math.e, "nats"), (10, "base-10 units")):
        plot_information_plane(rows, tmp_path / "plane.png", base=base)
        ax = figures[-1].axes[0]
        assert (ax.get_xlabel(), ax.get_ylabel()) == (f"I(X;T) [{unit}]", f"I(T;Y) [{unit}]")
    with pytest.raises(ValueError, match="base"):
        plot_information_plane(rows, tmp_path / "plane.png", base=1)


def test_the_tasks_plane_is_shwartz_ziv_tishby_binning_by_default_checked_with_scikit_learn():
    """A classification task whose recipe names no binning measures each layer with 30 equal-width bins on the
    range it gives (the paper's setting), every activation vector one symbol: I(T;Y) and I(X;T) equal scikit-learn's
    mutual_info_score of those symbols, in bits."""
    import numpy as np
    from sklearn.metrics import mutual_info_score

    from train.tasks import make_task

    recipe = load_recipe("ib-tanh-12bit")
    for key in ("n_bins", "strategy"):
        recipe["task_args"].pop(key, None)
    task = make_task(recipe)
    torch.manual_seed(0)
    model = zoo.create_model("ib_mlp_tanh")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # saturated units spread over many bins
    metrics = task.evaluate(model)
    x = torch.cat([task.data["x_train"], task.data["x_test"]])
    y = torch.cat([task.data["y_train"], task.data["y_test"]]).numpy()
    inputs = np.unique(x.numpy(), axis=0, return_inverse=True)[1].ravel()
    edges = np.linspace(-1.0, 1.0, 31)[1:-1]  # 30 equal-width bins on bins_range [-1, 1]
    for name, t in layer_activations(model, x, "t.*").items():
        t_symbols = np.unique(np.digitize(t.numpy(), edges), axis=0, return_inverse=True)[1].ravel()
        assert metrics[f"I_TY/{name}"] == pytest.approx(mutual_info_score(y, t_symbols) / math.log(2), abs=1e-5)
        assert metrics[f"I_XT/{name}"] == pytest.approx(mutual_info_score(inputs, t_symbols) / math.log(2), abs=1e-5)
