"""k-NN estimators against closed forms, scikit-learn and scipy."""
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import differential_entropy

from estimators import kozachenko_leonenko_entropy, ksg_mi, ksg_mutual_information

from .conftest import gaussian_pair


def low_rank_normals(n, d, rho=0.8, noise=0.1, seed=0):
    """X = A u + noise, Y = B v + noise in d dims each, (u, v) 2-D latents with per-component correlation rho.

    Returns samples and the exact I(X;Y) = 1/2 (log|C_xx| + log|C_yy| - log|C|) of the joint covariance C.
    """
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((d, 2)), rng.standard_normal((d, 2))
    latent = np.block([[np.eye(2), rho * np.eye(2)], [rho * np.eye(2), np.eye(2)]])
    m = np.block([[a, np.zeros((d, 2))], [np.zeros((d, 2)), b]])
    cov = m @ latent @ m.T + noise ** 2 * np.eye(2 * d)
    mi = 0.5 * (np.linalg.slogdet(cov[:d, :d])[1] + np.linalg.slogdet(cov[d:, d:])[1] - np.linalg.slogdet(cov)[1])
    z = rng.multivariate_normal(np.zeros(2 * d), cov, size=n)
    return torch.from_numpy(z[:, :d]), torch.from_numpy(z[:, d:]), mi


def test_ksg_gaussian_closed_form_rho_075():
    x, y = gaussian_pair(2000, 0.75)
    truth = -0.5 * math.log(1 - 0.75 ** 2)
    assert truth == pytest.approx(0.4133, abs=1e-4)
    nats = ksg_mutual_information(x, y, k=3, variant=1).item()
    assert nats == pytest.approx(truth, abs=0.04)
    assert ksg_mutual_information(x, y, k=3, variant=2, base="bits").item() == pytest.approx(truth / math.log(2), abs=0.06)


def test_ksg_matches_sklearn_mutual_info_regression():
    sklearn = pytest.importorskip("sklearn.feature_selection")
    for seed, rho in ((1, 0.5), (2, 0.9)):
        x, y = gaussian_pair(1000, rho, seed)
        ref = sklearn.mutual_info_regression(x.numpy(), y[:, 0].numpy(), n_neighbors=3, random_state=0)[0]
        ours = ksg_mutual_information(x, y, k=3, variant=1).item()
        assert ours == pytest.approx(ref, abs=2e-3)  # sklearn adds 1e-10 noise; counts agree


def test_ksg_multivariate_normal_5x5_within_its_known_negative_bias():
    x, y = gaussian_pair(2000, 0.5, seed=7, dim=5)  # 5 independent pairs: I = -5/2 log(1 - rho^2)
    truth = -2.5 * math.log(1 - 0.25)
    est = ksg_mutual_information(x, y, k=5).item()
    # KSG underestimates in a 10-D joint space (Kraskov et al. Fig. 4): 0.533 measured against 0.719
    assert est == pytest.approx(0.533, abs=0.03) and est < truth


def test_ksg_multivariate_normal_25x25_low_intrinsic_dimension():
    x, y, mi = low_rank_normals(2000, 25)
    assert ksg_mutual_information(x, y).item() == pytest.approx(mi, abs=0.08)


def test_ksg_independent_is_zero_and_invariant_under_invertible_maps():
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(1500, 2, generator=g), torch.randn(1500, 1, generator=g)
    assert abs(ksg_mutual_information(x, z).item()) < 0.03
    x1, y1 = gaussian_pair(1500, 0.8, seed=4)
    base = ksg_mutual_information(x1, y1).item()
    mapped = ksg_mutual_information(torch.exp(x1), y1 ** 3 + 2 * y1).item()  # monotone maps keep the ranks
    assert mapped == pytest.approx(base, abs=0.05)


def test_ksg_chunking_does_not_change_the_value():
    x, y = gaussian_pair(700, 0.6, seed=5)
    full = ksg_mutual_information(x, y, variant=2, method="brute").item()
    assert ksg_mutual_information(x, y, variant=2, chunk_size=33, method="brute").item() == pytest.approx(full, abs=1e-9)
    for bad in (-1, 0, 2.5):  # -1 was torch.cat's "expected a non-empty list of Tensors"
        with pytest.raises(ValueError, match=rf"chunk_size must be None \(sized to memory\) or an integer >= 1, got {bad}"):
            ksg_mutual_information(x, y, chunk_size=bad, method="brute")


@pytest.mark.parametrize("dx,dy", [(1, 1), (3, 2)])
def test_kd_tree_and_brute_force_give_identical_counts(dx, dy):
    """The CPU KD-tree path and the any-device brute-force path find the same neighbours, duplicates and ties at
    the k-th joint distance (values on a grid) included."""
    g = torch.Generator().manual_seed(dx)
    x = torch.randn(1500, dx, generator=g)
    y = 0.7 * x[:, :dy] + 0.5 * torch.randn(1500, dy, generator=g)
    x[:40], y[:40] = x[40:80], y[40:80]  # duplicated joint points
    for a, b, standardise in ((x, y, True), ((2 * x).round() / 2, (2 * y).round() / 2, False)):
        for variant in (1, 2):
            brute = ksg_mutual_information(a, b, variant=variant, method="brute", standardise=standardise).item()
            assert ksg_mutual_information(a, b, variant=variant, method="tree", standardise=standardise).item() == brute
    for metric in ("euclidean", "chebyshev"):
        brute = kozachenko_leonenko_entropy(y[200:], metric=metric, method="brute").item()
        assert kozachenko_leonenko_entropy(y[200:], metric=metric, method="tree").item() == brute
    with pytest.raises(ValueError, match="method must be"):
        ksg_mutual_information(x, y, method="ball")


_FUSED_AGAINST_BRUTE = """
import torch
from estimators import knn, knn_fused
g = torch.Generator().manual_seed(0)
for n, dx, dy, k, dtype, grid in [(150, 1, 1, 3, torch.float64, False), (130, 3, 2, 5, torch.float32, False),
                                  (140, 1, 1, 3, torch.float64, True), (40, 2, 1, 16, torch.float64, True),
                                  (70, 1, 3, 1, torch.float32, True)]:
    x = torch.randn(n, dx, generator=g, dtype=dtype)
    y = 0.7 * x[:, :1] + 0.5 * torch.randn(n, dy, generator=g, dtype=dtype)
    if grid:  # ties at the k-th distance, and points whose k-th neighbour is at distance 0
        x, y = (2 * x).round(), (2 * y).round()
    x[:5], y[:5] = x[5:10], y[5:10]
    for variant in (1, 2):
        fused, brute = knn_fused.ksg_counts_fused(x, y, k, variant), knn._ksg_counts_brute(x, y, k, variant, 37)
        for name, a, b in zip(("tied", "k_i", "n_x", "n_y"), fused, brute):
            assert torch.equal(a, b.to(a.dtype)), (n, dx, dy, k, dtype, grid, variant, name)
print("fused == brute")
"""


def test_fused_ksg_kernels_give_the_brute_force_counts_under_tritons_interpreter():
    """The CUDA kernels of knn_fused, run by Triton's CPU interpreter: the same eps == 0 flags, k_i, n_x and n_y as
    the brute force (max-norm) for both variants, float32 and float64, 1 to 3 dims, k from 1 to 16, ties, duplicated
    points, and N below, across and not a multiple of the 64-row tiles."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", _FUSED_AGAINST_BRUTE], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=600)
    assert run.returncode == 0 and "fused == brute" in run.stdout, run.stderr[-3000:]


@pytest.mark.parametrize("kernel, dtype, shape", [  # about 9 s each here
    ("_kth_joint_distance", "fp64", dict(DX=1, DY=1, K=3, KP=4)),
    pytest.param("_kth_joint_distance", "fp32", dict(DX=2, DY=3, K=16, KP=16), marks=pytest.mark.slow),
    ("_row_counts", "fp64", dict(DX=1, DY=1, MODE=0)),
    ("_row_counts", "fp64", dict(DX=3, DY=2, MODE=1)),
    pytest.param("_row_counts", "fp32", dict(DX=3, DY=2, MODE=1), marks=pytest.mark.slow),
    ("_row_counts", "fp64", dict(DX=1, DY=2, MODE=2)),
])
def test_fused_kernels_compile_for_hopper_without_a_gpu(kernel, dtype, shape):
    """Each fused kernel goes through Triton's whole CUDA pipeline (TTIR, LLVM, PTX, and ptxas to a cubin) for
    sm_90, the H100's architecture, with no GPU present: a kernel that the interpreter runs but the compiler
    rejects fails here, not on a leased machine."""
    triton = pytest.importorskip("triton")
    compiler = pytest.importorskip("triton.compiler")
    from triton.backends.compiler import GPUTarget

    from estimators import knn_fused

    fn = getattr(knn_fused, kernel)
    pointers = ["x", "y", "eps"] if kernel == "_kth_joint_distance" else ["x", "y", "ez", "ex", "ey", "out"]
    constants = {**shape, "BLOCK_M": 64, "BLOCK_N": 64}
    signature = {name: ("*fp64" if name == "out" else f"*{dtype}") for name in pointers}
    signature.update({"n": "i32", **{name: "constexpr" for name in constants}})
    names = list(signature)
    assert names == fn.arg_names  # the signature above follows the kernel's arguments
    source = compiler.ASTSource(fn=fn, signature=signature,
                                constexprs={(names.index(k),): v for k, v in constants.items()})
    # Triton 3.8's pass pipeline fails now and then on an unchanged kernel ("'tt.broadcast' op requires the same
    # element type", about 1 run in 10 here, not reproducible by hash seed); a kernel that compiles on a retry is
    # one the compiler accepts, a real rejection fails all three tries
    for attempt in range(3):
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32))
            break
        except RuntimeError as err:
            if attempt == 2 or "PassManager::run failed" not in str(err):
                raise
    assert len(compiled.asm["cubin"]) > 0


def test_auto_falls_back_to_the_brute_force_once_if_the_fused_kernels_fail(monkeypatch):
    """A Triton or driver the kernels were not built with: method='auto' warns once and uses the brute force (the
    same counts) from then on; method='fused' raises."""
    from estimators import knn, knn_fused

    def broken(*args):
        raise RuntimeError("PTX assembly failed")

    monkeypatch.setattr(knn, "_fused_state", "unchecked")
    monkeypatch.setattr(knn_fused, "available", lambda x, y, k: True)
    monkeypatch.setattr(knn_fused, "ksg_counts_fused", broken)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 11, generator=g)
    y = x + torch.randn(300, 11, generator=g)  # 22 joint dimensions: past the KD-tree's limit, so not 'tree'
    brute = ksg_mutual_information(x, y, method="brute").item()
    with pytest.warns(RuntimeWarning, match="PTX assembly failed"):
        assert ksg_mutual_information(x, y).item() == brute
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ksg_mutual_information(x, y).item() == brute
    with pytest.raises(RuntimeError, match="PTX"):
        ksg_mutual_information(x, y, method="fused")


def test_auto_checks_the_fused_kernels_once_and_drops_them_if_they_disagree(monkeypatch):
    """Kernels that build but count wrongly (a miscompilation): the first 'auto' call checks them against the brute
    force, warns, and returns the brute force's value; the check runs once per process."""
    from estimators import knn, knn_fused

    calls = []

    def off_by_one(x, y, k, variant):
        calls.append(len(x))
        tied, kk, nx, ny = knn._ksg_counts_brute(x, y, k, variant, 64)
        return tied, kk, nx + 1, ny

    monkeypatch.setattr(knn, "_fused_state", "unchecked")
    monkeypatch.setattr(knn_fused, "available", lambda x, y, k: True)
    monkeypatch.setattr(knn_fused, "ksg_counts_fused", off_by_one)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 11, generator=g)
    y = x + torch.randn(400, 11, generator=g)  # 22 joint dimensions: not the KD-tree
    brute = ksg_mutual_information(x, y, method="brute").item()
    with pytest.warns(RuntimeWarning, match="differ from the brute force"):
        assert ksg_mutual_information(x, y).item() == brute
    assert calls == [300] and knn._fused_state == "failed"
    monkeypatch.setattr(knn, "_fused_state", "unchecked")
    monkeypatch.setattr(knn_fused, "ksg_counts_fused", lambda x, y, k, v: knn._ksg_counts_brute(x, y, k, v, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ksg_mutual_information(x, y).item() == brute  # agreeing kernels pass the check and are used
    assert knn._fused_state == "checked"


def test_fused_method_needs_cuda_and_the_max_norm():
    x, y = gaussian_pair(100, 0.5)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ksg_mutual_information(x, y, method="fused")
    with pytest.raises(ValueError, match="no fused search"):
        ksg_mutual_information(x, y, method="fused", metric="euclidean")
    with pytest.raises(ValueError, match="KSG only"):
        kozachenko_leonenko_entropy(x, method="fused")


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("method", ["tree", "brute"])
def test_ksg_on_tied_values_follows_gao_et_al(variant, method):
    """Points whose k-th joint neighbour is at distance 0 (a dead or saturated layer, discrete labels) use
    Gao et al.'s (2017) rule, which is the plug-in MI on discrete data: a constant layer carries nothing about
    the labels, a copy of a discrete variable carries its entropy. (Kraskov's counts with eps = 0 gave 8.3 nats
    for the constant layer, above H(labels) = log 2.)"""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (512, 1), generator=g).float()
    assert abs(ksg_mutual_information(torch.zeros(512, 4), labels, variant=variant, method=method).item()) < 0.01
    saturated = torch.randn(512, 4, generator=g).sign()  # 16 patterns x 2 labels: about 16 samples per cell
    assert abs(ksg_mutual_information(saturated, labels, variant=variant, method=method).item()) < 0.1
    x = torch.randint(0, 10, (2000, 1), generator=g)
    counts = torch.bincount(x[:, 0]).double() / len(x)
    plug_in_entropy = -(counts * counts.log()).sum().item()
    copy = ksg_mutual_information(x, x.clone(), variant=variant, method=method).item()
    assert copy == pytest.approx(plug_in_entropy, abs=0.01)
    # exactly the plug-in formula with digammas: point i in a cell of c points counts k = c - 1, n_x = n_y = c - 1
    psi, cells = torch.special.digamma, torch.bincount(x[:, 0]).double()[x[:, 0]]
    assert copy == pytest.approx((psi(cells - 1) - 2 * psi(cells) + psi(torch.tensor(2000.0))).mean().item(), rel=1e-6)
    assert ksg_mutual_information(torch.zeros(100, 2), torch.zeros(100, 1), variant=variant, method=method).item() \
        == pytest.approx(-1 / 99, rel=1e-5)


def test_kl_entropy_of_gaussian_and_uniform_and_scipy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    assert kozachenko_leonenko_entropy(x).item() == pytest.approx(math.log(2 * math.pi * math.e), abs=0.05)
    u = torch.rand(3000, 1, generator=g, dtype=torch.float64) * 4  # H = log 4
    for metric in ("euclidean", "chebyshev"):
        assert kozachenko_leonenko_entropy(u, metric=metric).item() == pytest.approx(math.log(4), abs=0.03)
    one = torch.randn(3000, generator=g, dtype=torch.float64)
    assert kozachenko_leonenko_entropy(one).item() == pytest.approx(float(differential_entropy(one.numpy())), abs=0.03)


def test_kl_entropy_brute_force_chunking_does_not_change_the_value():
    """Each chunk of the brute-force search drops its own rows' self-distances: several chunks give the value of
    one chunk (and of the KD-tree) on the same data."""
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    one = kozachenko_leonenko_entropy(x, method="brute", chunk_size=300).item()
    assert kozachenko_leonenko_entropy(x, method="brute", chunk_size=37).item() == pytest.approx(one, abs=1e-6)
    assert kozachenko_leonenko_entropy(x, method="tree").item() == pytest.approx(one, abs=1e-6)


def test_kl_max_norm_entropy_of_the_unit_cube_is_zero_in_three_dimensions():
    """The max-norm unit ball has volume 2^d: on U[0,1]^3 (H = 0 nats) the estimate is near 0, not (d-1) log 2
    = 1.39 off (the boundary bias is about +0.13 at N = 2000)."""
    u = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert kozachenko_leonenko_entropy(u, metric="chebyshev").item() == pytest.approx(0.0, abs=0.25)


def test_knn_errors_name_the_argument():
    with pytest.raises(ValueError, match="duplicate"):
        kozachenko_leonenko_entropy(torch.randn(5, 2).repeat(2, 1), k=1)
    with pytest.raises(ValueError, match=r"constant columns \[1\] \(dead units.*differential entropy is -inf"):
        kozachenko_leonenko_entropy(torch.cat([torch.randn(10, 1), torch.ones(10, 1)], 1))
    with pytest.raises(ValueError, match="same number of samples"):
        ksg_mutual_information(torch.randn(10, 1), torch.randn(11, 1))
    with pytest.raises(ValueError, match="k must be"):
        ksg_mutual_information(torch.randn(5, 1), torch.randn(5, 1), k=5)
    with pytest.raises(ValueError, match="variant"):
        ksg_mutual_information(torch.randn(5, 1), torch.randn(5, 1), variant=3)
    with pytest.raises(ValueError, match="bind target"):
        ksg_mi()


def test_ksg_mi_estimator_in_a_probe_against_a_bound_target():
    from torch import nn

    from estimators import Probe
    from layers import ProbePoint

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.h = ProbePoint()

        def forward(self, x):
            return self.h(2 * x + 1)

    x, y = gaussian_pair(800, 0.75, seed=6)
    with Probe(Net(), {"h": [ksg_mi(target=y)]}, max_samples=600) as probe:
        Net.forward(probe.model, x)
    row = probe.table()[0]
    assert row["estimator"] == "ksg1_mi"
    assert row["value"] == pytest.approx(ksg_mutual_information(x[:600], y[:600]).item(), abs=1e-6)


def test_ksg_with_euclidean_marginal_norms():
    """In 1-D every norm is |.|, so both metrics agree exactly; in 3-D the Euclidean-marginal variant (benchmark-mi's
    default) is closer to the Gaussian closed form, whose KSG bias is negative; the tree has no Euclidean path."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(800, 1, generator=g, dtype=torch.float64)
    y = 0.8 * x + 0.6 * torch.randn(800, 1, generator=g, dtype=torch.float64)
    assert ksg_mutual_information(x, y, metric="euclidean").item() == ksg_mutual_information(x, y, method="brute").item()
    x3 = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    y3 = 0.8 * x3 + 0.6 * torch.randn(2000, 3, generator=g, dtype=torch.float64)
    truth = -1.5 * math.log(1 - 0.8 ** 2)  # three independent pairs with correlation 0.8
    cheb = ksg_mutual_information(x3, y3, k=5).item()
    eucl = ksg_mutual_information(x3, y3, k=5, metric="euclidean").item()
    assert cheb < eucl < truth + 0.02
    with pytest.raises(ValueError, match="no tree search"):
        ksg_mutual_information(x3, y3, metric="euclidean", method="tree")
    with pytest.raises(ValueError, match="metric must be"):
        ksg_mutual_information(x3, y3, metric="manhattan")


@pytest.mark.parametrize("dims", [1, 3, 8])
def test_max_norm_by_dims_equals_cdist_exactly(dims):
    """The CUDA brute-force path builds the max-norm dimension by dimension; it must give cdist's exact values."""
    from estimators.knn import _max_norm_by_dims

    g = torch.Generator().manual_seed(dims)
    a, b = torch.randn(37, dims, generator=g, dtype=torch.float64), torch.randn(53, dims, generator=g, dtype=torch.float64)
    assert torch.equal(_max_norm_by_dims(a, b), torch.cdist(a, b, p=float("inf")))


def test_euclidean_neighbours_are_exact_above_the_row_count_where_cdist_switches_to_a_matmul():
    """torch.cdist's matmul form (above 25 rows) puts copies about 1e-8 apart; the estimators' distances are
    exact, so a copy is at distance 0: KL entropy sees the duplicate, and KSG's euclidean counts stay finite and
    treat ties as the max-norm does on a grid."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    x[0] = x[1]
    for method in ("tree", "brute"):
        with pytest.raises(ValueError, match="duplicate"):
            kozachenko_leonenko_entropy(x, k=1, method=method)
    xc, yc = torch.randn(300, 2, generator=g, dtype=torch.float64), torch.randn(300, 2, generator=g, dtype=torch.float64)
    xc[:10], yc[:10] = xc[10:20], yc[10:20]
    assert math.isfinite(ksg_mutual_information(xc, yc, metric="euclidean", k=1).item())
    grid = torch.randint(0, 5, (400, 1), generator=g).double()  # 1-D: both norms are |x_i - x_j|
    label = (grid + torch.randint(0, 2, (400, 1), generator=g)).double()
    for variant in (1, 2):
        euclid = ksg_mutual_information(grid, label, variant=variant, metric="euclidean", method="brute").item()
        assert euclid == ksg_mutual_information(grid, label, variant=variant, metric="chebyshev", method="brute").item()


def test_a_constant_variable_gives_zero_under_ksg1_and_minus_one_over_k_under_ksg2():
    y = torch.randn(500, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert ksg_mutual_information(torch.zeros(500, 1), y, variant=1).item() == pytest.approx(0, abs=1e-6)
    assert ksg_mutual_information(torch.zeros(500, 1), y, k=3, variant=2).item() == pytest.approx(-1 / 3 + 1 / 499, abs=1e-6)


def test_knn_estimators_at_extreme_float64_scales():
    """Columns are brought to magnitudes about 1 by exact powers of two first: at 1e154 the std overflowed and at
    1e-170 it underflowed (the column read as constant, KSG gave 0), and KL's distances overflowed to inf at 1e160.
    KSG is scale invariant; KL shifts by d log s (the result is float32, so its rounding at |H| ~ 737 is 6e-5)."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(1500, 2, generator=g, dtype=torch.float64)
    z[:, 1] = 0.8 * z[:, 0] + 0.6 * z[:, 1]
    mi = ksg_mutual_information(z[:, :1], z[:, 1:]).item()
    for scale in (1e154, 1e-170):
        assert ksg_mutual_information(z[:, :1] * scale, z[:, 1:]).item() == mi
    h = kozachenko_leonenko_entropy(z).item()
    for scale in (1e160, 1e-160):
        assert kozachenko_leonenko_entropy(z * scale).item() - 2 * math.log(scale) == pytest.approx(h, abs=1e-4)  # float32 at 737


def _ksg2_by_definition(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """KSG-2 written out point by point (Kraskov et al. eq. 9, Gao et al.'s rule where eps_i = 0), max-norms: the
    k joint neighbours include every point tied with the k-th, k_i counts them, and psi(k_i) - 1/k_i replaces
    psi(k) - 1/k."""
    from scipy.special import digamma

    n, terms = len(x), []
    for i in range(n):
        dx, dy = np.abs(x - x[i]).max(1), np.abs(y - y[i]).max(1)
        dz = np.maximum(dx, dy)
        others = np.arange(n) != i
        eps = np.sort(dz[others])[k - 1]
        if eps == 0:
            kk, nx, ny = ((d[others] == 0).sum() for d in (dz, dx, dy))
            terms.append(digamma(kk) - digamma(nx + 1) - digamma(ny + 1))
            continue
        near = others & (dz <= eps)
        ex, ey = dx[near].max(), dy[near].max()
        kk, nx, ny = near.sum(), (others & (dx <= ex)).sum(), (others & (dy <= ey)).sum()
        terms.append(digamma(kk) - 1 / kk - digamma(nx) - digamma(ny))
    return float(digamma(n) + np.mean(terms))


@pytest.mark.parametrize("method", ["tree", "brute"])
def test_ksg2_with_ties_at_a_non_zero_kth_distance_equals_its_definition(method):
    """On a fine lattice most points have several neighbours tied at the k-th distance eps_i > 0 (the branch a
    coarse lattice, where eps_i = 0, never reaches); both searches give the point-by-point definition."""
    g = np.random.default_rng(0)
    x = np.round(g.normal(size=(400, 2)) / 0.25) * 0.25
    y = np.round((x[:, :1] + g.normal(size=(400, 1))) / 0.25) * 0.25
    value = ksg_mutual_information(torch.from_numpy(x), torch.from_numpy(y), k=3, variant=2, standardise=False,
                                   method=method).item()
    assert value == pytest.approx(_ksg2_by_definition(x, y, 3), abs=1e-6)


def test_kozachenko_leonenko_by_hand_on_four_points():
    """x = 0, 1, 3, 7 with k = 1: nearest-neighbour distances 1, 1, 2, 4, so H = psi(N) - psi(k) + log c_1 +
    (1/N) sum log eps_i = (1 + 1/2 + 1/3) + log 2 + (3/4) log 2 (c_1 = 2, the length of the unit 1-D ball);
    log N in place of psi(N), a common slip, is 0.13 higher. (The result is float32.)"""
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert kozachenko_leonenko_entropy(x, k=1).item() == pytest.approx(11 / 6 + 1.75 * math.log(2), rel=1e-7)


@pytest.mark.parametrize("legacy", [False, True])
def test_bench_bmi_reuse_runs_our_ksg_on_the_saved_samples_without_benchmark_mi(tmp_path, monkeypatch, legacy):
    """benchmarks/bench_bmi.py --reuse reads an earlier run's samples and benchmark-mi's column (no venv, no
    network): our KSG-1 with the max-norm and with Euclidean marginals on every seed's sample, bmi's column kept.
    A file from before the settings were saved (a bare list of rows) takes --k and says so."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_bmi

    x = torch.randn(2, 300, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = x[..., :1] + 0.5 * torch.randn(2, 300, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    np.savez(tmp_path / "t.npz", x=x.numpy(), y=y.numpy())
    rows = [{"id": "t", "name": "toy", "dim_x": 2, "dim_y": 1, "mi_true": 0.8, "file": str(tmp_path / "t.npz"),
             "bmi_ksg": [0.7, 0.75]}]
    saved = rows if legacy else {"n": 300, "seeds": [4, 5], "k": 5, "tasks": rows}
    (tmp_path / "bmi_side.json").write_text(json.dumps(saved))
    monkeypatch.setattr(bench_bmi.venvs, "ensure_venv", lambda *a, **k: pytest.fail("--reuse built a venv"))
    bench_bmi.main(["--reuse", "--samples", str(tmp_path), "--out", str(tmp_path / "out"), "--k", "5"])
    result = json.loads((tmp_path / "out" / "bench_bmi_cpu.json").read_text())
    assert result["k"] == 5 and result["n"] == 300
    (row,) = result["tasks"]
    for metric in ("chebyshev", "euclidean"):
        assert row[f"ours_{metric}"] == pytest.approx(
            [float(ksg_mutual_information(x[s], y[s], k=5, metric=metric)) for s in range(2)], abs=1e-12)
    assert row["ours_chebyshev"] != row["ours_euclidean"] and row["bmi_ksg"] == [0.7, 0.75]
    table = (tmp_path / "out" / "bench_bmi_cpu.md").read_text()
    assert "| toy | 2 x 1 | 0.800 |" in table and ("(ids not recorded)" in table) == legacy
