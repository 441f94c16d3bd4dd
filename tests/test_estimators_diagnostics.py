"""Representation diagnostics: attention entropy, effective rank, feature count, local complexity, conditioning."""
import math
import re

import pytest
import torch
from torch import nn

from estimators import (Probe, attention_entropy, attention_entropy_lower_bound, attention_entropy_per_head, condition_number,
                        covariance_condition_number, effective_feature_count, effective_rank, feature_count,
                        local_complexity, shannon_entropy, spectral_effective_rank)
from estimators.conditioning import matrix_condition_number


def test_attention_entropy_per_head_closed_forms():
    b, lq, lk = 2, 3, 8
    uniform = torch.full((b, 1, lq, lk), 1 / lk)
    onehot = torch.zeros(b, 1, lq, lk)
    onehot[..., 0] = 1
    out = attention_entropy_per_head(torch.cat([uniform, onehot], 1))
    assert out["head_0"].item() == pytest.approx(math.log(8))
    assert out["head_1"].item() == 0.0
    assert out["mean"].item() == pytest.approx(math.log(8) / 2)
    assert attention_entropy_per_head(uniform, base="bits")["head_0"].item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="sum to 1"):
        attention_entropy_per_head(torch.rand(1, 1, 2, 4) + 1)
    for estimate in (attention_entropy_per_head, shannon_entropy):  # one check: the tolerances had drifted apart
        with pytest.raises(ValueError, match="off by up to 0.005"):
            estimate(uniform * 1.005)
    with pytest.raises(ValueError, match="batch, heads, queries, keys"):
        attention_entropy_per_head(torch.rand(2, 4))
    masked = uniform.clone()
    masked[1] = 0  # every key of the second item masked: its rows are left out, not counted as entropy 0
    assert attention_entropy_per_head(masked)["head_0"].item() == pytest.approx(math.log(8))
    with pytest.raises(ValueError, match="no row with a visible key"):
        attention_entropy_per_head(torch.zeros(1, 1, 2, 4))


def test_attention_entropy_lower_bound_is_tight_and_holds_for_random_logits():
    for T in (2, 7, 64):
        assert float(attention_entropy_lower_bound(0.0, T)) == pytest.approx(math.log(T))
        for sigma in (0.3, 2.0, 9.0):  # tight: one logit sigma sqrt(T/(T-1)) above T-1 equal logits
            logits = torch.zeros(T, dtype=torch.float64)
            logits[0] = sigma * math.sqrt(T / (T - 1))
            p = logits.softmax(0)
            assert float(attention_entropy_lower_bound(sigma, T)) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-12)
    g = torch.Generator().manual_seed(0)
    slack = []
    for trial in range(400):  # Theorem 3.1 over random (and near rank-one) tokens and bilinear forms, both orientations
        T, d = int(torch.randint(2, 12, (), generator=g)), int(torch.randint(1, 6, (), generator=g))
        X = torch.randn(T, d, generator=g, dtype=torch.float64) * 2 * float(torch.rand((), generator=g))
        if trial % 3 == 0:
            X = X[:, :1] @ torch.randn(1, d, generator=g, dtype=torch.float64)
        W = torch.randn(d, d, generator=g, dtype=torch.float64) * float(torch.rand((), generator=g))
        sigma = torch.linalg.matrix_norm(W, 2) * torch.linalg.matrix_norm(X @ X.T, 2)
        for logits in (X @ W @ X.T, X @ W.T @ X.T):
            p = logits.softmax(-1)
            slack.append(float((-torch.special.xlogy(p, p).sum(-1) - attention_entropy_lower_bound(sigma, T)).min()))
    assert min(slack) > -1e-12
    with pytest.raises(ValueError, match="integer length >= 2"):
        attention_entropy_lower_bound(1.0, 1)


def test_attention_entropy_through_a_probe_gives_one_row_per_head():
    from layers import ProbePoint

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.probs = ProbePoint()

        def forward(self, s):
            return self.probs(s.softmax(-1))

    scores = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    with Probe(Attn(), {"probs": [attention_entropy()]}) as probe:
        probe.model(scores)
    rows = {r["estimator"]: r["value"] for r in probe.table()}
    assert sorted(rows) == ["attention_entropy/head_0", "attention_entropy/head_1", "attention_entropy/head_2",
                            "attention_entropy/mean"]
    assert rows["attention_entropy/head_1"] == pytest.approx(
        attention_entropy_per_head(scores.softmax(-1))["head_1"].item(), abs=1e-6)


def test_effective_rank_and_feature_count_closed_forms():
    assert spectral_effective_rank(torch.eye(5)).item() == pytest.approx(5.0)
    assert spectral_effective_rank(torch.ones(4, 6)).item() == pytest.approx(1.0)
    assert spectral_effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))).item() == pytest.approx(2.0)
    q = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))[0]
    w = q @ torch.diag(torch.tensor([3.0, 1.0, 0, 0, 0, 0])) @ q.T
    p = torch.tensor([0.75, 0.25])
    assert spectral_effective_rank(w).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
    conv = torch.zeros(4, 2, 3, 3)
    conv[0, 0, 1, 1] = 2.0  # one non-zero tap: a rank-1 kernel (4 x 18 after reshaping)
    assert effective_rank()(conv).item() == pytest.approx(1.0)
    assert effective_feature_count(torch.ones(10, 7)).item() == pytest.approx(7.0)
    assert effective_feature_count(torch.tensor([5.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    assert effective_feature_count(torch.tensor([1.0, -1.0, 2.0, 0.0]), power=2).item() == pytest.approx(
        math.exp(-sum(v * math.log(v) for v in (1 / 6, 1 / 6, 4 / 6))))
    codes = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.5, 2.0, 0.0, 0.0]])  # power 0: how often each feature is active
    assert effective_feature_count(codes, power=0).item() == pytest.approx(math.exp(-(2 / 3) * math.log(2 / 3)
                                                                                    - (1 / 3) * math.log(1 / 3)))
    assert effective_feature_count(torch.tensor([1.0, 0.0, 0.0, 0.0]), power=0).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="power"):
        effective_feature_count(codes, power=-1)
    # all zeros (a dead layer; PV-RNN's posterior means before training): 0, a value a Probe can record in a run,
    # where the error it was stopped the run at step 0
    assert effective_rank()(torch.zeros(4, 3)).item() == 0 and effective_feature_count(torch.zeros(5, 3)).item() == 0
    for power in (float("inf"), float("nan")):  # inf gave NaN (inf / inf), silently
        with pytest.raises(ValueError, match=r"power must be a finite number >= 0"):
            feature_count(power=power)
    # the mass is taken relative to the largest entry: |x|^2 of 1e200 no longer overflows, nor 1e-200 underflows
    mass = torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=torch.float64)
    for scale in (1e200, 1e-200):
        assert effective_feature_count(mass * scale, power=2).item() == pytest.approx(
            effective_feature_count(mass, power=2).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"effective rank needs a non-empty matrix \(>= 2 dims\), got \(0, 4\)"):
        spectral_effective_rank(torch.zeros(0, 4))
    with pytest.raises(TypeError, match="condition number: w must be a tensor, got list"):
        matrix_condition_number([[1.0, 2.0], [3.0, 4.0]])


def test_condition_number_of_conv_kernels_is_never_skipped():
    conv = nn.Conv2d(3, 8, 3)
    k = matrix_condition_number(conv.weight)
    s = torch.linalg.svdvals(conv.weight.detach().reshape(8, -1).double())
    assert k.item() == pytest.approx((s.max() / s.min()).item(), rel=1e-5)


def test_local_complexity_counts_hyperplanes_and_regions():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    net = nn.Sequential(lin, nn.ReLU())  # hyperplanes x1 = 0 and x2 = 0: four quadrant regions
    g = torch.Generator().manual_seed(0)
    at_origin = local_complexity(net, torch.zeros(1, 2), radius=1.0, generator=g)
    assert at_origin == {"neurons": 2.0, "regions": 4.0}
    far = local_complexity(net, torch.tensor([[5.0, 5.0], [-5.0, 3.0]]), radius=1.0, generator=g)
    assert far == {"neurons": 0.0, "regions": 1.0}
    near_one = local_complexity(net, torch.tensor([[0.2, 5.0]]), radius=1.0, n_directions=2, generator=g)
    assert near_one == {"neurons": 1.0, "regions": 2.0}
    with pytest.raises(ValueError, match="no modules"):
        local_complexity(nn.Linear(2, 2), torch.zeros(1, 2))


def _identity_then(act):
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(2))
        lin.bias.zero_()
    return nn.Sequential(lin, act)


@pytest.mark.parametrize("act, kinks", [(nn.Hardtanh(), (-1.0, 1.0)), (nn.Hardtanh(-2.0, 3.0), (-2.0, 3.0)),
                                        (nn.ReLU6(), (0.0, 6.0)), (nn.ReLU6(inplace=True), (0.0, 6.0))])
def test_local_complexity_counts_every_kink_of_hardtanh_and_relu6(act, kinks):
    """z = x: each coordinate crosses a kink iff the point is within the radius of it; linear in between."""
    net, g = _identity_then(act), torch.Generator().manual_seed(0)
    lo, hi = kinks
    mid = (lo + hi) / 2
    for point, neurons, regions in (([mid, mid], 0.0, 1.0), ([hi, hi], 2.0, 4.0), ([lo, lo], 2.0, 4.0),
                                    ([lo, hi], 2.0, 4.0), ([hi, mid], 1.0, 2.0), ([mid, lo], 1.0, 2.0),
                                    ([hi + 5, lo - 5], 0.0, 1.0)):
        out = local_complexity(net, torch.tensor([point]), radius=0.5, n_directions=2, generator=g)
        assert out == {"neurons": neurons, "regions": regions}, (point, out)


def test_local_complexity_runs_in_eval_mode_and_restores_modes():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU())
    nn.init.normal_(net[1].running_mean, 0.0, 0.3, generator=g)
    net[4].eval()  # a frozen BatchNorm inside a training model stays frozen
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(6, 4, generator=g)
    train_mode = local_complexity(net, x, radius=0.3, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # running stats, num_batches_tracked
    assert [m.training for m in net.modules()] == [True, True, True, True, True, False, True]
    net.eval()  # eval-mode BatchNorm is a fixed affine map per point: counts do not depend on the rest of the batch
    assert train_mode == local_complexity(net, x, radius=0.3, generator=torch.Generator().manual_seed(1))


def test_local_complexity_rejects_bad_input():
    net = _identity_then(nn.ReLU())
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="1 NaN/inf"):
            local_complexity(net, torch.tensor([[0.0, bad]]))
    with pytest.raises(ValueError, match="no known kinks"):
        local_complexity(_identity_then(nn.GELU()), torch.zeros(1, 2), activations=(nn.GELU,))
    with pytest.raises(TypeError, match="floating tensor"):  # integer vertices would truncate the polytope to x
        local_complexity(net, torch.zeros(1, 2, dtype=torch.int64))


def test_attention_entropy_lower_bound_limits_and_bad_arguments():
    assert attention_entropy_lower_bound(math.inf, 10).item() == 0.0  # the sigma -> inf limit, not inf * 0
    for sigma, length in ((math.nan, 10), (-1.0, 10), (1.0, 2.5), (1.0, 1), (1.0, True)):
        with pytest.raises(ValueError):
            attention_entropy_lower_bound(sigma, length)


def test_estimator_settings_are_checked_when_the_estimator_is_built():
    from estimators import make_estimator, mi

    x = torch.randn(10, 2)
    for spec, message in (({"ksg_mi": {"target": x, "k": -1}}, "ksg1_mi: k must be an integer >= 1, got -1"),
                          ({"binned_entropy": {"n_bins": 0}}, "binned_entropy: n_bins must be an integer >= 1"),
                          ({"dse": {"sigma": -1}}, "dse: sigma must be a finite number > 0"),
                          ({"dse": {"sigma": None}}, "dse: sigma must be a finite number > 0 (the kernel width; DSE "
                                                     "has no default from the data), got None"),
                          ({"dsmi": {"sigma": None}}, "dsmi: sigma must be a finite number > 0"),
                          ({"binned_entropy": {"strategy": "x"}}, "binned_entropy: strategy must be one of"),
                          ({"compressed_mi": {"dim": 2.5}}, "compressed_mi: dim must be an integer >= 1, got 2.5"),
                          ({"renyi_entropy": {"alpha": math.nan}}, "alpha must be a number > 0"),
                          ({"knn_entropy": {"base": "foo"}}, "knn_entropy: base must be"),
                          ({"ksg_mi": {"target": x, "variant": 3}}, "variant must be 1 or 2")):
        with pytest.raises(ValueError, match=re.escape(message)):
            make_estimator(spec)
    with pytest.raises(ValueError, match=r"got a tensor; .*estimators.ksg_mutual_information\(x, ...\) computes"):
        mi(x, x)  # a value needs the function, not the probe estimator's factory
    assert make_estimator({"knn_entropy": {"k": 5.0}}).kwargs["k"] == 5  # a whole float from YAML (5e0)
    for spec in ({"dse": {}, "entropy": {}}, {}, 3):  # one estimator per entry: a second name is not dropped silently
        with pytest.raises(TypeError, match=r"a name or \{name: \{settings\}\} with one name, got"):
            make_estimator(spec)
    with pytest.raises(TypeError, match=r"estimator 'dse': its settings must be a mapping \{key: value\}, got 3"):
        make_estimator({"dse": 3})


def test_estimator_functions_refuse_what_they_cannot_measure():
    """Complex samples, labels that are not a tensor, and a kernel width whose square underflows are named; a
    numpy integer k is an integer."""
    import numpy as np

    from estimators import diffusion_spectral_mutual_information, kozachenko_leonenko_entropy, \
        ksg_mutual_information, matrix_renyi_entropy

    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match=r"x is complex \(torch.complex64\); .*torch.view_as_real\(x\)"):
        ksg_mutual_information(x.to(torch.complex64), x)
    with pytest.raises(TypeError, match="labels must be a torch.Tensor of classes"):
        diffusion_spectral_mutual_information(x, [0] * 50)
    with pytest.raises(ValueError, match="2 sigma\\^2 representable"):
        matrix_renyi_entropy(x, sigma=1e-200)
    assert kozachenko_leonenko_entropy(x, k=np.int64(4)) == kozachenko_leonenko_entropy(x, k=4)


def test_condition_numbers_are_inf_for_singular_matrices_and_covariances():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    assert matrix_condition_number(a @ b).item() == math.inf  # rank 2 up to float64 rounding
    assert matrix_condition_number(torch.zeros(3, 3)).item() == math.inf
    assert matrix_condition_number(a @ b + torch.eye(6, 5, dtype=torch.float64)).item() < 1e3
    # rank 2 only up to float32's rounding: a large finite kappa, of the order of 1/eps(float32)
    assert 1e5 < matrix_condition_number((a @ b).float()).item() < math.inf
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(500, 3, generator=g, dtype=dtype)
        for singular in (torch.cat([x, torch.full_like(x[:, :1], 2.0)], 1), x[:3], x[:2]):  # constant, N = D, N < D
            assert covariance_condition_number(singular).item() == math.inf
        dependent = covariance_condition_number(torch.cat([x, x[:, :1] + x[:, 1:2]], 1)).item()  # sum rounded in dtype
        assert dependent == math.inf if dtype == torch.float64 else 1e10 < dependent < math.inf
    assert covariance_condition_number(torch.randn(5, 4, generator=g)).item() < math.inf
    for bad in (torch.empty(0, 3), torch.empty(3, 0)):
        with pytest.raises(ValueError, match="empty"):
            matrix_condition_number(bad)
        with pytest.raises(ValueError, match="empty"):
            covariance_condition_number(bad)


def test_condition_numbers_of_low_precision_tensors_are_those_of_their_values():
    """A bfloat16 or float16 tensor's kappa is that of its values (the SVD runs in float64): the identity has
    kappa 1, not inf from a singularity threshold scaled by bfloat16's eps."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16):
        assert matrix_condition_number(torch.eye(256, dtype=dtype)).item() == 1.0
        w, x = torch.randn(512, 64, generator=g).to(dtype), torch.randn(4096, 16, generator=g).to(dtype)
        assert matrix_condition_number(w).item() == pytest.approx(matrix_condition_number(w.double()).item(), rel=1e-6)
        assert covariance_condition_number(x).item() == pytest.approx(
            covariance_condition_number(x.double()).item(), rel=1e-6)
        assert covariance_condition_number(x).item() < 2


def test_covariance_condition_number_and_feature_count_of_channels_first_tensors():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([10.0, 1.0, 1.0, 2.0])
    act = torch.randn(300, 4, 6, 5, generator=g, dtype=torch.float64) * scale[None, :, None, None]
    flat = act.movedim(1, -1).reshape(-1, 4)  # N H W samples of C = 4 channels
    ev = torch.linalg.eigvalsh(torch.cov(flat.T))
    kappa = covariance_condition_number(act, feature_dim=1).item()
    assert kappa == pytest.approx((ev.max() / ev.min()).item(), rel=1e-5)
    assert kappa == pytest.approx(100.0, rel=0.1)
    assert condition_number(of="covariance", feature_dim=1)(act).item() == kappa
    assert covariance_condition_number(act.movedim(1, -1)).item() == kappa  # channels last: the default
    mass = flat.abs().sum(0)
    p = mass / mass.sum()
    count = effective_feature_count(act, feature_dim=1).item()
    assert count == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
    assert feature_count(feature_dim=1)(act).item() == count
    act[:, :2] = 0  # two dead channels of four, equal mass on the other two
    act[:, 2:] = 1.0
    assert effective_feature_count(act, feature_dim=1).item() == pytest.approx(2.0)
    assert effective_feature_count(act, power=0, feature_dim=-3).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="feature_dim"):
        effective_feature_count(act, feature_dim=4)
    with pytest.raises(ValueError, match="feature_dim"):
        covariance_condition_number(act, feature_dim=-5)
    with pytest.raises(ValueError, match="feature_dim"):
        condition_number(of="matrix", feature_dim=1)


def test_dsmi_counts_classes_of_two_samples_and_a_singleton_adds_no_entropy():
    """Classes of 2 samples enter the conditional sum (only classes below 2 contribute 0). Points far apart at sigma 1
    give P = I, S_D = log2(rows): X = 7 points (log2 7 bits); classes {0, 1}, {2, 3}, {4, 5} of 2 points (1 bit
    each) and a singleton {6} (0 bits), so I_D = log2 7 - 6/7 (skipping the 2-point classes would give log2 7)."""
    from estimators import diffusion_spectral_mutual_information

    x = torch.arange(7, dtype=torch.float64)[:, None] * 1e3
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    mi = diffusion_spectral_mutual_information(x, labels, sigma=1.0).item()
    assert mi == pytest.approx(math.log2(7) - 6 / 7, abs=1e-6)
    pairs_only = diffusion_spectral_mutual_information(x[:6], labels[:6], sigma=1.0).item()
    assert pairs_only == pytest.approx(math.log2(6) - 1.0, abs=1e-6)


@pytest.mark.parametrize("n, max_samples, rows_used", [(9, 5, 5), (9, 8, 8), (9, 9, 9), (9, 20, 9)])
def test_dse_max_samples_uses_exactly_that_many_rows_and_all_rows_when_there_are_no_more(n, max_samples, rows_used):
    """With points far apart at sigma 1 (P = I) S_D = log2(rows used): max_samples rows when N > max_samples, all N
    when N <= max_samples; then nothing is drawn, so a passed generator is left untouched."""
    from estimators import diffusion_spectral_entropy

    x = torch.arange(n, dtype=torch.float64)[:, None] * 1e3
    generator = torch.Generator().manual_seed(3)
    state = generator.get_state()
    value = diffusion_spectral_entropy(x, sigma=1.0, max_samples=max_samples, generator=generator).item()
    assert value == pytest.approx(math.log2(rows_used), abs=1e-6)
    assert torch.equal(generator.get_state(), state) == (n <= max_samples)


@pytest.mark.parametrize("max_samples", [-1, 0, 1, 2.5, True, "8"])
def test_dse_refuses_a_max_samples_that_is_not_an_integer_of_at_least_two(max_samples):
    """max_samples is a number of rows to draw and the entropy needs two: -1 used to slice off the last row (8 of 9
    rows, silently), 0 and 1 gave an error about x's shape, 2.5 a slicing TypeError; now each is named, in the
    function and in the probe factory; 2 is the smallest draw (log2 2 = 1 bit for two far-apart points)."""
    from estimators import dse, diffusion_spectral_entropy

    x = torch.arange(9, dtype=torch.float64)[:, None] * 1e3
    with pytest.raises(ValueError, match="max_samples must be an integer >= 2"):
        diffusion_spectral_entropy(x, sigma=1.0, max_samples=max_samples)
    with pytest.raises(ValueError, match="max_samples must be an integer >= 2"):
        dse(sigma=1.0, max_samples=max_samples)
    assert diffusion_spectral_entropy(x, sigma=1.0, max_samples=2).item() == pytest.approx(1.0, abs=1e-6)


def test_dse_probe_factory_takes_a_whole_float_max_samples_as_yaml_writes_it():
    """``max_samples: 5e2`` in a recipe is a float in YAML; the factory takes it as the int 500, as every other
    integer setting of an estimator (it was refused as not an integer); 2.5 is still refused above."""
    from estimators import dse

    assert dse(sigma=1.0, max_samples=4.0).kwargs["max_samples"] == 4
    assert type(dse(sigma=1.0, max_samples=4.0).kwargs["max_samples"]) is int


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_local_complexity_meets_a_hyperplane_inside_the_inscribed_ball_and_misses_one_beyond_the_radius(side):
    """With m = D directions the cross-polytope x +- r q_j contains the ball of radius r / sqrt(D) and lies in the
    ball of radius r, whatever the directions: a ReLU's hyperplane at distance 0.05 < 0.1 / sqrt(2) is met (1
    neuron, 2 regions) and one at 0.15 > 0.1 is not (0, 1), on either side of the points."""
    for distance, expected in ((0.05, {"neurons": 1.0, "regions": 2.0}), (0.15, {"neurons": 0.0, "regions": 1.0})):
        neuron = nn.Linear(2, 1)
        with torch.no_grad():
            neuron.weight.copy_(torch.tensor([[side * 0.6, side * 0.8]]))  # unit normal
            neuron.bias.fill_(-distance)
        got = local_complexity(nn.Sequential(neuron, nn.ReLU()), torch.zeros(64, 2), radius=0.1, n_directions=2,
                               generator=torch.Generator().manual_seed(0))
        assert got == expected, (distance, got)


def test_effective_rank_of_a_conv_kernel_is_that_of_out_by_in_kh_kw():
    """A conv kernel (out, in, kh, kw) is measured as the out x (in kh kw) matrix its docstring names."""
    w = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    assert spectral_effective_rank(w).item() == pytest.approx(spectral_effective_rank(w.reshape(4, -1)).item(), rel=1e-6)
    assert spectral_effective_rank(w).item() != pytest.approx(spectral_effective_rank(w.reshape(-1, 5)).item(), rel=1e-2)
