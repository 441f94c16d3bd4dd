"""Critic-based lower bounds and compress-then-estimate MI against Gaussian closed forms."""
import math

import pytest
import torch

from estimators import compressed_mutual_information, neural_mutual_information
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
