"""Matrix-based Renyi, Cauchy-Schwarz and diffusion spectral estimators against closed forms and published values."""
import math

import numpy as np
import pytest
import torch

from estimators import (cauchy_schwarz_divergence, cauchy_schwarz_mutual_information, diffusion_spectral_entropy,
                        diffusion_spectral_mutual_information, matrix_renyi_entropy, matrix_renyi_mutual_information)
from estimators.dse import diffusion_eigenvalues


def _log_normal_density_at(delta2, var, d=1):
    """log N(delta; 0, var I_d) with |delta|^2 = delta2."""
    return -0.5 * d * math.log(2 * math.pi * var) - delta2 / (2 * var)


def test_matrix_renyi_entropy_limits_closed_form():
    g = torch.Generator().manual_seed(0)
    far = torch.randn(64, 3, generator=g) * 1e3  # A = I / N: S = log2 N for every alpha
    for alpha in (0.5, 1.0, 1.01, 2.0):
        assert matrix_renyi_entropy(far, alpha=alpha, sigma=1.0).item() == pytest.approx(6.0, abs=1e-4)
    two_clusters = torch.cat([torch.zeros(10, 2), torch.full((30, 2), 50.0)])  # eigenvalues 1/4, 3/4
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert matrix_renyi_entropy(two_clusters, alpha=1.0, sigma=1.0).item() == pytest.approx(h, abs=1e-5)
    assert matrix_renyi_entropy(two_clusters, alpha=2.0, sigma=1.0).item() == pytest.approx(-math.log2(0.625), abs=1e-5)


def test_matrix_renyi_mi_of_identical_clusterings_and_independence():
    a = torch.cat([torch.zeros(20, 1), torch.full((20, 1), 100.0)])
    b = torch.cat([torch.full((20, 2), 7.0), torch.full((20, 2), -90.0)])  # same partition: I = H = 1 bit
    assert matrix_renyi_mutual_information(a, b, alpha=1.0, sigma_x=1.0, sigma_y=1.0).item() == pytest.approx(1.0, abs=1e-5)
    c = torch.cat([torch.zeros(10, 1), torch.full((10, 1), 9.0)]).repeat(2, 1)  # orthogonal partition: I = 0
    assert matrix_renyi_mutual_information(a, c, alpha=1.0, sigma_x=1.0, sigma_y=1.0).item() == pytest.approx(0.0, abs=1e-5)


def test_cauchy_schwarz_divergence_gaussians_closed_form():
    # Parzen V-statistics converge to D_CS of the densities smoothed by the kernel (variance sigma^2):
    # D = -2 log N(mu1 - mu2; s1 + s2 + sigma^2) + log N(0; 2 s1 + sigma^2) + log N(0; 2 s2 + sigma^2)
    g = torch.Generator().manual_seed(2)
    sigma, n = 0.5, 2000
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = 1 + torch.randn(n, 1, generator=g, dtype=torch.float64)
    truth = (-2 * _log_normal_density_at(1.0, 2 + sigma ** 2) + _log_normal_density_at(0, 2 + sigma ** 2)
             + _log_normal_density_at(0, 2 + sigma ** 2))
    assert cauchy_schwarz_divergence(x, y, sigma=sigma).item() == pytest.approx(truth, abs=0.03)
    assert abs(cauchy_schwarz_divergence(x, torch.randn(n, 1, generator=g), sigma=sigma).item()) < 0.01


def test_cauchy_schwarz_mi_bivariate_gaussian_closed_form():
    g = torch.Generator().manual_seed(3)
    rho, sigma, n = 0.75, 0.5, 2000
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    y = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    c, c0, s = np.array([[1, rho], [rho, 1]]), np.eye(2), sigma ** 2 * np.eye(2)

    def log_n0(m):  # log N(0; 0, m)
        return -0.5 * np.linalg.slogdet(2 * np.pi * m)[1]

    truth = -2 * log_n0(c + c0 + s) + log_n0(2 * c + s) + log_n0(2 * c0 + s)
    assert cauchy_schwarz_mutual_information(x, y, sigma_x=sigma, sigma_y=sigma).item() == pytest.approx(truth, abs=0.02)
    z = torch.randn(n, 1, generator=g)
    assert abs(cauchy_schwarz_mutual_information(x, z, sigma_x=sigma, sigma_y=sigma).item()) < 0.01


@pytest.fixture(scope="module")
def uniform_1000x256():
    return torch.from_numpy(np.random.default_rng(0).uniform(size=(1000, 256)))


@pytest.mark.parametrize("sigma,t,expected", [(10, 1, 2.3049), (10, 2, 0.0049), (16, 1, 1.0454), (1, 1, 9.9658)])
def test_dse_reproduces_the_reference_values(uniform_1000x256, sigma, t, expected):
    assert diffusion_spectral_entropy(uniform_1000x256, sigma=sigma, t=t).item() == pytest.approx(expected, abs=1e-3)


def test_diffusion_operator_spectrum_and_dsmi():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(200, 5, generator=g)
    lam = diffusion_eigenvalues(x, sigma=2.0)
    assert lam.max().item() == pytest.approx(1.0, abs=1e-9) and lam.min().item() > -1
    # two far-apart classes, labels = the class: DSE(X) = 1 bit more structure, I_D = H(Y) = 1 bit at large sigma
    x2 = torch.cat([torch.zeros(50, 2), torch.full((50, 2), 1e3)]) + 1e-3 * torch.randn(100, 2, generator=g)
    labels = torch.arange(100) // 50
    assert diffusion_spectral_entropy(x2, sigma=1.0).item() == pytest.approx(1.0, abs=1e-3)
    assert diffusion_spectral_mutual_information(x2, labels, sigma=1.0).item() == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(TypeError, match="labels"):
        diffusion_spectral_mutual_information(x2, labels.float())
    with pytest.raises(ValueError, match="one-hot"):
        diffusion_spectral_mutual_information(x2, torch.nn.functional.one_hot(labels))
    assert diffusion_spectral_mutual_information(x2, labels[:, None], sigma=1.0).item() == pytest.approx(1.0, abs=1e-3)


def test_dsmi_weights_each_class_by_its_share():
    """I_D = S_D(X) - sum_y p(y) S_D(X | y): class a (20 points) in two far clusters (1 bit), class b (80) in one
    (0 bits); X has three clusters (log2 3 bits), so I_D = log2 3 - 0.2 (equal weights would give log2 3 - 0.5)."""
    g = torch.Generator().manual_seed(5)
    centres = torch.tensor([[0.0, 0.0]] * 10 + [[1e3, 0.0]] * 10 + [[0.0, 1e3]] * 80)
    x = centres + 1e-3 * torch.randn(100, 2, generator=g)
    labels = torch.tensor([0] * 20 + [1] * 80)
    assert diffusion_spectral_mutual_information(x, labels, sigma=1.0).item() == pytest.approx(math.log2(3) - 0.2, abs=1e-3)


def _logsumexp(terms):
    m = max(terms)
    return m + math.log(sum(math.exp(t - m) for t in terms))


def test_cauchy_schwarz_divergence_of_far_apart_samples_is_finite_and_exact():
    # x = {-d, d}, y = mu + {-d, d}: the Parzen V-statistics in closed form; the cross term is ~exp(-3200)
    mu, d, sigma = 40.0, 0.5, 0.5
    x = torch.tensor([[-d], [d]], dtype=torch.float64)

    def log_k(delta):
        return -delta ** 2 / (2 * sigma ** 2)

    log_self = _logsumexp([log_k(0.0), log_k(2 * d)]) - math.log(2)
    log_cross = _logsumexp([log_k(mu), log_k(mu), log_k(mu - 2 * d), log_k(mu + 2 * d)]) - math.log(4)
    truth = 2 * log_self - 2 * log_cross
    assert cauchy_schwarz_divergence(x, x + mu, sigma=sigma).item() == pytest.approx(truth, rel=1e-6)
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(300, 1, generator=g, dtype=torch.float64), torch.randn(300, 1, generator=g, dtype=torch.float64)
    near, far = (cauchy_schwarz_divergence(a, b + shift, sigma=sigma).item() for shift in (20.0, 40.0))
    assert math.isfinite(far) and far > near > 0


def test_matrix_renyi_entropy_large_and_infinite_alpha():
    g = torch.Generator().manual_seed(0)
    far = torch.randn(64, 3, generator=g) * 1e3  # A = I/N: every eigenvalue 1/64, lambda^200 underflows
    for alpha in (200.0, 1e6, math.inf):
        assert matrix_renyi_entropy(far, alpha=alpha, sigma=1.0).item() == pytest.approx(6.0, abs=1e-4)
    two_clusters = torch.cat([torch.zeros(10, 2), torch.full((30, 2), 50.0)])  # eigenvalues 1/4, 3/4
    assert matrix_renyi_entropy(two_clusters, alpha=math.inf, sigma=1.0).item() == pytest.approx(-math.log2(0.75), abs=1e-5)
    h1e6 = matrix_renyi_entropy(two_clusters, alpha=1e6, sigma=1.0).item()
    assert h1e6 == pytest.approx(-math.log2(0.75) * 1e6 / (1e6 - 1), abs=1e-5)  # log2(0.75^a + 0.25^a) / (1 - a)
    with pytest.raises(ValueError, match="alpha"):
        matrix_renyi_entropy(two_clusters, alpha=float("nan"))


def test_matrix_renyi_mi_when_one_gram_matrix_is_identity_or_all_ones():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(64, 2, generator=g)
    far = torch.randn(64, 3, generator=g) * 1e3  # A = I/N: A o B / tr = I/N, so I = S(B), not 0
    h_y = matrix_renyi_entropy(y, alpha=1.0, sigma=1.0).item()
    assert matrix_renyi_mutual_information(far, y, alpha=1.0, sigma_x=1.0, sigma_y=1.0).item() == pytest.approx(h_y, abs=1e-4)
    const = torch.full((64, 3), 2.0)  # A = all ones / N: rank one, I = 0
    assert matrix_renyi_mutual_information(const, y, alpha=1.0, sigma_x=1.0, sigma_y=1.0).item() == pytest.approx(0.0, abs=1e-4)
    assert matrix_renyi_mutual_information(const, y, alpha=1.0).item() == pytest.approx(0.0, abs=1e-4)  # any width


@pytest.mark.parametrize("estimator", [matrix_renyi_mutual_information, cauchy_schwarz_mutual_information])
def test_median_width_of_imbalanced_labels_is_the_distance_between_classes(estimator):
    """With 60 % of the labels in one class, over half of the label pairs are at distance 0; the median of the
    non-zero distances (1 between the integer classes) is the width, where the plain median was 0 and raised."""
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(200, generator=g) < 0.6).long()
    x = torch.randn(200, 3, generator=g) + 2 * labels[:, None]
    automatic = estimator(x, labels).item()
    assert automatic == estimator(x, labels, sigma_y=1.0).item() and automatic > 0.05


def test_dse_subsampling_leaves_the_global_rng_alone():
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(1))
    state = torch.get_rng_state()
    first = diffusion_spectral_entropy(x, sigma=1.0, max_samples=100).item()
    assert torch.equal(torch.get_rng_state(), state)
    assert diffusion_spectral_entropy(x, sigma=1.0, max_samples=100).item() == first  # reproducible
    other = diffusion_spectral_entropy(x, sigma=1.0, max_samples=100, generator=torch.Generator().manual_seed(7)).item()
    assert torch.equal(torch.get_rng_state(), state) and other != first


def test_kernel_estimators_keep_k_ii_one_at_any_sigma():
    """The Gram matrix's distance of a point to itself is exactly 0 (cdist's matmul form gives ~1e-8 above 25
    rows), so the sigma -> 0 limits hold: log2 N for the Renyi entropy, and P = I for the diffusion operator."""
    x = torch.randn(60, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert matrix_renyi_entropy(x, sigma=1e-9).item() == pytest.approx(math.log2(60), abs=1e-6)
    assert diffusion_spectral_entropy(x, sigma=1e-9).item() == pytest.approx(math.log2(60), abs=1e-6)
    assert (x * 1e4).shape and matrix_renyi_entropy(x * 1e4, sigma=1e-5).item() == pytest.approx(math.log2(60), abs=1e-6)


def test_kernel_estimators_are_translation_invariant_far_from_the_origin():
    """The points are centred before the matmul-form distances, which cancelled at offsets of 1e6 to 1e8 (a Renyi
    entropy moved from 4.128 to 4.766 bits, a DSE from 5.12 to 7.50); the CS divergence's x-against-x terms
    keep K_ii = 1 at any offset."""
    g = torch.Generator().manual_seed(3)
    x, y = (torch.randn(120, 3, generator=g, dtype=torch.float64) for _ in range(2))
    for offset in (1e6, 1e8):
        assert matrix_renyi_entropy(x + offset, sigma=1.0).item() == pytest.approx(
            matrix_renyi_entropy(x, sigma=1.0).item(), abs=1e-5)
        assert diffusion_spectral_entropy(x + offset, sigma=1.0).item() == pytest.approx(
            diffusion_spectral_entropy(x, sigma=1.0).item(), abs=1e-5)
        assert matrix_renyi_mutual_information(x + offset, y - offset, sigma_x=1.0, sigma_y=1.0).item() == pytest.approx(
            matrix_renyi_mutual_information(x, y, sigma_x=1.0, sigma_y=1.0).item(), abs=1e-5)
    near = cauchy_schwarz_divergence(x, x + 0.3, sigma=1e-4).item()
    assert cauchy_schwarz_divergence(x + 1e4, x + 1e4 + 0.3, sigma=1e-4).item() == pytest.approx(near, rel=1e-6)


def test_renyi_entropy_is_continuous_at_alpha_one():
    """Within 1e-8 of alpha = 1 the Shannon limit is taken: the general form's cancellation cost 2.5e-5 bits at
    alpha = 1 + 1e-11, more than the limit differs from it."""
    x = torch.randn(80, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    shannon = matrix_renyi_entropy(x, alpha=1.0, sigma=1.0).item()
    for alpha in (1 + 1e-11, 1 - 1e-11, 1 + 1e-9, 1 + 1e-7):
        assert matrix_renyi_entropy(x, alpha=alpha, sigma=1.0).item() == pytest.approx(shannon, abs=1e-6)


def test_dse_checks_every_row_before_subsampling():
    x = torch.randn(300, 3)
    x[5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        diffusion_spectral_entropy(x, max_samples=100)


def test_cauchy_schwarz_divergence_default_width_is_pooled_so_it_is_symmetric():
    """The median width comes from x and y pooled, so D_CS(x, y) = D_CS(y, x) also for samples of different spreads
    (a width from x alone would differ between the two orders), and equals the divergence at that pooled width."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 2, generator=g, dtype=torch.float64)
    y = 5 * torch.randn(80, 2, generator=g, dtype=torch.float64)
    d_xy, d_yx = cauchy_schwarz_divergence(x, y).item(), cauchy_schwarz_divergence(y, x).item()
    assert d_xy > 0.1 and d_xy == pytest.approx(d_yx, rel=1e-6)
    pooled = torch.cat([x, y])
    width = float(torch.pdist(pooled).median())  # the median of the non-zero pairwise distances (each pair twice)
    assert d_xy == pytest.approx(cauchy_schwarz_divergence(x, y, sigma=width).item(), rel=1e-3)
