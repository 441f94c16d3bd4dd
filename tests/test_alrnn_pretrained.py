"""The shipped Lorenz-63 AL-RNN regenerates a chaotic two-lobed attractor (cheap checks; the full metrics are slow tests)."""
import copy

import pytest
import torch

import zoo
from estimators import largest_lyapunov_exponent


@pytest.fixture(scope="module")
def lorenz_model():
    return zoo.create_model("alrnn_m20_p2", pretrained=True).eval()


def test_free_run_switches_lobes_and_keeps_the_data_scale(lorenz_model):
    x0 = torch.tensor([[0.5, 0.5, 0.5]])
    x, z = lorenz_model.generate(x0, 21000, return_latents=True)
    x, z = x[0, 1000:], z[0, 1000:]
    assert torch.isfinite(x).all()
    # standardised Lorenz-63: unit std per dimension; x changes sign at every lobe switch (about every 1.5 time
    # units = 150 steps at dt 0.01, irregularly), a fixed point or one-lobe cycle would never switch
    assert ((x.std(0) > 0.7) & (x.std(0) < 1.3)).all(), x.std(0)
    switches = int((x[1:, 0].sign() != x[:-1, 0].sign()).sum())
    assert 40 < switches < 400, switches
    assert lorenz_model.symbolic_code(z).unique().numel() >= 3  # the paper's minimal code uses 3 subregions


def test_largest_lyapunov_exponent_is_positive_like_lorenz(lorenz_model):
    """Lorenz-63's lambda_max is 0.906 per time unit; the reconstruction must be chaotic at a similar rate."""
    x, z = lorenz_model.generate(torch.tensor([[0.5, 0.5, 0.5]]), 2000, return_latents=True)
    cell = copy.deepcopy(lorenz_model.cell).double()
    lam = largest_lyapunov_exponent(cell, z[0, -4:].double(), steps=3000, transient=300, dt=0.01)
    assert 0.5 < lam.mean().item() < 1.6, lam
