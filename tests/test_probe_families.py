"""Estimators attached through Probe to real zoo families, checked against the same estimator on the tensor itself."""
import pytest
import torch

import zoo
from estimators import Probe, attention_entropy, dse, effective_rank
from estimators.dse import diffusion_spectral_entropy


def test_attention_entropy_on_the_transformer_lm_equals_direct_computation():
    torch.manual_seed(0)
    m = zoo.create_model("transformer_lm_13m", num_hidden_layers=2, vocab_size=100).eval()
    ids = torch.randint(0, 100, (2, 16))
    captured = {}
    hook = m.model.layers[1].attn.probs.register_forward_hook(lambda mod, i, o: captured.setdefault("p", o.detach()))
    with Probe(m, {"model.layers.*.attn.probs": [attention_entropy()]}) as probe:
        m(ids)
    hook.remove()
    rows = {(r["point"], r["estimator"]): r["value"] for r in probe.table()}
    assert {p for p, _ in rows} == {"model.layers.0.attn.probs", "model.layers.1.attn.probs"}
    direct = attention_entropy()(captured["p"])
    for key, value in (direct.items() if isinstance(direct, dict) else [(None, direct)]):
        name = "attention_entropy" if key is None else f"attention_entropy/{key}"
        assert rows[("model.layers.1.attn.probs", name)] == pytest.approx(float(value), abs=1e-6)
    # causal attention over 16 positions: each row's entropy is at most log(row length) <= log 16
    assert all(v <= torch.log(torch.tensor(16.0)).item() + 1e-6 for (p, n), v in rows.items() if n.endswith("mean"))


def test_dse_and_effective_rank_on_alrnn_latents_and_grassmann_features():
    torch.manual_seed(0)
    alrnn = zoo.create_model("alrnn_m20_p2").eval()
    x = torch.randn(4, 50, 3)
    with Probe(alrnn, {"z": [dse(sigma=10.0, t=1)]}, max_samples=None) as probe:
        with torch.no_grad():
            z = alrnn.z(torch.stack([alrnn.cell(alrnn.initial_state(x[:, 0]))] * 1, 1))  # one latent step, (4, 1, 20)
    value = probe.table()[0]["value"]
    assert value == pytest.approx(float(diffusion_spectral_entropy(z, sigma=10.0, t=1)), abs=1e-6)

    g = zoo.create_model("grassmann_lm_13m", num_hidden_layers=2, vocab_size=100).eval()
    with Probe(g, {"model.layers.*.mixing.plucker": [effective_rank()]}) as probe:
        g(torch.randint(0, 100, (2, 24)))
    ranks = [r["value"] for r in probe.table()]
    assert len(ranks) == 2 and all(1.0 <= r <= 496 for r in ranks)


def _ib_mlp():
    torch.manual_seed(0)
    m = zoo.create_model("ib_mlp_tanh").eval()
    x = torch.randint(0, 2, (128, 12)).float()
    return m, "t.2", lambda: m(x), 128


def _pvrnn():
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", n_sequences=32, seq_len=12).eval()
    with torch.no_grad():  # posteriors away from the prior, so that the states differ between sequences
        for a in m.A_mu:
            a.normal_()
    return m, "levels.0.d", lambda: m(torch.arange(32)), 32


def _transformer_lm():
    torch.manual_seed(0)
    m = zoo.create_model("transformer_lm_13m", num_hidden_layers=1, vocab_size=100).eval()
    return m, "model.layers.0.attn.probs", lambda: m(torch.randint(0, 100, (2, 16))), 2


def _hopfield_mil():
    torch.manual_seed(0)
    m = zoo.create_model("hopfield_mil", in_features=8).eval()
    return m, "pooling.hopfield.association_core.association", lambda: m(torch.randn(4, 10, 8)), 4


ACTIVATIONS = [n for n in sorted(__import__("estimators").ESTIMATORS)
               if n not in ("entropy", "attention_entropy", "local_complexity")]


@pytest.mark.parametrize("family", [_ib_mlp, _pvrnn], ids=["ib_mlp_tanh", "pvrnn_small"])
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_activation_estimator_runs_through_a_probe_on_two_families(family, name):
    """Each registered estimator of activations (two-variable ones against a bound target with a row per sample)
    gives, through a Probe on a real family, the value it gives on the captured tensor itself."""
    import inspect

    from estimators import ESTIMATORS, make_estimator

    model, point, run, rows = family()
    g = torch.Generator().manual_seed(1)
    kwargs = {}
    if "target" in inspect.signature(ESTIMATORS[name]).parameters:  # DSMI's Y is a class label per sample
        kwargs["target"] = torch.randint(0, 2, (rows,), generator=g) if name == "dsmi" else torch.randn(rows, 2, generator=g)
    if name == "condition_number":
        kwargs = {"of": "covariance"}
    captured = {}
    hook = model.get_submodule(point).register_forward_hook(lambda mod, i, o: captured.setdefault("x", o.detach()))
    torch.manual_seed(2)  # the neural estimator's critic
    with torch.no_grad(), Probe(model, {point: [make_estimator({name: kwargs})]}, max_samples=None) as probe:
        run()
    hook.remove()
    torch.manual_seed(2)
    direct = make_estimator({name: kwargs})(captured["x"])
    direct = direct if isinstance(direct, dict) else {None: direct}
    for row in probe.table():
        key = row["estimator"].partition("/")[2] or None
        assert torch.isfinite(torch.tensor(row["value"])), row
        assert row["value"] == pytest.approx(float(direct[key]), rel=1e-5, abs=1e-6), row


@pytest.mark.parametrize("family", [_transformer_lm, _hopfield_mil], ids=["transformer_lm", "hopfield_mil"])
@pytest.mark.parametrize("name", ["entropy", "attention_entropy"])
def test_probability_estimators_run_through_a_probe_on_two_families(family, name):
    from estimators import make_estimator

    model, point, run, _ = family()
    with torch.no_grad(), Probe(model, {point: [make_estimator(name)]}, max_samples=None) as probe:
        run()
    values = [r["value"] for r in probe.table()]
    assert values and all(0 <= v < 10 for v in values), values


def _local_complexity_cases():
    torch.manual_seed(0)
    mlp = zoo.create_model("ib_mlp_relu")
    x_mlp = torch.randint(0, 2, (16, 12)).float()
    cnn = zoo.create_model("mobilenetv2_ca_100", num_classes=10)
    x_cnn = torch.randn(2, 3, 32, 32)
    # the whole MLP (its name is ""), and one CNN stage of ReLU6 blocks, both in training mode
    return [(mlp, "", x_mlp, lambda: mlp(x_mlp), 0.5), (cnn, "blocks.2", None, lambda: cnn(x_cnn), 0.05)]


@pytest.mark.parametrize("case", [0, 1], ids=["ib_mlp_relu", "mobilenetv2_ca_blocks.2"])
def test_local_complexity_runs_through_a_probe_on_two_families(case):
    """A ModuleEstimator: the Probe records the matched module's inputs during a training forward, then counts
    the hyperplanes around them with its own seeded directions. Equal to the direct call on those inputs; the
    global random stream, the training mode and the BatchNorm statistics are left as they were."""
    from estimators import ModuleEstimator, local_complexity, make_estimator

    model, name, _, run, radius = _local_complexity_cases()[case]
    module = model.get_submodule(name)
    captured = {}
    hook = module.register_forward_hook(lambda mod, i, o: captured.update(x=i[0].detach()))
    est = make_estimator({"local_complexity": {"radius": radius, "n_directions": 4}})
    assert isinstance(est, ModuleEstimator)
    with torch.no_grad():
        run()  # a forward without the probe: the hook captures the inputs, BatchNorm moves once
    hook.remove()
    start, rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    with torch.no_grad():
        run()  # without the probe: what a training forward does to the statistics and the random stream
    plain, plain_rng = {k: v.clone() for k, v in model.state_dict().items()}, torch.get_rng_state()
    model.load_state_dict(start)
    torch.set_rng_state(rng)
    with Probe(model, {name: [est]}, max_samples=None) as probe, torch.no_grad():
        run()
    assert torch.equal(torch.get_rng_state(), plain_rng) and model.training
    assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())
    rows = {r["estimator"]: r["value"] for r in probe.table()}
    assert set(rows) == {"local_complexity/neurons", "local_complexity/regions"}
    direct = local_complexity(module, captured["x"], radius=radius, n_directions=4,
                              generator=torch.Generator().manual_seed(0))
    assert rows["local_complexity/neurons"] == pytest.approx(direct["neurons"])
    assert rows["local_complexity/regions"] == pytest.approx(direct["regions"])
    assert rows["local_complexity/neurons"] > 0 and 1 <= rows["local_complexity/regions"] <= 2 * 4 + 1
