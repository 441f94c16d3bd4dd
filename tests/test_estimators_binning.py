"""Plug-in entropy and binned MI against closed forms and scikit-learn's mutual_info_score."""
import math

import pytest
import torch

from estimators import adaptive_binned_mi, binned_mutual_information, plugin_entropy
from estimators.binning import binned_plugin_entropy, discretise, symbols


def test_plugin_entropy_known_values():
    labels = torch.arange(8).repeat(5)
    assert plugin_entropy(labels, base="bits").item() == pytest.approx(3.0)
    assert plugin_entropy(torch.zeros(10, dtype=torch.long)).item() == 0.0
    rows = torch.tensor([[0, 1], [0, 1], [1, 0], [1, 1]])  # symbols with p = 1/2, 1/4, 1/4
    assert plugin_entropy(rows).item() == pytest.approx(1.5 * math.log(2))
    assert plugin_entropy(rows, miller_madow=True).item() == pytest.approx(1.5 * math.log(2) + 2 / 8)


def test_binned_mi_of_a_deterministic_map_is_the_entropy():
    x = torch.arange(4096)  # all distinct inputs, uniform: I(X;T) = H(T)
    t = torch.linspace(-1, 1, 4096)[torch.randperm(4096, generator=torch.Generator().manual_seed(0))][:, None]
    # 30 equal-width bins on [-1, 1], almost equally filled
    h = binned_plugin_entropy(t, n_bins=30, value_range=(-1, 1)).item()
    assert h == pytest.approx(math.log2(30), abs=0.01)
    assert binned_mutual_information(t, x, n_bins=30, value_range=(-1, 1)).item() == pytest.approx(h, abs=1e-5)


def test_binned_mi_value_range_bins_x_only():
    """A layer's value_range does not squeeze a floating target into the layer's bins."""
    g = torch.Generator().manual_seed(0)
    target = 5 * torch.randn(2000, 1, generator=g)
    layer = torch.tanh(target / 5 + 0.3 * torch.randn(2000, 1, generator=g))
    ranged = binned_mutual_information(layer, target, n_bins=30, value_range=(-1, 1)).item()
    codes = discretise(target, 30)  # the target on its own [min, max]
    assert ranged == pytest.approx(binned_mutual_information(layer, codes, n_bins=30, value_range=(-1, 1)).item(), abs=1e-6)
    assert binned_mutual_information(layer, target, n_bins=30, value_range=(-1, 1), y_range=(-20, 20)).item() != ranged


def test_binned_mi_matches_sklearn_mutual_info_score_on_codes():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5000, generator=g)
    y = x + 0.5 * torch.randn(5000, generator=g)
    ours = binned_mutual_information(x, y, n_bins=12, base="nats").item()
    cx, cy = discretise(x[:, None], 12), discretise(y[:, None], 12)
    ref = metrics.mutual_info_score(cx[:, 0].numpy(), cy[:, 0].numpy())
    assert ours == pytest.approx(ref, abs=1e-5)
    gauss = -0.5 * math.log(1 - 1 / 1.25)  # rho^2 = 1 / 1.25
    assert ours == pytest.approx(gauss, abs=0.12)  # binning is biased, coarse bins lose information


def test_equal_mass_bins_hold_equal_counts_and_independent_mi_is_small():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 1, generator=g) ** 3  # heavy tails: equal-width bins would be mostly empty
    counts = torch.bincount(discretise(x, 10, strategy="equal_mass").flatten())
    assert counts.tolist() == [300] * 10
    z = torch.randint(0, 2, (3000,), generator=g)
    assert binned_mutual_information(x, z, n_bins=10, strategy="equal_mass").item() < 0.01
    est = adaptive_binned_mi(target=z, n_bins=10)
    assert est(x).item() == pytest.approx(binned_mutual_information(x, z, n_bins=10, strategy="equal_mass").item())


def test_binning_errors():
    with pytest.raises(ValueError, match="n_bins"):
        discretise(torch.randn(5, 1), 0)
    with pytest.raises(ValueError, match="strategy"):
        discretise(torch.randn(5, 1), 3, strategy="kmeans")
    with pytest.raises(ValueError, match="NaN"):
        binned_mutual_information(torch.tensor([1.0, float("nan")]), torch.tensor([0, 1]))


def test_equal_mass_bins_give_tied_mass_its_own_bin():
    g = torch.Generator().manual_seed(3)
    relu = torch.relu(torch.randn(2000, 5, generator=g))  # a ReLU layer: ~50% exact zeros
    codes = discretise(relu, 30, strategy="equal_mass")
    counts = torch.bincount(codes.flatten(), minlength=30)
    zeros = int((relu == 0).sum())
    assert codes.max().item() == 29 and (counts > 0).all()  # every bin used
    assert counts[0].item() == zeros and (codes[relu == 0] == 0).all()  # the zeros, and only they, in bin 0
    share = (relu.numel() - zeros) / 29  # the other 29 bins share the positive entries equally
    assert counts[1:].min().item() >= math.floor(share) and counts[1:].max().item() <= math.ceil(share)
    tanh = torch.tanh(torch.randn(3000, 4, generator=g, dtype=torch.float64))
    tanh[:, 0], tanh[:, 1], tanh[:1000, 2] = -1.0, 1.0, 0.25  # saturated units at both ends, a dead unit inside
    codes = discretise(tanh, 20, strategy="equal_mass")
    counts = torch.bincount(codes.flatten(), minlength=20)
    for value in (-1.0, 0.25, 1.0):  # each atom alone in its bin
        bin_ = codes[tanh == value].unique()
        assert bin_.numel() == 1 and counts[bin_].item() == int((tanh == value).sum())
    rest = counts[counts < 1000]
    # 5000 continuous entries in 17 bins: equal within each run between atoms, runs get whole numbers of bins
    assert rest.numel() == 17 and ((rest - 5000 / 17).abs() <= 0.05 * 5000 / 17).all()
    assert torch.equal(codes, discretise(tanh.float(), 20, strategy="equal_mass"))  # ranks, not values
    assert discretise(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), 30, strategy="equal_mass").tolist() == [[0, 1], [1, 1]]


def test_equal_mass_runs_get_a_rounded_share_of_the_bins():
    """20 values in 4 bins: 7 zeros hold more than a bin's share (5), get their own bin, and the 13 others share
    the 3 left, ~4.3 each; the 4 values below the zeros are 0.92 of a share, rounded to one bin of their own
    (not merged into the zeros' bin), the 9 above get 2 bins."""
    x = torch.tensor([-4.0, -3, -2, -1] + [0.0] * 7 + list(range(1, 10)))[:, None]
    codes = discretise(x, 4, strategy="equal_mass")
    counts = torch.bincount(codes.flatten(), minlength=4)
    assert (counts > 0).all()
    assert counts[codes[x == 0].unique()].tolist() == [7]  # the zeros, and only they, in their bin
    others = counts[counts != 7]
    assert others.min().item() >= math.floor(13 / 3) and others.max().item() <= math.ceil(13 / 3)
    assert codes.flatten().tolist() == [0] * 4 + [1] * 7 + [2] * 4 + [3] * 5  # 1..4 | 5..9: middle ranks


def test_equal_mass_bins_are_all_used_when_ties_allow():
    """Small integers with ties (counts, argmax codes, quantised activations): while there are at least as many
    distinct values as bins, every bin gets entries. Placing a tied value by its first rank left bins empty (38 of
    these 2,152 draws, e.g. [3, 2, 0, 4, 5] below); by its middle rank none is."""
    x = torch.tensor([3.0, 3, 1, 0, 4, 3, 4, 2, 5, 4, 2, 3, 1, 4])[:, None]
    assert torch.bincount(discretise(x, 5, strategy="equal_mass").flatten(), minlength=5).tolist() == [1, 2, 2, 4, 5]
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        n, high, bins = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((5, 60), (2, 12), (2, 8)))
        x = torch.randint(0, high, (n, 1), generator=g).float()
        if x.unique().numel() >= bins:
            assert (torch.bincount(discretise(x, bins, strategy="equal_mass").flatten(), minlength=bins) > 0).all(), x


def test_equal_width_values_on_an_edge_go_to_the_upper_bin_as_numpy_histogram():
    """Bins are [a, b) except the last, [a, b], as numpy.histogram: counts of values exactly on the edges agree."""
    np = pytest.importorskip("numpy")
    for n_bins, values in ((2, [-1.0, 0.0, 1.0]), (4, [-1.0, -0.5, -0.5, 0.0, 0.5, 1.0, 1.0])):
        x = torch.tensor(values)[:, None]
        counts = torch.bincount(discretise(x, n_bins, value_range=(-1, 1)).flatten(), minlength=n_bins)
        assert counts.tolist() == np.histogram(values, bins=n_bins, range=(-1, 1))[0].tolist()


def test_equal_width_value_range_must_be_increasing():
    """A value_range with low >= high has no (positive-width) bins: an error, not codes from a negative width."""
    x = torch.linspace(-1, 1, 10)[:, None]
    for bad in ((1.0, 1.0), (1.0, -1.0)):
        with pytest.raises(ValueError, match="value_range must be .low, high. with low < high"):
            discretise(x, 4, value_range=bad)
        with pytest.raises(ValueError, match="value_range"):
            binned_mutual_information(x, x, n_bins=4, value_range=bad)


@pytest.mark.parametrize("rows", [
    torch.randint(0, 30, (2000, 12), generator=torch.Generator().manual_seed(0)),            # bin indices
    torch.randint(0, 2, (300, 200), generator=torch.Generator().manual_seed(1)).bool(),     # 2^200 keys: re-ranked
    torch.randn(200, 3, generator=torch.Generator().manual_seed(2)).round(),                # floats with ties
    torch.randint(-5, 5, (500,), generator=torch.Generator().manual_seed(3)),               # one column
    torch.randint(0, 2, (40, 3, 4), generator=torch.Generator().manual_seed(4)),            # rows of any shape
])
def test_symbols_rank_rows_as_torch_unique(rows):
    """symbols() is the inverse of torch.unique(dim=0): the same ids (lexicographic ranks), not just the same
    partition, so every binned estimate is unchanged."""
    expected = torch.unique(rows.reshape(len(rows), -1), dim=0, return_inverse=True)[1]
    assert torch.equal(symbols(rows), expected)
