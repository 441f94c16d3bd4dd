"""The shipped EMT-trained Facet checkpoints (facet_small and facet_base): each loads by name, reproduces its recorded
test errors, relaxes with an ASE optimiser and runs stable NVE molecular dynamics through the ASE calculator."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo
from weights.manifest import pretrained_entry


SHIPPED = [("facet_small", "facet_small_emt"), ("facet_base", "facet_base_emt")]


@pytest.mark.parametrize("model, name", SHIPPED)
def test_shipped_checkpoint_reproduces_its_recorded_test_errors(model, name):
    from train.data.emt import emt_dataset, read_structures
    from zoo.facet_calculator import FacetCalculator

    entry = pretrained_entry(model, name)
    calc = FacetCalculator(model, pretrained=name)
    assert calc.model.config.cutoff == entry["config"]["cutoff"]
    e_err, f_err = [], []
    for ref in read_structures(emt_dataset()["test"]):
        atoms = ref.copy()
        atoms.calc = calc
        e_err.append(abs(atoms.get_potential_energy() - ref.get_potential_energy()) / len(atoms))
        f_err.append(np.abs(atoms.get_forces() - ref.get_forces()).ravel())
    assert 1000 * np.mean(e_err) == pytest.approx(entry["ours"]["test_e_mae_meV_atom"], rel=0.02)
    assert 1000 * np.mean(np.concatenate(f_err)) == pytest.approx(entry["ours"]["test_f_mae_meV_A"], rel=0.02)


@pytest.mark.parametrize("model, name", SHIPPED)
def test_fire_relaxes_a_rattled_alloy_cell(model, name):
    """ASE's FIRE through the calculator: a rattled 32-atom CuAu cell reaches fmax 0.05 eV/A, and the energy falls."""
    from ase.build import bulk
    from ase.optimize import FIRE

    from zoo.facet_calculator import FacetCalculator

    atoms = bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 2))
    atoms.symbols[::4] = "Au"
    atoms.rattle(0.08, seed=1)
    atoms.calc = FacetCalculator(model, pretrained=name)
    start = atoms.get_potential_energy()
    assert FIRE(atoms, logfile=None).run(fmax=0.05, steps=500)
    assert atoms.get_potential_energy() < start
    assert np.abs(atoms.get_forces()).max() < 0.05 * 1.0001


@pytest.mark.parametrize("model, name", [*SHIPPED[:1], pytest.param(*SHIPPED[1], marks=pytest.mark.slow)])
@pytest.mark.parametrize("steps", [100, pytest.param(1000, marks=pytest.mark.slow)])
def test_nve_dynamics_conserves_energy(model, name, steps):
    """Velocity Verlet, 1 fs, 32 Cu atoms from 300 K: total-energy drift below 1 meV/atom (the issue's check is
    1000 steps, marked slow at ~150 s here for facet_small; measured spread 0.008 meV/atom)."""
    from ase import units
    from ase.build import bulk
    from ase.md import velocitydistribution
    from ase.md.verlet import VelocityVerlet

    from zoo.facet_calculator import FacetCalculator

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.calc = FacetCalculator(zoo.create_model(model, pretrained=name))
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


def test_relaxation_example_script():
    """The README's relaxation example (benchmarks/facet_relax.py), on 2 of its rattled cells: both converge."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "facet_relax.py"), "--count", "2", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)  # the shipped facet_small_emt
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["count"] == 2 and result["converged"] == 2 and result["total_steps"] > 0


def test_the_mace_side_of_the_comparison_imports_nothing_of_paperzoo():
    """benchmarks/mace_side.py runs in MACE's own virtual environment, where paperzoo is not installed: it and the
    benchmarks' common module import only the standard library, torch and ASE (common.py once imported paperzoo's
    train.environment, and the MACE side died with ModuleNotFoundError before measuring anything)."""
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import common, mace_side; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'zoo', 'layers', 'estimators', 'train', 'weights', "
            "'timm', 'transformers', 'e3nn'}))")
    done = subprocess.run([sys.executable, "-c", code, str(root / "benchmarks")], capture_output=True, text=True,
                          cwd=root / "benchmarks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_trained_grid_mixing_aliases_less_on_finer_grids():
    """The whole-model symmetry test at initialisation shows rounding only (its small weights keep the grid MLP
    nearly linear); with the shipped model's trained weights the grid's aliasing shows: the rotation error of the
    forces falls at least tenfold from a 6 x 7 to a 10 x 11 to the default 18 x 17 grid, which is below 1e-8 eV/A
    in float64 (the grid holds no weights, so the same state dict loads at every resolution)."""
    import torch
    from ase.build import bulk
    from e3nn import o3

    from zoo.atoms import graph_from_atoms

    trained = zoo.create_model("facet_small", pretrained="facet_small_emt")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=0)
    atoms.numbers[::3] = 28
    torch.manual_seed(2)
    Q = o3.rand_matrix(dtype=torch.float64).numpy()
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ Q.T, scale_atoms=False)
    moved.set_positions(atoms.get_positions() @ Q.T)
    errors = []
    for res in [(6, 7), (10, 11), (18, 17)]:
        model = zoo.create_model("facet_small", grid_res=res)
        model.load_state_dict(trained.state_dict())
        model = model.double()
        base, out = (model.predict(graph_from_atoms(a, model.config.cutoff))["forces"].numpy() for a in (atoms, moved))
        errors.append(np.abs(out - base @ Q.T).max())
    print("trained facet_small_emt, force rotation error per grid (eV/A):", errors)
    assert errors[0] > 10 * errors[1] > 100 * errors[2] and errors[2] < 1e-8
