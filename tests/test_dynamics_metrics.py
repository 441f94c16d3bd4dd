import math

import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from estimators.dynamics import _gaussian_smooth, power_spectra, power_spectrum_distance, state_space_divergence
from train.data.systems import simulate


@pytest.fixture(scope="module")
def lorenz():
    return simulate("lorenz63", 20000, 0.01, transient=500, seed=0), simulate("lorenz63", 20000, 0.01, transient=500, seed=1)


def test_identical_trajectories_give_zero(lorenz):
    a, _ = lorenz
    assert state_space_divergence(a, a).item() == pytest.approx(0.0, abs=1e-12)
    assert power_spectrum_distance(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_same_attractor_small_unrelated_large(lorenz):
    a, b = lorenz
    noise = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0)) * a.std(0) + a.mean(0)
    assert state_space_divergence(a, b).item() < 0.5
    assert state_space_divergence(a, noise).item() > 5.0
    assert power_spectrum_distance(a, b).item() < 0.15
    assert power_spectrum_distance(a, noise).item() > 0.7


def test_state_space_divergence_closed_form_on_disjoint_cells():
    # 1-D, 2 bins over [min-0.1s, max+0.1s]: true mass (1/2, 1/2), generated all in bin 0.
    x = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    g = torch.zeros(4, 1)
    alpha, n = 1e-5, 4
    p = torch.tensor([2 + alpha, 2 + alpha], dtype=torch.float64) / (4 + 2 * alpha)
    q = torch.tensor([n + alpha, alpha], dtype=torch.float64) / (n + 2 * alpha)
    expected = (p * (p / q).log()).sum()
    assert state_space_divergence(x, g, n_bins=2).item() == pytest.approx(expected.item(), rel=1e-9)


def test_hellinger_closed_form_on_pure_tones():
    t = torch.arange(4096, dtype=torch.float64)
    a = torch.sin(2 * torch.pi * 0.05 * t)[:, None]
    b = torch.sin(2 * torch.pi * 0.40 * t)[:, None]
    # no smoothing: two delta-like spectra far apart -> disjoint support -> H = 1
    assert power_spectrum_distance(a, b, smoothing=0).item() == pytest.approx(1.0, abs=1e-3)
    p = power_spectra(a, smoothing=0)
    assert p.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("length", [700, 50, 5])
def test_smoothing_matches_scipy_gaussian_filter1d(length):
    """Also for series shorter than the kernel's radius of 80 (a spectrum of a 150-step series has 76 bins), which
    scipy mirrors repeatedly and which were refused."""
    x = torch.randn(3, length, dtype=torch.float64)
    ours = _gaussian_smooth(x, 20.0)
    ref = torch.from_numpy(gaussian_filter1d(x.numpy(), 20.0, axis=-1, mode="reflect", truncate=4.0))
    assert torch.allclose(ours, ref, atol=1e-12)


def test_shape_errors_name_the_arguments():
    with pytest.raises(ValueError, match="x_true and x_gen"):
        state_space_divergence(torch.zeros(10, 3), torch.zeros(10, 2))
    with pytest.raises(ValueError, match="equal length"):
        power_spectrum_distance(torch.randn(500, 1), torch.randn(400, 1))


def test_a_fresh_simulation_equals_its_cached_reload_bit_for_bit(tmp_path, monkeypatch):
    """The first run of a recipe (cache miss) and every rerun (cache hit) see identical standardised data, so a
    first run resumes exactly (a column-major array once shifted the mean in its last bits)."""
    from train.data.systems import cached_simulate, standardise

    monkeypatch.setenv("PAPERZOO_CACHE", str(tmp_path))
    fresh, cached = (cached_simulate("lorenz63", 1500, 0.01, transient=100) for _ in range(2))
    assert (tmp_path / "data").is_dir() and fresh.is_contiguous()
    assert torch.equal(standardise(fresh)[0], standardise(cached)[0])
    # step sizes equal to 6 digits are different entries (the name once kept 6 significant digits)
    from train.data.systems import simulate

    cached_simulate("lorenz63", 50, 0.01234567, transient=10)
    near = cached_simulate("lorenz63", 50, 0.012345671, transient=10)
    assert torch.equal(near, simulate("lorenz63", 50, 0.012345671, transient=10))


def test_state_space_grid_has_a_tenth_std_margin_and_drops_generated_points_outside_it():
    """1-D, 2 bins over [min - 0.1 std, max + 0.1 std] of x_true = (0, 0, 1, 1), std = 0.577: the grid is about
    [-0.058, 1.058]. Generated points at 1.04 (inside the margin) count; -0.07, 1.07 and 5 (beyond it) are dropped
    and the generated histogram is normalised over the 4 points kept: p = (1/2, 1/2), q = (3/4, 1/4) up to alpha.
    Clipping the outside points into the edge bins, normalising by all 7 points, or another margin (0.05 std
    drops 1.04, 0.2 std keeps 1.07) give other values."""
    x = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    g = torch.tensor([[0.0], [0.0], [0.0], [1.04], [1.07], [-0.07], [5.0]])
    alpha = 1e-5
    p = torch.tensor([2 + alpha, 2 + alpha], dtype=torch.float64) / (4 + 2 * alpha)
    q = torch.tensor([3 + alpha, 1 + alpha], dtype=torch.float64) / (4 + 2 * alpha)
    expected = (p * (p / q).log()).sum().item()
    assert expected == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2), rel=1e-4)  # 0.1438 nats
    assert state_space_divergence(x, g, n_bins=2, alpha=alpha).item() == pytest.approx(expected, rel=1e-9)
    # the true points lie inside their own grid: the maximum, 1, falls in the upper bin, not beyond the grid
    assert state_space_divergence(x, x[[0, 2]], n_bins=2).item() == pytest.approx(0.0, abs=1e-12)


def test_state_space_divergence_counts_cells_of_a_2d_grid_separately():
    """2-D, 2 x 2 bins: the true points fill cells (0, 1) and (1, 0) equally, the generated ones put 3/4 in (0, 1)
    and 1/4 in (1, 1). KL over the four cells (Laplace-smoothed) is 1/2 log(2/3) + 1/2 log((1/2) / q(1,0)) ~ 5.6
    nats; cells that share a row or column sum, such as (0, 1) and (1, 0), must not merge (that gives log(4/3))."""
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    g = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [1.0, 1.0]])
    alpha = 1e-5
    p = (torch.tensor([0, 2, 2, 0], dtype=torch.float64) + alpha) / (4 + 4 * alpha)  # cells (0,0) (0,1) (1,0) (1,1)
    q = (torch.tensor([0, 3, 0, 1], dtype=torch.float64) + alpha) / (4 + 4 * alpha)
    expected = (p * (p / q).log()).sum().item()
    assert state_space_divergence(x, g, n_bins=2, alpha=alpha).item() == pytest.approx(expected, rel=1e-9)
    assert state_space_divergence(x, x.flip(0), n_bins=2).item() == pytest.approx(0.0, abs=1e-12)


def test_hellinger_closed_form_on_two_tones_per_dimension():
    """Unsmoothed spectra of tones on exact Fourier bins: sin(w1 t) + 2 sin(w2 t) has power (1/5, 4/5) on (w1, w2)
    (power is amplitude squared), sin(w1 t) has (1, 0); Bhattacharyya coefficient sqrt(1/5), so H = sqrt(1 -
    5^-1/2) = 0.7435 on that dimension; an identical second dimension has H = 0 and D_H is their mean."""
    t = torch.arange(1000, dtype=torch.float64)
    w1, w2 = 2 * torch.pi * 50 / 1000, 2 * torch.pi * 200 / 1000
    a = torch.stack([torch.sin(w1 * t) + 2 * torch.sin(w2 * t), torch.sin(w2 * t)], 1)
    b = torch.stack([torch.sin(w1 * t), torch.sin(w2 * t)], 1)
    p = power_spectra(a, smoothing=0)
    assert p[0, 50].item() == pytest.approx(0.2, abs=1e-9) and p[0, 200].item() == pytest.approx(0.8, abs=1e-9)
    h = math.sqrt(1 - 5 ** -0.5)
    assert power_spectrum_distance(a, b, smoothing=0).item() == pytest.approx(h / 2, rel=1e-6)


def test_power_spectrum_distance_ignores_offset_and_scale():
    """Spectra are of the z-scored series: an offset (the 0 Hz bin) or a scale change of x_gen costs nothing."""
    t = torch.arange(600, dtype=torch.float64)
    x = torch.stack([torch.sin(0.05 * t) + 0.3 * torch.sin(0.31 * t), torch.cos(0.11 * t) ** 3], 1)
    assert power_spectrum_distance(x, 3.0 * x + 25.0).item() == pytest.approx(0.0, abs=1e-6)


def test_prediction_error_is_the_mean_squared_error():
    from estimators.dynamics import prediction_error

    x_true, x_pred = torch.zeros(4, 2), torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, -1.0], [0.0, 0.0]])
    assert prediction_error(x_true, x_pred).item() == pytest.approx((4 + 1) / 8)


def test_vector_fields_are_the_papers_equations():
    """Lorenz-63 (sigma 10, rho 28, beta 8/3) and Roessler (a = b = 0.2, c = 5.7) at (1, 2, 3), by hand."""
    from train.data.systems import SYSTEMS, lorenz63, roessler

    assert lorenz63(0.0, (1.0, 2.0, 3.0)) == pytest.approx([10 * (2 - 1), 1 * (28 - 3) - 2, 1 * 2 - 8])
    assert roessler(0.0, (1.0, 2.0, 3.0)) == pytest.approx([-2 - 3, 1 + 0.4, 0.2 + 3 * (1 - 5.7)])
    assert SYSTEMS["lorenz63"][0] is lorenz63 and SYSTEMS["roessler"][0] is roessler


@pytest.mark.parametrize("system", ["lorenz63", "roessler"])
def test_simulate_samples_the_ode_solution_every_dt_after_the_transient(system):
    """Row j of simulate(steps, dt, transient, seed) is the solution at t = (transient + j) dt from the default
    initial condition plus N(0, 1) draws of default_rng(seed), here against scipy's DOP853 at tolerance 1e-12 over
    4 time units; observation noise adds noise x (per-dimension std) of N(0, 1)."""
    import numpy as np
    from scipy.integrate import solve_ivp

    from train.data.systems import SYSTEMS

    rhs, default = SYSTEMS[system]
    x0 = np.asarray(default) + np.random.default_rng(4).standard_normal(3)
    t_eval = np.arange(200) * 0.02
    ref = solve_ivp(rhs, (0.0, t_eval[-1]), x0, t_eval=t_eval, method="DOP853", rtol=1e-12, atol=1e-12).y.T
    x = simulate(system, 150, 0.02, transient=50, seed=4)
    assert x.shape == (150, 3) and x.dtype == torch.float32
    torch.testing.assert_close(x.double(), torch.from_numpy(ref[50:]), atol=1e-4, rtol=1e-5)
    noisy = simulate(system, 150, 0.02, transient=50, seed=4, noise=0.5)
    ratio = (noisy - x).std(0) / x.std(0)
    assert ((ratio > 0.4) & (ratio < 0.6)).all(), ratio


def test_standardise_uses_the_training_statistics_for_every_series():
    """(x - mean_train) / std_train (unbiased std) for the training series and the others alike."""
    from train.data.systems import standardise

    train = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # mean (1, 2), std (sqrt 2, 2 sqrt 2)
    other = torch.tensor([[1.0, 2.0], [1.0 + 2 ** 0.5, 2.0 - 2 * 2 ** 0.5]])
    s_train, s_other = standardise(train, other)
    torch.testing.assert_close(s_train, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]) / 2 ** 0.5)
    torch.testing.assert_close(s_other, torch.tensor([[0.0, 0.0], [1.0, -1.0]]))


def test_state_space_grid_margin_uses_the_sample_std_as_the_authors_code():
    """The margin is 0.1 of the sample (n - 1) std, as Julia's std in the AL-RNN authors' code: for x_true = (0, 0,
    1, 1) that is 0.0577 (population std: 0.05), so a generated point at 1.055 lies inside the grid and counts.
    q = (1/4, 3/4) up to alpha against p = (1/2, 1/2); with the population std it is dropped and q = (1/3, 2/3).
    In bits the value is divided by ln 2."""
    x = torch.tensor([[0.0], [0.0], [1.0], [1.0]])
    g = torch.tensor([[0.0], [1.0], [1.0], [1.055]])
    alpha = 1e-5
    p = torch.tensor([2 + alpha, 2 + alpha], dtype=torch.float64) / (4 + 2 * alpha)
    q = torch.tensor([1 + alpha, 3 + alpha], dtype=torch.float64) / (4 + 2 * alpha)
    expected = (p * (p / q).log()).sum().item()
    assert expected == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-4)  # 0.1438 nats
    assert state_space_divergence(x, g, n_bins=2, alpha=alpha).item() == pytest.approx(expected, rel=1e-9)
    bits = state_space_divergence(x, g, n_bins=2, alpha=alpha, base="bits").item()
    assert bits == pytest.approx(expected / math.log(2), rel=1e-9)  # 0.2075 bits


def test_power_spectrum_distance_stays_finite_when_rounding_leaves_zero_to_one(monkeypatch):
    """sum_f sqrt(p_f p_f) of a normalised spectrum rounds to 1 + 2^-52 for this series, and the smoothed spectrum
    of a pure tone is ~0 far from its peak, where another convolution algorithm (FFT-based) can round it below 0:
    D_H must stay 0 for identical series and near its exact value otherwise, not sqrt of a negative (NaN)."""
    import estimators.dynamics as dynamics

    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ((power_spectra(x) ** 2).sqrt().sum(-1) > 1).any()  # the case the clamp to 1 is for
    assert power_spectrum_distance(x, x).item() == 0.0
    tone = torch.sin(2 * torch.pi * 10 * torch.arange(300, dtype=torch.float64) / 300)[:, None]
    exact = power_spectrum_distance(tone, x[:, :1]).item()
    smooth = dynamics._gaussian_smooth
    # a relative 1e-12 lower everywhere: the bins beyond the kernel's reach from bin 10 become negative
    monkeypatch.setattr(dynamics, "_gaussian_smooth", lambda s, sigma: smooth(s, sigma) - 1e-12 * s.amax(-1, True))
    assert (power_spectra(tone) == 0).any()  # clamped to 0, then normalised
    rounded = power_spectrum_distance(tone, x[:, :1]).item()
    assert 0.5 < exact < 1 and rounded == pytest.approx(exact, abs=1e-6)


def test_a_generated_trajectory_that_never_visits_the_data_region_has_infinite_divergence():
    """All of p_gen's mass outside the grid of x_true: KL(p_true || p_gen) is inf (smoothing alone would make p_gen
    uniform, a finite score better than that of a trajectory stuck in one wrong cell, so a model that ran off
    would be selected over one that settled). One generated point on the grid makes it finite again."""
    torch.manual_seed(0)
    x_true = torch.randn(2000, 2)
    away = x_true + 100.0
    assert state_space_divergence(x_true, away).item() == math.inf
    stuck = torch.full((2000, 2), 2.5)  # one cell, inside the grid but where the data rarely is
    assert math.isfinite(state_space_divergence(x_true, stuck).item())
    assert state_space_divergence(x_true, torch.cat([away, x_true[:1]])).item() < math.inf


def test_constant_dimensions_true_ones_refused_generated_ones_at_the_largest_distance():
    """True data constant in a dimension gave inf (D_stsp: a grid of zero width, every true point off it) and NaN
    (D_H: 0/0) even against itself; now a ValueError names the dimension. A free run that holds a dimension
    constant (a fixed point) has no spectrum there: distance 1 for that dimension, where it was NaN."""
    torch.manual_seed(0)
    x = torch.randn(500, 3)
    flat = x.clone()
    flat[:, 1] = 0.5
    for metric in (state_space_divergence, power_spectrum_distance):
        with pytest.raises(ValueError, match=r"x_true is constant in dimension\(s\) \[1\]"):
            metric(flat, flat)
    fixed_point = torch.full((500, 3), 0.1)
    assert power_spectrum_distance(x, fixed_point).item() == 1.0
    partly = x.clone()
    partly[:, 2] = 0.0
    expected = (2 * power_spectrum_distance(x[:, :2], partly[:, :2]) + 1) / 3
    assert power_spectrum_distance(x, partly).item() == pytest.approx(expected.item(), abs=1e-12)
