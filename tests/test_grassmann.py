import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import zoo
from estimators import Probe, condition_number, entropy
from layers import CausalGrassmannMixing, CausalSelfAttention, pluecker, pluecker_linear
from weights import load_checkpoint, save_checkpoint
from zoo.grassmann import GrassmannCache, GrassmannLMConfig, GrassmannLMForCausalLM, GrassmannLMModel
from zoo.transformer_lm import TransformerLMConfig, TransformerLMForCausalLM

from .conftest import NLI_WORDS, write_snli

TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64)


def tiny_grassmann(**kw):
    torch.manual_seed(0)
    return GrassmannLMForCausalLM(GrassmannLMConfig(**(TINY | dict(reduced_dim=6, windows=[1, 2, 4]) | kw))).eval()


def tiny_transformer(**kw):
    torch.manual_seed(0)
    return TransformerLMForCausalLM(TransformerLMConfig(**(TINY | dict(num_attention_heads=4) | kw))).eval()


# -- the Pluecker embedding ----------------------------------------------------------------------------------

def _pairs(r):
    return torch.triu_indices(r, r, offset=1)


def test_pluecker_is_the_upper_triangle_of_the_antisymmetric_product():
    torch.manual_seed(0)
    a, b = torch.randn(3, 7), torch.randn(3, 7)
    i, j = _pairs(7)
    wedge = a[:, :, None] * b[:, None, :] - b[:, :, None] * a[:, None, :]
    assert torch.allclose(pluecker(a, b, i, j), wedge[:, i, j], atol=1e-6)


def test_pluecker_norm_is_the_lagrange_identity_and_satisfies_the_pluecker_relations():
    torch.manual_seed(0)
    a, b = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    i, j = _pairs(6)
    p = pluecker(a, b, i, j)
    area2 = (a * a).sum(-1) * (b * b).sum(-1) - (a * b).sum(-1) ** 2  # squared area of the parallelogram
    assert torch.allclose((p * p).sum(-1), area2, rtol=1e-10)
    P = torch.zeros(5, 6, 6, dtype=torch.float64)
    P[:, i, j], P[:, j, i] = p, -p
    for (q, r, s, t) in [(0, 1, 2, 3), (1, 2, 4, 5), (0, 3, 4, 5)]:  # p_qr p_st - p_qs p_rt + p_qt p_rs = 0
        rel = P[:, q, r] * P[:, s, t] - P[:, q, s] * P[:, r, t] + P[:, q, t] * P[:, r, s]
        assert rel.abs().max() < 1e-12


def test_normalised_pluecker_depends_only_on_the_plane():
    """(a, b) -> (a, b) M multiplies p by det M: p_hat is a point of Gr(2, r), up to orientation."""
    torch.manual_seed(0)
    a, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    M = torch.tensor([[2.0, -0.5], [0.3, 1.5]], dtype=torch.float64)
    a2, b2 = M[0, 0] * a + M[1, 0] * b, M[0, 1] * a + M[1, 1] * b
    i, j = _pairs(6)
    p, p2 = pluecker(a, b, i, j), pluecker(a2, b2, i, j)
    assert torch.allclose(p2, torch.linalg.det(M) * p, rtol=1e-10)
    assert torch.allclose(p2 / p2.norm(), p / p.norm(), rtol=1e-10)


# -- the mixing layer ----------------------------------------------------------------------------------------

def _reference_mixing(layer: CausalGrassmannMixing, h: torch.Tensor) -> torch.Tensor:
    """The paper's equations written token by token and offset by offset (past offsets)."""
    B, T, _ = h.shape
    z = layer.reduce(h)
    out = torch.empty_like(h)
    for bi in range(B):
        for t in range(T):
            feats = []
            for delta in layer.windows:
                if t - delta < 0:
                    continue
                a, b = z[bi, t], z[bi, t - delta]
                W = torch.outer(a, b) - torch.outer(b, a)
                p = torch.stack([W[i, j] for i in range(layer.rank) for j in range(i + 1, layer.rank)])
                planar = p.norm() > layer.eps * a.norm() * b.norm()  # a degenerate pair spans no plane
                feats.append(layer.plucker_proj(p / p.norm() if planar else torch.zeros_like(p)))
            g = torch.stack(feats).mean(0) if feats else layer.plucker_proj.bias
            if layer.out_proj is not None:
                g = layer.out_proj(g)
            alpha = torch.sigmoid(layer.gate_proj(torch.cat([h[bi, t], g])))
            out[bi, t] = alpha * h[bi, t] + (1 - alpha) * g
    return out


def test_the_layers_defaults_are_the_papers():
    """Offsets {1, 2, 4, 8, 12, 16} and r = 32 (the zoo's models give them explicitly, so only this pins the layer's
    own defaults)."""
    layer = CausalGrassmannMixing(16)
    assert layer.windows == (1, 2, 4, 8, 12, 16) == tuple(zoo.grassmann.WINDOWS)
    assert layer.reduce.out_features == 32


@pytest.mark.parametrize("out_proj", [True, False])
def test_mixing_matches_the_token_by_token_equations(out_proj):
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(16, rank=5, windows=(1, 2, 4), out_proj=out_proj).eval()
    h = torch.randn(2, 9, 16)
    out, z = layer(h)
    assert z.shape == (2, 9, 5)
    assert torch.allclose(out, _reference_mixing(layer, h), atol=1e-5)


def test_mixing_is_causal_and_local():
    """Output t depends on tokens t - max(windows) .. t only (one layer)."""
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(16, rank=5, windows=(1, 3)).eval()
    h = torch.randn(1, 12, 16)
    out = layer(h)[0]
    for changed in (8, 4):
        h2 = h.clone()
        h2[0, changed] += 1.0
        diff = (layer(h2)[0] - out).abs().amax(-1)[0]
        assert diff[:changed].max() < 1e-6            # the past is untouched
        assert diff[changed] > 1e-3                    # the token itself changes
        touched = {changed, changed + 1, changed + 3}  # tokens that pair with it
        assert all(diff[t] < 1e-6 for t in range(changed + 1, 12) if t not in touched)


def test_mixing_positions_mask_offsets_and_past_continues_the_sequence():
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(16, rank=5, windows=(1, 2, 4)).eval()
    h = torch.randn(2, 10, 16)
    full, z = layer(h)
    tail, _ = layer(h[:, 6:], positions=torch.arange(6, 10), past=z[:, 2:6])
    assert torch.allclose(tail, full[:, 6:], atol=1e-6)
    # without positions, the P past tokens come first: positions P..P+T-1
    tail, _ = layer(h[:, 6:], past=z[:, :6])
    assert torch.allclose(tail, full[:, 6:], atol=1e-6)
    with pytest.raises(ValueError, match="h must have shape"):
        layer(torch.randn(2, 10, 15))
    with pytest.raises(ValueError, match="windows must be distinct offsets"):
        CausalGrassmannMixing(16, windows=(0, 1))
    for windows in ([1.5], "12"):  # were offset 1 and offsets (1, 2)
        with pytest.raises(ValueError, match="windows must be a sequence of whole offsets"):
            CausalGrassmannMixing(16, windows=windows)
    assert CausalGrassmannMixing(16, windows=[1.0, 4.0]).windows == (1, 4)  # YAML's 4.0 is 4
    assert CausalGrassmannMixing(16, windows=np.array([1, 2])).windows == (1, 2)  # numpy and torch integers too
    assert CausalGrassmannMixing(16, windows=torch.tensor([1, 4])).windows == (1, 4)


def test_probe_points_of_the_mixing_layer():
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(16, rank=5, windows=(1, 2)).eval()
    seen = {}
    layer.plucker.register_forward_hook(lambda m, i, o: seen.setdefault("p", o))
    layer.gate.register_forward_hook(lambda m, i, o: seen.setdefault("g", o))
    layer(torch.randn(2, 6, 16))
    p, g = seen["p"], seen["g"]
    assert p.shape == (2, 6, 10) and g.shape == (2, 6, 16)
    norms = p.norm(dim=-1)
    assert norms[:, 0].max() == 0                                      # no valid offset at t = 0
    assert torch.allclose(norms[:, 1], torch.ones(2), atol=1e-5)        # one unit vector (delta = 1) at t = 1
    assert (norms[:, 2:] <= 1 + 1e-5).all() and (norms[:, 2:] > 0.1).all()  # mean of two unit vectors
    assert ((g > 0) & (g < 1)).all()


def test_repeated_vectors_span_no_plane():
    """z_t = z_{t-1} (a repeated token): that pair contributes 0 instead of dividing noise by a tiny norm, and is
    still counted in the mean over offsets."""
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(8, rank=4, windows=(1,)).eval()
    seen = []
    layer.plucker.register_forward_hook(lambda m, i, o: seen.append(o))
    h = torch.randn(1, 3, 8)
    h[0, 2] = h[0, 1]
    layer(h)
    assert seen[0][0, 2].abs().max() == 0 and seen[0][0, 1].norm() > 0.99
    # with offsets {1, 2} the degenerate pair still counts in the mean: p_bar_2 = (0 + p_hat(z_2, z_0)) / 2
    two = CausalGrassmannMixing(8, rank=4, windows=(1, 2)).eval()
    two.plucker.register_forward_hook(lambda m, i, o: seen.append(o))
    two(h)
    assert seen[1][0, 2].norm().item() == pytest.approx(0.5, rel=1e-5)


def test_a_plane_is_judged_by_its_sine_at_any_scale():
    """Two nearly parallel z (sine about 1e-2, above eps = 1e-4) span a plane whether |z| is 1e-3 or 1e3: the test is
    relative (|p| > eps |a| |b|), and the normalised coordinates do not depend on the scale."""
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(8, rank=4, windows=(1,)).eval()
    with torch.no_grad():
        layer.reduce.bias.zero_()
    seen = []
    layer.plucker.register_forward_hook(lambda m, i, o: seen.append(o))
    h = torch.randn(1, 3, 8, dtype=torch.float32)
    h[0, 2] = h[0, 1] + 1e-2 * torch.randn(8)
    for scale in (1e-3, 1.0, 1e3):
        layer(h * scale)
    for p in seen:
        assert p[0, 2].norm().item() == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(seen[0], seen[2], atol=1e-4, rtol=0)


# -- the models ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, overrides, expected", [
    ("transformer_lm_13m", {}, 12_585_472),
    ("transformer_lm_17m", {}, 17_324_032),
    ("grassmann_lm_13m", {"out_proj": False}, 12_607_168),
    ("grassmann_lm_13m", {}, 13_001_920),
    ("grassmann_lm_18m", {}, 18_156_928),
])
def test_parameter_counts_match_the_paper(name, overrides, expected):
    model = zoo.create_model(name, **overrides)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_causality(make):
    model = make()
    ids = torch.randint(0, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    logits = model(ids).logits
    for t in (0, 7, 18):
        ids2 = ids.clone()
        ids2[:, t + 1] = (ids2[:, t + 1] + 1) % 50
        logits2 = model(ids2).logits
        assert (logits2[:, : t + 1] - logits[:, : t + 1]).abs().max() < 1e-6
        assert (logits2[:, t + 1] - logits[:, t + 1]).abs().max() > 1e-4


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_save_pretrained_round_trip_and_auto_classes(make, tmp_path):
    model = make()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    config = AutoConfig.from_pretrained(tmp_path)
    assert type(AutoModelForCausalLM.from_config(config)) is type(model)
    assert AutoModel.from_config(config).config.model_type == config.model_type


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_cached_generation_equals_uncached(make):
    model = make()
    ids = torch.randint(1, 50, (2, 5), generator=torch.Generator().manual_seed(3))
    kw = dict(max_new_tokens=40, do_sample=False, return_dict_in_generate=True, output_logits=True)
    cached, plain = model.generate(ids, **kw), model.generate(ids, use_cache=False, **kw)
    assert torch.equal(cached.sequences, plain.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, plain.logits)) < 1e-5
    torch.manual_seed(4)
    sampled = model.generate(ids, max_new_tokens=30, do_sample=True)
    torch.manual_seed(4)
    assert torch.equal(sampled, model.generate(ids, max_new_tokens=30, do_sample=True, use_cache=False))


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_cached_steps_equal_the_full_forward_at_any_start_position(make):
    """A prefill shorter than the cache context, then single cached tokens, with position_ids starting at 5:
    the cache's zero padding before the first token must not count as past tokens."""
    model = make()
    ids = torch.randint(1, 50, (2, 12), generator=torch.Generator().manual_seed(5))
    pos = torch.arange(5, 17).expand(2, -1)
    full = model(ids, position_ids=pos, use_cache=False).logits
    out = model(ids[:, :2], position_ids=pos[:, :2], use_cache=True)
    steps = [out.logits]
    for t in range(2, 12):
        steps.append(model(ids[:, t:t + 1], position_ids=pos[:, t:t + 1], cache=out.cache, use_cache=True).logits)
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_cached_steps_with_a_mask_and_no_position_ids_take_the_positions_of_the_new_tokens(make):
    """Decoding from a cache with the full attention_mask but no position_ids: the new tokens' positions are the
    last T counts of the mask, so the logits equal the full uncached forward's at those tokens."""
    model = make()
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(8))
    mask = torch.ones(2, 9, dtype=torch.long)
    full = model(ids, attention_mask=mask, use_cache=False).logits
    out = model(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
    step = model(ids[:, 6:8], attention_mask=mask[:, :8], cache=out.cache, use_cache=True)
    last = model(ids[:, 8:], attention_mask=mask, cache=step.cache, use_cache=True).logits
    torch.testing.assert_close(torch.cat([out.logits, step.logits, last], 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompt", [3, 20])  # shorter and longer than the cache context (max window 4)
def test_grassmann_assisted_decoding_equals_greedy_decoding(prompt):
    """generate(assistant_model=...) drafts tokens with a second model and rolls the caches back over the
    rejected ones (GrassmannCache.crop on recorded past states): the same tokens as plain greedy decoding, with a
    Grassmann or a Transformer assistant."""
    model = tiny_grassmann()
    torch.manual_seed(1)
    drafts = (GrassmannLMForCausalLM(GrassmannLMConfig(**(TINY | dict(reduced_dim=4, windows=[1, 3])))).eval(),
              tiny_transformer())
    ids = torch.randint(1, 50, (1, prompt), generator=torch.Generator().manual_seed(6))
    greedy = dict(max_new_tokens=30, do_sample=False)
    expected = model.generate(ids, **greedy)
    for assistant in drafts:
        assert torch.equal(model.generate(ids, assistant_model=assistant, **greedy), expected)
    cache = model(ids, use_cache=True).cache
    with pytest.raises(RuntimeError, match="activate_past_recording"):  # not recorded: nothing to roll back to
        cache.crop(-1)
    cache = GrassmannCache(2, 4)
    cache.activate_past_recording()
    model(ids, cache=cache, use_cache=True)
    cache.crop(-2)
    assert cache.get_seq_length() == prompt - 2
    rolled_back = model(ids[:, -2:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(rolled_back, model(ids).logits[:, -2:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_left_padded_batch_generates_as_each_sequence_alone(make):
    model = make()
    long, short = torch.tensor([[5, 9, 3, 7, 2, 8]]), torch.tensor([[4, 6, 1]])
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = (torch.arange(6) >= torch.tensor([[0], [3]])).long()
    together = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
    for row, seq in enumerate((long, short)):
        alone = model.generate(seq, max_new_tokens=10, do_sample=False)
        assert torch.equal(together[row, 6:], alone[0, seq.shape[1]:])


def test_grassmann_cache_holds_only_the_last_max_window_reduced_vectors():
    model = tiny_grassmann()
    ids = torch.randint(1, 50, (3, 7))
    out = model(ids, use_cache=True)
    cache = out.cache
    assert isinstance(cache, GrassmannCache) and cache.get_seq_length() == 7
    for _ in range(25):
        out = model(out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
    assert cache.get_seq_length() == 32
    assert [tuple(layer.conv_states[0].shape) for layer in cache.layers] == [(3, 6, 4)] * 2
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        model(torch.randint(1, 50, (1, 65)))
    with pytest.raises(ValueError, match="input_ids must lie in"):
        model(torch.tensor([[1, 50]]))
    with pytest.raises(ValueError, match=r"range \[-1, 3\]"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="position 64 is beyond"):
        model(torch.tensor([[1, 2]]), position_ids=torch.tensor([[63, 64]]))
    # 70 mask slots, 10 of them left padding: the real positions end at 59, within the 64 learned ones
    mask = torch.cat([torch.zeros(1, 10, dtype=torch.long), torch.ones(1, 60, dtype=torch.long)], 1)
    assert model(torch.randint(1, 50, (1, 70)), attention_mask=mask).logits.shape == (1, 70, 50)


def test_attention_uses_sdpa_and_exposes_probabilities_only_when_probed():
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    seen = []
    y = attn(x)
    handle = attn.probs.register_forward_hook(lambda m, i, o: seen.append(o))
    assert torch.equal(attn(x), y) and len(seen) == 1
    probs = seen[0]
    assert probs.shape == (2, 4, 7, 7)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 7), atol=1e-6)
    assert probs.triu(1).abs().max() == 0
    q, k, v = attn.qkv(x).view(2, 7, 3, 4, 4).permute(2, 0, 3, 1, 4)
    manual = attn.proj((probs @ v).transpose(1, 2).reshape(2, 7, 16))
    assert torch.allclose(manual, y, atol=1e-5)
    handle.remove()
    attn(x)
    assert len(seen) == 1
    allowed = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    assert torch.allclose(attn(x, mask=allowed), y, atol=1e-6)
    # SDPA adds a float mask to the scores: a 0/1 mask would let every token see the future, so it is refused
    for bad in (allowed.float(), allowed[..., :6], allowed[0]):
        with pytest.raises(ValueError, match=r"mask must be a bool tensor \(B or 1, 1, 7, 7\)"):
            attn(x, mask=bad)
    blind = allowed.clone()
    blind[..., 3, :] = False  # query 3 may attend to nothing: zero probabilities, as SDPA's zero output
    seen.clear()
    attn.probs.register_forward_hook(lambda m, i, o: seen.append(o))
    out = attn(x, mask=blind)
    assert torch.equal(seen[0][:, :, 3], torch.zeros(2, 4, 7)) and torch.isfinite(seen[0]).all()
    assert torch.allclose(out[:, 3], attn.proj.bias.expand(2, 16))


def test_probe_attaches_to_pluecker_gate_and_attention_points():
    g, t = tiny_grassmann(), tiny_transformer()
    ids = torch.randint(1, 50, (4, 16))
    with Probe(t, {"model.layers.*.attn.probs": [entropy()]}) as probe:
        t(ids)
    values = [r["value"] for r in probe.table()]
    assert len(values) == 2 and all(0 < v < math.log(16) for v in values)
    with Probe(g, {"model.layers.*.mixing.gate": [condition_number(of="covariance")],
                   "model.layers.0.mixing.plucker": [condition_number(of="covariance")]}) as probe:
        g(ids)
    assert len(probe.table()) == 3 and all(r["value"] >= 1 for r in probe.table())


@pytest.mark.parametrize("side", ["left", "right"])
def test_attention_entropy_of_a_padded_batch_equals_the_unpadded_one(side):
    """Padding queries see no key: zero probabilities, left out of the entropy (before, a left-padding query saw
    itself with probability 1 and pulled every head's mean entropy toward 0, and a right-padding one saw the real
    tokens and counted its rows); the real tokens' logits are the unpadded ones."""
    from estimators import attention_entropy

    t = tiny_transformer()
    ids = torch.randint(1, 50, (1, 8))
    pads, ones = torch.zeros(1, 6, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)
    padded = torch.cat([pads, ids] if side == "left" else [ids, pads], 1)
    mask = torch.cat([pads, ones] if side == "left" else [ones, pads], 1)
    values, logits = [], []
    for inputs, kw in ((ids, {}), (padded, dict(attention_mask=mask))):
        with Probe(t, {"model.layers.*.attn.probs": [attention_entropy()]}) as probe:
            out = t(inputs, **kw).logits
        values.append([r["value"] for r in probe.table() if r["estimator"] == "attention_entropy/mean"])
        logits.append(out[:, -8:] if side == "left" or not kw else out[:, :8])
        assert torch.isfinite(out).all()
    assert len(values[0]) == 2
    torch.testing.assert_close(torch.tensor(values[1]), torch.tensor(values[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-5)


def test_registry_checkpoint_round_trip(tmp_path):
    model = zoo.create_model("grassmann_lm_13m", num_hidden_layers=1, vocab_size=100, windows=(1, 2)).eval()
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors").eval()
    ids = torch.randint(0, 100, (1, 10))
    assert isinstance(loaded, GrassmannLMForCausalLM) and tuple(loaded.config.windows) == (1, 2)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert isinstance(loaded.model, GrassmannLMModel)


def test_pluecker_hand_written_backward_equals_autograd_of_the_formula():
    """pluecker's backward (dL/da = M b, dL/db = -M a, M antisymmetric) against autograd through the indexing,
    with broadcasting inputs; gradgradcheck covers double backward."""
    rows, cols = torch.triu_indices(6, 6, offset=1)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 1, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(3, 5, 15, generator=g, dtype=torch.float64)
    outer = a[..., :, None] * b[..., None, :]
    reference = torch.autograd.grad((outer - outer.transpose(-1, -2))[..., rows, cols], (a, b), upstream)
    ours = torch.autograd.grad(pluecker(a, b, rows, cols), (a, b), upstream)
    for r, o in zip(reference, ours):
        assert o.shape == r.shape and torch.allclose(o, r, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda a, b: pluecker(a, b, rows, cols), (a, b))


def test_pluecker_linear_equals_projecting_the_coordinates():
    """W Pluecker(a, b) + bias by one matmul with the antisymmetric fold of W equals forming the coordinates and
    projecting them: values and gradients in a, b, W and bias, and double backward."""
    rows, cols = torch.triu_indices(6, 6, offset=1)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weight = torch.randn(8, 15, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True)
    reference = torch.nn.functional.linear(pluecker(a, b, rows, cols), weight, bias)
    ours = pluecker_linear(a, b, weight, bias, rows, cols)
    assert torch.allclose(ours, reference, atol=1e-12)
    upstream = torch.randn(reference.shape, generator=g, dtype=torch.float64)
    for r, o in zip(torch.autograd.grad(reference, (a, b, weight, bias), upstream),
                    torch.autograd.grad(ours, (a, b, weight, bias), upstream)):
        assert torch.allclose(o, r, atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda a, b, w: pluecker_linear(a, b, w, bias, rows, cols), (a, b, weight))


def test_mixing_forms_the_pluecker_coordinates_only_for_a_probe_and_both_paths_agree():
    """Unprobed, the layer projects through ``pluecker_linear``; with a hook on ``plucker`` it forms p_bar and
    projects it. Same output and gradients either way."""
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(16, rank=5, windows=(1, 2, 4)).double()
    h = torch.randn(2, 9, 16, dtype=torch.float64, requires_grad=True)

    def run():
        out = layer(h)[0]
        grads = torch.autograd.grad(out.square().sum(), [h, *layer.parameters()])
        return out.detach(), grads

    plain_out, plain_grads = run()
    seen = []
    handle = layer.plucker.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    probed_out, probed_grads = run()
    handle.remove()
    assert seen == [(2, 9, 10)]
    assert torch.allclose(plain_out, probed_out, atol=1e-12)
    for p, q in zip(plain_grads, probed_grads):
        assert torch.allclose(p, q, atol=1e-10)


@pytest.mark.parametrize("name", ["transformer_lm_13m", "transformer_lm_13m_sigma"])
def test_a_static_cache_is_refused_by_name(name):
    """A StaticCache returns every preallocated slot, which attention would read as cached tokens: refused with
    the way out, where the error was that 'N cached positions need an explicit mask' with nothing cached yet."""
    from transformers import StaticCache

    m = zoo.create_model(name, num_hidden_layers=1, vocab_size=50).eval()
    ids = torch.randint(1, 50, (1, 6))
    with pytest.raises(ValueError, match=r"static cache \(StaticCache; generate\(cache_implementation='static'\)\) "
                                         "is not supported; use the default dynamic cache"):
        m.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0, cache_implementation="static")
    with pytest.raises(ValueError, match="static cache"):
        m(ids, cache=StaticCache(config=m.config, max_cache_len=16), use_cache=True)


@pytest.mark.parametrize("name", ["grassmann_lm_13m", "transformer_lm_13m"])
def test_masks_that_do_not_match_the_tokens_are_refused(name):
    """A cached step's mask must cover the cached and the new tokens (a mask of the new tokens alone would restart
    the positions at 0); the Grassmann LM, whose offsets look back by index, refuses a gap between real tokens."""
    torch.manual_seed(0)
    m = zoo.create_model(name, num_hidden_layers=1, vocab_size=50).eval()
    ids = torch.randint(1, 50, (2, 8))
    out = m(ids, attention_mask=torch.ones(2, 8), use_cache=True)
    with pytest.raises(ValueError, match=r"attention_mask must cover the cached and the new tokens.*9"):
        m(ids[:, :1], attention_mask=torch.ones(2, 1), cache=out.cache, use_cache=True)
    gap = torch.tensor([[1, 1, 0, 1, 1, 1, 1, 1]] * 2)
    if name.startswith("grassmann"):
        with pytest.raises(ValueError, match="attention_mask has padding between real tokens; pad on the left or"):
            m(ids, attention_mask=gap)
        # generation appends after a right-padded prompt's padding: the error says to pad prompts on the left
        with pytest.raises(ValueError, match=r"pad prompts for generation on the left \(tokenizer.padding_side"):
            m.generate(ids, attention_mask=torch.tensor([[1] * 8, [1] * 6 + [0] * 2]), max_new_tokens=2,
                       do_sample=False, pad_token_id=0)
    else:
        assert torch.isfinite(m(ids, attention_mask=gap).logits).all()
    # right padding, as transformers' collators pad (it was refused): the real tokens' logits are the unpadded ones
    right = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    padded = m(ids, attention_mask=right).logits
    torch.testing.assert_close(padded[1, :5], m(ids[1:, :5]).logits[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[0], m(ids[:1]).logits[0], atol=1e-5, rtol=1e-5)
    both = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0]] * 2)  # left and right at once
    torch.testing.assert_close(m(ids, attention_mask=both).logits[:, 2:6], m(ids[:, 2:6]).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_masks_positions_and_labels_outside_their_ranges_are_refused(make):
    """A mask of 0.5 or 2 made positions (which count ones) and attention (which keeps non-zeros) disagree silently;
    negative position_ids and labels beyond the vocabulary were bare IndexErrors (a device assert on a GPU)."""
    m = make()
    ids = torch.randint(0, 50, (1, 6))
    for mask in (torch.full((1, 6), 0.5), torch.full((1, 6), 2)):
        with pytest.raises(ValueError, match=r"attention_mask must hold 1 \(a real token\) or 0 \(padding\)"):
            m(ids, attention_mask=mask)
    plain = m(ids).logits
    for mask in (torch.ones(1, 6), torch.ones(1, 6, dtype=torch.bool)):
        assert torch.allclose(m(ids, attention_mask=mask).logits, plain, atol=1e-6)
    with pytest.raises(ValueError, match="position_ids must be >= 0, got -1"):
        m(ids, position_ids=torch.arange(-1, 5)[None])
    labels = ids.clone()
    labels[0, 3] = 60
    with pytest.raises(ValueError, match=r"labels must lie in \[0, vocab_size=50\) or be -100 \(ignored\), got \[60\]"):
        m(ids, labels=labels)


def test_mixing_positions_must_fit_the_batch():
    g = CausalGrassmannMixing(16, 4, windows=(1, 2))
    assert g(torch.randn(2, 5, 16), positions=torch.arange(5))[0].shape == (2, 5, 16)
    for bad in (torch.arange(5).expand(3, 5), torch.arange(5)[None, None]):
        with pytest.raises(ValueError, match=r"positions must have shape \(5,\), \(1, 5\) or \(2, 5\)"):
            g(torch.randn(2, 5, 16), positions=bad)


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_lm_loss_is_the_shifted_cross_entropy_and_refuses_labels_it_cannot_use(make):
    torch.manual_seed(0)
    m = make().eval()
    ids = torch.randint(0, 50, (2, 6))
    labels = ids.clone()
    labels[0, 3] = -100  # ignored
    out = m(ids, labels=labels)
    keep = labels[:, 1:] != -100
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1][keep], labels[:, 1:][keep])
    assert torch.allclose(out.loss, expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"labels must be integer \(batch, length\) = \(2, 6\) like input_ids, "
                                         r"got torch.int64 \(2, 5\)"):
        m(ids, labels=labels[:, :5])
    with pytest.raises(ValueError, match="labels must be integer"):
        m(ids, labels=labels.float())
    with pytest.raises(ValueError, match="labels need at least 2 tokens"):  # the mean over no pairs is NaN
        m(ids[:, :1], labels=ids[:, :1])


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_trainer_accumulates_the_mean_over_all_labelled_tokens(make, tmp_path):
    """transformers' Trainer with gradient accumulation passes num_items_in_batch (accepts_loss_kwargs): the
    accumulated step's loss is the mean over all its labelled tokens, as one full batch's, however unevenly the
    micro-batches hold them (each micro-batch's own mean weighted them equally before: 4.611 against 4.593)."""
    from transformers import Trainer, TrainingArguments

    m = make(dropout=0.0).train()
    ids = torch.randint(1, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[2:, :6] = -100  # the second micro-batch holds 2 labelled tokens per row, the first 7
    rows = [{"input_ids": i, "labels": l} for i, l in zip(ids, labels)]
    with torch.no_grad():
        full = m(ids, labels=labels).loss.item()

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    losses = {}
    for accumulate in (1, 2):
        args = TrainingArguments(output_dir=str(tmp_path / str(accumulate)), per_device_train_batch_size=4 // accumulate,
                                 gradient_accumulation_steps=accumulate, learning_rate=0.0, max_steps=1, use_cpu=True,
                                 logging_steps=1, report_to=[], save_strategy="no", dataloader_drop_last=False)
        trainer = Trainer(model=m, args=args, train_dataset=Rows())
        trainer.train()
        losses[accumulate] = next(r["loss"] for r in trainer.state.log_history if "loss" in r)
    assert losses[1] == pytest.approx(full, rel=1e-4) and losses[2] == pytest.approx(full, rel=1e-4)


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.uint8])
def test_token_ids_of_any_integer_dtype_give_the_int64_results(make, dtype):
    torch.manual_seed(0)
    m = make().eval()
    ids = torch.randint(0, 50, (2, 6))
    expected = m(ids, labels=ids)
    out = m(ids.to(dtype), labels=ids.to(dtype))
    assert torch.equal(out.logits, expected.logits) and torch.equal(out.loss, expected.loss)
    for wrong in (ids.float(), ids.bool()):
        with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
            m(wrong)


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_transformers_forward_options(make):
    """return_dict=False gives transformers' tuple (loss first when labels are given); output_hidden_states gives
    the embeddings and every block's output (the last after the final norm); inputs_embeds (soft prompts) equals
    the ids' own embeddings, in forward and generate(); output_attentions is refused with where to look instead."""
    m = make()
    ids = torch.randint(1, 50, (2, 8))
    out = m(ids, labels=ids, output_hidden_states=True)
    train_tuple = m.train()(ids, labels=ids, return_dict=False)  # training: no cache, so (loss, logits)
    m.eval()
    assert len(train_tuple) == 2 and train_tuple[0].dim() == 0 and train_tuple[1].shape == (2, 8, 50)
    as_tuple = m(ids, labels=ids, return_dict=False)
    assert torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)
    hidden = out.hidden_states
    assert len(hidden) == m.config.num_hidden_layers + 1 and torch.equal(hidden[-1], m.model(ids).last_hidden_state)
    assert torch.equal(hidden[0], m.model.embed_tokens(ids) + m.model.embed_positions(torch.arange(8)))
    embeds = m.get_input_embeddings()(ids)
    torch.testing.assert_close(m(inputs_embeds=embeds).logits, out.logits, atol=0, rtol=0)
    greedy = dict(max_new_tokens=4, do_sample=False)
    assert torch.equal(m.generate(inputs_embeds=embeds[:, :5], **greedy), m.generate(ids[:, :5], **greedy)[:, 5:])
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        m(ids, inputs_embeds=embeds)
    with pytest.raises(TypeError, match="inputs_embeds is torch.float64 but the model is torch.float32"):
        m(inputs_embeds=embeds.double())  # numpy's default dtype; torch's message named neither
    if make is tiny_grassmann:
        with pytest.raises(ValueError, match="output_attentions: the Grassmann LM has no attention"):
            m(ids, output_attentions=True)


def test_transformer_lm_returns_attentions_and_runs_eager_attention(tmp_path):
    """output_attentions=True returns each layer's probabilities (B, heads, T, S), the same the probe point
    records, rows summing to 1 (0 for a padding query); attn_implementation="eager" computes softmax(...) V as
    written, equal to the fused SDPA output; generate() returns the attentions of every new token."""
    m = tiny_transformer().eval()
    ids = torch.randint(1, 50, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    fused = m(ids, attention_mask=mask)
    recorded = []
    hooks = [layer.attn.probs.register_forward_hook(lambda mod, args, probs: recorded.append(probs))
             for layer in m.model.layers]
    out = m(ids, attention_mask=mask, output_attentions=True)
    for hook in hooks:
        hook.remove()
    assert all(a is b for a, b in zip(out.attentions, recorded, strict=True))
    assert len(out.attentions) == m.config.num_hidden_layers and out.attentions[0].shape == (2, 4, 8, 8)
    torch.testing.assert_close(out.logits, fused.logits, atol=1e-5, rtol=0)
    rows = out.attentions[1].sum(-1)
    assert torch.allclose(rows[0, :, 3:], torch.ones(4, 5)) and torch.equal(rows[0, :, :3], torch.zeros(4, 3))
    assert torch.equal(out.attentions[1][1].triu(1), torch.zeros(4, 8, 8))  # causal
    as_tuple = m(ids, attention_mask=mask, output_attentions=True, return_dict=False)
    assert torch.equal(as_tuple[-1][0], out.attentions[0])
    m.save_pretrained(tmp_path)
    eager = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert eager.config._attn_implementation == "eager"
    torch.testing.assert_close(eager(ids, attention_mask=mask).logits, fused.logits, atol=1e-5, rtol=0)
    new = m.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, output_attentions=True,
                     return_dict_in_generate=True)
    assert len(new.attentions) == 3 and new.attentions[2][0].shape == (2, 4, 1, 10)


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_activation_checkpointing_gives_the_same_gradients(make):
    """transformers' activation checkpointing (HF Trainer's gradient_checkpointing=True) recomputes each block in
    backward: the same loss and gradients as the plain step."""
    grads = []
    for checkpointing in (False, True):
        m = make(dropout=0.0).train()
        if checkpointing:
            m.activation_checkpointing_enable()
            assert all(block.gradient_checkpointing for block in m.model.layers)
        ids = torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(1))
        out = m(ids, labels=ids, use_cache=True)
        # the recomputed blocks skip the cache, so none comes back (one that claimed 8 tokens and held none did)
        assert (out.cache is None) == checkpointing
        out.loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("make", [tiny_grassmann, tiny_transformer])
def test_forward_compiles_to_one_graph(make):
    """torch.compile(fullgraph=True) captures the whole forward, padding mask and loss included: the checks that
    read values on the host (ids, mask, labels, positions) run in eager mode only, where they broke the graph 4 to
    8 times (Dynamo's capture, backend "eager": the same graph inductor compiles)."""
    m = make(dropout=0.0).eval()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :3] = 0
    eager = m(ids, attention_mask=mask, labels=ids, use_cache=False)
    torch._dynamo.reset()
    out = torch.compile(m, backend="eager", fullgraph=True)(ids, attention_mask=mask, labels=ids, use_cache=False)
    torch.testing.assert_close(out.logits, eager.logits, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.loss, eager.loss, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="input_ids must lie in"):  # eager still checks
        m(ids + 100)


NLI_ENCODER = {"model_type": "distilbert", "vocab_size": 100, "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64,
               "max_position_embeddings": 16}
# the Grassmann head's own size (the Transformer head refuses settings it does not use)
HEAD_ONLY = {"grassmann_nli_head": {"reduced_dim": 6}}


@pytest.mark.parametrize("name", ["grassmann_nli_head", "transformer_nli_head"])
def test_nli_head_takes_up_to_the_encoders_maximum_length_and_refuses_longer_pairs(name):
    """A pair of exactly max_position_embeddings (16) tokens runs, padded or not; 17 tokens are a named error (the
    encoder has no position beyond 15), not an index error inside the encoder or a silent truncation."""
    torch.manual_seed(0)
    model = zoo.create_model(name, encoder_config=NLI_ENCODER, hidden_size=32, intermediate_size=64,
                             **HEAD_ONLY.get(name, {})).eval()
    ids = torch.randint(5, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    assert model(ids).logits.shape == (2, 3)
    mask = torch.ones_like(ids).index_fill(1, torch.arange(12, 16), 0)
    torch.testing.assert_close(model(ids, mask).logits, model(ids[:, :12]).logits, atol=1e-5, rtol=0)
    for longer in (torch.cat([ids, ids[:, :1]], 1), torch.cat([ids, ids], 1)):
        with pytest.raises(ValueError, match=rf"NLI head: {longer.shape[1]} tokens, the encoder takes at most 16"):
            model(longer)


def test_nli_task_truncates_and_pads_every_pair_to_max_len(tmp_path):
    """SNLI pairs are tokenised as [CLS] premise [SEP] hypothesis [SEP] and truncated (long pairs) or padded (short
    ones) to task_args.max_len = 10: every split is (N, 10), also a split of short pairs only; a long pair keeps 10
    real tokens ending in [SEP], a short pair of 2 + 1 words has 6 real tokens and 4 of padding."""
    import json

    from train import load_recipe
    from train.tasks import make_task

    rows = [{"sentence1": " ".join(NLI_WORDS), "sentence2": " ".join(NLI_WORDS[:6]), "gold_label": "entailment"},
            {"sentence1": "a man", "sentence2": "dog", "gold_label": "neutral"}]
    data = write_snli(tmp_path, {"train": rows, "dev": rows, "test": rows[1:]})  # test: short pairs only
    task = make_task(load_recipe("grassmann-nli-snli", data + [f"model_args.encoder_config={json.dumps(NLI_ENCODER)}",
                                                               "task_args.max_len=10"]))
    assert task.max_len == 10
    for split in ("train", "valid"):
        ids, mask = task.splits[split]["input_ids"], task.splits[split]["attention_mask"]
        assert ids.shape == mask.shape == (2, 10)
        assert mask.sum(1).tolist() == [10, 6]
        assert ids[0, 0].item() == 2 and ids[0, -1].item() == 3  # [CLS] ... [SEP], cut to fit
        assert ids[1].tolist() == [2, 5, 6, 3, 8, 3, 0, 0, 0, 0]  # [CLS] a man [SEP] dog [SEP] + padding
    assert task.splits["test"]["input_ids"].tolist() == [[2, 5, 6, 3, 8, 3, 0, 0, 0, 0]]  # padded to 10 alone
    assert task.splits["test"]["attention_mask"].tolist() == [[1] * 6 + [0] * 4]
    sample = task.train_sample(2, torch.Generator().manual_seed(0))  # distinct rows: both training pairs once
    assert sorted(sample["labels"].tolist()) == [0, 1]
    with pytest.raises(ValueError, match="fewer than the 3 distinct ones"):
        task.train_sample(3, torch.Generator().manual_seed(0))


# -- the equations written out, input checks, dropout and padding (mutation sweep) ---------------------------

def _layer_norm(x, ln):
    """LayerNorm written out: (x - mean) / sqrt(var + eps) * weight + bias, the biased variance."""
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _ffn(x, ffn):
    """W_2 GELU(W_1 x + b_1) + b_2 with GELU(u) = u Phi(u) (erf form)."""
    first, second = ffn[0], ffn[2]
    u = x @ first.weight.T + first.bias
    return (0.5 * u * (1 + torch.erf(u / math.sqrt(2)))) @ second.weight.T + second.bias  # exact GELU


def _reference_attention(attn, x):
    """Vaswani et al.'s eq. 1 per head, causal, heads concatenated, then W_O."""
    _, T, d = x.shape
    H, dh = attn.n_heads, attn.d_head
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(d, -1)
    heads = []
    for hd in range(H):
        s = slice(hd * dh, (hd + 1) * dh)
        scores = q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(dh)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., s])
    return torch.cat(heads, -1) @ attn.proj.weight.T + attn.proj.bias


def _perturb_norms(model):
    """LayerNorm weights and biases away from (1, 0)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=g))


def test_both_lms_equal_their_equations_written_out():
    """The logits equal the paper's architectures written from scratch with the models' weights: Transformer
    pre-norm x + Attn(LN1 x), x + FFN(LN2 x); Grassmann post-norm u = LN1(mix(h)), h' = LN2(u + FFN(u)); both
    with exact-GELU FFN, learned positions, a final LayerNorm and the head tied to the token embedding. (The other
    tests compare each model with itself: cached against uncached, padded against unpadded.)"""
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    for make in (tiny_transformer, tiny_grassmann):
        model = make()
        _perturb_norms(model)  # LayerNorm weights other than (1, 0), so a missing or misplaced norm shows
        m = model.model
        with torch.no_grad():
            h = m.embed_tokens.weight[ids] + m.embed_positions.weight[:7]
            for block in m.layers:
                if make is tiny_transformer:
                    h = h + _reference_attention(block.attn, _layer_norm(h, block.ln1))
                    h = h + _ffn(_layer_norm(h, block.ln2), block.ffn)
                else:
                    u = _layer_norm(_reference_mixing(block.mixing, h), block.ln1)
                    h = _layer_norm(u + _ffn(u, block.ffn), block.ln2)
            expected = _layer_norm(h, m.norm) @ m.embed_tokens.weight.T
            torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_offsets_reach_only_the_tokens_given_whatever_their_positions():
    """Positions starting at 5 without a past (a window cut from the middle of a sequence): an offset is valid
    only where z_{t-delta} is among the given tokens, so the output equals the one with positions 0..T-1 and the
    token-by-token equations; an index clamped to 0 paired z_t with z_0 instead."""
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(16, rank=5, windows=(1, 2, 4)).eval()
    h = torch.randn(2, 7, 16)
    shifted = layer(h, positions=torch.arange(5, 12))[0]
    torch.testing.assert_close(shifted, layer(h)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(shifted, _reference_mixing(layer, h), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"past must have shape \(2, P, 5\), got \(1, 3, 5\)"):
        layer(h, past=torch.randn(1, 3, 5))


def test_a_plane_needs_a_sine_above_eps():
    """z_t = e_1 + s e_2 after z_{t-1} = e_1 has sine s: for s = 1e-5 (below eps = 1e-4, numerically no plane) the
    pair contributes p_hat = 0, for s = 1e-3 the unit vector +-(e_1 ^ e_2), coordinate p_12 (index 0)."""
    layer = CausalGrassmannMixing(4, rank=4, windows=(1,)).eval()
    with torch.no_grad():
        layer.reduce.weight.copy_(torch.eye(4))
        layer.reduce.bias.zero_()
    seen = []
    layer.plucker.register_forward_hook(lambda m, i, o: seen.append(o))
    for s in (1e-5, 1e-3):
        layer(torch.tensor([[[1.0, 0, 0, 0], [1.0, s, 0, 0]]]))
    assert seen[0][0, 1].abs().max() == 0
    torch.testing.assert_close(seen[1][0, 1].abs(), torch.tensor([1.0, 0, 0, 0, 0, 0]), atol=1e-6, rtol=0)


def test_dropout_acts_on_g_before_the_gate():
    """In training, dropout p = 0.5 zeroes entries of g and doubles the rest before the gate: g recovered from the
    output as (out - alpha h) / (1 - alpha) (alpha from the gate probe) is 0 or twice the evaluation-mode g."""
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(16, rank=5, windows=(1, 2), dropout=0.5)
    h = torch.randn(2, 50, 16)
    gates = []
    layer.gate.register_forward_hook(lambda m, i, o: gates.append(o))
    recovered = []
    for mode in (False, True):
        out = layer.train(mode)(h)[0]
        alpha = gates[-1]
        recovered.append((out - alpha * h) / (1 - alpha))
    g_eval, g_train = recovered
    dropped = g_train.abs() < 1e-4
    assert 0.4 < dropped.float().mean() < 0.6
    torch.testing.assert_close(g_train[~dropped], 2 * g_eval[~dropped], atol=1e-3, rtol=1e-3)


def test_left_padding_leaves_the_gradients_of_the_real_tokens_unchanged():
    """Left padding (positions 0 for the pads and the first real token, as the LMs count them over the mask):
    a loss on the real tokens has the unpadded sequence's gradients, finite, although the pads and the first
    real token have no valid offset (count 0, whose 1 / count was inf, and inf x 0 a NaN in backward)."""
    torch.manual_seed(0)
    layer = CausalGrassmannMixing(16, rank=5, windows=(1, 2)).double()
    real = torch.randn(1, 6, 16, dtype=torch.float64)
    padded = torch.cat([torch.randn(1, 3, 16, dtype=torch.float64), real], 1)
    grads = []
    for h, positions, start in ((real, torch.arange(6), 0), (padded, torch.tensor([0, 0, 0, 0, 1, 2, 3, 4, 5]), 3)):
        out = layer(h, positions=positions)[0][:, start:]
        grads.append(torch.autograd.grad(out.square().sum(), list(layer.parameters())))
    for plain, pad in zip(*grads):
        assert torch.isfinite(pad).all()
        torch.testing.assert_close(pad, plain, atol=1e-10, rtol=1e-10)


def test_mixing_refuses_a_rank_below_two_and_repeated_offsets():
    """A 2-plane needs r >= 2 (r = 1 gives no Pluecker coordinate at all: a Linear(0, d)); a repeated offset would
    count one pair twice in the mean over offsets."""
    with pytest.raises(ValueError, match="rank must be >= 2 for 2-planes in R\\^rank, got 1"):
        CausalGrassmannMixing(16, rank=1)
    assert CausalGrassmannMixing(16, rank=2).plucker_proj.in_features == 1
    with pytest.raises(ValueError, match=r"windows must be distinct offsets >= 1, got \(1, 2, 1\)"):
        CausalGrassmannMixing(16, rank=4, windows=(1, 2, 1))


@pytest.mark.parametrize(("name", "setting", "named"), [
    ("transformer_nli_head", {"out_proj": False}, "out_proj"),
    ("transformer_nli_head", {"reduced_dim": 6, "windows": [1, 2]}, "reduced_dim, windows"),
    ("grassmann_nli_head", {"num_attention_heads": 8}, "num_attention_heads")])
def test_nli_head_refuses_a_size_setting_of_the_other_head(name, setting, named):
    """out_proj=False on the Transformer head used to build the default model without a word (1,597,443 trainable
    parameters either way), so an ablation could compare two identical models; settings at their defaults pass."""
    with pytest.raises(ValueError, match=rf"NLI head: the {name.split('_')[0]} head does not use {named}; "):
        zoo.create_model(name, encoder_config=NLI_ENCODER, hidden_size=32, intermediate_size=64, **setting)
    zoo.create_model(name, encoder_config=NLI_ENCODER, hidden_size=32, intermediate_size=64, out_proj=True,
                     windows=(1, 2, 4, 8, 12, 16), num_attention_heads=4, reduced_dim=32)


def test_transformer_nli_head_reads_the_pair_left_to_right():
    """The Transformer NLI head's blocks attend causally, as the Grassmann head's offsets look back only: each
    block's attention probabilities are lower-triangular, rows summing to 1, and padding keys get none."""
    torch.manual_seed(0)
    model = zoo.create_model("transformer_nli_head", encoder_config=NLI_ENCODER, hidden_size=32,
                             intermediate_size=64).eval()
    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # right padding
    seen = []
    for block in model.blocks:
        block.attn.probs.register_forward_hook(lambda m, i, o: seen.append(o))
    model(ids, mask)
    assert len(seen) == 2
    for probs in seen:
        assert probs.shape == (2, 4, 9, 9)
        assert torch.equal(probs.triu(1), torch.zeros_like(probs))
        torch.testing.assert_close(probs[0].sum(-1), torch.ones(4, 9))
        assert probs[1, :, :, 6:].abs().max() == 0  # padding is never attended to
        torch.testing.assert_close(probs[1, :, :6].sum(-1), torch.ones(4, 6))


def test_eager_attention_implementation_computes_softmax_without_sdpa(monkeypatch):
    """attn_implementation="eager" (transformers' switch) runs softmax(Q K^T / sqrt(d) + M) V as written: the fused
    scaled_dot_product_attention is never called, where the default ("sdpa") calls it once per layer."""
    import torch.nn.functional as F

    model = tiny_transformer()
    ids = torch.randint(1, 50, (2, 8))
    expected = model(ids).logits
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    model(ids)
    assert len(calls) == model.config.num_hidden_layers
    calls.clear()
    model.config._attn_implementation = "eager"
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=0)
    assert calls == []


def test_attention_over_cached_keys_needs_an_explicit_mask():
    """With a cache the queries are the last T of S positions; SDPA's is_causal aligns them to the first T (query
    0 would see key 0 only), so a call without a mask is refused, and the explicit mask gives the full forward."""
    from transformers import DynamicCache

    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 4).eval()
    x = torch.randn(1, 5, 16)
    full = attn(x)
    cache = DynamicCache()
    attn(x[:, :3], cache=cache)
    with pytest.raises(ValueError, match="3 cached positions need an explicit mask"):
        attn(x[:, 3:], cache=cache)
    cache = DynamicCache()
    attn(x[:, :3], cache=cache)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()[3:][None, None]
    torch.testing.assert_close(attn(x[:, 3:], mask=allowed, cache=cache), full[:, 3:], atol=1e-6, rtol=0)



def test_a_gap_before_the_last_real_token_is_refused():
    """A pad between real tokens is refused wherever it sits, also when only the last token follows it (the
    offsets would mix the pad into that token); padding on the left, the right or both sides is accepted."""
    m = tiny_grassmann()
    ids = torch.randint(1, 50, (1, 6))
    for gap in ([1, 1, 1, 1, 0, 1], [0, 1, 0, 1, 1, 0], [1, 0, 1, 1, 1, 1]):
        with pytest.raises(ValueError, match="attention_mask has padding between real tokens"):
            m(ids, attention_mask=torch.tensor([gap]))
    for fine in ([0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]):
        assert torch.isfinite(m(ids, attention_mask=torch.tensor([fine])).logits).all()
