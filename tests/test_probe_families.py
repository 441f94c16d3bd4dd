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
