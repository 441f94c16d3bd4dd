"""Facet with the shared loop on offline EMT data: data determinism, statistics, a short run, the calculator."""
import numpy as np
import pytest
import torch

import zoo
from train import fit, load_recipe
from train.data.emt import ELEMENTS, emt_dataset, generate_emt, read_structures
from train.tasks.potential import PotentialTask

TINY = ["data.per_element=4", "data.alloys=4", "model_args.channels=8", "model_args.layers=1", "model_args.cutoff=4.0",
        "train.batch_size=2", "train.steps=6", "train.eval_every=3", "train.ckpt_every=3", "train.log_every=1",
        "probe.every=3", "task_args.stress_weight=1.0"]


def test_emt_data_is_deterministic_labelled_and_split(tmp_path):
    a = emt_dataset(per_element=4, alloys=2, seed=3, root=tmp_path / "a")
    b = emt_dataset(per_element=4, alloys=2, seed=3, root=tmp_path / "b")
    assert all(a[s].read_bytes() == b[s].read_bytes() for s in a)
    frames = {s: read_structures(p) for s, p in a.items()}
    assert sum(len(f) for f in frames.values()) == 4 * len(ELEMENTS) + 2
    kinds = {x.info["config_type"] for f in frames.values() for x in f}
    assert kinds == {"rattle", "strain", "surface", "md", "alloy"}
    for x in frames["train"]:
        assert np.isfinite(x.get_potential_energy()) and x.get_forces().shape == (len(x), 3)
        assert ("stress" in x.calc.results) == bool(x.pbc.all())
    with pytest.raises(FileNotFoundError, match="MPTrj"):
        read_structures(tmp_path / "missing.extxyz")
    with pytest.raises(FileNotFoundError, match="is a directory; data.train/valid/test name the files themselves"):
        read_structures(tmp_path)
    (tmp_path / "text.extxyz").write_text("hello world\n")  # ASE's own error does not name the file
    with pytest.raises(ValueError, match=r"text.extxyz is not a structure file ASE can read .*XYZError"):
        read_structures(tmp_path / "text.extxyz")


def test_emt_md_snapshots_are_independent_runs():
    """Held-out MD frames must not have a sibling a few fs away in the training split: version 1 of the data took
    an element's snapshots 10 fs apart from one trajectory (0.016 to 0.041 A RMSD between neighbours)."""
    md = {}
    for x in generate_emt(per_element=8, alloys=0, seed=0):
        if x.info["config_type"] == "md":
            md.setdefault(x.get_chemical_formula(), []).append(x.positions)
    assert sorted(md) == sorted(f"{el}32" for el in ELEMENTS) and all(len(p) == 2 for p in md.values())
    rmsd = [np.sqrt(((a - b) ** 2).sum(1).mean()) for a, b in md.values()]
    assert min(rmsd) > 0.08, rmsd


def test_prepare_fits_reference_energies_by_least_squares():
    task = PotentialTask(load_recipe("facet-emt", TINY))
    model = zoo.create_model("facet_small", channels=8, layers=1, cutoff=4.0)
    task.prepare(model)
    train = task.structures["train"]
    species = sorted({int(z) for a in train for z in a.numbers})
    counts = np.array([[np.sum(a.numbers == z) for z in species] for a in train])
    energies = np.array([a.get_potential_energy() for a in train])
    e0 = model.atomic_energies.numpy()[species]
    # least squares: the residual is orthogonal to every count column
    assert np.abs(counts.T @ (energies - counts @ e0)).max() < 1e-6
    assert model.atomic_energies.numpy()[[z for z in range(1, 90) if z not in species]].max() == 0.0
    forces = np.concatenate([a.get_forces() for a in train])
    assert model.energy_scale.item() == pytest.approx(np.sqrt((forces**2).mean()))


def test_evaluation_errors_are_per_atom_energies_and_force_components():
    """The task's errors against the model's own predictions on each held-out structure: energy error divided by
    that structure's atom count (meV/atom is per atom, not per structure) and every force component."""
    from zoo.atoms import graph_from_atoms

    task = PotentialTask(load_recipe("facet-emt", TINY))
    model = zoo.create_model("facet_small", channels=8, layers=1, cutoff=4.0)
    task.prepare(model)
    err = task.errors(model, "valid")
    e, f = [], []
    for atoms in task.structures["valid"]:
        out = model.predict(graph_from_atoms(atoms, 4.0, dtype=torch.float32))
        e.append((out["energy"].item() - atoms.get_potential_energy()) / len(atoms))
        f.append((out["forces"].detach().double().numpy() - atoms.get_forces()).ravel())
    assert len({len(a) for a in task.structures["valid"]}) > 1  # the division by N matters
    np.testing.assert_allclose(err["energy"], e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(err["forces"], np.concatenate(f), rtol=1e-4, atol=1e-5)


def test_facet_trains_with_the_shared_loop_and_the_result_runs_in_ase(tmp_path):
    from ase.build import bulk

    from zoo.facet_calculator import FacetCalculator

    final = fit(load_recipe("facet-emt", TINY), tmp_path / "run")
    for key in ("valid_e_mae_meV_atom", "valid_f_mae_meV_A", "test_e_mae_meV_atom", "test_f_mae_meV_A"):
        assert np.isfinite(final[key]) and final[key] > 0
    assert (tmp_path / "run" / "parity.png").is_file()
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = FacetCalculator(tmp_path / "run" / "model.safetensors")
    assert np.isfinite(atoms.get_potential_energy()) and np.isfinite(atoms.get_forces()).all()


def test_facet_trains_under_bf16_autocast(tmp_path):
    """precision=bf16 (what auto picks on recent GPUs) runs the forward under autocast and backward outside it; the
    edge tensor product's hand-written backward got bf16 gradients against a float32 coupling matrix until it ran
    in one dtype."""
    final = fit(load_recipe("facet-emt", TINY + ["train.precision=bf16", "train.steps=2", "train.eval_every=2",
                                                 "train.ckpt_every=0", "probe=null"]), tmp_path / "run")
    assert np.isfinite(final["test_e_mae_meV_atom"]) and np.isfinite(final["test_f_mae_meV_A"])


def test_mptrj_recipe_says_which_files_it_needs(tmp_path):
    with pytest.raises(KeyError, match=r"data.train, data.valid, data.test: extxyz files.*MACE-MP release; pass --set "
                                       r"data.train=PATH"):
        PotentialTask(load_recipe("facet-mptrj"))
    missing = [f"data.{s}={tmp_path / s}.extxyz" for s in ("train", "valid", "test")]
    with pytest.raises(FileNotFoundError, match="MPTrj"):
        PotentialTask(load_recipe("facet-mptrj", missing))


def test_compiled_training_on_forces_is_refused_up_front():
    with pytest.raises(ValueError, match="double backward"):
        PotentialTask(load_recipe("facet-emt", [*TINY, "train.compile=true"]))


def test_structure_files_name_a_frame_without_labels_and_read_mace_ref_keys(tmp_path):
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    labelled = bulk("Cu", "fcc", a=3.6, cubic=True)
    labelled.calc = SinglePointCalculator(labelled, energy=-1.0, forces=np.zeros((4, 3)))
    unlabelled = bulk("Al", "fcc", a=4.0, cubic=True)
    write(tmp_path / "plain.extxyz", [labelled, unlabelled], format="extxyz")
    with pytest.raises(ValueError, match=r"plain.extxyz, frame 1 \(from 0; Al4\): no energy and no forces label; .*"
                                         r"REF_energy and REF_forces"):
        read_structures(tmp_path / "plain.extxyz")
    no_forces = bulk("Cu", "fcc", a=3.6, cubic=True)
    no_forces.calc = SinglePointCalculator(no_forces, energy=-2.0)
    write(tmp_path / "energy_only.extxyz", [no_forces], format="extxyz")
    with pytest.raises(ValueError, match=r"frame 0 \(from 0; Cu4\): no forces label"):
        read_structures(tmp_path / "energy_only.extxyz")
    nan_energy = bulk("Cu", "fcc", a=3.6, cubic=True)
    nan_energy.calc = SinglePointCalculator(nan_energy, energy=float("nan"), forces=np.zeros((4, 3)))
    write(tmp_path / "nan.extxyz", [labelled, nan_energy], format="extxyz")
    with pytest.raises(ValueError, match=r"nan.extxyz, frame 1 \(from 0; Cu4\): its energy label holds NaN or inf"):
        read_structures(tmp_path / "nan.extxyz")  # it poisoned the reference energies' least squares unnamed

    mace = bulk("Ni", "fcc", a=3.5, cubic=True)  # MACE-MP's layout: labels only under REF_* keys
    forces = np.arange(12.0).reshape(4, 3)
    mace.info["REF_energy"], mace.arrays["REF_forces"] = -5.5, forces
    mace.info["REF_stress"] = np.diag([1.0, 2.0, 3.0])
    write(tmp_path / "mace.extxyz", [mace, labelled], format="extxyz")
    ref, plain = read_structures(tmp_path / "mace.extxyz")
    assert ref.get_potential_energy() == -5.5 and np.array_equal(ref.get_forces(), forces)
    assert np.array_equal(ref.get_stress(), [1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    assert plain.get_potential_energy() == -1.0 and "stress" not in plain.calc.results
