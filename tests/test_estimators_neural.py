"""Critic-based lower bounds and compress-then-estimate MI against Gaussian closed forms."""
import math

import pytest
import torch

from estimators import compressed_mutual_information, ksg_mutual_information, neural_mutual_information
from estimators.compressed import pca_projection

from .conftest import gaussian_pair
from .test_estimators_knn import low_rank_normals


@pytest.mark.parametrize("bound", ["infonce", "dv"])
def test_neural_bounds_reach_the_gaussian_mi(bound):
    torch.set_num_threads(1)
    x, y = gaussian_pair(2048, 0.75, seed=0)
    truth = -0.5 * math.log(1 - 0.75 ** 2)
    est = neural_mutual_information(x, y, bound=bound, steps=200, batch_size=128).item()
    assert truth - 0.08 < est < truth + 0.04  # a lower bound: at most a little above by estimation noise
    z = torch.randn(2048, 1, generator=torch.Generator().manual_seed(1))
    assert abs(neural_mutual_information(x, z, bound=bound, steps=100, batch_size=128).item()) < 0.03


@pytest.mark.parametrize("bound", ["infonce", "dv"])
def test_neural_bounds_of_independent_samples_are_near_zero_because_they_are_scored_on_held_out_pairs(bound):
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(512, 2, generator=g), torch.randn(512, 2, generator=g)
    assert abs(neural_mutual_information(x, y, bound=bound, steps=300).item()) < 0.03
    small = torch.randn(64, 4, generator=g), torch.randn(64, 2, generator=g)  # a probe's batch
    assert abs(neural_mutual_information(*small, bound=bound).item()) < 0.05
    # scored on the pairs it was trained on, the critic memorises them: far above the true 0
    assert neural_mutual_information(x, y, bound=bound, steps=300, held_out=0).item() > 0.3
    with pytest.raises(ValueError, match=r"held_out must be a fraction in \[0, 1\)"):
        neural_mutual_information(x, y, held_out=1.0)
    with pytest.raises(ValueError, match="split into 2 training, 1 validation and 1 scored pairs"):
        neural_mutual_information(x[:4], y[:4], steps=1)


def test_infonce_is_capped_at_log_batch():
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(2))
    est = neural_mutual_information(x, x.clone(), steps=150, batch_size=16).item()  # I(X;X) = inf
    assert 0.5 * math.log(16) < est <= math.log(16) + 1e-5


def test_compressed_ksg_recovers_high_dimensional_mi():
    x, y, mi = low_rank_normals(2000, 64, seed=3)
    assert pca_projection(x, 2).shape == (2000, 2)
    assert compressed_mutual_information(x, y, dim=2).item() == pytest.approx(mi, abs=0.1)
    enc = torch.nn.Linear(64, 2, dtype=torch.float64)  # any compressor can be passed
    val = compressed_mutual_information(x, y, compress_x=lambda v: enc(v).detach(), dim=2).item()
    assert val <= mi + 0.1  # data processing: compression cannot add information


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_compressed_mi_of_a_low_rank_layer_drops_its_rounding_noise_directions(dtype):
    """A Linear(2 -> 10) output has rank 2: the PCA keeps 2 directions, not 4 with two of rounding noise that KSG's
    standardisation blew up to unit variance (that cost 15 % of the MI). I(z; z_1 + 0.5 n) = ln(5) / 2."""
    g = torch.Generator().manual_seed(6)
    z = torch.randn(2000, 2, generator=g, dtype=dtype)
    y = z[:, :1] + 0.5 * torch.randn(2000, 1, generator=g, dtype=dtype)
    x = z @ torch.randn(2, 10, generator=g, dtype=dtype)
    assert pca_projection(x, 4).shape == (2000, 2)
    assert compressed_mutual_information(x, y).item() == compressed_mutual_information(x, y, dim=2).item()
    assert compressed_mutual_information(x, y).item() == pytest.approx(math.log(5) / 2, abs=0.05)
    full = torch.randn(500, 6, generator=g).to(dtype)  # full rank: every asked-for direction stays (bf16 kept 1 of 4)
    assert pca_projection(full, 4).shape == (500, 4)


def test_compressor_gets_the_input_in_its_own_dtype_and_shape():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 4, 4, generator=g)  # float32 (N, 4, 4)
    y = x[:, 0, :2] + torch.randn(300, 2, generator=g)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))  # float32, expects (N, 4, 4)
    with torch.no_grad():
        direct = ksg_mutual_information(enc(x), y).item()
    assert compressed_mutual_information(x, y, compress_x=enc).item() == pytest.approx(direct, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_neural_mi_returns_on_the_input_device():
    x, y = gaussian_pair(256, 0.75, seed=0)
    assert neural_mutual_information(x.cuda(), y.cuda(), steps=5, batch_size=64).device.type == "cuda"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_neural_and_compressed_reject_non_finite_samples(bad):
    x, y = gaussian_pair(64, 0.5, seed=1)
    x[5, 0] = bad
    for call in (lambda: neural_mutual_information(x, y, steps=1), lambda: neural_mutual_information(y, x, steps=1),
                 lambda: compressed_mutual_information(x, y, dim=1), lambda: compressed_mutual_information(y, x, dim=1)):
        with pytest.raises(ValueError, match=r"(x|y) has 1 NaN/inf"):
            call()


def test_neural_settings_are_checked_when_built_and_when_called():
    """steps <= 0 scored the untrained critic (about 0) as if it were an estimate; now it is an error."""
    from estimators import neural_mi

    x, y = gaussian_pair(64, 0.5, seed=1)
    with pytest.raises(ValueError, match=r"steps must be an integer >= 1, got 0"):
        neural_mutual_information(x, y, steps=0)
    for settings, message in (({"steps": -5}, r"neural_mi|infonce_mi: steps must be an integer >= 1, got -5"),
                              ({"batch_size": 1.5}, r"batch_size must be an integer >= 1, got 1.5"),
                              ({"held_out": 2}, r"held_out must be a fraction in \[0, 1\)"),
                              ({"bound": "nwj"}, r"bound must be one of \('infonce', 'dv'\), got 'nwj'")):
        with pytest.raises(ValueError, match=message):
            neural_mi(target=y, **settings)
    assert neural_mi(target=y, steps=1e2).kwargs["steps"] == 100  # a YAML 1e2 is a count


def _quantised_pair_and_split(n=400, seed=7):
    """Dependent pairs on a 1/16 grid (column sums are exact in any order, so moving y between rows leaves the
    standardisation bit for bit as it was), and the split the function draws for seed=0, held_out=0.5."""
    g = torch.Generator().manual_seed(seed)
    x = (16 * torch.randn(n, 2, generator=g)).round() / 16
    y = x + (5 * torch.randn(n, 2, generator=g)).round() / 16
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return x, y, order[:n // 4], order[n // 4:n // 2]  # validation half, scored half of the held-out pairs


def _scrambled(y, rows):
    y = y.clone()
    y[rows] = y[rows.roll(1)]  # the pairs in these rows become independent, nothing else changes
    return y


def test_neural_mi_is_scored_on_held_out_pairs_disjoint_from_the_validation_pairs():
    """Early stopping looks only at the validation half and the value is the bound on the other half: breaking the
    pairing of the scored half alone drops the estimate below 0, breaking the validation half alone changes which
    critic is kept (the untrained one, about 0) while the scored pairs stay intact."""
    x, y, valid, scored = _quantised_pair_and_split()
    base = neural_mutual_information(x, y, steps=60, batch_size=48).item()
    assert base > 1.0
    assert neural_mutual_information(x, _scrambled(y, scored), steps=60, batch_size=48).item() < 0
    assert abs(neural_mutual_information(x, _scrambled(y, valid), steps=60, batch_size=48).item()) < 0.2


def test_neural_mi_leaves_the_pairs_that_do_not_fill_a_last_batch_unscored():
    """100 scored pairs in batches of B = 48: the last 4 are not used (InfoNCE depends on B), so scrambling them
    leaves the estimate exactly as it was."""
    x, y, valid, scored = _quantised_pair_and_split()
    base = neural_mutual_information(x, y, steps=60, batch_size=48).item()
    assert neural_mutual_information(x, _scrambled(y, scored[96:]), steps=60, batch_size=48).item() == base
    assert neural_mutual_information(x, _scrambled(y, valid[96:]), steps=60, batch_size=48).item() == base


def test_compressed_mi_of_a_constant_layer_keeps_one_zero_direction():
    """A constant layer has no direction above the rank threshold; the projection still keeps one (all zeros), so
    the estimate is 0 instead of an error about a layer with no features."""
    x = torch.full((50, 8), 3.0)
    assert pca_projection(x, 2).shape == (50, 1) and (pca_projection(x, 2) == 0).all()
    y = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    assert compressed_mutual_information(x, y, dim=2).item() == pytest.approx(0.0, abs=1e-9)


def test_bounds_of_a_score_matrix_in_closed_form():
    """Scores a on the diagonal (joint pairs) and b off it: DV = a - log mean_{i != j} e^b = a - b (the joint pairs
    stay out of the marginal term), InfoNCE = log B + a - log(e^a + (B - 1) e^b); adding c to the diagonal raises
    DV by exactly c."""
    from estimators.neural import bound_value

    B, a, b = 5, 2.0, -0.5
    scores = torch.full((B, B), b, dtype=torch.float64).fill_diagonal_(a)
    assert bound_value(scores, "dv").item() == pytest.approx(a - b, abs=1e-12)
    assert bound_value(scores, "infonce").item() == pytest.approx(
        math.log(B) + a - math.log(math.exp(a) + (B - 1) * math.exp(b)), abs=1e-12)
    raised = scores + 0.7 * torch.eye(B, dtype=torch.float64)
    assert bound_value(raised, "dv").item() == pytest.approx(a - b + 0.7, abs=1e-12)
