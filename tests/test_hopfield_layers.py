"""Hopfield layers: hflayers state-dict compatibility, equivalence with attention, and the paper's theory."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import layers.hopfield_core as hopfield_core
from estimators import Probe, entropy
from layers import Hopfield, HopfieldCore, HopfieldLayer, HopfieldPooling, hopfield_energy


def test_empty_batches_give_empty_outputs_and_empty_stored_sets_are_refused():
    torch.manual_seed(0)
    for steps in (0, 3):  # one update (SDPA) and iterated updates until convergence
        for layer, shape in ((Hopfield(input_size=8, num_heads=2, update_steps_max=steps), (0, 5, 8)),
                             (HopfieldPooling(input_size=8, num_heads=2, update_steps_max=steps), (0, 8)),
                             (HopfieldLayer(input_size=8, num_heads=2, update_steps_max=steps), (0, 5, 8))):
            assert layer(torch.randn(0, 5, 8)).shape == shape
    with pytest.raises(ValueError, match="no stored patterns"):
        Hopfield(input_size=8, num_heads=2)(torch.randn(2, 0, 8))
    empty = torch.randn(2, 0, 8)  # self-association: the core's fused projection path
    with pytest.raises(ValueError, match="no stored patterns"):
        Hopfield(input_size=8, num_heads=2).association_core(empty, empty, empty)
    with pytest.raises(ValueError, match="no stored patterns"):
        hopfield_energy(torch.randn(3), torch.randn(0, 3), beta=1.0)

NO_NORMS = {f"normalize_{w}{a}": False for w in ("stored_pattern", "state_pattern", "pattern_projection")
            for a in ("", "_affine")}
STATIC = dict(stored_pattern_as_static=True, state_pattern_as_static=True, pattern_projection_as_static=True,
              disable_out_projection=True, **NO_NORMS)

# hflayers' Hopfield(input_size=64): every key and shape (association_core = its HopfieldCore)
HFLAYERS_64 = {
    "association_core.in_proj_weight": (192, 64), "association_core.in_proj_bias": (192,),
    "association_core.out_proj.weight": (64, 64), "association_core.out_proj.bias": (64,),
    "norm_stored_pattern.weight": (64,), "norm_stored_pattern.bias": (64,),
    "norm_state_pattern.weight": (64,), "norm_state_pattern.bias": (64,),
    "norm_pattern_projection.weight": (64,), "norm_pattern_projection.bias": (64,),
}


def hflayers_state(shapes: dict, prefix: str = "", seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {prefix + k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()}


def test_parameter_count_and_key_names_are_hflayers():
    h = Hopfield(input_size=64)
    assert sum(p.numel() for p in h.parameters()) == 17_024
    assert {k: tuple(v.shape) for k, v in h.state_dict().items()} == HFLAYERS_64


def test_hflayers_read_only_settings():
    """hflayers' properties that ported code reads: sizes, beta = 1/sqrt(head dim) by default, the update steps."""
    h = Hopfield(64)
    assert (h.input_size, h.hidden_size, h.output_size, h.pattern_size) == (64, 64, 64, 64)
    assert h.scaling == pytest.approx(1 / 8) and (h.update_steps_max, h.update_steps_eps) == (0, 1e-4)
    h = Hopfield(64, hidden_size=8, num_heads=4, output_size=10, update_steps_max=None)
    assert (h.hidden_size, h.output_size, h.pattern_size, h.update_steps_max) == (8, 10, 8, None)
    assert h.scaling == pytest.approx(8 ** -0.5)


def test_hflayers_state_dict_loads_strictly_and_computes_the_equation():
    h = Hopfield(input_size=64, num_heads=4)
    sd = hflayers_state(HFLAYERS_64)
    h.load_state_dict(sd, strict=True)
    y, r = torch.randn(2, 9, 64), torch.randn(2, 5, 64)
    # Z = softmax(beta R W_Q (Y W_K)^T) Y W_V per head, after the three LayerNorms, then W_O
    ln = lambda x, n: F.layer_norm(x, (64,), sd[f"{n}.weight"], sd[f"{n}.bias"], 1e-5)
    w, b = sd["association_core.in_proj_weight"], sd["association_core.in_proj_bias"]
    q = F.linear(ln(r, "norm_state_pattern"), w[:64], b[:64]).view(2, 5, 4, 16).transpose(1, 2)
    k = F.linear(ln(y, "norm_stored_pattern"), w[64:128], b[64:128]).view(2, 9, 4, 16).transpose(1, 2)
    v = F.linear(ln(y, "norm_pattern_projection"), w[128:], b[128:]).view(2, 9, 4, 16).transpose(1, 2)
    z = ((q @ k.transpose(-1, -2)) / 4.0).softmax(-1) @ v
    z = F.linear(z.transpose(1, 2).reshape(2, 5, 64), sd["association_core.out_proj.weight"],
                 sd["association_core.out_proj.bias"])
    assert torch.allclose(h((y, r, y)), z, atol=1e-5)


def test_wrappers_put_hopfield_under_hopfield_and_their_own_weights():
    pool = HopfieldPooling(input_size=64, quantity=2)
    pool.load_state_dict({**hflayers_state(HFLAYERS_64, "hopfield."), "pooling_weights": torch.randn(1, 2, 64)},
                         strict=True)
    layer = HopfieldLayer(input_size=64, quantity=7)
    layer.load_state_dict({**hflayers_state(HFLAYERS_64, "hopfield."), "lookup_weights": torch.randn(1, 7, 64)},
                          strict=True)
    assert sum(p.numel() for p in pool.parameters()) == 17_024 + 128
    assert sum(p.numel() for p in layer.parameters()) == 17_024 + 448
    for wrapper in (HopfieldPooling, HopfieldLayer):  # hflayers' 2nd positional is hidden_size, ours was quantity
        with pytest.raises(TypeError, match="positional argument"):
            wrapper(64, 32)
    torch.manual_seed(0)
    fresh = HopfieldPooling(input_size=256, quantity=64)
    lookup = HopfieldLayer(input_size=256, quantity=64)
    for weights in (fresh.pooling_weights, lookup.lookup_weights):  # N(0, 0.02), as hflayers initialises them
        assert weights.std().item() == pytest.approx(0.02, rel=0.05)
        assert weights.mean().abs().item() < 0.002
    assert HopfieldLayer(input_size=64, quantity=3, batch_first=False).lookup_weights.shape == (3, 1, 64)


def test_separate_projection_layout():
    """kdim != embed_dim: hflayers switches to q/k/v_proj_weight (in_proj_bias keeps its 3 blocks); a state dict in
    that layout loads strictly and computes the equation by hand."""
    kwargs = dict(input_size=64, stored_pattern_size=32, pattern_projection_size=48, hidden_size=8, num_heads=2,
                  output_size=10)
    h = Hopfield(**kwargs)
    shapes = {k: tuple(v.shape) for k, v in h.state_dict().items()}
    assert {k: s for k, s in shapes.items() if k.startswith("association_core")} == {
        "association_core.q_proj_weight": (16, 64), "association_core.k_proj_weight": (16, 32),
        "association_core.v_proj_weight": (16, 48), "association_core.in_proj_bias": (48,),
        "association_core.out_proj.weight": (10, 16), "association_core.out_proj.bias": (10,)}
    sd = hflayers_state(shapes)
    fresh = Hopfield(**kwargs)
    fresh.load_state_dict(sd, strict=True)
    y, r, p = torch.randn(3, 6, 32), torch.randn(3, 4, 64), torch.randn(3, 6, 48)
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], sd[f"{n}.weight"], sd[f"{n}.bias"], 1e-5)  # noqa: E731
    b = sd["association_core.in_proj_bias"]
    heads = lambda x: x.view(3, -1, 2, 8).transpose(1, 2)  # noqa: E731
    q = heads(F.linear(ln(r, "norm_state_pattern"), sd["association_core.q_proj_weight"], b[:16]))
    k = heads(F.linear(ln(y, "norm_stored_pattern"), sd["association_core.k_proj_weight"], b[16:32]))
    v = heads(F.linear(ln(p, "norm_pattern_projection"), sd["association_core.v_proj_weight"], b[32:]))
    z = ((q @ k.transpose(-1, -2)) / math.sqrt(8)).softmax(-1) @ v
    z = F.linear(z.transpose(1, 2).reshape(3, 4, 16), sd["association_core.out_proj.weight"],
                 sd["association_core.out_proj.bias"])
    assert torch.allclose(fresh((y, r, p)), z, atol=1e-5)


def test_pattern_projection_as_connected_is_the_papers_equation_10():
    """Z = softmax(beta R W_Q W_K^T Y^T) Y W_K W_V (with biases, per head, then W_O), hflayers' layout for the flag:
    separate q/k/v_proj_weight, v_proj_weight (H * hidden, H * hidden); a state dict in it loads strictly."""
    kwargs = dict(input_size=12, stored_pattern_size=10, pattern_projection_size=10, hidden_size=4, num_heads=2,
                  output_size=6, pattern_projection_as_connected=True, **NO_NORMS)
    h = Hopfield(**kwargs)
    shapes = {k: tuple(v.shape) for k, v in h.state_dict().items()}
    assert shapes == {"association_core.q_proj_weight": (8, 12), "association_core.k_proj_weight": (8, 10),
                      "association_core.v_proj_weight": (8, 8), "association_core.in_proj_bias": (24,),
                      "association_core.out_proj.weight": (6, 8), "association_core.out_proj.bias": (6,)}
    sd = hflayers_state(shapes)
    h.load_state_dict(sd, strict=True)
    y, r = torch.randn(3, 5, 10), torch.randn(3, 4, 12)
    b = sd["association_core.in_proj_bias"]
    heads = lambda x: x.view(3, -1, 2, 4).transpose(1, 2)  # noqa: E731
    yk = F.linear(y, sd["association_core.k_proj_weight"], b[8:16])                 # Y W_K
    q = heads(F.linear(r, sd["association_core.q_proj_weight"], b[:8]))
    v = heads(F.linear(yk, sd["association_core.v_proj_weight"], b[16:]))           # Y W_K W_V
    z = ((q @ heads(yk).transpose(-1, -2)) / 2.0).softmax(-1) @ v
    z = F.linear(z.transpose(1, 2).reshape(3, 4, 8), sd["association_core.out_proj.weight"],
                 sd["association_core.out_proj.bias"])
    assert torch.allclose(h((y, r, y)), z, atol=1e-6)
    with pytest.raises(ValueError, match="stored and projected patterns of one width"):
        Hopfield(**(kwargs | dict(pattern_projection_size=7)))
    with pytest.raises(ValueError, match="neither may be static"):
        Hopfield(**(kwargs | dict(stored_pattern_as_static=True)))


def test_wrappers_with_every_pattern_static_retrieve_from_their_own_weights():
    """All patterns static and no output projection (nothing projected, beta = 1): the lookup / pooling weights
    take the input's width, and the output is softmax(R Y^T) Y with Y the learned patterns."""
    x = torch.randn(2, 3, 8)
    layer = HopfieldLayer(input_size=8, quantity=5, **STATIC)
    y = layer.lookup_weights[0]
    assert y.shape == (5, 8)
    assert torch.allclose(layer(x), (x @ y.T).softmax(-1) @ y, atol=1e-6)
    pooling = HopfieldPooling(input_size=8, **STATIC)
    query = pooling.pooling_weights[0]  # (1, 8): the learned state pattern
    expected = ((query @ x.transpose(1, 2)).softmax(-1) @ x).flatten(1)
    assert torch.allclose(pooling(x), expected, atol=1e-6)


def test_static_state_pattern_drops_its_rows_from_in_proj_weight():
    h = Hopfield(input_size=64, hidden_size=64, state_pattern_as_static=True)
    assert h.association_core.in_proj_weight.shape == (128, 64)  # stored and projection rows only
    assert h.association_core.in_proj_bias.shape == (128,)
    assert h((torch.randn(2, 5, 64), torch.randn(2, 3, 64), torch.randn(2, 5, 64))).shape == (2, 3, 64)


@pytest.mark.parametrize("batch_first", [True, False])
def test_equals_torch_multihead_attention(batch_first):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()
    h = Hopfield(input_size=32, num_heads=4, batch_first=batch_first, **NO_NORMS).eval()
    h.association_core.load_state_dict(mha.state_dict(), strict=True)  # same names: in_proj_*, out_proj.*
    y, r = torch.randn(3, 11, 32), torch.randn(3, 6, 32)
    if not batch_first:
        y, r = y.transpose(0, 1), r.transpose(0, 1)
    pad = torch.zeros(3, 11, dtype=torch.bool)
    pad[0, 7:] = True
    causal = torch.ones(6, 11, dtype=torch.bool).triu(6)
    ref = mha(r, y, y, key_padding_mask=pad, attn_mask=causal, need_weights=False)[0]
    assert torch.allclose(h((y, r, y), stored_pattern_padding_mask=pad, association_mask=causal), ref, atol=1e-6)
    additive = torch.randn(12, 6, 11)  # (B * H, L, S) float mask
    ref = mha(r, y, y, attn_mask=additive, need_weights=False)[0]
    assert torch.allclose(h((y, r, y), association_mask=additive), ref, atol=1e-6)
    float_pad = torch.zeros(3, 11).masked_fill(pad, float("-inf")) + torch.randn(3, 11)  # additive padding mask
    for attn in (causal, additive):  # mixed with a bool or a float association mask
        ref = mha(r, y, y, key_padding_mask=float_pad, attn_mask=attn, need_weights=False)[0]
        assert torch.allclose(h((y, r, y), stored_pattern_padding_mask=float_pad, association_mask=attn), ref, atol=1e-6)
        with Probe(h, {"association_core.association": [entropy()]}):  # the explicit association path
            assert torch.allclose(h((y, r, y), stored_pattern_padding_mask=float_pad, association_mask=attn), ref,
                                  atol=1e-6)


def test_static_one_step_is_softmax_attention_by_hand():
    torch.manual_seed(0)
    y, r, v = (torch.randn(2, n, 16, dtype=torch.float64) for n in (10, 4, 10))
    h = Hopfield(scaling=0.7, **STATIC)
    assert list(h.parameters()) == []
    ref = torch.softmax(0.7 * r @ y.transpose(1, 2), -1) @ v
    assert torch.allclose(h((y, r, v)), ref, atol=1e-6)


def test_static_self_association_takes_one_tensor():
    """softmax(beta X X^T) X from h(X) alone, the paper's retrieval with every pattern static (it read the missing
    in_proj_weight and raised AttributeError; three separate tensors worked)."""
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    ref = torch.softmax(4.0 * x @ x.transpose(1, 2), -1) @ x
    h = Hopfield(scaling=4.0, **STATIC)
    assert torch.allclose(h(x), ref, atol=1e-12) and torch.allclose(h((x, x, x)), ref, atol=1e-12)


def test_a_parameter_scaling_is_a_learned_beta():
    """An nn.Parameter beta is trained and saved with the model (a tensor beta stays a fixed buffer; it was frozen
    silently, a detached copy, even when passed as a Parameter)."""
    beta = torch.nn.Parameter(torch.full((2,), 0.3))
    for steps in (0, 2):  # the one-step path (SDPA) and the iterated one
        h = Hopfield(input_size=8, num_heads=2, scaling=beta, update_steps_max=steps)
        assert h.association_core.scaling is beta and any(p is beta for p in h.parameters())
        assert "association_core.scaling" in h.state_dict()
        beta.grad = None
        h(torch.randn(3, 4, 8)).square().sum().backward()
        assert beta.grad is not None and beta.grad.abs().min() > 0
    with torch.no_grad():
        beta.fill_(5.0)
    assert h.scaling.tolist() == [5.0, 5.0]
    fixed = Hopfield(input_size=8, num_heads=2, scaling=torch.tensor([0.3, 0.3]))
    assert "association_core.scaling" not in fixed.state_dict() and not fixed.association_core.scaling.requires_grad


def test_per_head_scaling_and_default_beta():
    assert Hopfield(input_size=64, num_heads=4).association_core.scaling == pytest.approx(1 / 4)
    torch.manual_seed(0)
    beta = torch.tensor([0.5, 2.0])
    h = Hopfield(input_size=8, num_heads=2, scaling=beta, **NO_NORMS)
    x = torch.randn(2, 5, 8)
    xi = h.get_association_matrix(x)
    w, b = h.association_core.in_proj_weight, h.association_core.in_proj_bias
    q, k = (F.linear(x, w[i * 8:(i + 1) * 8], b[i * 8:(i + 1) * 8]).view(2, 5, 2, 4).transpose(1, 2) for i in (0, 1))
    assert torch.allclose(xi, (beta.view(1, 2, 1, 1) * q @ k.transpose(-1, -2)).softmax(-1), atol=1e-6)
    assert torch.allclose(h(x), h.association_core(x, x, x, need_association=True)[0], atol=1e-6)
    # beta is kept in the parameters' dtype: a float64 model keeps 0.1 exactly, not rounded through float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        exact = Hopfield(input_size=8, num_heads=2, scaling=torch.tensor([0.1, 3]))
    finally:
        torch.set_default_dtype(default)
    assert exact.association_core.scaling.tolist() == [0.1, 3.0]
    assert Hopfield(input_size=8, num_heads=2, scaling=torch.tensor([1, 2])).association_core.scaling.dtype == default
    h.double()  # .double() moves beta with the parameters; both paths stay in float64
    assert h.association_core.scaling.dtype == torch.float64
    out = h(x.double())
    assert out.dtype == torch.float64
    assert torch.allclose(out, h.association_core(*[x.double()] * 3, need_association=True)[0], atol=1e-12)


def test_multi_step_equals_the_iterated_update_rule():
    """Values and gradients (the iteration is differentiable, as in training with update_steps_max > 0)."""
    torch.manual_seed(0)
    y = torch.randn(1, 12, 8, dtype=torch.float64, requires_grad=True)
    r = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    h = Hopfield(scaling=0.5, update_steps_max=3, update_steps_eps=1e-12, **STATIC)
    xi = r
    for _ in range(3):  # xi <- softmax(beta xi Y^T) Y, then the retrieval with the final association
        xi = torch.softmax(0.5 * xi @ y.transpose(1, 2), -1) @ y
    ref = torch.softmax(0.5 * xi @ y.transpose(1, 2), -1) @ y
    out = h((y, r, y))
    assert torch.allclose(out, ref, atol=1e-10)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weights).sum(), (y, r))
    for got, want in zip(grads, torch.autograd.grad((ref * weights).sum(), (y, r))):
        assert torch.allclose(got, want, atol=1e-10)


def test_update_steps_eps_stops_the_iteration_once_the_change_is_small():
    """With update_steps_max=50 the loop stops at the first update whose change is below update_steps_eps: the
    output is the iterated rule run n times, n smaller for a looser eps, and all 50 times for eps = 1e-300."""
    torch.manual_seed(0)
    y, r = torch.randn(1, 12, 8, dtype=torch.float64), torch.randn(1, 3, 8, dtype=torch.float64)
    refs, xi = [], r
    for _ in range(51):  # refs[n]: retrieval after n updates of xi <- softmax(beta xi Y^T) Y
        refs.append(torch.softmax(0.5 * xi @ y.transpose(1, 2), -1) @ y)
        xi = torch.softmax(0.5 * xi @ y.transpose(1, 2), -1) @ y
    steps = {}
    for eps in (1e-1, 1e-4, 1e-300):
        out = Hopfield(scaling=0.5, update_steps_max=50, update_steps_eps=eps, **STATIC)((y, r, y))
        steps[eps] = next(n for n, ref in enumerate(refs) if torch.allclose(out, ref, rtol=0, atol=1e-12))
    assert 0 < steps[1e-1] < steps[1e-4] < 50
    assert torch.allclose(Hopfield(scaling=0.5, update_steps_max=50, update_steps_eps=1e-300, **STATIC)((y, r, y)),
                          refs[50], rtol=0, atol=1e-12)


def test_dropout_on_the_association_acts_in_training_only():
    torch.manual_seed(0)
    h = Hopfield(input_size=16, num_heads=2, dropout=0.5)
    x = torch.randn(2, 5, 16)
    h.train()
    assert not torch.equal(h(x), h(x))
    h.eval()
    assert torch.equal(h(x), h(x))
    with pytest.raises(ValueError, match="dropout"):
        Hopfield(input_size=16, dropout=1.0)


def test_energy_never_increases_and_the_fixed_point_is_reached():
    torch.manual_seed(0)
    y = torch.randn(1, 20, 6, dtype=torch.float64)
    r = torch.randn(1, 8, 6, dtype=torch.float64)
    beta = 0.8
    states = [r] + [Hopfield(scaling=beta, update_steps_max=n, update_steps_eps=1e-300, **STATIC)((y, r, y))
                    for n in range(12)]
    energies = torch.stack([hopfield_energy(s[0], y[0], beta) for s in states])  # (steps, 8)
    assert (energies[1:] - energies[:-1] <= 1e-12).all()
    assert (energies[0] - energies[-1]).min() > 0
    fixed = Hopfield(scaling=beta, update_steps_max=None, update_steps_eps=1e-10, **STATIC)((y, r, y))
    again = torch.softmax(beta * fixed @ y.transpose(1, 2), -1) @ y
    assert (again - fixed).abs().max() < 1e-8


def test_energy_equals_eq_2_by_hand_and_is_never_negative():
    """E = -1/beta log sum_i exp(beta x_i^T xi) + xi^T xi / 2 + ln(N) / beta + M^2 / 2 (Ramsauer et al. eq. 2), for
    x_1 = (1, 0), x_2 = (0, 2), xi = (1, 1), beta = 0.5; and E >= (|xi| - M)^2 / 2 >= 0 for any xi."""
    stored = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    by_hand = -2 * math.log(math.exp(0.5) + math.exp(1.0)) + 1.0 + 2 * math.log(2) + 2.0
    assert hopfield_energy(torch.tensor([1.0, 1.0], dtype=torch.float64), stored, 0.5).item() == pytest.approx(by_hand, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    xi, y = torch.randn(64, 5, generator=g, dtype=torch.float64) * 3, torch.randn(7, 5, generator=g, dtype=torch.float64)
    energy = hopfield_energy(xi, y, 0.7)
    assert (energy >= 0.5 * (xi.norm(dim=-1) - y.norm(dim=-1).max()) ** 2 - 1e-12).all()


def test_energy_of_the_layers_batch_layout_pairs_each_state_with_its_own_stored_set():
    """States (B, L, d) against stored sets (B, N, d), as the layers take them: state[b, l] with stored[b] (it was
    paired with stored[l] when B == L, and an error otherwise); (B, d) states, one per set, as before."""
    g = torch.Generator().manual_seed(0)
    state, stored = torch.randn(2, 2, 8, generator=g), torch.randn(2, 50, 8, generator=g)
    by_row = torch.stack([torch.stack([hopfield_energy(state[b, l], stored[b], 0.5) for l in range(2)])
                          for b in range(2)])
    torch.testing.assert_close(hopfield_energy(state, stored, 0.5), by_row)
    wider = torch.randn(3, 5, 8, generator=g)
    assert hopfield_energy(wider, torch.randn(3, 50, 8, generator=g), 0.5).shape == (3, 5)
    torch.testing.assert_close(hopfield_energy(state[:, 0], stored, 0.5), by_row[:, 0])
    with pytest.raises(ValueError, match=r"state must be \(\.\.\., d\) or \(\.\.\., L, d\) for stored"):
        hopfield_energy(torch.randn(2, 2, 2, 8), stored, 0.5)


def test_large_beta_retrieves_a_stored_pattern_in_one_update():
    torch.manual_seed(0)
    x = torch.randn(1, 100, 64, dtype=torch.float64)  # well separated: Delta_i = x_i^T x_i - max_j x_i^T x_j >> 0
    query = x[:, :10] + 0.1 * torch.randn(1, 10, 64, dtype=torch.float64)
    out = Hopfield(scaling=8.0, **STATIC)((x, query, x))
    assert (out - x[:, :10]).norm(dim=-1).max() < 1e-6


def test_small_beta_gives_the_global_average_and_medium_beta_a_metastable_state():
    torch.manual_seed(0)
    x = torch.randn(1, 50, 16, dtype=torch.float64)
    out = Hopfield(scaling=1e-6, **STATIC)((x, torch.randn(1, 4, 16, dtype=torch.float64), x))
    assert (out - x.mean(1, keepdim=True)).abs().max() < 1e-4
    # two tight clusters far apart: an intermediate beta averages within the query's cluster only
    centres = torch.zeros(2, 16, dtype=torch.float64)
    centres[0, 0], centres[1, 1] = 10.0, 10.0
    clusters = (centres[:, None] + 0.05 * torch.randn(2, 10, 16, dtype=torch.float64)).reshape(1, 20, 16)
    out = Hopfield(scaling=0.5, **STATIC)((clusters, centres[None, :1], clusters))
    assert (out[0, 0] - clusters[0, :10].mean(0)).abs().max() < 1e-2


def test_storage_capacity_grows_exponentially_with_dimension():
    # N = 256 * 2^((d-32)/16) random +-1 patterns (256, 1024, 16384), queries with 20% of the bits flipped, one update with beta = 1
    torch.manual_seed(0)
    h = Hopfield(scaling=1.0, **STATIC)
    accuracy = {}
    for d in (32, 64, 128):
        n = 256 * 2 ** ((d - 32) // 16)
        x = torch.randint(0, 2, (1, n, d)).float() * 2 - 1
        q = x[:, :200].clone()
        flip = torch.rand(200, d).argsort(1)[:, : d // 5]
        q[0].scatter_(1, flip, -q[0].gather(1, flip))
        accuracy[d] = (torch.sign(h((x, q, x))) == x[:, :200]).all(-1).float().mean().item()
        assert n > 50 * 0.14 * d  # far beyond the classical limit
    assert min(accuracy.values()) >= 0.9, accuracy
    # the classical Hopfield net (Hebbian weights, sign update) fails already at N = d, even for stored patterns
    x = torch.randint(0, 2, (64, 64)).float() * 2 - 1
    w = (x.T @ x / 64).fill_diagonal_(0)
    assert (torch.sign(x @ w) == x).all(-1).float().mean().item() < 0.1


def test_association_is_built_only_when_a_probe_asks(monkeypatch):
    torch.manual_seed(0)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(hopfield_core.F, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    h = Hopfield(input_size=32, num_heads=2)
    x = torch.randn(4, 10, 32)
    plain = h(x)
    assert calls == [1]
    with Probe(h, {"association_core.association": [entropy()]}) as probe:
        probed = h(x)
    assert calls == [1]  # the explicit path ran instead
    assert torch.allclose(plain, probed, atol=1e-6)
    rows = probe.table()
    xi = h.get_association_matrix(x)
    assert xi.shape == (4, 2, 10, 10) and torch.allclose(xi.sum(-1), torch.ones(4, 2, 10))
    expected = -(xi * xi.log()).sum(-1).mean().item()
    assert rows[0]["value"] == pytest.approx(expected, rel=1e-5)
    assert rows[0]["value"] < math.log(10)


def test_pooling_ignores_padded_instances_and_layer_shapes():
    torch.manual_seed(0)
    pool = HopfieldPooling(input_size=16, quantity=2, num_heads=2).eval()
    bag = torch.randn(1, 5, 16)
    padded = torch.cat([bag, torch.randn(1, 3, 16)], 1)
    mask = torch.tensor([[False] * 5 + [True] * 3])
    assert pool(bag).shape == (1, 32)
    assert torch.allclose(pool(padded, stored_pattern_padding_mask=mask), pool(bag), atol=1e-6)
    weights = pool.get_association_matrix(padded, stored_pattern_padding_mask=mask)
    assert weights.shape == (1, 2, 2, 8) and weights[..., 5:].abs().max() == 0
    additive = torch.zeros(mask.shape).masked_fill(mask, float("-inf"))  # 0 / -inf, as nn.MultiheadAttention takes
    for steps in (0, 2):  # one update (SDPA) and the iterated path
        iterated = HopfieldPooling(input_size=16, quantity=2, num_heads=2, update_steps_max=steps).eval()
        iterated.load_state_dict(pool.state_dict())
        assert torch.allclose(iterated(padded, stored_pattern_padding_mask=additive),
                              iterated(padded, stored_pattern_padding_mask=mask), atol=1e-6)
    length_first = HopfieldPooling(input_size=16, quantity=2, num_heads=2, batch_first=False)
    length_first.load_state_dict(pool.state_dict() | {"pooling_weights": pool.pooling_weights.transpose(0, 1)})
    assert torch.allclose(length_first.eval()(bag.transpose(0, 1)), pool(bag), atol=1e-6)
    layer = HopfieldLayer(input_size=16, quantity=6, lookup_weights_as_separated=True, output_size=3)
    assert layer(torch.randn(4, 2, 16)).shape == (4, 2, 3)
    assert layer.get_association_matrix(torch.randn(4, 2, 16)).shape == (4, 1, 2, 6)


def test_a_fully_padded_state_retrieves_zeros_on_every_path():
    """All stored patterns of one item padded: the fused SDPA path and the explicit path (probed, or iterated)
    both retrieve zeros for it, with finite gradients, and the other items are untouched."""
    torch.manual_seed(0)
    h = Hopfield(input_size=8, num_heads=2, disable_out_projection=True)
    x = torch.randn(3, 5, 8, requires_grad=True)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[1], pad[0, :2] = True, True
    fused = h(x, stored_pattern_padding_mask=pad)
    with Probe(h, {"association_core.association": [entropy()]}):  # forces the explicit association
        explicit = h(x, stored_pattern_padding_mask=pad)
    assert fused[1].abs().max() == 0 and explicit[1].abs().max() == 0
    assert torch.allclose(fused, explicit, atol=1e-6)
    iterated = Hopfield(input_size=8, num_heads=2, disable_out_projection=True, update_steps_max=3)
    iterated.load_state_dict(h.state_dict())
    out = iterated(x, stored_pattern_padding_mask=pad)
    out.sum().backward()
    assert out[1].abs().max() == 0 and torch.isfinite(x.grad).all()


def test_bad_inputs_are_named():
    h = Hopfield(input_size=8, num_heads=2)
    with pytest.raises(ValueError, match=r"pattern must be a floating tensor with 8 features, got torch.float32 \(2, 3, 7\)"):
        h(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match=r"stored_pattern_padding_mask must be a bool \(True = padded\) or float"):
        h(torch.randn(2, 3, 8), stored_pattern_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"or float \(added\) tensor of shape \(B, S\)=\(2, 3\), got torch.int64"):
        h(torch.randn(2, 3, 8), stored_pattern_padding_mask=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"association_mask must have shape \(L, S\)=\(3, 3\)"):
        h(torch.randn(2, 3, 8), association_mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Hopfield(input_size=10, num_heads=3)
    with pytest.raises(ValueError, match="update_steps_max"):
        Hopfield(input_size=8, update_steps_max=-1)
    with pytest.raises(ValueError, match="one entry per head"):
        Hopfield(input_size=8, num_heads=2, scaling=torch.ones(3))
    with pytest.raises(TypeError, match="tuple \\(stored_pattern, state_pattern, pattern_projection\\)"):
        h((torch.randn(2, 3, 8), torch.randn(2, 3, 8)))


def test_a_non_finite_state_pattern_gives_nan_on_the_fused_path_too():
    """SDPA's CPU kernel returns 0 for a query row holding NaN; the update rule gives NaN, and so does the layer
    on either path, so a bad input never reads as a plausible zero."""
    torch.manual_seed(0)
    core = HopfieldCore(16, num_heads=2).eval()
    q, k = torch.randn(1, 5, 16), torch.randn(1, 5, 16)
    q[0, 0, 0] = float("nan")
    fused, eager = core(q, k, k)[0], core(q, k, k, need_association=True)[0]
    assert fused[0, 0].isnan().all() and eager[0, 0].isnan().all()
    assert torch.allclose(fused[0, 1:], eager[0, 1:], atol=1e-6)
    layer = HopfieldLayer(16, quantity=3, num_heads=2).eval()
    x = torch.randn(1, 4, 16)
    x[0, 2, 5] = float("nan")
    out = layer(x)
    assert out[0, 2].isnan().all() and torch.isfinite(out[0, [0, 1, 3]]).all()


def test_masks_of_float_zeros_and_ones_and_integer_patterns_are_refused():
    """A float mask is added to the scores, so a 0/1 float padding mask would mask nothing: an error pointing at
    .bool(); an additive mask with -inf still works. Integer patterns are named too."""
    h = Hopfield(input_size=16).eval()
    y = torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match=r"stored_pattern_padding_mask holds only 0 and 1 as floats.*\.bool\(\)"):
        h(y, stored_pattern_padding_mask=torch.tensor([[0., 0, 0, 1, 1]]))
    with pytest.raises(ValueError, match=r"association_mask holds only 0 and 1 as floats"):
        h(y, association_mask=torch.eye(5))
    additive = h(y, stored_pattern_padding_mask=torch.tensor([[0., 0, 0, float("-inf"), float("-inf")]]))
    assert torch.allclose(additive, h(y, stored_pattern_padding_mask=torch.tensor([[False, False, False, True, True]])),
                          atol=1e-6)
    with pytest.raises(ValueError, match=r"must be a floating tensor with 16 features, got torch.int64"):
        h(torch.ones(1, 5, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must be a floating tensor of shape \(batch, length, 16\), got torch.int64"):
        HopfieldCore(16, num_heads=2)(*[torch.ones(1, 5, 16, dtype=torch.long)] * 3)


def test_one_step_path_never_materialises_the_association_matrix():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if torch.is_tensor(t):
                    self.largest = max(self.largest, t.numel())
            return out

    h = Hopfield(input_size=64, num_heads=4)
    x = torch.randn(2, 512, 64, requires_grad=True)
    association = 2 * 4 * 512 * 512
    with Largest() as plain:
        h(x).sum().backward()
    with Probe(h, {"association_core.association": [entropy()]}), Largest() as probed:
        h(x).sum().backward()
    assert plain.largest < association / 10  # forward and backward stay O(L * d)
    assert probed.largest == association


def test_lookup_targets_are_their_own_parameter_and_trainable_only_when_asked():
    """lookup_weights_as_separated adds ``target_weights``, a parameter apart from ``lookup_weights``, that
    ``lookup_targets_as_trainable`` alone freezes or not (``trainable`` freezes only the stored patterns); it is
    the pattern projection, of ``pattern_projection_size`` when given, and gets gradient only when trainable."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    for targets_trainable in (True, False):
        layer = HopfieldLayer(8, quantity=4, lookup_weights_as_separated=True,
                              lookup_targets_as_trainable=targets_trainable)
        assert layer.target_weights is not layer.lookup_weights and layer.target_weights.shape == (1, 4, 8)
        assert layer.lookup_weights.requires_grad and layer.target_weights.requires_grad == targets_trainable
        assert {n for n, p in layer.named_parameters() if n.endswith("_weights")} == {"lookup_weights",
                                                                                      "target_weights"}
        layer(x).sum().backward()
        assert layer.lookup_weights.grad.abs().sum() > 0
        assert (layer.target_weights.grad is not None) == targets_trainable
    frozen_stored = HopfieldLayer(8, quantity=4, trainable=False, lookup_weights_as_separated=True)
    assert not frozen_stored.lookup_weights.requires_grad and frozen_stored.target_weights.requires_grad
    shared = HopfieldLayer(8, quantity=4, lookup_targets_as_trainable=False)  # no separate targets: flag unused
    assert shared.target_weights is None and "target_weights" not in shared.state_dict()
    wide = HopfieldLayer(8, quantity=4, lookup_weights_as_separated=True, pattern_projection_size=6)
    assert wide.target_weights.shape == (1, 4, 6) and wide(x).shape == (2, 3, 8)


def test_separated_targets_are_the_pattern_projection_and_the_lookup_weights_the_stored_patterns():
    """With separate targets the layer is Hopfield((lookup_weights, input, target_weights)): the association
    depends on the lookup weights only, and the retrieved values on the targets (not on the lookup weights again)."""
    torch.manual_seed(0)
    layer = HopfieldLayer(8, quantity=5, num_heads=2, lookup_weights_as_separated=True).eval()
    x = torch.randn(3, 4, 8)
    stored, targets = layer.lookup_weights.expand(3, -1, -1), layer.target_weights.expand(3, -1, -1)
    assert torch.allclose(layer(x), layer.hopfield((stored, x, targets)), atol=1e-6)
    association = layer.get_association_matrix(x)
    out = layer(x)
    with torch.no_grad():
        layer.target_weights.mul_(-3.0)
    assert torch.equal(layer.get_association_matrix(x), association)  # the targets are not the stored patterns
    assert (layer(x) - out).abs().max() > 1e-3  # but they are what is retrieved
    shared = HopfieldLayer(8, quantity=5, num_heads=2).eval()
    stored = shared.lookup_weights.expand(3, -1, -1)
    assert torch.allclose(shared(x), shared.hopfield((stored, x, stored)), atol=1e-6)


def test_wrappers_refuse_fewer_than_one_learned_pattern_and_pool_with_each_of_quantity_queries():
    """quantity is the number of learned state patterns (pooling) or stored patterns (lookup): 0 or less is a named
    error, not an empty table; HopfieldPooling's output is the quantity retrievals side by side, each that of its
    own learned query."""
    for wrapper in (HopfieldPooling, HopfieldLayer):
        for bad in (0, -2):
            with pytest.raises(ValueError, match=rf"{wrapper.__name__}: quantity must be >= 1, got {bad}"):
                wrapper(8, quantity=bad)
    torch.manual_seed(0)
    pool = HopfieldPooling(8, quantity=3, num_heads=2, output_size=5).eval()
    y = torch.randn(2, 6, 8)
    out = pool(y)
    assert out.shape == (2, 15)
    for i in range(3):
        query = pool.pooling_weights[:, i:i + 1].expand(2, -1, -1)
        assert torch.allclose(out[:, 5 * i:5 * (i + 1)], pool.hopfield((y, query, y))[:, 0], atol=1e-6)


@pytest.mark.parametrize("pattern", ["stored_pattern", "state_pattern", "pattern_projection"])
def test_an_affine_norm_without_the_norm_is_refused(pattern):
    """normalize_X_affine=True with normalize_X=False (the affine default left on) is refused as hflayers refuses it,
    naming the flag to set; with both off there is no LayerNorm at all."""
    with pytest.raises(ValueError, match=rf"normalize_{pattern}_affine=True needs normalize_{pattern}=True"):
        Hopfield(input_size=8, **{f"normalize_{pattern}": False})
    h = Hopfield(input_size=8, **{f"normalize_{pattern}": False, f"normalize_{pattern}_affine": False})
    assert getattr(h, f"norm_{pattern}") is None
    plain = Hopfield(input_size=8, **{f"normalize_{pattern}_affine": False})
    norm = getattr(plain, f"norm_{pattern}")
    assert isinstance(norm, torch.nn.LayerNorm) and not norm.elementwise_affine


def test_a_static_state_pattern_is_normalised_at_the_hidden_width():
    """A static state pattern skips W_Q and enters in the hidden space, so its LayerNorm is hidden_size wide:
    HopfieldPooling(16, hidden_size=8, state_pattern_as_static=True) computes
    Z = softmax(LN(q) K^T / sqrt(8)) V W_O^T + b_O with K, V the projected LayerNorm'd instances, by hand
    (hflayers' input_size-wide LayerNorm fails on this configuration)."""
    torch.manual_seed(0)
    pool = HopfieldPooling(16, hidden_size=8, state_pattern_as_static=True)
    assert pool.pooling_weights.shape == (1, 1, 8)
    assert pool.hopfield.norm_state_pattern.normalized_shape == (8,)
    y = torch.randn(3, 5, 16)
    h, core = pool.hopfield, pool.hopfield.association_core
    w_k, w_v = core.in_proj_weight.split(8)
    b_k, b_v = core.in_proj_bias.split(8)
    q = h.norm_state_pattern(pool.pooling_weights)
    k = h.norm_stored_pattern(y) @ w_k.T + b_k
    v = h.norm_pattern_projection(y) @ w_v.T + b_v
    z = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, -1) @ v @ core.out_proj.weight.T + core.out_proj.bias
    torch.testing.assert_close(pool(y), z.flatten(1))


def _iterated_reference(beta: float, stored: torch.Tensor, state: torch.Tensor, eps: float, steps_max: int):
    """The documented loop for one head: xi <- softmax(beta (xi Y) Y^T), stopped after the first update whose
    association change (Frobenius norm over (L, S), largest over the batch) is <= eps; returns (retrieval, steps)."""
    xi = torch.softmax(beta * state @ stored.transpose(1, 2), -1)
    for step in range(1, steps_max + 1):
        new = torch.softmax(beta * (xi @ stored) @ stored.transpose(1, 2), -1)
        change = (new - xi).norm(dim=(1, 2)).max()
        xi = new
        if change <= eps:
            break
    return xi @ stored, step


def test_iteration_stops_per_head_and_on_the_largest_change_in_the_batch():
    """update_steps_eps is checked per head, on the largest Frobenius-norm change over the batch: with beta 1 and 2
    on two heads (static patterns, so each head is a single-head layer of its beta), the beta-2 head stops after 8
    updates (item 0 alone would stop after 2; the max-abs change would stop it after 7) while the beta-1 head runs
    on to 18, and each head's output is its own single-head layer's."""
    torch.manual_seed(0)
    y, r = torch.randn(2, 12, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    eps = 9e-4
    out = Hopfield(scaling=torch.tensor([1.0, 2.0]), num_heads=2, update_steps_max=40, update_steps_eps=eps,
                   **STATIC).double()((y, r, y))
    assert out.shape == (2, 3, 16)
    for head, (beta, steps) in enumerate(((1.0, 18), (2.0, 8))):
        ref, taken = _iterated_reference(beta, y, r, eps, 40)
        assert taken == steps
        assert torch.allclose(out[..., 8 * head:8 * (head + 1)], ref, rtol=0, atol=1e-12)
        single = Hopfield(scaling=beta, update_steps_max=40, update_steps_eps=eps, **STATIC)((y, r, y))
        assert torch.allclose(out[..., 8 * head:8 * (head + 1)], single, rtol=0, atol=1e-12)
    assert _iterated_reference(2.0, y[:1], r[:1], eps, 40)[1] == 2  # item 0 alone would stop after 2 updates,
    early, _ = _iterated_reference(2.0, y[1:], r[1:], eps, 2)  # where item 1 is still far from its fixed point
    assert (out[1:, :, 8:] - early).abs().max() > 1e-3


def test_pattern_size_is_the_per_head_width_of_the_retrieved_values():
    """pattern_size sets W_V's per-head width apart from hidden_size (hflayers' separate layout): v_proj_weight
    (H * pattern_size, vdim), out_proj (output, H * pattern_size), Z computed by hand; a static pattern projection
    then enters at pattern_size, with its LayerNorm that wide, and another width is a named error."""
    torch.manual_seed(0)
    h = Hopfield(input_size=12, hidden_size=4, pattern_size=6, num_heads=2, output_size=5, **NO_NORMS)
    sd = h.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "association_core.q_proj_weight": (8, 12), "association_core.k_proj_weight": (8, 12),
        "association_core.v_proj_weight": (12, 12), "association_core.in_proj_bias": (28,),
        "association_core.out_proj.weight": (5, 12), "association_core.out_proj.bias": (5,)}
    sd = hflayers_state({k: tuple(v.shape) for k, v in sd.items()})  # away from the zero biases of a fresh layer
    h.load_state_dict(sd, strict=True)
    y, r = torch.randn(3, 7, 12), torch.randn(3, 4, 12)
    b = sd["association_core.in_proj_bias"]
    heads = lambda x, d: x.view(3, -1, 2, d).transpose(1, 2)  # noqa: E731
    q = heads(F.linear(r, sd["association_core.q_proj_weight"], b[:8]), 4)
    k = heads(F.linear(y, sd["association_core.k_proj_weight"], b[8:16]), 4)
    v = heads(F.linear(y, sd["association_core.v_proj_weight"], b[16:]), 6)
    z = ((q @ k.transpose(-1, -2)) / 2.0).softmax(-1) @ v
    z = F.linear(z.transpose(1, 2).reshape(3, 4, 12), sd["association_core.out_proj.weight"],
                 sd["association_core.out_proj.bias"])
    assert torch.allclose(h((y, r, y)), z, atol=1e-6)
    static = Hopfield(input_size=12, hidden_size=4, pattern_size=6, num_heads=2, pattern_projection_as_static=True)
    assert static.norm_pattern_projection.normalized_shape == (6,)
    assert static((y, r, torch.randn(3, 7, 6))).shape == (3, 4, 12)
    with pytest.raises(ValueError, match=r"pattern projection must be a floating tensor of shape \(batch, length, 6"):
        static.association_core(r, y, torch.randn(3, 7, 12))


def test_every_pattern_static_with_the_output_projection_kept():
    """All three patterns static but the output projection on: nothing but W_O, b_O is learned (no unused
    in_proj_bias), beta is 1/sqrt(hidden) and Z = W_O softmax(beta R Y^T) P + b_O."""
    torch.manual_seed(0)
    h = Hopfield(input_size=8, stored_pattern_as_static=True, state_pattern_as_static=True,
                 pattern_projection_as_static=True, **NO_NORMS)
    assert {k: tuple(v.shape) for k, v in h.state_dict().items()} == {
        "association_core.out_proj.weight": (8, 8), "association_core.out_proj.bias": (8,)}
    y, r, p = torch.randn(2, 6, 8), torch.randn(2, 3, 8), torch.randn(2, 6, 8)
    w_o = h.association_core.out_proj
    assert torch.allclose(h((y, r, p)), w_o(torch.softmax(r @ y.transpose(1, 2) / math.sqrt(8), -1) @ p), atol=1e-6)


def test_fresh_projections_are_normal_0_02_and_biases_zero_as_hflayers_initialises_them():
    torch.manual_seed(0)
    for h in (Hopfield(input_size=256, num_heads=4), Hopfield(input_size=256, stored_pattern_size=128, num_heads=4)):
        core = h.association_core
        weights = [w for w in (core.in_proj_weight, getattr(core, "q_proj_weight", None),
                               getattr(core, "k_proj_weight", None), getattr(core, "v_proj_weight", None),
                               core.out_proj.weight) if w is not None]
        assert len(weights) in (2, 4)
        for w in weights:
            assert w.std().item() == pytest.approx(0.02, rel=0.05) and w.mean().abs().item() < 0.001
        assert core.in_proj_bias.abs().max() == 0 and core.out_proj.bias.abs().max() == 0


def test_each_layer_norm_takes_its_own_eps():
    """normalize_*_eps reach their own LayerNorm: with eps 0.5, 2 and 8 (large against the unit-variance
    inputs) the layer equals the core applied to F.layer_norm of each input with its eps."""
    torch.manual_seed(0)
    eps = dict(normalize_stored_pattern_eps=0.5, normalize_state_pattern_eps=2.0, normalize_pattern_projection_eps=8.0)
    h = Hopfield(input_size=8, num_heads=2, **eps)
    with torch.no_grad():
        h.association_core.in_proj_weight.normal_()  # scores of order 1, so that K's scale shows in the output
    y, r = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    ln = lambda x, e: F.layer_norm(x, (8,), eps=e)  # noqa: E731 (the fresh affine LayerNorms are the identity map)
    expected = h.association_core(ln(r, 2.0), ln(y, 0.5), ln(y, 8.0))[0]
    assert torch.allclose(h((y, r, y)), expected, atol=1e-6)


def test_association_dropout_is_inverted_dropout_on_both_paths():
    """Dropout on the association matrix (one update through SDPA, or the explicit iterated path): in training
    each draw differs, and the mean over many draws is the evaluation output (kept entries scaled by 1/(1-p))."""
    torch.manual_seed(0)
    y, r = torch.randn(1, 6, 4, dtype=torch.float64), torch.randn(1, 2, 4, dtype=torch.float64)
    ys, rs = y.expand(4000, -1, -1), r.expand(4000, -1, -1)
    for steps in (0, 2):
        h = Hopfield(scaling=0.7, dropout=0.5, update_steps_max=steps, **STATIC)
        expected = h.eval()((y, r, y))
        draws = h.train()((ys, rs, ys))
        assert (draws[1:] - draws[:1]).abs().amax() > 0.1
        assert (draws.mean(0) - expected[0]).abs().max() < 0.1
        assert (draws.std(0) > 0.1).all()
        assert torch.equal(h.eval()((ys, rs, ys))[:2], expected.expand(2, -1, -1))
    # dropout acts on the association (its rows), not on the retrieved features: with all-ones values every
    # output row is constant, on the SDPA path, the iterated one and the one a probe forces explicit
    ones = torch.ones(8, 6, 4, dtype=torch.float64)
    for steps, probed in ((0, False), (0, True), (2, False)):
        h = Hopfield(scaling=0.7, dropout=0.5, update_steps_max=steps, **STATIC).train()
        if probed:
            with Probe(h, {"association_core.association": [entropy()]}):
                out = h((ones, rs[:8], ones))
        else:
            out = h((ones, rs[:8], ones))
        assert torch.equal(out.amax(-1), out.amin(-1)), (steps, probed)
    assert HopfieldCore(8).update_steps_eps == 1e-4  # hflayers' default, also when the core is used alone


def test_additive_masks_of_zeros_mask_nothing_and_of_minus_inf_keep_gradients_finite():
    """An all-zero float mask is a valid additive mask that forbids nothing (the layer equals the unmasked one, as
    nn.MultiheadAttention does); an additive -inf padding mask that pads every stored pattern of an item gives
    zeros for it on the explicit path, with finite gradients for the other items' inputs and weights."""
    torch.manual_seed(0)
    h = Hopfield(input_size=8, num_heads=2, update_steps_max=2).eval()
    x = torch.randn(3, 5, 8, requires_grad=True)
    zeros = torch.zeros(3, 5)
    assert torch.allclose(h(x, stored_pattern_padding_mask=zeros), h(x), atol=1e-6)
    assert torch.allclose(h(x, association_mask=torch.zeros(5, 5)), h(x), atol=1e-6)
    pad = torch.zeros(3, 5)
    pad[1], pad[0, 3:] = float("-inf"), float("-inf")
    out = h(x, stored_pattern_padding_mask=pad)
    bool_pad = torch.isinf(pad)
    assert torch.allclose(out, h(x, stored_pattern_padding_mask=bool_pad), atol=1e-6)
    out.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0].abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in h.parameters())


def test_layer_settings_and_batch_mismatches_are_named():
    """num_heads 0 and update_steps_eps 0 (the loop could never stop on None) are refused when built; a state
    pattern whose batch differs from the stored patterns' is named instead of broadcast."""
    with pytest.raises(ValueError, match=r"num_heads must be >= 1, got 0"):
        Hopfield(input_size=8, num_heads=0)
    with pytest.raises(ValueError, match=r"update_steps_eps must be > 0, got 0"):
        Hopfield(input_size=8, update_steps_eps=0.0)
    h = Hopfield(input_size=8, num_heads=2)
    with pytest.raises(ValueError, match=r"must share \(batch, length\), and the state pattern \(1, 4, 8\) the batch"):
        h((torch.randn(3, 5, 8), torch.randn(1, 4, 8), torch.randn(3, 5, 8)))


def test_wrapper_flags_layouts_and_tuple_inputs():
    """HopfieldLayer length-first equals batch-first on transposed input; its lookup patterns take
    stored_pattern_size (with a pattern projection, which they also are, of that size); HopfieldPooling's tuple
    is (stored_pattern, pattern_projection) in that order; trainable=False freezes the learned patterns;
    association matrices come back without autograd history."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8)  # batch 3, length 5: a swapped expand shows
    first = HopfieldLayer(8, quantity=4, num_heads=2).eval()
    length_first = HopfieldLayer(8, quantity=4, num_heads=2, batch_first=False).eval()
    length_first.load_state_dict(first.state_dict() | {"lookup_weights": first.lookup_weights.transpose(0, 1)})
    assert torch.allclose(length_first(x.transpose(0, 1)).transpose(0, 1), first(x), atol=1e-6)
    narrow = HopfieldLayer(8, quantity=3, stored_pattern_size=5, pattern_projection_size=5)
    assert narrow.lookup_weights.shape == (1, 3, 5) and narrow(x).shape == (3, 5, 8)
    pool = HopfieldPooling(8, quantity=2, num_heads=2).eval()
    stored, projection = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    query = pool.pooling_weights.expand(3, -1, -1)
    assert torch.allclose(pool((stored, projection)), pool.hopfield((stored, query, projection)).flatten(1), atol=1e-6)
    for frozen in (HopfieldPooling(8, trainable=False), HopfieldLayer(8, trainable=False)):
        weights = frozen.pooling_weights if isinstance(frozen, HopfieldPooling) else frozen.lookup_weights
        assert not weights.requires_grad
        frozen(x).sum().backward()
        assert weights.grad is None
        assert not frozen.get_association_matrix(x).requires_grad


def test_lookup_targets_take_the_pattern_projection_width_and_a_shared_table_of_another_width_is_refused():
    """The separate targets are the pattern projection, so they take its width (input_size, or
    pattern_projection_size), not the stored patterns' (stored_pattern_size): they used to be 5 wide here and the
    first forward failed on the 8-wide projection LayerNorm. Without separate targets the lookup table is both, so
    differing widths are refused when the layer is built, naming the two ways out."""
    torch.manual_seed(0)
    layer = HopfieldLayer(8, quantity=3, stored_pattern_size=5, lookup_weights_as_separated=True)
    assert layer.lookup_weights.shape == (1, 3, 5) and layer.target_weights.shape == (1, 3, 8)
    x = torch.randn(2, 4, 8)
    stored, targets = layer.lookup_weights.expand(2, -1, -1), layer.target_weights.expand(2, -1, -1)
    torch.testing.assert_close(layer(x), layer.hopfield((stored, x, targets)))
    wide = HopfieldLayer(8, quantity=3, stored_pattern_size=5, pattern_projection_size=6,
                         lookup_weights_as_separated=True)
    assert wide.target_weights.shape == (1, 3, 6) and wide(x).shape == (2, 4, 8)
    assert HopfieldLayer(8, quantity=3, stored_pattern_size=5, pattern_projection_size=5)(x).shape == (2, 4, 8)
    with pytest.raises(ValueError, match=r"lookup weights \(5 wide\) are also the pattern projection, which this "
                                         r"layer takes 8 wide; give pattern_projection_size=5"):
        HopfieldLayer(8, quantity=3, stored_pattern_size=5)


def test_until_converged_gives_up_with_a_warning_where_rounding_stops_convergence():
    """update_steps_max=None with an eps below float32's rounding (the change levels off near 1e-8) never
    returned; now it stops after UNTIL_CONVERGED_MAX updates with a warning that names eps. An eps it reaches
    returns as before, without one."""
    torch.manual_seed(0)
    x, r = torch.randn(4, 200, 32), torch.randn(4, 20, 32)
    reached = Hopfield(scaling=0.1, update_steps_max=None, update_steps_eps=1e-5, **STATIC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reached((x, r, x))
    stuck = Hopfield(scaling=0.1, update_steps_max=None, update_steps_eps=1e-9, **STATIC)
    with pytest.warns(RuntimeWarning, match=r"stopped after 1000 updates .* > update_steps_eps=1e-09; an eps near "
                                            r"torch.float32's rounding is never reached"):
        out = stuck((x, r, x))
    assert torch.isfinite(out).all() and hopfield_core.UNTIL_CONVERGED_MAX == 1000
