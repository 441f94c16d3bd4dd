"""The shipped EMT-trained Facet checkpoint: it loads by name, reproduces its recorded test errors, and runs stable
NVE molecular dynamics through the ASE calculator."""
import numpy as np
import pytest

import zoo
from weights.manifest import pretrained_entry


@pytest.fixture(scope="module")
def entry():
    return pretrained_entry("facet_small", "facet_small_emt")


def test_shipped_checkpoint_reproduces_its_recorded_test_errors(entry):
    from train.data.emt import emt_dataset, read_structures
    from zoo.facet_calculator import FacetCalculator

    calc = FacetCalculator("facet_small", pretrained="facet_small_emt")
    assert calc.model.config.cutoff == entry["config"]["cutoff"]
    e_err, f_err = [], []
    for ref in read_structures(emt_dataset()["test"]):
        atoms = ref.copy()
        atoms.calc = calc
        e_err.append(abs(atoms.get_potential_energy() - ref.get_potential_energy()) / len(atoms))
        f_err.append(np.abs(atoms.get_forces() - ref.get_forces()).ravel())
    assert 1000 * np.mean(e_err) == pytest.approx(entry["ours"]["test_e_mae_meV_atom"], rel=0.02)
    assert 1000 * np.mean(np.concatenate(f_err)) == pytest.approx(entry["ours"]["test_f_mae_meV_A"], rel=0.02)


@pytest.mark.parametrize("steps", [100, pytest.param(1000, marks=pytest.mark.slow)])
def test_nve_dynamics_conserves_energy(steps):
    """Velocity Verlet, 1 fs, 32 Cu atoms from 300 K: total-energy drift below 1 meV/atom (the issue's check is
    1000 steps, marked slow at ~150 s here; measured spread 0.008 meV/atom)."""
    from ase import units
    from ase.build import bulk
    from ase.md import velocitydistribution
    from ase.md.verlet import VelocityVerlet

    from zoo.facet_calculator import FacetCalculator

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.calc = FacetCalculator(zoo.create_model("facet_small", pretrained="facet_small_emt"))
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or \
        velocitydistribution.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=300, rng=np.random.default_rng(0))
    md = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    energies = []
    md.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    md.run(steps)
    drift = (max(energies) - min(energies)) / len(atoms)
    print(f"NVE total-energy spread over {steps} fs: {1000 * drift:.4f} meV/atom")
    assert drift < 1e-3
