import math

import pytest
import torch

from estimators import largest_lyapunov_exponent
from train.data.systems import lorenz63


def test_logistic_map_at_r4_is_log2():
    """x -> 4 x (1 - x) has lambda = ln 2 exactly (conjugate to the tent map)."""
    z0 = torch.rand(8, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam = largest_lyapunov_exponent(lambda x: 4 * x * (1 - x), z0, steps=5000, transient=100)
    assert lam.mean().item() == pytest.approx(math.log(2), abs=0.01)


def test_henon_map_published_exponent():
    """Henon map (a=1.4, b=0.3): lambda_max = 0.4192 per step (Sprott, Chaos and Time-Series Analysis, 2003)."""
    def henon(z):
        return torch.stack([1 - 1.4 * z[:, 0] ** 2 + z[:, 1], 0.3 * z[:, 0]], -1)

    z0 = 0.1 * torch.rand(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lam = largest_lyapunov_exponent(henon, z0, steps=5000, transient=200)
    assert lam.mean().item() == pytest.approx(0.4192, abs=0.01)


def test_lorenz63_flow_and_a_stable_linear_map():
    """Lorenz-63 (sigma 10, rho 28, beta 8/3): lambda_max = 0.9056 per time unit (Sprott 2003); an RK4 map with
    dt = 0.01 gives it through dt. A contraction diag(0.5, 0.9) gives log 0.9."""
    dt = 0.01

    def f(z):
        return torch.stack(lorenz63(0.0, z.T), -1)

    def rk4(z):
        k1 = f(z)
        k2 = f(z + dt / 2 * k1)
        k3 = f(z + dt / 2 * k2)
        return z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + f(z + dt * k3))

    z0 = torch.tensor([[1.0, 1.0, 20.0]], dtype=torch.float64) + torch.randn(8, 3, dtype=torch.float64)
    lam = largest_lyapunov_exponent(rk4, z0, steps=5000, transient=500, dt=dt)
    assert lam.mean().item() == pytest.approx(0.9056, abs=0.03)
    contraction = largest_lyapunov_exponent(lambda z: z * torch.tensor([0.5, 0.9], dtype=torch.float64),
                                            torch.ones(1, 2, dtype=torch.float64), steps=200, transient=50)
    assert contraction.item() == pytest.approx(math.log(0.9), abs=1e-9)


def test_bad_inputs():
    with pytest.raises(ValueError, match="z0 must be"):
        largest_lyapunov_exponent(lambda z: z, torch.ones(3), steps=10)
    with pytest.raises(TypeError, match="z0 must be a floating tensor"):
        largest_lyapunov_exponent(lambda z: z, torch.ones(1, 2, dtype=torch.int64), steps=10)
    for setting in ({"delta": -1e-8}, {"delta": 0.0}, {"dt": 0}, {"dt": -1.0}, {"dt": math.inf}, {"delta": math.nan}):
        with pytest.raises(ValueError, match=f"{next(iter(setting))} must be a finite number > 0"):
            largest_lyapunov_exponent(lambda z: z, torch.ones(1, 2), steps=10, **setting)
    for setting in ({"steps": 10.0}, {"steps": 0}, {"transient": -1}, {"transient": 2.5}, {"seed": True}):
        with pytest.raises(ValueError, match=f"{next(iter(setting))} must be an integer >= "):  # 10.0: a range TypeError
            largest_lyapunov_exponent(lambda z: z, torch.ones(1, 2), **{"steps": 10, **setting})
    with pytest.raises(FloatingPointError, match="diverged or merged"):
        largest_lyapunov_exponent(lambda z: z * 1e200, torch.ones(1, 2, dtype=torch.float64), steps=10)


@pytest.mark.parametrize("bad_step", [0, 63, 64, 70, 130])
def test_a_merged_pair_is_named_at_its_step(bad_step):
    """The separations are checked once per 64 steps; the error still names the first step whose pair merged (or
    diverged), in the first block, at a block boundary or later, and the steps before it within the transient too."""
    calls = []

    def collapse_at(z):  # contracting until ``bad_step``, then every state maps to 0: the pair merges there
        calls.append(None)
        return z * 0.5 if len(calls) <= bad_step else torch.zeros_like(z)

    with pytest.raises(FloatingPointError, match=rf"diverged or merged at step {bad_step};"):
        largest_lyapunov_exponent(collapse_at, torch.ones(3, 2, dtype=torch.float64), steps=150, transient=10)


def test_delta_below_the_dtype_resolution_is_a_clear_error():
    """In float32 the default delta = 1e-8 rounds away at |z| ~ 0.3 (it failed as 'diverged or merged at step 0');
    the error names the resolution and the ways out, and a float32 map runs with a larger delta."""
    logistic = lambda z: 4 * z * (1 - z)  # noqa: E731
    with pytest.raises(FloatingPointError, match=r"delta=1e-08 is not well above the resolution of z0's dtype "
                                                 r"torch.float32 .*pass z0.double\(\)"):
        largest_lyapunov_exponent(logistic, torch.full((2, 1), 0.3), steps=100)
    lam = largest_lyapunov_exponent(logistic, torch.full((2, 1), 0.3), steps=5000, transient=100, delta=1e-4)
    assert lam.dtype == torch.float32 and lam.mean().item() == pytest.approx(math.log(2), abs=0.02)
    # a float64 state grown to 1e9 (a diverging model's free run): a FloatingPointError, which the tasks report as
    # NaN, as they do a diverged pair
    with pytest.raises(FloatingPointError, match=r"at \|z\| ~ 1e\+09 .*; pass a delta >= "):
        largest_lyapunov_exponent(logistic, torch.full((2, 1), 1e9, dtype=torch.float64), steps=10)


def test_an_orbit_that_outgrows_delta_is_an_error_not_the_smallest_exponent():
    """z -> A z with eigenvalues 1.2 and 0.5 from z0 = (1, 1): by step 100 |z| ~ 1e8 and a 1e-8 separation survives
    only along the contracting direction, so the estimate went to about ln 0.5 (-0.70 where ln 1.2 = 0.18) with no
    error. Now the growth is named at the first check past it; shorter runs and the fixed point 0 still measure."""
    a = torch.tensor([[1.2, 0.3], [0.0, 0.5]], dtype=torch.float64)
    z0 = torch.ones(1, 2, dtype=torch.float64)
    assert abs(float(largest_lyapunov_exponent(lambda z: z @ a.T, z0, 50)) - math.log(1.2)) < 5e-3
    assert abs(float(largest_lyapunov_exponent(lambda z: z @ a.T, 0 * z0, 400)) - math.log(1.2)) < 1e-3
    for steps, at in ((100, 99), (400, 127)):
        with pytest.raises(FloatingPointError, match=rf"the orbit grew to \|z\| ~ [0-9.e+]+ by step {at}, where delta"):
            largest_lyapunov_exponent(lambda z: z @ a.T, z0, steps)


def test_seed_draws_the_initial_perturbation_direction():
    """One step of the linear map diag(2, 0.5) gives lambda = log ||A v|| for the unit start direction v, a standard
    normal draw of a generator seeded ``seed``: the same seed gives the identical exponent, another seed another
    direction and another exponent; the global RNG plays no part."""
    a = torch.tensor([2.0, 0.5], dtype=torch.float64)
    z0 = torch.ones(3, 2, dtype=torch.float64)

    def one_step(seed):
        return largest_lyapunov_exponent(lambda z: z * a, z0, steps=1, seed=seed)

    for seed in (0, 5):
        v = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        expected = (a * v / v.norm(dim=-1, keepdim=True)).norm(dim=-1).log()
        torch.testing.assert_close(one_step(seed), expected, rtol=1e-7, atol=0)
    assert torch.equal(one_step(5), one_step(5))
    assert (one_step(5) - one_step(6)).abs().max() > 0.01


@pytest.mark.parametrize("delta", [math.inf, -math.inf, True, "1e-8", None])
def test_delta_that_is_not_a_finite_positive_number_is_refused(delta):
    """delta must be a finite number > 0: infinity, a bool, a string or None is a ValueError naming delta."""
    with pytest.raises(ValueError, match=r"delta must be a finite number > 0, got "):
        largest_lyapunov_exponent(lambda z: 0.5 * z, torch.ones(1, 2, dtype=torch.float64), steps=10, delta=delta)
