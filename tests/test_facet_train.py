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


def test_emt_md_runs_each_draw_their_temperature_from_300_to_1200_k(monkeypatch):
    """Each MD snapshot's run starts from Maxwell-Boltzmann velocities and holds a Langevin thermostat at one
    temperature drawn from U(300, 1200) K (both at the same one). The MD itself is replaced by a recorder here:
    the 50 fs runs take seconds each."""
    from ase.md import langevin, velocitydistribution

    from train.data import emt

    drawn = []

    class Recorder:
        def __init__(self, atoms, timestep, temperature_K, **kwargs):
            drawn[-1].append(temperature_K)

        def run(self, steps):
            assert steps == 50

    def thermalize(atoms, temperature_K, rng):
        drawn.append([temperature_K])

    name = "thermalize_momenta" if hasattr(velocitydistribution, "thermalize_momenta") else \
        "MaxwellBoltzmannDistribution"
    monkeypatch.setattr(velocitydistribution, name, thermalize)
    monkeypatch.setattr(langevin, "Langevin", Recorder)
    monkeypatch.setattr(emt, "_label", lambda atoms: atoms)
    rng = np.random.default_rng(0)
    for _ in range(60):
        emt._md_snapshot("Cu", rng)
    velocities, thermostat = np.array(drawn).T
    assert np.array_equal(velocities, thermostat)
    assert 300 <= velocities.min() < 350 and 1150 < velocities.max() <= 1200, (velocities.min(), velocities.max())


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


def test_stress_errors_and_their_mae_cover_only_the_structures_with_a_stress_label():
    """errors()["stress"] holds the 9 components of predicted minus labelled stress of each fully periodic test
    structure, none of the slabs' (which have no label, padded as zeros), and the metric is their mean |error|."""
    from ase.stress import voigt_6_to_full_3x3_stress

    from zoo.atoms import graph_from_atoms

    task = PotentialTask(load_recipe("facet-emt", TINY))
    model = zoo.create_model("facet_small", channels=8, layers=1, cutoff=4.0)
    task.prepare(model)
    test = task.structures["test"]
    assert 0 < sum("stress" in a.calc.results for a in test) < len(test)  # slabs and bulk both present
    expected = []
    for atoms in test:
        if "stress" in atoms.calc.results:
            out = model.predict(graph_from_atoms(atoms, 4.0, dtype=torch.float32), stress=True)
            expected.append(out["stress"][0].detach().double().numpy() - voigt_6_to_full_3x3_stress(atoms.get_stress()))
    err = task.errors(model, "test")
    np.testing.assert_allclose(err["stress"], np.concatenate([x.ravel() for x in expected]), rtol=1e-4, atol=1e-7)
    assert task.evaluate(model)["test_s_mae_meV_A3"] == pytest.approx(1000 * np.abs(err["stress"]).mean(), rel=1e-9)


def test_loss_weights_default_to_those_of_the_facet_emt_recipe():
    """Without task_args the loss weighs energy 1, forces 10 and stress 0, the values facet-emt states."""
    recipe = load_recipe("facet-emt", TINY)
    stated = dict(load_recipe("facet-emt")["task_args"])
    recipe["task_args"] = {}
    task = PotentialTask(recipe)
    assert stated == {"energy_weight": 1.0, "forces_weight": 10.0, "stress_weight": 0.0}
    assert (task.w_energy, task.w_forces, task.w_stress) == (1.0, 10.0, 0.0)


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
    in one dtype. Two blocks: the second block's node features have several orders, where the backward's batched
    products (run inside autocast by the forces' autograd.grad) came out in bf16 until the backward turned
    autocast off; one block never reached them."""
    for blocks in (1, 2):
        final = fit(load_recipe("facet-emt", TINY + ["train.precision=bf16", "train.steps=2", "train.eval_every=2",
                                                     "train.ckpt_every=0", "probe=null", f"model_args.layers={blocks}"]),
                    tmp_path / f"run{blocks}")
        assert np.isfinite(final["test_e_mae_meV_atom"]) and np.isfinite(final["test_f_mae_meV_A"])


def test_mptrj_recipe_says_which_files_it_needs(tmp_path):
    with pytest.raises(KeyError, match=r"data.train, data.valid, data.test: extxyz files.*MACE-MP release; pass --set "
                                       r"data.train=PATH"):
        PotentialTask(load_recipe("facet-mptrj"))
    missing = [f"data.{s}={tmp_path / s}.extxyz" for s in ("train", "valid", "test")]
    with pytest.raises(FileNotFoundError, match="MPTrj"):
        PotentialTask(load_recipe("facet-mptrj", missing))


def test_compiled_training_on_forces_is_refused_up_front():
    """Forces alone (stress weight 0, as facet-emt) already need the double backward that torch.compile lacks;
    only an energy-only loss may compile."""
    with pytest.raises(ValueError, match="double backward"):
        PotentialTask(load_recipe("facet-emt", [*TINY, "train.compile=true"]))
    with pytest.raises(ValueError, match="double backward"):
        PotentialTask(load_recipe("facet-emt", [*TINY, "train.compile=true", "task_args.stress_weight=0.0"]))
    task = PotentialTask(load_recipe("facet-emt", [*TINY, "train.compile=true", "task_args.stress_weight=0.0",
                                                   "task_args.forces_weight=0.0"]))
    assert task.w_forces == 0.0 and task.w_stress == 0.0


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


def test_prepare_counts_neighbours_of_every_atom_and_the_loss_is_per_atom():
    """The mean neighbour count is edges / atoms per training structure (atom 0's edges included), averaged; the
    loss is w_E mean_s((dE_s / n_s)^2) + w_F mean_s(sum_i |dF_i|^2 / (3 n_s)) + w_S mean_s(|d sigma_s|^2 / 9),
    recomputed here from the model's own predictions on each structure of the batch."""
    from zoo.atoms import graph_from_atoms

    task = PotentialTask(load_recipe("facet-emt", TINY))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = zoo.create_model("facet_small", channels=8, layers=1, cutoff=4.0).double()
    task.prepare(model)
    graphs = [graph_from_atoms(a, 4.0) for a in task.structures["train"]]
    expected = np.mean([g.edge_index.shape[1] / len(g.numbers) for g in graphs])
    assert model.convolutions[0].avg_num_neighbors.item() == pytest.approx(expected, rel=1e-6)
    batch = {k: v[:4] for k, v in task.padded["train"].items()}
    sizes = (batch["numbers"] > 0).sum(1)
    assert len(set(sizes.tolist())) > 1 and not batch["has_stress"].all()  # a slab (16 atoms, no stress) and bulk
    loss, _ = task.loss(model, batch)
    terms = []
    for s, atoms in enumerate(task.structures["train"][:4]):
        out = model.predict(graph_from_atoms(atoms, 4.0), stress=True)
        n = len(atoms)
        e = ((out["energy"].item() - atoms.get_potential_energy()) / n) ** 2
        f = ((out["forces"].detach().numpy() - atoms.get_forces()) ** 2).sum() / (3 * n)
        st = 0.0
        if "stress" in atoms.calc.results:
            from ase.stress import voigt_6_to_full_3x3_stress

            st = ((out["stress"][0].detach().numpy() - voigt_6_to_full_3x3_stress(atoms.get_stress())) ** 2).mean()
        terms.append(task.w_energy * e + task.w_forces * f + task.w_stress * st)
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-8)


def test_metrics_are_mean_absolute_errors_and_held_out_batches_are_validation_structures():
    """evaluate() reports MAEs in meV (mean |error| of the per-atom energies, force components and stress entries
    of ``errors``), not RMS errors; held_out_batch, the batch probes measure, draws whole validation structures,
    never training ones."""
    task = PotentialTask(load_recipe("facet-emt", TINY))
    model = zoo.create_model("facet_small", channels=8, layers=1, cutoff=4.0)
    task.prepare(model)
    metrics = task.evaluate(model)
    for split in ("valid", "test"):
        err = task.errors(model, split)
        assert metrics[f"{split}_e_mae_meV_atom"] == pytest.approx(1000 * np.abs(err["energy"]).mean(), rel=1e-9)
        assert metrics[f"{split}_f_mae_meV_A"] == pytest.approx(1000 * np.abs(err["forces"]).mean(), rel=1e-9)
        assert np.sqrt((err["forces"] ** 2).mean()) > 1.01 * np.abs(err["forces"]).mean()  # RMS would differ
    held = task.held_out_batch(3, torch.Generator().manual_seed(0))
    valid, train = task.padded["valid"], task.padded["train"]
    for row in held["positions"]:
        assert any(torch.equal(row, v) for v in valid["positions"])
        assert not any(row.shape == t.shape and torch.equal(row, t) for t in train["positions"])


def _perfect_cell(element: str):
    """ASE's 2x2x2 cubic fcc cell of ``element`` at its reference lattice constant (32 atoms)."""
    from ase.build import bulk

    return bulk(element, "fcc", cubic=True).repeat((2, 2, 2))


def test_emt_scaled_and_strained_cells_carry_their_atoms_along_and_emts_own_labels(monkeypatch):
    """The rattle and strain structures are the perfect cell under a lattice scale U(0.97, 1.03) or the deformation
    I + eps (eps symmetric, entries within 0.04), the atoms moved with the cell (scale_atoms: fractional coordinates
    kept) and then rattled (0.05 A for strain); slabs have 6 A of vacuum on each side. Each label is what ASE's own
    EMT calculator gives for that structure. (MD snapshots are replaced by perfect cells: they take 20 s.)"""
    from ase.calculators.emt import EMT

    from train.data import emt

    monkeypatch.setattr(emt, "_md_snapshot", lambda el, rng: _perfect_cell(el))  # unlabelled, left out below
    frames = [x for x in generate_emt(per_element=8, alloys=0, seed=2) if x.calc is not None]
    overlap = {"rattle": np.zeros(2), "strain": np.zeros(2)}
    rattle_std = []
    for x in frames:
        kind, ideal = x.info["config_type"], _perfect_cell(x.get_chemical_symbols()[0])
        if kind in ("rattle", "strain"):
            deform = np.linalg.solve(ideal.cell.array, x.cell.array)  # cell = ideal cell @ deform
            if kind == "rattle":
                scale = deform[0, 0]
                assert np.allclose(deform, scale * np.eye(3), atol=1e-12) and 0.97 <= scale <= 1.03
            else:
                eps = deform - np.eye(3)
                assert np.allclose(eps, eps.T, atol=1e-12) and 0.01 < np.abs(eps).max() <= 0.04
            moved = x.positions - ideal.get_scaled_positions() @ x.cell.array  # the rattle alone
            unscaled = ideal.positions - ideal.get_scaled_positions() @ x.cell.array  # atoms left at the ideal sites
            overlap[kind] += np.array([(moved * unscaled).sum(), (unscaled ** 2).sum()])
            if kind == "strain":
                assert 0.035 < moved.std() < 0.065 and np.abs(moved.mean(0)).max() < 0.04
            else:
                rattle_std.append(moved.std())
        else:
            assert kind == "surface" and x.pbc.tolist() == [True, True, False]
            assert 11.6 < x.cell[2, 2] - np.ptp(x.positions[:, 2]) < 12.4
        reference = x.copy()
        reference.calc = EMT()
        assert np.isclose(x.get_potential_energy(), reference.get_potential_energy(), rtol=0, atol=1e-10)
        assert np.allclose(x.get_forces(), reference.get_forces(), rtol=0, atol=1e-10)
        if x.pbc.all():
            assert np.allclose(x.get_stress(), reference.get_stress(), rtol=0, atol=1e-12)
        else:
            assert "stress" not in x.calc.results
    assert sorted(x.info["config_type"] for x in frames) == sorted(["rattle", "strain", "surface"] * 2 * len(ELEMENTS))
    # the rattle amplitude U(0.03, 0.15) A per structure: 14 draws (seed 2) span 0.041 to 0.143 in sample std
    assert 0.025 < min(rattle_std) < 0.05 and 0.13 < max(rattle_std) < 0.165, rattle_std
    for kind, (projection, norm) in overlap.items():  # the rattle has no part along the unscaled sites' offset
        assert abs(projection / norm) < 0.3, (kind, projection / norm)  # atoms left there: 1


def test_emt_alloy_lattice_follows_vegards_law_of_its_drawn_fraction():
    """An alloy A_x B_(1-x) has the cubic cell 2 (x a_A + (1 - x) a_B) with x ~ U(0.2, 0.8), and each site holds A
    with probability x: over 40 alloys the fraction of A read back from the lattice constant is within binomial
    noise (about 0.07) of the counted fraction of A atoms, and never outside 0.2..0.8."""
    from ase.data import atomic_numbers, reference_states

    from train.data.emt import _alloy

    rng, gaps = np.random.default_rng(5), []
    for _ in range(40):
        a, b = (str(s) for s in rng.choice(ELEMENTS, 2, replace=False))
        atoms = _alloy(a, b, rng)
        lat_a, lat_b = (reference_states[atomic_numbers[s]]["a"] for s in (a, b))
        assert np.allclose(atoms.cell.array, atoms.cell[0, 0] * np.eye(3)) and len(atoms) == 32
        x = (atoms.cell[0, 0] / 2 - lat_b) / (lat_a - lat_b)
        assert 0.2 - 1e-9 <= x <= 0.8 + 1e-9
        gaps.append(abs(x - np.mean(np.array(atoms.get_chemical_symbols()) == a)))
    assert np.mean(gaps) < 0.1, np.mean(gaps)


def test_plain_labels_win_over_maces_ref_keys_in_the_same_frame(tmp_path):
    """A frame with both ASE's energy/forces/stress and MACE's REF_* keys keeps the plain ones (REF_* fill only
    what is missing): here the REF_stress fills the absent stress, the REF energy and forces are ignored. A
    REF_stress of 6 numbers is Voigt's order already and is kept as it is."""
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.ones((4, 3)))
    atoms.info["REF_energy"], atoms.arrays["REF_forces"] = -7.0, np.full((4, 3), 5.0)
    atoms.info["REF_stress"] = np.diag([1.0, 2.0, 3.0])
    voigt = bulk("Ni", "fcc", a=3.5, cubic=True)  # REF_stress may also come as Voigt's 6 components
    voigt.info["REF_energy"], voigt.arrays["REF_forces"] = -5.5, np.zeros((4, 3))
    voigt.info["REF_stress"] = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    write(tmp_path / "both.extxyz", [atoms, voigt], format="extxyz")
    frame, ref = read_structures(tmp_path / "both.extxyz")
    assert frame.get_potential_energy() == -1.0 and np.array_equal(frame.get_forces(), np.ones((4, 3)))
    assert np.array_equal(frame.get_stress(), [1.0, 2.0, 3.0, 0.0, 0.0, 0.0])
    assert ref.get_potential_energy() == -5.5 and np.array_equal(ref.get_stress(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])


def test_emt_dataset_regenerates_when_a_split_file_is_missing(tmp_path, monkeypatch):
    """The cache counts only when all three split files exist: with one deleted (a run stopped between writes)
    the next call writes it again, byte-identical. (MD snapshots are replaced by labelled perfect cells.)"""
    from train.data import emt

    monkeypatch.setattr(emt, "_md_snapshot", lambda el, rng: emt._label(_perfect_cell(el)))
    paths = emt_dataset(per_element=4, alloys=2, seed=1, root=tmp_path)
    written = paths["valid"].read_bytes()
    paths["valid"].unlink()
    assert emt_dataset(per_element=4, alloys=2, seed=1, root=tmp_path) == paths
    assert paths["valid"].read_bytes() == written and len(read_structures(paths["valid"])) > 0


def test_energy_scale_falls_back_to_the_energy_residuals_when_every_force_is_zero(tmp_path):
    """An equation of state of perfect cells has forces that are exactly 0 in extxyz: the force RMS gave s = 0, so
    every energy was sum E0(Z), no weight had a gradient and a run trained nothing, silently. s is then the RMS
    per-atom energy left after E0 (1 when that is 0 too), and the loss has gradients."""
    from ase.build import bulk
    from ase.io import write

    from train.data.emt import _label
    from train.tasks.potential import energy_scale

    assert energy_scale(np.ones((4, 3)) * 2, np.ones(3)) == 2.0
    assert energy_scale(np.zeros((4, 3)), np.array([0.3, -0.4])) == pytest.approx(np.sqrt(0.125))
    assert energy_scale(np.zeros((0, 3)), np.zeros(2)) == 1.0
    cells = []
    for element in ("Cu", "Ni"):
        for scale in np.linspace(0.94, 1.06, 6):
            atoms = bulk(element, "fcc", cubic=True)
            atoms.set_cell(atoms.cell * scale, scale_atoms=True)
            cells.append(_label(atoms))
    paths = {}
    for split, part in (("train", cells[::2] + cells[1::4]), ("valid", cells[1::4]), ("test", cells[3::4])):
        write(tmp_path / f"{split}.extxyz", part)
        paths[split] = tmp_path / f"{split}.extxyz"
    recipe = load_recipe("facet-mptrj", ["model=facet_small", "model_args.channels=8", "model_args.layers=1",
                                         "model_args.cutoff=4.0", *[f"data.{k}={v}" for k, v in paths.items()]])
    task = PotentialTask(recipe)
    assert all(np.abs(a.get_forces()).max() == 0 for a in task.structures["train"])
    model = zoo.create_model("facet_small", channels=8, layers=1, cutoff=4.0)
    task.prepare(model)
    train = task.structures["train"]
    n = np.array([len(a) for a in train])
    e0 = model.atomic_energies.double().numpy()
    left = np.array([a.get_potential_energy() - e0[a.numbers].sum() for a in train]) / n
    assert float(model.energy_scale) == pytest.approx(np.sqrt(np.mean(left ** 2))) and float(model.energy_scale) > 0
    loss, _ = task.loss(model, task.batch(4, torch.Generator().manual_seed(0)))
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0


def test_an_element_only_in_a_held_out_split_is_named_with_its_file(tmp_path):
    """It failed before training as well, but with the model's message (trained on Cu only; got ['Ni']), which
    named neither the split nor the file."""
    from ase.build import bulk
    from ase.io import write

    from train.data.emt import _label

    cells = {el: [_label(bulk(el, "fcc", cubic=True)) for _ in range(2)] for el in ("Cu", "Ni")}
    for split, part in (("train", cells["Cu"]), ("valid", cells["Cu"]), ("test", cells["Ni"] + cells["Cu"])):
        write(tmp_path / f"{split}.extxyz", part)
    recipe = load_recipe("facet-mptrj", ["model=facet_small", "model_args.channels=8", "model_args.layers=1",
                                         "model_args.cutoff=4.0",
                                         *[f"data.{s}={tmp_path / s}.extxyz" for s in ("train", "valid", "test")]])
    with pytest.raises(ValueError, match=r"the test split \(.*test.extxyz\) has \['Ni'\], which the training split "
                                         r"\(.*train.extxyz\) lacks: a potential predicts only the elements it was "
                                         r"trained on \(\['Cu'\]\)"):
        PotentialTask(recipe).prepare(zoo.create_model("facet_small", channels=8, layers=1, cutoff=4.0))
