import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

import zoo
from estimators import Probe
from estimators.estimator import Estimator
from layers import PVRNNLayer, SkewedStack, gaussian_kl, stack_recurrence
from train.data.pfsm import branch_probability, pfsm_sequences
from weights import load_checkpoint, save_checkpoint

from .conftest import killed_at_call, train_losses


def tiny(**kw):
    torch.manual_seed(0)
    return zoo.create_model("pvrnn_small", **({"n_sequences": 4, "seq_len": 30} | kw))


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mu_q, mu_p = torch.randn(50), torch.randn(50)
    s_q, s_p = torch.rand(50) + 0.1, torch.rand(50) + 0.1
    expected = kl_divergence(Normal(mu_q, s_q), Normal(mu_p, s_p))
    assert torch.allclose(gaussian_kl(mu_q, s_q.log(), mu_p, s_p.log()), expected, atol=1e-5)


def test_leaky_integration_one_step_by_hand():
    torch.manual_seed(0)
    layer = PVRNNLayer(d_size=3, z_size=2, tau=4.0, top_size=5, bottom_size=2)
    h, d, z, top, bottom = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 2), torch.randn(2, 5), torch.randn(2, 2)
    drive = d @ layer.W_dd.weight.T + layer.W_dd.bias + z @ layer.W_zd.weight.T + top @ layer.W_top.weight.T \
        + bottom @ layer.W_bottom.weight.T
    h_new = 0.75 * h + 0.25 * drive
    got_h, got_d = layer.step(h, d, z, top, bottom)
    assert torch.allclose(got_h, h_new, atol=1e-6) and torch.allclose(got_d, torch.tanh(h_new), atol=1e-6)
    with pytest.raises(ValueError, match="top-down"):
        layer.step(h, d, z, None, bottom)


def test_prior_and_posterior_maps():
    torch.manual_seed(0)
    layer = PVRNNLayer(4, 3, 2.0)
    d = torch.randn(5, 4)
    mu, s = layer.prior(d)
    assert torch.allclose(mu, torch.tanh(layer.W_mu(d))) and torch.allclose(s, torch.exp(layer.W_sigma(d)))
    mu0, s0 = layer.prior(d, first=True)
    assert torch.equal(mu0, torch.zeros(5, 3)) and torch.equal(s0, torch.ones(5, 3))
    a = torch.randn(5, 3)
    mq, sq = layer.posterior(a, -a)
    assert torch.allclose(mq, torch.tanh(a)) and torch.allclose(sq, torch.exp(-a))


def test_first_step_prior_is_unit_gaussian_and_kl_is_closed_form():
    m = tiny()
    with torch.no_grad():
        for a in list(m.A_mu) + list(m.A_sigma):
            a.normal_(0, 0.5)
        out = m(torch.tensor([0, 2]), steps=10)
    for k, lvl in enumerate(out["levels"]):
        assert torch.equal(lvl["prior_mu"][:, 0], torch.zeros_like(lvl["prior_mu"][:, 0]))
        assert torch.equal(lvl["prior_sigma"][:, 0], torch.ones_like(lvl["prior_sigma"][:, 0]))
        mu, s = torch.tanh(m.A_mu[k][[0, 2], 0]), torch.exp(m.A_sigma[k][[0, 2], 0])
        kl0 = (0.5 * (mu ** 2 + s ** 2 - 1) - torch.log(s)).sum(-1)  # KL(N(mu, s^2) || N(0, 1))
        assert torch.allclose(lvl["kl"][:, 0], kl0, atol=1e-5)
        assert (lvl["prior_sigma"][:, 1:] != 1).any()  # later priors come from d_{t-1}


def test_elbo_terms_hand_computed_one_level_two_steps():
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=[1], z_sizes=[1], taus=[2.0], meta_prior=[0.5], n_sequences=1,
                         seq_len=2, out_size=1)
    L = m.levels[0]
    with torch.no_grad():
        for lin, (w, b) in {L.W_dd: (0.5, 0.1), L.W_mu: (1.0, 0.0), L.W_sigma: (2.0, -1.0), m.out: (3.0, 0.2)}.items():
            lin.weight.fill_(w)
            lin.bias.fill_(b)
        L.W_zd.weight.fill_(1.5)
        m.A_mu[0].copy_(torch.tensor([[[0.3], [-0.2]]]))
        m.A_sigma[0].copy_(torch.tensor([[[-1.0], [0.5]]]))
    x = torch.tensor([[[0.4], [-0.1]]])
    out = m(torch.tensor([0]), noise=False)
    rec, kl = m.elbo_terms(out, x)
    # by hand: z_t = tanh(A^mu_t); h_t = h/2 + (0.5 d + 0.1 + 1.5 z)/2; x_t = 3 d_t + 0.2
    z1, z2 = math.tanh(0.3), math.tanh(-0.2)
    h1 = 0.5 * (0.1 + 1.5 * z1)
    d1 = math.tanh(h1)
    h2 = 0.5 * h1 + 0.5 * (0.5 * d1 + 0.1 + 1.5 * z2)
    d2 = math.tanh(h2)
    rec_hand = ((3 * d1 + 0.2 - 0.4) ** 2 + (3 * d2 + 0.2 + 0.1) ** 2) / 2

    def kl_hand(mq, sq, mp, sp):
        return math.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5
    kl1 = kl_hand(z1, math.exp(-1.0), 0.0, 1.0)
    kl2 = kl_hand(z2, math.exp(0.5), math.tanh(d1), math.exp(2 * d1 - 1))
    assert rec.item() == pytest.approx(rec_hand, rel=1e-5)
    assert kl.shape == (1, 2, 1)
    assert kl.mean().item() == pytest.approx((kl1 + kl2) / 2, rel=1e-5)
    assert m.weighted(rec, kl).item() == pytest.approx(rec_hand + 0.5 * (kl1 + kl2) / 2, rel=1e-5)


def test_elbo_normalisation_with_several_outputs_levels_and_z_units():
    """Two levels with R_z = (3, 2) z units, R_x = 2 outputs, T = 5: the reconstruction is the squared error summed
    over outputs and steps divided by T R_x, and level k's KL (torch.distributions, per z unit) summed over units
    and steps divided by T R_z^k; the objective weights level k by w_k."""
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(4, 3), z_sizes=(3, 2), taus=(2.0, 4.0), meta_prior=(0.3, 0.05),
                         n_sequences=2, seq_len=5, out_size=2)
    with torch.no_grad():
        for a in list(m.A_mu) + list(m.A_sigma):
            a.normal_(0, 0.5)
    x = torch.randn(2, 5, 2)
    out = m(torch.arange(2), noise=False)
    rec, kl = m.elbo_terms(out, x)
    torch.testing.assert_close(rec, (out["x"] - x).square().sum((1, 2)) / (5 * 2))
    for k, (lvl, R_z) in enumerate(zip(out["levels"], (3, 2))):
        per_unit = kl_divergence(Normal(lvl["post_mu"], lvl["post_sigma"]), Normal(lvl["prior_mu"], lvl["prior_sigma"]))
        assert per_unit.shape == (2, 5, R_z)
        torch.testing.assert_close(kl[..., k], per_unit.sum(-1) / R_z)
    torch.testing.assert_close(m.weighted(rec, kl), rec + 0.3 * kl[..., 0].mean(1) + 0.05 * kl[..., 1].mean(1))


def test_first_step_meta_prior_weights_only_the_first_steps_kl():
    """meta_prior_first = w1: the objective is rec + (1/T) sum_k [w1_k kl_0k + w_k sum_{t>0} kl_tk] (KL per latent
    unit), so only the first step's KL changes weight; w1 = w gives the default objective, and the reported KL parts
    stay unweighted means."""
    ids, x = torch.arange(3), torch.randn(3, 30, 2)
    m = tiny(meta_prior=(0.3, 0.05), meta_prior_first=(2.0, 0.0))
    with torch.no_grad():
        for a in list(m.A_mu) + list(m.A_sigma):
            a.normal_(0, 0.5)
    torch.manual_seed(3)
    loss, parts = m.loss(ids, x)
    torch.manual_seed(3)  # the same z noise
    out = m(ids)
    rec = (out["x"] - x).square().mean((1, 2))
    per_unit = [lvl["kl"] / z for lvl, z in zip(out["levels"], (2, 1))]  # (B, T) per level
    hand = rec + sum((w1 * kl[:, 0] + w * kl[:, 1:].sum(1)) / 30
                     for kl, w, w1 in zip(per_unit, (0.3, 0.05), (2.0, 0.0)))
    torch.testing.assert_close(loss, hand.mean())
    torch.testing.assert_close(parts["kl_0"], per_unit[0].mean())
    rec_, kl = m.elbo_terms(out, x)  # a window that starts later in the stream (first=False) weights every step by w
    torch.testing.assert_close(m.weighted(rec_, kl, first=False),
                               rec + sum(w * k.mean(1) for k, w in zip(per_unit, (0.3, 0.05))))
    same = tiny(meta_prior=(0.3, 0.05), meta_prior_first=(0.3, 0.05))
    default = tiny(meta_prior=(0.3, 0.05))
    same.load_state_dict(m.state_dict())
    default.load_state_dict(m.state_dict())
    losses = []
    for model in (same, default):
        torch.manual_seed(3)
        losses.append(model.loss(ids, x)[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    assert not torch.allclose(loss, losses[0])


def test_loss_falls_on_a_short_run():
    x, _ = pfsm_sequences(4, 30, period=10, noise=0.02, seed=0)
    m = tiny()
    opt = torch.optim.Adam(m.parameters(), lr=2e-2)
    ids = torch.arange(4)
    losses = []
    for _ in range(100):
        loss, extra = m.loss(ids, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(extra["rec"])
    assert losses[-1] < 0.4 * losses[0]
    assert ((m.reconstruct(ids) - x) ** 2).mean() < 0.4 * losses[0]


def test_error_regression_reduces_window_error_and_touches_only_the_window():
    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    stream, _ = pfsm_sequences(3, 16, period=10, seed=1)
    torch.manual_seed(0)
    r = m.error_regression(stream, window=6, iterations=15, lr=0.1, horizon=2)
    S = 16 - 6 - 2 + 1
    assert r["prediction"].shape == (3, S, 2, 2) and r["error"].shape == (3, S)
    assert [p.shape for p in r["post_sigma"]] == [(3, S, 2), (3, S, 1)]
    assert (r["window_error_after"] < r["window_error_before"]).float().mean() > 0.9
    assert r["window_error_after"].mean() < 0.95 * r["window_error_before"].mean()
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and training sequences' adaptive vectors untouched
    assert all(p.grad is None for p in m.parameters())
    no_iter = m.error_regression(stream, window=6, iterations=0, horizon=2)
    assert torch.allclose(no_iter["window_error_after"], no_iter["window_error_before"])
    with pytest.raises(ValueError, match="window"):
        m.error_regression(stream, window=20, iterations=1)


@pytest.mark.parametrize("noise", [False, True])
def test_skewed_generation_matches_level_by_level_steps(noise):
    """Generation in the skewed stack (SkewedStack.run_prior) equals the differentiable level-by-level prior
    path in fp64 for a three-level stack, with and without the first step's N(0, I), with the same noise."""
    from zoo.pvrnn import join_state

    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(6, 5, 4), z_sizes=(3, 2, 1), taus=(2.0, 4.0, 8.0),
                         meta_prior=(0.1, 0.01, 0.001)).double()
    B, T = 2, 7
    state = [(0.3 * torch.randn(B, n, dtype=torch.float64), 0.3 * torch.randn(B, n, dtype=torch.float64))
             for n in (6, 5, 4)]
    for first in (True, False):
        torch.manual_seed(3)
        ref = m._stepped_prior(T, state, first, noise)
        eps = None
        if noise:  # the stepped path's draws: per step, top level first
            torch.manual_seed(3)
            draws = [[torch.randn(B, z, dtype=torch.float64) for z in (1, 2, 3)] for _ in range(T)]
            eps = torch.stack([torch.cat(step[::-1], -1) for step in draws], 1)
        with torch.no_grad():
            stack = SkewedStack(m.packed(), T, B)
            got = stack.run_prior(*join_state(state), first, eps)
        for name in ("z", "prior_mu", "prior_sigma"):
            expected = torch.cat([lvl[name] for lvl in ref["levels"]], -1)
            torch.testing.assert_close(got[name], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stack.d(), torch.cat([lvl["d"] for lvl in ref["levels"]], -1),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(stack.state_at(T - 1)[0], torch.cat([h for h, _ in ref["state"]], -1),
                                   rtol=1e-12, atol=1e-12)
    if not noise:
        torch.testing.assert_close(m.unroll(T, state, True, noise=False)["x"],
                                   m._stepped_prior(T, state, True, False)["x"], rtol=1e-12, atol=1e-12)


def test_adam_step_equals_torch_adam():
    from zoo.pvrnn import adam_step

    torch.manual_seed(0)
    p_ref = torch.randn(3, 4, requires_grad=True)
    opt = torch.optim.Adam([p_ref], lr=0.05)
    p, m, v = p_ref.detach().clone(), torch.zeros(3, 4), torch.zeros(3, 4)
    for step in range(1, 6):
        g = torch.randn(3, 4)
        p_ref.grad = g.clone()
        opt.step()
        adam_step(p, g, m, v, step, lr=0.05)
        torch.testing.assert_close(p, p_ref.detach(), rtol=0, atol=1e-7)


def test_window_solver_buffers_carry_nothing_between_calls():
    """A WindowGradient reused (as error regression reuses it) gives what a fresh one gives, for every input."""
    m = tiny().double()
    with torch.no_grad():
        packed = m.packed()
    B, W, Z = 2, 5, 3
    g = torch.Generator().manual_seed(1)
    args = [(0.5 * torch.randn(B, W, 2 * Z, generator=g, dtype=torch.float64),
             torch.randn(B, W, Z, generator=g, dtype=torch.float64),
             0.3 * torch.randn(B, 30, generator=g, dtype=torch.float64),
             0.3 * torch.randn(B, 30, generator=g, dtype=torch.float64), first,
             torch.randn(B, W, 2, generator=g, dtype=torch.float64)) for first in (True, False, True)]
    reused = m.window_solver(packed, W, B)
    for a in args:
        value, grad = reused(*a, value=True)
        value_ref, grad_ref = m.window_solver(packed, W, B)(*a, value=True)
        assert torch.equal(grad, grad_ref) and torch.equal(value, value_ref)
        err = reused.mean_pass(a[0], a[2], a[3], a[5])
        assert torch.equal(err, m.window_solver(packed, W, B).mean_pass(a[0], a[2], a[3], a[5]))


def test_error_regression_with_bottom_up_weights():
    """Models with bottom-up weights run error regression level by level with autograd's gradient (SteppedWindow)
    and agree with the skewed path's interface: shapes, falling window error, committed states."""
    m = tiny(bottom_up=True)
    stream, _ = pfsm_sequences(2, 12, period=10, seed=1)
    torch.manual_seed(0)
    r = m.error_regression(stream, window=5, iterations=10, lr=0.1)
    assert r["prediction"].shape == (2, 7, 1, 2)
    assert r["window_error_after"].mean() < 0.95 * r["window_error_before"].mean()
    no_iter = m.error_regression(stream, window=5, iterations=0)
    assert torch.allclose(no_iter["window_error_after"], no_iter["window_error_before"])


@pytest.mark.parametrize("bottom_up", [False, True])
def test_error_regression_predictions_never_see_the_observations_they_predict(bottom_up):
    """Changing the stream from step k on leaves every output of the steps whose window ends before k (t < k)
    bit-identical, the prediction of x_k included: only its error, scored against x_k, changes."""
    m, k = tiny(bottom_up=bottom_up), 9
    stream, _ = pfsm_sequences(2, 14, period=10, seed=3)
    changed = stream.clone()
    changed[:, k:] += 5.0
    runs = []
    for s in (stream, changed):
        torch.manual_seed(0)
        runs.append(m.error_regression(s, window=4, iterations=3))
    ends = torch.arange(runs[0]["error"].shape[1]) + 4 - 1  # window end t of each step
    before = ends < k
    for key in ("prediction", "window_error_before", "window_error_after"):
        assert torch.equal(runs[0][key][:, before], runs[1][key][:, before]), key
    assert not torch.equal(runs[0]["error"][:, ends == k - 1], runs[1]["error"][:, ends == k - 1])  # x_k is scored


@pytest.mark.parametrize("bottom_up", [False, True])
def test_error_regression_is_not_recorded_by_a_probe(bottom_up):
    """A probe watching training does not see error regression's window passes (the bottom-up path runs them
    through the model's unroll, where they were recorded and then broke the probe with mixed shapes)."""
    from estimators import Probe, effective_rank

    m = tiny(bottom_up=bottom_up)
    stream, _ = pfsm_sequences(1, 12, period=10, seed=1)
    with Probe(m, {"levels.0.kl": [effective_rank()], "x_hat": [effective_rank()]}, every=1) as probe:
        m.error_regression(stream, window=4, iterations=3)
        assert probe.rows == [] and not any(probe._buffers.values())
        m(torch.arange(4))  # the model's own forward is still recorded
    assert {r["point"] for r in probe.rows} == {"levels.0.kl", "x_hat"}


def test_error_regression_is_independent_across_streams():
    m = tiny()
    stream, _ = pfsm_sequences(2, 12, period=10, seed=2)
    torch.manual_seed(0)
    both = m.error_regression(stream, window=5, iterations=0)
    one = m.error_regression(stream[1:], window=5, iterations=0)
    assert torch.allclose(both["prediction"][1:], one["prediction"], atol=1e-6)
    # with iterations (sampled z, Adam): changing stream 0 leaves everything of stream 1 unchanged, bit for bit,
    # when the noise draws are the same (same seed, same batch shape)
    other = stream.clone()
    other[0] = torch.flip(stream[0], (0,)) + 0.3
    runs = []
    for s in (stream, other):
        torch.manual_seed(1)
        runs.append(m.error_regression(s, window=5, iterations=4, lr=0.05))
    assert not torch.equal(runs[0]["window_error_after"][0], runs[1]["window_error_after"][0])
    for key in ("prediction", "error", "window_error_before", "window_error_after"):
        assert torch.equal(runs[0][key][1], runs[1][key][1]), key
    for key in ("post_mu", "post_sigma"):
        assert all(torch.equal(x[1], y[1]) for x, y in zip(runs[0][key], runs[1][key])), key


def _er_run(m, stream, seed=0, **kw):
    torch.manual_seed(seed)
    return m.error_regression(stream, **({"window": 4, "iterations": 3} | kw))


def _assert_same_er(got, ref, **tol):
    for key, value in ref.items():
        for a, b in zip(got[key], value) if isinstance(value, list) else [(got[key], value)]:
            torch.testing.assert_close(a, b, **tol, msg=key)


@pytest.mark.parametrize("bottom_up", [False, True])
def test_bf16_autocast_gives_float32_results(bottom_up):
    """Under CPU bf16 autocast (what train.precision bf16, and auto on Ampere GPUs, wraps the loss in) the model
    computes in float32: loss and gradients, error regression, generation and the Lyapunov map equal float32's
    (before: a dtype TypeError in stack_recurrence, out= dtype errors in WindowGradient, lerp dtype errors)."""
    m = tiny(bottom_up=bottom_up, seq_len=12)
    ids, x = torch.arange(3), pfsm_sequences(3, 12, period=6, seed=0)[0]
    stream = pfsm_sequences(2, 9, period=6, seed=1)[0]
    runs = []
    for enabled in (False, True):
        m.zero_grad()
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            loss, _ = m.loss(ids, x)
            er = _er_run(m, stream)
            gen = m.generate(2, 5)
            step = m.prior_mean_map(torch.ones(2, sum(m.config.d_sizes)))
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        runs.append((loss, [p.grad.clone() for p in m.parameters()], er, gen, step))
    (loss, grads, er, gen, step), (loss_ac, grads_ac, er_ac, gen_ac, step_ac) = runs
    torch.testing.assert_close(loss_ac, loss)
    for a, b in zip(grads_ac, grads):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
    _assert_same_er(er_ac, er)
    torch.testing.assert_close(gen_ac, gen)
    torch.testing.assert_close(step_ac, step)


@pytest.mark.parametrize("bottom_up", [False, True])
def test_error_regression_inside_inference_mode(bottom_up):
    """Error regression called under torch.inference_mode, on a stream made there, equals the ordinary call (the
    bottom-up window gradient needs autograd: before, 'element 0 of tensors does not require grad')."""
    m = tiny(bottom_up=bottom_up)
    stream = pfsm_sequences(2, 9, period=6, seed=1)[0]
    ref = _er_run(m, stream)
    with torch.inference_mode():
        got = _er_run(m, stream.clone())
    _assert_same_er(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("bottom_up", [False, True])
def test_error_regression_of_a_half_precision_model_runs_in_float32(bottom_up):
    """A float16 model's error regression (before: NaN, Adam's eps 1e-8 is 0 in float16) runs in a float32 copy of
    it: finite, the results in float16, equal to the float32 model with the same (rounded) weights."""
    m = tiny(bottom_up=bottom_up).half()
    stream = pfsm_sequences(2, 9, period=6, seed=1)[0]
    got = _er_run(m, stream, iterations=5)
    ref = _er_run(tiny(bottom_up=bottom_up).half().float(), stream, iterations=5)
    assert got["error"].dtype == torch.float16 and all(torch.isfinite(v).all() for v in got.values()
                                                          if torch.is_tensor(v))
    _assert_same_er(got, {k: [x.half() for x in v] if isinstance(v, list) else v.half() for k, v in ref.items()},
                    rtol=0, atol=0)
    assert next(m.parameters()).dtype == torch.float16 and m._probing


@pytest.mark.parametrize("bottom_up", [False, True])
def test_empty_batch_gives_empty_results(bottom_up):
    """No sequence ids, or no streams, give empty outputs (before: an error about the internal SkewedStack); only
    the loss, which is a mean over the batch, refuses an empty batch."""
    m = tiny(bottom_up=bottom_up, seq_len=12)
    out = m(torch.arange(0))
    assert out["x"].shape == (0, 12, 2) and out["kl"].shape == (0, 12, 2)
    assert [tuple(h.shape) for h, _ in out["state"]] == [(0, 20), (0, 10)]
    er = m.error_regression(torch.zeros(0, 9, 2), window=4, iterations=2, horizon=2)
    assert er["prediction"].shape == (0, 4, 2, 2) and [p.shape for p in er["post_mu"]] == [(0, 4, 2), (0, 4, 1)]
    with pytest.raises(ValueError, match="empty batch"):
        m.loss(torch.arange(0), torch.zeros(0, 12, 2))


def test_generation_shapes_and_probe_points():
    m = tiny()
    torch.manual_seed(0)
    g = m.generate(3, 25)
    assert g.shape == (3, 25, 2) and torch.isfinite(g).all()
    assert not torch.allclose(g[0], g[1])  # stochastic prior samples differ
    assert torch.allclose(m.generate(2, 10, noise=False)[0], m.generate(2, 10, noise=False)[1])
    with Probe(m, {"levels.*.kl": [Estimator("mean", lambda x: x.mean())]},
               every=1) as probe:
        out = m(torch.arange(2), steps=10)
    rows = {(r["point"], r["estimator"]): r["value"] for r in probe.table()}
    for k in range(2):
        assert rows[(f"levels.{k}.kl", "mean")] == pytest.approx(out["levels"][k]["kl"].mean().item(), rel=1e-5)
    names = {n for n, _ in m.named_modules()}
    for k in range(2):
        for p in ("d", "z", "prior_mu", "prior_sigma", "post_mu", "post_sigma", "kl"):
            assert f"levels.{k}.{p}" in names


def test_checkpoint_round_trip_keeps_adaptive_vectors(tmp_path):
    m = tiny()
    with torch.no_grad():
        m.A_mu[0].normal_()
        m.A_sigma[1].normal_(0, 0.3)
    save_checkpoint(m, tmp_path / "pv.safetensors")
    m2 = load_checkpoint(tmp_path / "pv.safetensors")
    assert torch.equal(m2.A_mu[0], m.A_mu[0]) and torch.equal(m2.A_sigma[1], m.A_sigma[1])
    assert torch.equal(m2.reconstruct(torch.arange(4)), m.reconstruct(torch.arange(4)))
    w1 = tiny(meta_prior_first=[0.5, 0.0])
    save_checkpoint(w1, tmp_path / "w1.safetensors")
    assert load_checkpoint(tmp_path / "w1.safetensors").config.meta_prior_first == (0.5, 0.0)


def test_bad_input_is_named():
    m = tiny()
    with pytest.raises(ValueError, match="empty batch"):  # not a NaN mean
        m.loss(torch.arange(0), torch.zeros(0, 10, m.config.out_size))
    packed = m.packed()
    N = sum(packed.d_sizes)
    with pytest.raises(TypeError, match="share a dtype"):
        stack_recurrence(packed, torch.zeros(1, 4, N, dtype=torch.float64), torch.zeros(1, N), torch.zeros(1, N))
    with pytest.raises(ValueError, match="T >= 1"):
        stack_recurrence(packed, torch.zeros(1, 0, N), torch.zeros(1, N), torch.zeros(1, N))
    with pytest.raises(ValueError, match="T >= 1 steps"):
        SkewedStack(packed, 0, 2)
    stack = SkewedStack(packed, 4, 1)  # its runs need no autograd context of their own
    stack.run(torch.zeros(1, 4, N), torch.zeros(1, N), torch.zeros(1, N))
    assert stack.d().shape == (1, 4, N)
    with pytest.raises(ValueError, match="sequence ids"):
        m(torch.tensor([7]))
    with pytest.raises(ValueError, match="x must have shape"):
        m.loss(torch.arange(2), torch.zeros(2, 10, 3))
    T = m.config.seq_len  # longer than the training sequences: named as x's length, not as an unroll's `steps`
    with pytest.raises(ValueError, match=rf"with 1 <= T <= seq_len={T} .*, got \(2, {T + 1}, 2\)"):
        m.loss(torch.arange(2), torch.zeros(2, T + 1, m.config.out_size))
    with pytest.raises(ValueError, match="one entry per level"):
        zoo.create_model("pvrnn_small", taus=[2.0])
    for steps in (0, -1, 5.0):
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            m.generate(3, steps)
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        m.generate(0, 5)
    stream = torch.zeros(1, 12, m.config.out_size)
    with pytest.raises(ValueError, match="must be integers"):
        m.error_regression(stream, window=5.0, iterations=2)
    for lr in (float("nan"), -0.1, "0.1", True):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            m.error_regression(stream, window=5, iterations=2, lr=lr)
    gap = stream.clone()
    gap[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="stream must be real and finite, got 1 NaN/inf values"):
        m.error_regression(gap, window=5, iterations=2)
    # a bool is an int to Python, and a float or list is not what the loops index with
    with pytest.raises(ValueError, match="must be integers"):
        m.error_regression(stream, window=True, iterations=2)
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, seq_len=30\], got 5.0"):
        m(torch.arange(2), steps=5.0)
    with pytest.raises(ValueError, match="batch must be an integer >= 1, got True"):
        m.generate(True, 5)
    with pytest.raises(TypeError, match="ids must be a 1-D integer tensor of sequence ids, got list"):
        m([0, 1])
    with pytest.raises(TypeError, match=r"stream must be a \(B, T, out_size\) tensor, got list"):
        m.error_regression(stream.tolist(), window=5, iterations=2)
    with pytest.raises(ValueError, match=r"state must hold \(h, d\) per level with d_sizes"):
        m.unroll(3, m.initial_state(2)[:1], first=True)
    for bad in ({"meta_prior": [float("nan"), 0.1]}, {"meta_prior": [float("inf"), 0.1]},
                {"meta_prior_first": [0.1, -1.0]}, {"meta_prior_first": [0.1, float("nan")]},
                {"taus": [float("nan"), 2.0]}):
        with pytest.raises(ValueError, match="meta_prior >= 0|tau >= 1"):  # both gave a NaN loss
            zoo.create_model("pvrnn_small", **bad)
    with pytest.raises(ValueError, match=r"meta_prior_first when given\) need one entry per level.*"
                                         r"'meta_prior_first': 3"):
        zoo.create_model("pvrnn_small", meta_prior_first=[0.1, 0.1, 0.1])


def test_pfsm_data_has_the_set_branch_probability():
    x, labels = pfsm_sequences(200, 200, period=20, p_b=0.7, noise=0.05, seed=0)
    assert x.shape == (200, 200, 2) and (labels[:, :20] == 0).all()
    assert branch_probability(x, 20).item() == pytest.approx(0.7, abs=0.02)
    assert (labels[:, 20::40] > 0).all() and (labels[:, 40::40] == 0).all()  # A, then B or C, then A


def _recipe(*extra):
    from train import load_recipe
    return load_recipe("pvrnn-pfsm", ["model_args.n_sequences=6", "model_args.seq_len=40", "train.batch_size=6",
                                      "data.period=10", "task_args.er_streams=2", "task_args.er_length=20",
                                      "task_args.er_window=5", "task_args.er_iterations=2", "task_args.gen_steps=40",
                                      *extra])


def test_evaluation_scores_the_posterior_mean_reconstruction_and_lyapunov_starts_from_sampled_states(monkeypatch):
    """rec is the posterior-MEAN reconstruction of the training sequences (a sampled one scores the noise too), and
    the Lyapunov exponent averages 4 generated trajectories that differ (noise-free generation would give one
    state 4 times)."""
    from estimators import lyapunov
    from train.tasks import make_task

    task = make_task(_recipe())
    m = zoo.create_model("pvrnn_pfsm", n_sequences=6, seq_len=40).eval()
    with torch.no_grad():
        for a in m.A_sigma:
            a.fill_(0.5)  # sigma = e^0.5: a sample is far from the mean
    starts = []
    real = lyapunov.largest_lyapunov_exponent
    monkeypatch.setattr(lyapunov, "largest_lyapunov_exponent", lambda step, z0, **kw: starts.append(z0) or
                        real(step, z0, **kw))
    metrics = task.evaluate(m)
    with torch.no_grad():
        mean_rec = (m.reconstruct(torch.arange(6)) - task.train_x).square().mean()  # (1/T)(1/R_x) sum, averaged
    assert metrics["rec"] == pytest.approx(float(mean_rec), rel=1e-6)
    with torch.no_grad():
        sampled = m.elbo_terms(m(torch.arange(6), noise=True), task.train_x)[0].mean()
    assert abs(float(sampled) - metrics["rec"]) > 0.01
    assert len(starts) == 1 and starts[0].shape[0] == 4 and len({tuple(r.tolist()) for r in starts[0]}) == 4


def test_bad_error_regression_settings_fail_before_training():
    from train.tasks import make_task

    with pytest.raises(ValueError, match=r"task_args.er_window must lie in \[1, 19\] \(the 20 steps of "
                                         r"task_args.er_length less the predicted one\)"):
        make_task(_recipe("task_args.er_window=20"))


def test_task_batches_carry_sequence_ids():
    from train.tasks import make_task
    task = make_task(_recipe())
    g = torch.Generator().manual_seed(3)
    b = task.batch(4, g)
    assert b["ids"].shape == (4,) and len(set(b["ids"].tolist())) == 4
    assert torch.equal(b["x"], task.train_x[b["ids"]])
    assert torch.equal(task.batch(4, torch.Generator().manual_seed(3))["ids"], b["ids"])
    m = zoo.create_model("pvrnn_pfsm", n_sequences=6, seq_len=40)
    metrics = task.evaluate(m.eval())
    assert metrics["p_b_true"] == 0.7 and metrics["rec"] > 0 and math.isfinite(metrics["er_error"])
    with pytest.raises(ValueError, match="n_sequences"):
        task.batch(7, g)


def test_killed_and_resumed_run_equals_the_straight_run(tmp_path):
    """Minibatches of 2 of 6 sequences (sparse Adam rows), evaluations with sampled error regression: a run killed
    after its step-4 checkpoint and resumed has the straight run's losses, weights, adaptive vectors and metrics."""
    from train import fit
    from train.tasks.pvrnn import PVRNNTask

    recipe = _recipe("train.batch_size=2", "train.steps=8", "train.eval_every=4", "train.ckpt_every=4",
                     "train.log_every=1", "probe=null")
    fit(recipe, tmp_path / "straight")
    with killed_at_call(PVRNNTask, "loss", 6), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "resumed")
    fit(recipe, tmp_path / "resumed", resume=True)
    a, b = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert list(a) == list(range(1, 9)) and a == b
    ma, mb = (load_checkpoint(tmp_path / run / "model.safetensors").state_dict() for run in ("straight", "resumed"))
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert (tmp_path / "straight" / "metrics.jsonl").read_text() == (tmp_path / "resumed" / "metrics.jsonl").read_text()
    # killed while drawing the report (generation samples): the resumed run, with nothing left to train, draws the
    # same picture, since the report runs on the global RNG seeded from train.seed
    with killed_at_call(PVRNNTask, "report", 1), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "final")
    fit(recipe, tmp_path / "final", resume=True)
    assert (tmp_path / "straight" / "pvrnn.png").read_bytes() == (tmp_path / "final" / "pvrnn.png").read_bytes()


def test_minibatches_update_only_their_sequences_adaptive_vectors(tmp_path):
    """Sparse updates: with 2 of 6 sequences per step, a step changes only its batch's adaptive vectors. Adam's
    momentum would otherwise keep moving the vectors of the previous batch's sequences."""
    from train import fit
    from train.loop import _batch_generator
    from train.tasks import make_task

    recipe = _recipe("train.batch_size=2", "train.steps=1", "train.eval_every=0", "train.ckpt_every=0", "probe=null")
    task = make_task(recipe)
    first, second = (set(task.batch(2, _batch_generator(0, s))["ids"].tolist()) for s in (0, 1))
    assert first - second  # a sequence of step 1's batch that step 2 does not contain
    fit(recipe, tmp_path / "one")
    fit({**recipe, "train": {**recipe["train"], "steps": 2}}, tmp_path / "two")
    one, two = (load_checkpoint(tmp_path / run / "model.safetensors") for run in ("one", "two"))
    for a1, a2 in zip([*one.A_mu, *one.A_sigma], [*two.A_mu, *two.A_sigma]):
        changed = {i for i in range(6) if not torch.equal(a1[i], a2[i])}
        assert changed == second
        assert all(a1[i].abs().sum() == 0 for i in set(range(6)) - first)  # never in a batch: still 0
        assert all(a2[i].abs().sum() == 0 for i in set(range(6)) - first - second)


@pytest.mark.slow
def test_recipe_trains_and_reloads(tmp_path):
    from train import fit
    final = fit(_recipe("train.steps=150", "optim.lr=1e-2", "train.log_every=10"), out=tmp_path)
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert train[-1]["rec"] < 0.5 * train[0]["rec"]
    m = load_checkpoint(tmp_path / "model.safetensors")
    assert m.A_mu[0].abs().sum() > 0  # trained adaptive vectors came back
    assert final["rec"] < 0.5 * train[0]["rec"]


@pytest.mark.parametrize("d_sizes, T", [((40, 10), 30), ((6, 5, 4), 7), ((6, 5, 4), 1), ((7,), 5)])
def test_stack_recurrence_matches_stepping_integrate(d_sizes, T):
    """layers.stack_recurrence (skewed over levels, hand-written backward) equals stepping PVRNNLayer.integrate level
    by level under autograd (fp64): d, the final h, and the gradients of every weight, the drives and the initial
    state (d0 != tanh(h0), so idle levels must keep their state), through d and the final h. T = 1 with three levels
    has no step at which all levels run."""
    from layers import pack_levels, stack_recurrence

    torch.manual_seed(0)
    L = len(d_sizes)
    m = zoo.create_model("pvrnn_small", d_sizes=d_sizes, z_sizes=(1,) * L, taus=(2.0, 5.0, 9.0)[:L],
                         meta_prior=(0.1,) * L).double()
    B = 3
    u = [torch.randn(B, T, n, dtype=torch.float64, requires_grad=True) for n in d_sizes]
    h0 = [(0.3 * torch.randn(B, n, dtype=torch.float64)).requires_grad_() for n in d_sizes]
    d0 = [(0.3 * torch.randn(B, n, dtype=torch.float64)).requires_grad_() for n in d_sizes]

    def stepped():
        h, d, out = list(h0), list(d0), [[] for _ in range(L)]
        for t in range(T):
            for k in reversed(range(L)):
                h[k], d[k] = m.levels[k].integrate(h[k], d[k], u[k][:, t] - m.levels[k].W_dd.bias,
                                                   top=d[k + 1] if k + 1 < L else None)
                out[k].append(d[k])
        return torch.cat([torch.stack(o, 1) for o in out], -1), torch.cat(h, -1)

    def stacked():
        return stack_recurrence(pack_levels(m.levels), torch.cat(u, -1), torch.cat(h0, -1), torch.cat(d0, -1))

    inputs = [*m.parameters(), *u, *h0, *d0]
    w_d, w_h = torch.randn(B, T, sum(d_sizes), dtype=torch.float64), torch.randn(B, sum(d_sizes), dtype=torch.float64)
    results = []
    for run in (stepped, stacked):
        d, h = run()
        grads = torch.autograd.grad((d * w_d).sum() + (h * w_h).sum(), inputs, allow_unused=True)
        results.append((d, h, [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, inputs)]))
    (d_ref, h_ref, g_ref), (d_got, h_got, g_got) = results
    torch.testing.assert_close(d_got, d_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_got, h_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _reference_posterior_unroll(m, a_mu, a_sigma, eps, state, first):
    """The posterior unroll written level by level with PVRNNLayer's own maps (prior, posterior, step) and
    gaussian_kl: the packed, skewed implementation must reproduce it."""
    L, T = len(m.levels), a_mu.shape[1]
    splits = [x.split(m.config.z_sizes, -1) for x in (a_mu, a_sigma, eps)]
    h, d = [s[0] for s in state], [s[1] for s in state]
    xs, kls = [], []
    for t in range(T):
        new_d, kl_t = [None] * L, [None] * L
        for k in reversed(range(L)):
            layer = m.levels[k]
            mu_q, s_q = layer.posterior(splits[0][k][:, t], splits[1][k][:, t])
            mu_p, s_p = layer.prior(d[k], first and t == 0)
            z = mu_q + s_q * splits[2][k][:, t]
            kl_t[k] = gaussian_kl(mu_q, s_q.log(), mu_p, s_p.log()).sum(-1)
            bottom = d[k - 1] if layer.W_bottom is not None else None
            h[k], new_d[k] = layer.step(h[k], d[k], z, new_d[k + 1] if k + 1 < L else None, bottom)
        d = new_d
        xs.append(m.out(d[0]))
        kls.append(torch.stack(kl_t, -1))
    return torch.stack(xs, 1), torch.stack(kls, 1), h


@pytest.mark.parametrize("bottom_up", [False, True])
def test_posterior_unroll_matches_a_level_by_level_reference(bottom_up):
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(6, 5, 4), z_sizes=(3, 2, 1), taus=(2.0, 4.0, 8.0),
                         meta_prior=(0.1, 0.01, 0.001), bottom_up=bottom_up).double()
    B, T, Z = 2, 7, 6
    a_mu, a_sigma = 0.5 * torch.randn(B, T, Z, dtype=torch.float64), 0.5 * torch.randn(B, T, Z, dtype=torch.float64)
    state = [(0.3 * torch.randn(B, n, dtype=torch.float64), 0.3 * torch.randn(B, n, dtype=torch.float64))
             for n in (6, 5, 4)]
    for first in (True, False):
        torch.manual_seed(1)
        out = m.unroll(T, state, first, (a_mu, a_sigma), noise=True)
        torch.manual_seed(1)  # unroll draws its z noise with one randn_like
        x_ref, kl_ref, h_ref = _reference_posterior_unroll(m, a_mu, a_sigma, torch.randn_like(a_mu), state, first)
        torch.testing.assert_close(out["x"], x_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["kl"], kl_ref, rtol=1e-12, atol=1e-12)
        for (h, _), h_k in zip(out["state"], h_ref):
            torch.testing.assert_close(h, h_k, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("meta_prior_first", [None, (1.0, 0.0, 0.3)])
@pytest.mark.parametrize("bottom_up", [False, True])
def test_hand_written_window_gradient_equals_autograd(bottom_up, meta_prior_first):
    """window_objective_and_grad (layers.WindowGradient, no autograd) equals autograd through
    window_objective with the same z noise, in fp64, for a three-level stack, with and without the first step's
    unit-Gaussian prior and its own meta-prior w1 (bottom-up models take autograd's gradient by design)."""
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(6, 5, 4), z_sizes=(3, 2, 1), taus=(2.0, 4.0, 8.0),
                         meta_prior=(0.1, 0.01, 0.001), meta_prior_first=meta_prior_first, out_size=2,
                         bottom_up=bottom_up).double()
    B, W = 3, 6
    obs = torch.randn(B, W, 2, dtype=torch.float64)
    a = 0.5 * torch.randn(B, W, 12, dtype=torch.float64)
    state = [(0.3 * torch.randn(B, n, dtype=torch.float64), 0.3 * torch.randn(B, n, dtype=torch.float64))
             for n in (6, 5, 4)]
    with torch.no_grad():
        packed = m.packed()
    for first in (True, False):
        torch.manual_seed(5)
        value, grad = m.window_objective_and_grad(a, state, first, obs, packed)
        torch.manual_seed(5)
        a_ref = a.clone().requires_grad_()
        ref = m.window_objective(a_ref, state, first, obs, packed)
        g_ref, = torch.autograd.grad(ref, [a_ref])
        torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, g_ref, rtol=1e-10, atol=1e-12)


def test_error_regression_steps_are_torch_adam_on_the_window_objective():
    """One error-regression step equals torch.optim.Adam on window_objective from zero vectors (same noise)."""
    m = tiny()
    stream, _ = pfsm_sequences(2, 7, period=10, seed=4)
    torch.manual_seed(0)
    r = m.error_regression(stream, window=6, iterations=4, lr=0.05)
    a = torch.zeros(2, 6, 6, requires_grad=True)
    opt = torch.optim.Adam([a], lr=0.05)
    state = m.initial_state(2)
    torch.manual_seed(0)
    for _ in range(4):
        a.grad, = torch.autograd.grad(m.window_objective(a, state, True, stream[:, :6]), [a])
        opt.step()
    with torch.no_grad():
        x = m.unroll(6, state, True, a.chunk(2, -1), noise=False)["x"]
    after = ((x - stream[:, :6]) ** 2).mean((-1, -2))
    torch.testing.assert_close(r["window_error_after"][:, 0], after, rtol=1e-5, atol=1e-7)


def test_error_regression_over_several_slides_equals_autograd_adam_with_committed_states():
    """Several window slides, three levels, horizon 2, fp64: each step is torch.optim.Adam on window_objective
    from the state committed when the window slid (the oldest step at its posterior mean) with the new step's
    vectors at 0; predictions and window errors before and after the iterations agree to 1e-12."""
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(6, 5, 4), z_sizes=(3, 2, 1), taus=(2.0, 4.0, 8.0),
                         meta_prior=(0.1, 0.01, 0.001), n_sequences=4, seq_len=30).double()
    stream = torch.randn(2, 11, 2, dtype=torch.float64)
    W, K, H, lr, B, Z = 4, 3, 2, 0.05, 2, 6
    torch.manual_seed(7)
    r = m.error_regression(stream, window=W, iterations=K, lr=lr, horizon=H)
    torch.manual_seed(7)  # the same noise draws, in the same order
    a, state, first = torch.zeros(B, W, 2 * Z, dtype=torch.float64), m.initial_state(B), True
    ref = {"prediction": [], "window_error_before": [], "window_error_after": []}
    for t in range(W - 1, stream.shape[1] - H):
        obs = stream[:, t - W + 1:t + 1]
        with torch.no_grad():
            x = m.unroll(W, state, first, a.chunk(2, -1), noise=False)["x"]
        ref["window_error_before"].append(((x - obs) ** 2).mean((-1, -2)))
        a = a.clone().requires_grad_()
        opt = torch.optim.Adam([a], lr=lr)
        for _ in range(K):
            a.grad, = torch.autograd.grad(m.window_objective(a, state, first, obs), [a])
            opt.step()
        a = a.detach()
        with torch.no_grad():
            out = m.unroll(W, state, first, a.chunk(2, -1), noise=False)
            ref["window_error_after"].append(((out["x"] - obs) ** 2).mean((-1, -2)))
            ref["prediction"].append(m._stepped_prior(H, out["state"], False, False)["x"])
            oldest = m.unroll(1, state, first, tuple(v[:, :1] for v in a.chunk(2, -1)), noise=False)
        state, first = oldest["state"], False
        a = torch.cat([a[:, 1:], torch.zeros(B, 1, 2 * Z, dtype=a.dtype)], 1)
    assert r["prediction"].shape[1] == 6  # six slides
    for key, values in ref.items():
        torch.testing.assert_close(r[key], torch.stack(values, 1), rtol=1e-12, atol=1e-12)


def test_sequences_by_path_train_the_task_and_name_bad_files(tmp_path):
    """The second-data-set path (recipe pvrnn-robot): sequences from .npz/.npy, sizes checked against the model,
    error regression on the file's test streams (or on training sequences, then reported as er_error_train)."""

    from train import load_recipe
    from train.data.sequences import load_sequences
    from train.tasks import make_task

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(5, 24, 3)).astype(np.float32), rng.normal(size=(2, 16, 3)).astype(np.float32)
    np.savez(tmp_path / "seq.npz", train=train, test=test)
    np.save(tmp_path / "seq.npy", train)
    sizes = ["model_args.n_sequences=5", "model_args.seq_len=24", "model_args.out_size=3", "task_args.er_window=4",
             "task_args.er_iterations=2", "task_args.er_streams=2", "task_args.lyapunov_steps=20"]

    def recipe(path, *extra):
        return load_recipe("pvrnn-robot", [f"data.path={path}", *sizes, *extra])

    task = make_task(recipe(tmp_path / "seq.npz"))
    assert torch.equal(task.train_x, torch.from_numpy(train)) and torch.equal(task.test_x, torch.from_numpy(test))
    b = task.batch(3, torch.Generator().manual_seed(0))
    assert torch.equal(b["x"], task.train_x[b["ids"]])
    m = zoo.create_model("pvrnn_pfsm", n_sequences=5, seq_len=24, out_size=3)
    metrics = task.evaluate(m.eval())
    assert math.isfinite(metrics["er_error"]) and "p_b_generated" not in metrics
    only_train = make_task(recipe(tmp_path / "seq.npy"))
    assert torch.equal(only_train.test_x, torch.from_numpy(train[:2]))
    assert "er_error_train" in only_train.evaluate(m)

    with pytest.raises(FileNotFoundError, match="data.path"):
        make_task(recipe(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="model_args.n_sequences=5"):
        make_task(load_recipe("pvrnn-robot", [f"data.path={tmp_path / 'seq.npz'}"]))
    bad = train.copy()
    bad[0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match="NaN"):
        load_sequences(tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", train[0])
    with pytest.raises(ValueError, match="sequences, steps, dims"):
        load_sequences(tmp_path / "flat.npy")
    np.savez(tmp_path / "dims.npz", train=train, test=test[..., :2])
    with pytest.raises(ValueError, match="dims"):
        load_sequences(tmp_path / "dims.npz")
    np.save(tmp_path / "huge.npy", np.full((2, 3, 2), 1e39))  # finite in float64, inf in float32
    with pytest.raises(ValueError, match="beyond float32's range"):
        load_sequences(tmp_path / "huge.npy")
    (tmp_path / "cut.npy").write_bytes((tmp_path / "flat.npy").read_bytes()[:150])
    with pytest.raises(ValueError, match=r"sequence file .*cut.npy cannot be read \(ValueError: Failed to read"):
        load_sequences(tmp_path / "cut.npy")


def test_sequence_files_that_are_not_numeric_arrays_are_named(tmp_path, monkeypatch):
    """A directory, a pickled object array (.npy or .npz) or text get an error naming the path and what is expected
    (before: 'not found', or numpy's 'Object arrays cannot be loaded when allow_pickle=False'); ~ is expanded."""

    from train.data.sequences import load_sequences

    (tmp_path / "dir.npy").mkdir()
    with pytest.raises(IsADirectoryError, match=r"dir.npy is a directory; data.path must name a file, .npy \(N, T"):
        load_sequences(tmp_path / "dir.npy")
    ragged = np.empty(2, dtype=object)
    ragged[:] = [np.zeros((3, 2)), np.zeros((4, 2))]
    np.save(tmp_path / "ragged.npy", ragged, allow_pickle=True)
    np.savez(tmp_path / "ragged.npz", train=ragged)
    for name in ("ragged.npy", "ragged.npz"):
        with pytest.raises(ValueError, match=f"{name} holds an object array.*save the sequences as numbers"):
            load_sequences(tmp_path / name)
    np.save(tmp_path / "text.npy", np.full((2, 3, 1), "a"))
    with pytest.raises(ValueError, match="text.npy: 'train' must hold real numbers, got dtype <U1"):
        load_sequences(tmp_path / "text.npy")
    (tmp_path / "plain.npy").write_text("1 2 3")  # numpy reads a headerless file as a pickle and says so
    with pytest.raises(ValueError, match=r"plain.npy is not a .npy file: it does not start with numpy's .npy header"):
        load_sequences(tmp_path / "plain.npy")
    (tmp_path / "plain.npz").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"plain.npz is not a .npz file: it does not start with a zip archive's"):
        load_sequences(tmp_path / "plain.npz")
    np.save(tmp_path / "ok.npy", np.ones((2, 3, 1), dtype=np.float64))
    monkeypatch.setenv("HOME", str(tmp_path))
    train, test = load_sequences("~/ok.npy")
    assert train.dtype == torch.float32 and train.shape == (2, 3, 1) and test is None
    (tmp_path / "ok.npy").rename(tmp_path / "OK.NPY")  # the suffix in any case
    assert torch.equal(load_sequences(tmp_path / "OK.NPY")[0], train)


def test_size_mismatch_advice_names_settings_each_command_accepts(tmp_path):
    """The file-size mismatch error advises model_args for zoo train and data.path for zoo eval / estimate, which
    refuse --set model_args (their model comes from the checkpoint): each --set it names for evaluation passes
    zoo eval's own check."""
    import re


    from train import fit, load_recipe
    from train.cli import _check_eval_overrides
    from train.tasks import make_task

    np.save(tmp_path / "seq.npy", np.zeros((5, 24, 3), dtype=np.float32))
    with pytest.raises(ValueError) as err:
        make_task(load_recipe("pvrnn-robot", [f"data.path={tmp_path / 'seq.npy'}"]))
    train_part, eval_part = str(err.value).split("zoo train")
    assert ("--set model_args.n_sequences=5 --set model_args.seq_len=24 --set model_args.out_size=3 "
            "--set train.batch_size=5 " in train_part)  # the recipe's batch of 24 distinct sequences cannot be drawn
    small = ["train.steps=1", "task_args.er_window=4", "task_args.er_iterations=1", "task_args.lyapunov_steps=5",
             "task_args.gen_steps=20"]
    recipe = load_recipe("pvrnn-robot", [f"data.path={tmp_path / 'seq.npy'}", *re.findall(r"--set (\S+)", train_part),
                                         *small])
    assert fit(recipe, tmp_path / "run")["step"] == 1  # the advice, followed, trains
    eval_sets = re.findall(r"--set (\S+)", eval_part)
    assert eval_sets and all(key.startswith("data.") for key in eval_sets)
    _check_eval_overrides(eval_sets, "eval")
    with pytest.raises(ValueError, match="no effect on zoo eval"):  # what the message advised before
        _check_eval_overrides(re.findall(r"--set (\S+)", train_part), "eval")


def test_a_batch_larger_than_the_task_can_draw_is_refused_before_the_run_writes_anything(tmp_path):
    """PV-RNN's batch holds distinct training sequences; train.batch_size above n_sequences was an error at the
    first step, after recipe.yaml and metrics.jsonl were written into --out."""
    from train import fit, load_recipe

    recipe = load_recipe("pvrnn-pfsm", ["model_args.n_sequences=3", "train.batch_size=4", "train.steps=1"])
    with pytest.raises(ValueError, match=r"train.batch_size=4 exceeds the 3 examples that task 'pvrnn' can put in "
                                         r"one batch here; pass --set train.batch_size=3"):
        fit(recipe, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _benchmark(name, monkeypatch):
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module(name)


def test_sweep_script_redraws_every_saved_sweep(tmp_path, monkeypatch):
    """The README points at each benchmarks/results/pvrnn_sweep_*.json; two of them (rows under "rows" with the
    command and machine; a text column "setting") stopped --from-json with a KeyError or a format error."""
    sweep = _benchmark("pvrnn_sweep", monkeypatch)
    files = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").glob("pvrnn_sweep*.json"))
    assert len(files) >= 5
    for i, path in enumerate(files):
        sweep.main(["--from-json", str(path), "--out", str(tmp_path / str(i))])
        table = (tmp_path / str(i) / "sweep.md").read_text()
        saved = json.loads(path.read_text())
        rows = saved["rows"] if isinstance(saved, dict) else saved
        assert sum(line.startswith("| ") for line in table.splitlines()) == len(rows) + 1, path.name  # header, rows


def test_sweep_script_trains_each_w_and_redraws_from_its_json(tmp_path, monkeypatch):
    """benchmarks/pvrnn_sweep.py on two w with a tiny budget: one run folder per w, sweep.json/md/png with one row
    per w and the metrics the README's table shows; --from-json redraws the same table."""
    sweep = _benchmark("pvrnn_sweep", monkeypatch)
    tiny_run = ["model_args.n_sequences=4", "model_args.seq_len=30", "train.batch_size=4", "data.period=10",
                "task_args.er_streams=2", "task_args.er_length=16", "task_args.er_window=4",
                "task_args.er_iterations=1", "task_args.gen_steps=40", "task_args.lyapunov_steps=50",
                "train.ckpt_every=0", "probe=null"]
    sweep.main(["--w", "0.001", "1", "--steps", "3", "--out", str(tmp_path / "sweep")]
               + [a for o in tiny_run for a in ("--set", o)])
    rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["w"] for r in rows] == [0.001, 1.0]
    for r in rows:
        assert {"rec", "kl_0", "kl_1", "p_b_generated", "p_b_true", "er_error", "lambda_max"} <= r.keys()
        assert all(math.isfinite(v) for k, v in r.items() if k != "machine") and r["machine"]  # what it trained on
    assert (tmp_path / "sweep" / "w_0.001" / "metrics.jsonl").exists() and (tmp_path / "sweep" / "w_1").is_dir()
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 5_000
    sweep.main(["--from-json", str(tmp_path / "sweep" / "sweep.json"), "--out", str(tmp_path / "redrawn")])
    assert (tmp_path / "redrawn" / "sweep.md").read_text() == (tmp_path / "sweep" / "sweep.md").read_text()
    assert (tmp_path / "sweep" / "sweep.md").read_text().startswith(f"Trained on {rows[0]['machine']}")
    sweep.main(["--w", "10", "--w1", "0.01", "--steps", "2", "--out", str(tmp_path / "first")]
               + [a for o in tiny_run for a in ("--set", o)])
    row, = json.loads((tmp_path / "first" / "sweep.json").read_text())
    assert row["w"] == 10 and row["w1"] == 0.01 and "| w | w1 | rec |" in (tmp_path / "first" / "sweep.md").read_text()
    assert {"kl_first_0", "sigma_first_0", "kl_first_1", "sigma_first_1"} <= row.keys()
    assert load_checkpoint(tmp_path / "first" / "w_10" / "model.safetensors").config.meta_prior_first == (0.01, 0.01)
    # w and w1 go to every level of a model given other levels (it wrote [w, w] and failed on one level)
    one_level = ["model_args.d_sizes=[8]", "model_args.z_sizes=[1]", "model_args.taus=[2.0]"]
    sweep.main(["--w", "10", "--w1", "0.01", "--steps", "2", "--out", str(tmp_path / "one")]
               + [a for o in tiny_run + one_level for a in ("--set", o)])
    single = load_checkpoint(tmp_path / "one" / "w_10" / "model.safetensors").config
    assert single.d_sizes == (8,) and single.meta_prior == (10.0,) and single.meta_prior_first == (0.01,)
    assert {"kl_first_0", "sigma_first_0"} <= json.loads((tmp_path / "one" / "sweep.json").read_text())[0].keys()


def test_speed_script_measures_each_quantity(monkeypatch):
    """benchmarks/pvrnn_speed.py's measurements on small sizes: positive, finite rates and latencies."""
    speed = _benchmark("pvrnn_speed", monkeypatch)
    cpu = torch.device("cpu")
    values = [speed.train_steps_per_s(cpu, 2, 20, steps=2, repeats=1),
              speed.generation_s(cpu, batch=2, steps=60, repeats=1),
              speed.er_latency_ms(cpu, window=4, iterations=2, length=3, repeats=1),
              speed.er_latency_ms(cpu, window=4, iterations=2, length=3, repeats=1, streams=3)]
    assert all(math.isfinite(v) and v > 0 for v in values)


def test_compiled_model_runs_at_any_batch_and_length():
    """torch.compile: the skewed stack (frames preallocated per batch and length, written with out=) runs eagerly,
    so a second batch size or length does not fail under dynamic shapes; values equal the eager model's."""
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(6, 4), z_sizes=(2, 1), n_sequences=4, seq_len=8).eval()
    compiled = torch.compile(m, backend="aot_eager")
    for ids, steps in ((torch.tensor([0, 1, 2]), None), (torch.tensor([0, 1]), None), (torch.tensor([3]), 4)):
        torch.testing.assert_close(compiled(ids, steps=steps, noise=False)["x"], m(ids, steps=steps, noise=False)["x"])
    loss, _ = m.loss(torch.tensor([1, 2]), torch.randn(2, 8, 2), forward=compiled.train())  # the loop's call
    loss.backward()
    assert m.out.weight.grad is not None and m.out.weight.grad.isfinite().all()


class _SwitchingMap(torch.nn.Module):
    """A stand-in model for ``PVRNNTask.lyapunov``: its state h = (c, x) counts steps in c (generation adds the number
    of steps), and the map (c, x) -> (c + 1, k x) contracts x by k = 0.5 at steps c = 700..719 and expands it by 2
    at all others, so a Benettin estimate over 20 steps is log 0.5 if it averages exactly steps 700..719."""

    def initial_state(self, batch):
        return [(torch.zeros(batch, 2), torch.zeros(batch, 2))]

    def unroll(self, steps, state, first=True, noise=True):
        return {"state": [(h + torch.tensor([float(steps), 0.0]), d) for h, d in state]}

    def prior_mean_map(self, h):
        c, x = h.unbind(-1)
        return torch.stack([c + 1, torch.where((c >= 700) & (c < 720), 0.5, 2.0) * x], -1)


def test_lyapunov_metric_starts_after_500_generated_steps_and_discards_200_transient_steps():
    """lambda_max is Benettin's estimate from the state reached by 500 generated steps, with the first 200 steps
    of the map (c = 500..699, expanding) discarded: log 0.5 exactly. Averaging the transient (lyapunov_steps = 20
    steps from c = 500), discarding more or fewer steps, or starting from the initial state, not the generated one,
    averages expanding steps too."""
    from estimators.lyapunov import largest_lyapunov_exponent
    from train.tasks import make_task

    task = make_task(_recipe("task_args.lyapunov_steps=20"))
    assert task.lyapunov(_SwitchingMap()) == pytest.approx(math.log(0.5), abs=1e-9)
    transient = largest_lyapunov_exponent(_SwitchingMap().prior_mean_map, torch.tensor([[500.0, 0.0]]).double(), 20)
    assert transient.item() > 0.5  # near log 2: the 20 averaged steps, had the transient been kept


def test_a_reused_stack_equals_a_fresh_one_and_a_graph_backpropagates_through_it_once():
    """stack_recurrence reuses the frames of a stack whose backward has run for the next call of its shape
    (building them is about a sixth of a pvrnn-pfsm step): after a call with other weights, drives and state, the
    reused stack gives d, the final h and every gradient of a freshly built one bit for bit, also for two graphs
    alive at once; a second backward through one graph is refused by name (its frames may already serve another
    call)."""
    import layers.pvrnn_stack as pvrnn_stack
    from layers import pack_levels

    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(6, 5, 4), z_sizes=(1, 1, 1), taus=(2.0, 5.0, 9.0),
                         meta_prior=(0.1,) * 3).double()
    B, T, N = 3, 7, 15

    def forward(seed):
        g = torch.Generator().manual_seed(seed)
        u, h0, d0 = (torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
                     for shape in ((B, T, N), (B, N), (B, N)))
        d, h = stack_recurrence(pack_levels(m.levels), u, h0, d0)
        loss = (d * torch.randn(d.shape, generator=g, dtype=torch.float64)).sum() + h.square().sum()
        return d, h, loss, [*m.parameters(), u, h0, d0]

    def grad(loss, inputs):  # the prior's weights take no part in the recursion
        return [g for g in torch.autograd.grad(loss, inputs, allow_unused=True) if g is not None]

    def run(seed):
        d, h, loss, inputs = forward(seed)
        return [d, h, *grad(loss, inputs)]

    def assert_equal(got, want):
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))

    pvrnn_stack._FREE_STACKS.clear()
    run(1)
    (key, (stack,)), = pvrnn_stack._FREE_STACKS.items()  # given back after its backward
    assert stack.packed is None and stack.A is None  # the pool keeps the frames, not the model's weights
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reused = run(2)
    assert pvrnn_stack._FREE_STACKS[key] == [stack]  # the same frames served the second call
    pvrnn_stack._FREE_STACKS.clear()
    assert_equal(reused, run(2))

    first, second = forward(3), forward(4)  # two graphs alive: each has its own frames
    grads = [grad(loss, inputs) for *_, loss, inputs in (second, first)]
    pvrnn_stack._FREE_STACKS.clear()
    assert_equal([*second[:2], *grads[0]], run(4))
    assert_equal([*first[:2], *grads[1]], run(3))

    d, h, loss, _ = forward(5)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="a second backward through the same PV-RNN graph"):
        loss.backward()


def test_layer_refuses_bad_sizes_and_missing_inputs_and_tau_one_drops_the_leak():
    """tau = 1 is the boundary of the MTRNN (h_t = the drive: no leak, a plain RNN) and is accepted; zero units are
    refused when the layer is built; a z, d_prev of the wrong width and a missing bottom-up input are named by
    ValueError instead of failing inside a matmul."""
    torch.manual_seed(0)
    plain = PVRNNLayer(d_size=3, z_size=2, tau=1.0)
    h, d, z = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 2)
    drive = d @ plain.W_dd.weight.T + plain.W_dd.bias + z @ plain.W_zd.weight.T
    got_h, got_d = plain.step(h, d, z)
    torch.testing.assert_close(got_h, drive)  # the old h_{t-1} has weight 1 - 1/tau = 0
    torch.testing.assert_close(got_d, torch.tanh(drive))
    for bad in ({"d_size": 0, "z_size": 2}, {"d_size": 3, "z_size": 0}):
        with pytest.raises(ValueError, match="d_size >= 1, z_size >= 1"):
            PVRNNLayer(tau=2.0, **bad)
    with pytest.raises(ValueError, match="tau >= 1"):
        PVRNNLayer(3, 2, tau=0.999)
    with pytest.raises(ValueError, match=r"expected z \(B, 2\)"):
        plain.step(h, d, torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"expected d_prev \(B, 3\)"):
        plain.step(h, torch.randn(2, 4), z)
    up = PVRNNLayer(d_size=3, z_size=2, tau=2.0, bottom_size=4)
    with pytest.raises(ValueError, match="bottom-up"):
        up.step(h, d, z)
    with pytest.raises(ValueError, match="one entry per level"):
        zoo.create_model("pvrnn_small", d_sizes=(), z_sizes=(), taus=(), meta_prior=())
    with pytest.raises(ValueError, match="n_sequences, seq_len, out_size >= 1"):
        zoo.create_model("pvrnn_small", n_sequences=0)


def _two_level_hand_model():
    """A two-level PV-RNN (2 + 1 d units, one z unit each, tau 2 and 4) in fp64 with random weights."""
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(2, 1), z_sizes=(1, 1), taus=(2.0, 4.0), meta_prior=(0.1, 0.1),
                         n_sequences=2, seq_len=4, out_size=2).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.7)
    return m


def _lin(layer, x):
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def test_generation_starts_from_the_unit_gaussian_prior_by_hand():
    """The paper's generation starts at t = 1 from the prior N(0, I): the noise-free generation's first step takes
    z_1 = 0 in every level, from h_0 = d_0 = 0, so h_1 = (1/tau) (b_dd + W_top d_1^{top}) (hand-computed, two
    levels); the second step's z is the learned prior mean tanh(W_mu d_1 + b_mu)."""
    m = _two_level_hand_model()
    bottom, top = m.levels
    h1_top = top.W_dd.bias / 4.0
    d1_top = torch.tanh(h1_top)
    h1 = (bottom.W_dd.bias + _lin(bottom.W_top, d1_top)) / 2.0
    d1 = torch.tanh(h1)
    z2_top, z2 = torch.tanh(_lin(top.W_mu, d1_top)), torch.tanh(_lin(bottom.W_mu, d1))
    h2_top = 0.75 * h1_top + (_lin(top.W_dd, d1_top) + _lin(top.W_zd, z2_top)) / 4.0
    h2 = 0.5 * h1 + (_lin(bottom.W_dd, d1) + _lin(bottom.W_zd, z2) + _lin(bottom.W_top, torch.tanh(h2_top))) / 2.0
    x = m.generate(3, 2, noise=False)
    expected = torch.stack([_lin(m.out, d1), _lin(m.out, torch.tanh(h2))])
    torch.testing.assert_close(x, expected.expand(3, -1, -1), rtol=1e-12, atol=1e-12)


def test_prior_mean_map_is_one_noise_free_step_by_hand():
    """prior_mean_map(h) is one step of the generative model at a later step (not t = 1): d = tanh(h), then per level
    z = tanh(W_mu d + b_mu) (the prior mean from that level's own d) and the leaky update, top level first."""
    m = _two_level_hand_model()
    bottom, top = m.levels
    h = torch.randn(4, 3, dtype=torch.float64)
    h0, h1 = h[:, :2], h[:, 2:]
    d0, d1 = torch.tanh(h0), torch.tanh(h1)
    new_h1 = 0.75 * h1 + (_lin(top.W_dd, d1) + _lin(top.W_zd, torch.tanh(_lin(top.W_mu, d1)))) / 4.0
    new_h0 = 0.5 * h0 + (_lin(bottom.W_dd, d0) + _lin(bottom.W_zd, torch.tanh(_lin(bottom.W_mu, d0)))
                         + _lin(bottom.W_top, torch.tanh(new_h1))) / 2.0
    torch.testing.assert_close(m.prior_mean_map(h), torch.cat([new_h0, new_h1], -1), rtol=1e-12, atol=1e-12)


def test_error_regression_reports_its_last_windows_posterior_and_scores_the_prediction_by_hand():
    """One window (T = window + horizon, the shortest stream accepted) in fp64 against autograd Adam on
    window_objective: post_mu / post_sigma are tanh / exp of the optimised vectors at the window's last step, per
    level, and error is the mean over the horizon and outputs of (prediction - x)^2 for x after the window. One step
    shorter, an lr of 0 or a negative iteration count is refused by name."""
    torch.manual_seed(0)
    m = zoo.create_model("pvrnn_small", d_sizes=(5, 4), z_sizes=(2, 1), taus=(2.0, 4.0), meta_prior=(0.1, 0.01),
                         n_sequences=2, seq_len=8).double()
    W, H, K, lr, B = 4, 3, 3, 0.1, 2
    stream = torch.randn(B, W + H, 2, dtype=torch.float64)
    torch.manual_seed(5)
    r = m.error_regression(stream, window=W, iterations=K, lr=lr, horizon=H)
    torch.manual_seed(5)  # the same z noise, drawn in the same order
    a = torch.zeros(B, W, 6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([a], lr=lr)
    for _ in range(K):
        a.grad, = torch.autograd.grad(m.window_objective(a, m.initial_state(B), True, stream[:, :W]), [a])
        opt.step()
    a = a.detach()
    for k, (lo, hi) in enumerate(((0, 2), (2, 3))):
        assert r["post_mu"][k].shape == (B, 1, hi - lo)
        torch.testing.assert_close(r["post_mu"][k][:, 0], torch.tanh(a[:, -1, lo:hi]), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(r["post_sigma"][k][:, 0], torch.exp(a[:, -1, 3 + lo:3 + hi]), rtol=1e-10,
                                   atol=1e-12)
    assert r["prediction"].shape == (B, 1, H, 2)
    by_hand = (r["prediction"][:, 0] - stream[:, W:]).square().sum((1, 2)) / (H * 2)
    torch.testing.assert_close(r["error"][:, 0], by_hand, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="T >= window \\+ horizon"):
        m.error_regression(stream[:, :-1], window=W, iterations=K, horizon=H)
    with pytest.raises(ValueError, match="lr must be a finite number > 0, got 0.0"):
        m.error_regression(stream, window=W, iterations=K, lr=0.0, horizon=H)
    with pytest.raises(ValueError, match="iterations >= 0"):
        m.error_regression(stream, window=W, iterations=-1, horizon=H)


def test_sequence_ids_and_steps_outside_the_training_set_are_refused():
    """Sequence ids index each sequence's own adaptive vectors: -1 (which would silently take the last sequence's)
    and n_sequences are refused, as are more steps than seq_len; the last id and seq_len steps work."""
    m = tiny(n_sequences=4, seq_len=6)
    for bad in ([-1], [4], [0, -2]):
        with pytest.raises(ValueError, match=r"sequence ids must lie in \[0, n_sequences=4\)"):
            m(torch.tensor(bad))
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, seq_len=6\], got 7"):
        m(torch.tensor([0]), steps=7)
    assert m(torch.tensor([3]), steps=6)["x"].shape == (1, 6, 2)


def test_pfsm_primitives_and_noise_by_hand():
    """The primitives by hand (period 8): the figure eight A = 0.8 (sin t, sin 2t), the circles B / C = (+-0.4
    (1 - cos t), 0.4 sin t), each starting at the origin, B to the right and C to the left; the
    observation noise is zero-mean with the set standard deviation; a period below 2 is refused, and windows with
    no branch (A only) give a NaN branch probability, not 0 or 1."""
    from train.data.pfsm import primitive

    a, b, c = (torch.from_numpy(primitive(name, 8)) for name in "ABC")
    s = math.sqrt(0.5)
    torch.testing.assert_close(a[1], torch.tensor([0.8 * s, 0.8], dtype=torch.float64))
    torch.testing.assert_close(a[2], torch.tensor([0.8, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(b[1], torch.tensor([0.4 * (1 - s), 0.4 * s], dtype=torch.float64))
    torch.testing.assert_close(b[4], torch.tensor([0.8, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(c, b * torch.tensor([-1.0, 1.0], dtype=torch.float64))
    for prim in (a, b, c):
        assert prim[0].abs().max() == 0  # each primitive starts at the origin, where the one before it ended
    noisy, labels = pfsm_sequences(50, 40, period=8, noise=0.1, seed=2)
    clean, _ = pfsm_sequences(50, 40, period=8, noise=0.0, seed=2)
    residual = (noisy - clean).double()
    assert abs(residual.mean().item()) < 0.005 and residual.std().item() == pytest.approx(0.1, rel=0.03)
    torch.testing.assert_close(clean[labels == 0].reshape(-1, 8, 2), a.float().expand(len(clean[labels == 0]) // 8, -1,
                                                                                        -1))
    with pytest.raises(ValueError, match="period >= 2"):
        pfsm_sequences(2, 10, period=1)
    only_a = a.float().repeat(3, 1)[None]
    assert math.isnan(branch_probability(only_a, 8).item())


def test_adam_step_equals_torch_adam_where_eps_and_betas_matter():
    """adam_step against torch.optim.Adam with gradients of 1e-9, where Adam's eps (1e-8) dominates the
    denominator, and with other betas and eps: the same trajectory, so eps and both bias corrections are torch's."""
    from zoo.pvrnn import adam_step

    g = torch.Generator().manual_seed(0)
    for scale, kw in ((1e-9, {}), (1.0, {"betas": (0.5, 0.8), "eps": 1e-3})):
        p_ref = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([p_ref], lr=0.05, **kw)
        p, m, v = p_ref.detach().clone(), torch.zeros_like(p_ref), torch.zeros_like(p_ref)
        start = p.clone()
        for step in range(1, 6):
            grad = scale * torch.randn(3, 4, generator=g, dtype=torch.float64)
            p_ref.grad = grad.clone()
            opt.step()
            adam_step(p, grad, m, v, step, 0.05, **kw)
            torch.testing.assert_close(p, p_ref.detach(), rtol=0, atol=1e-12)
        assert (p - start).abs().max() > 1e-3  # the steps moved p (at 1e-9 gradients, by about lr g / eps)


def test_posterior_statistics_of_the_unroll_are_the_sampled_z_and_the_adaptive_maps():
    """The per-level statistics of a posterior unroll: post_mu = tanh(A^mu), post_sigma = exp(A^sigma), and z the
    reparametrised sample post_mu + post_sigma eps with the unroll's own noise (one randn over all levels' units),
    or post_mu itself without noise."""
    m = tiny(seq_len=6)
    with torch.no_grad():
        for a in [*m.A_mu, *m.A_sigma]:
            a.normal_(0, 0.5)
    ids = torch.tensor([2, 0])
    torch.manual_seed(4)
    out = m(ids)
    torch.manual_seed(4)
    eps = torch.randn(2, 6, 3).split([2, 1], -1)
    mean = m(ids, noise=False)
    for k, lvl in enumerate(out["levels"]):
        mu, sigma = torch.tanh(m.A_mu[k][ids]), torch.exp(m.A_sigma[k][ids])
        torch.testing.assert_close(lvl["post_mu"], mu)
        torch.testing.assert_close(lvl["post_sigma"], sigma)
        torch.testing.assert_close(lvl["z"], mu + sigma * eps[k])
        torch.testing.assert_close(mean["levels"][k]["z"], mu)


def test_stack_pool_keeps_the_four_most_recent_shapes_two_stacks_each_and_separates_dtypes():
    """The pool of given-back stacks is bounded: at most two stacks per shape (three graphs of one shape give back
    two), at most four shapes, the least recently used shape dropped first (a shape used again counts as recent);
    a float64 call of a shape whose float32 stack is pooled gets its own frames and a fresh stack's values."""
    import layers.pvrnn_stack as pvrnn_stack
    from layers import pack_levels

    torch.manual_seed(0)
    m32 = zoo.create_model("pvrnn_small", d_sizes=(3, 2), z_sizes=(1, 1), n_sequences=2, seq_len=8)
    m64 = zoo.create_model("pvrnn_small", d_sizes=(3, 2), z_sizes=(1, 1), n_sequences=2, seq_len=8).double()
    N, B = 5, 2

    def call(T, m=m32, u=None):
        u = torch.randn(B, T, N, dtype=m.out.weight.dtype) if u is None else u
        zero = u.new_zeros(B, N)
        return stack_recurrence(pack_levels(m.levels), u.requires_grad_(), zero, zero)

    def call_and_backward(T, m=m32, u=None):
        d, h = call(T, m, u)
        (d.sum() + h.sum()).backward()
        return d.detach()

    pvrnn_stack._FREE_STACKS.clear()
    try:
        alive = [call(3) for _ in range(3)]
        for d, h in alive:
            (d.sum() + h.sum()).backward()
        (key, free), = pvrnn_stack._FREE_STACKS.items()
        assert len(free) == 2 and key[:3] == (3, B, torch.float32)
        for T in (1, 2, 4):
            call_and_backward(T)
        call_and_backward(3)  # used again: now the most recent
        call_and_backward(5)  # a fifth shape: the least recent (T = 1) goes
        assert [k[0] for k in pvrnn_stack._FREE_STACKS] == [2, 4, 3, 5]
        u = torch.randn(B, 4, N, dtype=torch.float64)
        pooled = call_and_backward(4, m64, u.clone())  # T = 4 has a float32 stack in the pool
        assert {k[2] for k in pvrnn_stack._FREE_STACKS if k[0] == 4} == {torch.float32, torch.float64}
        pvrnn_stack._FREE_STACKS.clear()
        assert torch.equal(pooled, call_and_backward(4, m64, u.clone()))
    finally:
        pvrnn_stack._FREE_STACKS.clear()


def test_pfsm_task_regresses_on_unseen_streams_and_batches_up_to_every_sequence():
    """The PFSM task's error-regression streams come from their own seed: even as many and as long as the training
    sequences they are other draws (unseen data), and a batch may hold every training sequence once, no more."""
    from train.tasks import make_task

    task = make_task(_recipe("task_args.er_streams=6", "task_args.er_length=40"))
    assert task.test_x.shape == task.train_x.shape == (6, 40, 2)
    assert not torch.allclose(task.test_x, task.train_x, atol=0.05)
    whole_set = task.batch(6, torch.Generator().manual_seed(0))["ids"]
    assert sorted(whole_set.tolist()) == list(range(6))


def test_sequence_files_without_train_empty_or_complex_arrays_are_named(tmp_path):
    """An .npz without 'train' names the keys it found; an empty axis (no sequences, no steps or no dims) and a
    complex array are refused with the path and array named (before the checks: a bare KeyError, an empty
    training set that fails later, or imaginary parts silently dropped by the float32 cast)."""
    from train.data.sequences import load_sequences

    good = np.ones((2, 3, 1), dtype=np.float32)
    np.savez(tmp_path / "notrain.npz", test=good, other=good)
    with pytest.raises(KeyError, match=r"notrain.npz has no 'train' array \(found \['other', 'test'\]\)"):
        load_sequences(tmp_path / "notrain.npz")
    for shape in ((0, 3, 1), (2, 0, 1), (2, 3, 0)):
        np.save(tmp_path / "empty.npy", np.zeros(shape, dtype=np.float32))
        with pytest.raises(ValueError, match=rf"empty.npy: 'train' must have shape \(sequences, steps, dims\), got "
                                             rf"\({shape[0]}, {shape[1]}, {shape[2]}\)"):
            load_sequences(tmp_path / "empty.npy")
    np.savez(tmp_path / "emptytest.npz", train=good, test=np.zeros((0, 3, 1), dtype=np.float32))
    with pytest.raises(ValueError, match="'test' must have shape"):
        load_sequences(tmp_path / "emptytest.npz")
    np.save(tmp_path / "complex.npy", good * (1 + 2j))
    with pytest.raises(ValueError, match="complex.npy: 'train' must hold real numbers, got dtype complex64"):
        load_sequences(tmp_path / "complex.npy")
    np.save(tmp_path / "ints.npy", np.arange(6, dtype=np.int16).reshape(2, 3, 1))  # integers are real numbers
    train, test = load_sequences(tmp_path / "ints.npy")
    assert train.dtype == torch.float32 and train.flatten().tolist() == [0, 1, 2, 3, 4, 5] and test is None
