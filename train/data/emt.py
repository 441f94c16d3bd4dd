"""Offline interatomic-potential data: structures labelled by ASE's EMT calculator, written as extxyz.

EMT (effective-medium theory) is a cheap many-body potential for the fcc metals Cu, Al, Ni, Ag, Au, Pd, Pt;
it needs no download and gives energies, forces and stresses that behave like a small DFT dataset. The
generator is deterministic in ``seed``: the same seed writes byte-identical files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ELEMENTS = ("Cu", "Al", "Ni", "Ag", "Au", "Pd", "Pt")
# 2 (2026-11-29): every MD snapshot is its own run; version 1 took each element's snapshots 10 fs apart from one
# trajectory, so the frame split left near-copies of held-out frames in the training split
DATA_VERSION = 2
SPLITS = ("train", "valid", "test")


def _label(atoms):
    """Attach EMT energy, forces and (fully periodic cells only) stress as a SinglePointCalculator."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = EMT()
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        results["stress"] = atoms.get_stress(voigt=True)
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _bulk(element: str, scale: float, repeat=(2, 2, 2)):
    from ase.build import bulk

    atoms = bulk(element, "fcc", cubic=True)
    if scale != 1.0:
        atoms.set_cell(atoms.cell * scale, scale_atoms=True)
    return atoms.repeat(repeat)


def _alloy(a: str, b: str, rng: np.random.Generator):
    """Random substitutional A_x B_(1-x) on a 2x2x2 fcc cell with Vegard's-law lattice constant."""
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states

    x = rng.uniform(0.2, 0.8)
    lat = x * reference_states[atomic_numbers[a]]["a"] + (1 - x) * reference_states[atomic_numbers[b]]["a"]
    atoms = bulk(a, "fcc", a=lat, cubic=True).repeat((2, 2, 2))
    symbols = np.where(rng.random(len(atoms)) < x, a, b)
    atoms.set_chemical_symbols(symbols.tolist())
    return atoms


def _md_snapshot(element: str, rng: np.random.Generator, steps: int = 50):
    """The end of one Langevin MD run (EMT, 1 fs steps, ``steps`` of them) from the perfect 2x2x2 cell with
    Maxwell-Boltzmann velocities at its own temperature U(300, 1200) K. Every snapshot is its own run, so no two
    are a few fs apart on one trajectory (which would put near-copies into different splits)."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md import velocitydistribution

    atoms = _bulk(element, 1.0)
    temperature = rng.uniform(300, 1200)
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or \
        velocitydistribution.MaxwellBoltzmannDistribution  # ASE >= 3.29 renamed it
    thermalize(atoms, temperature_K=temperature, rng=rng)
    atoms.calc = EMT()
    Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.02, fixcm=False, rng=rng).run(steps)
    snap = atoms.copy()
    snap.info["config_type"] = "md"
    return _label(snap)


def generate_emt(per_element: int = 40, alloys: int = 60, seed: int = 0):
    """Labelled structures (list of ase.Atoms): per element ``per_element`` structures split evenly over
    rattled bulk, strained cells, (111) surfaces and MD snapshots, plus ``alloys`` random binary alloys.

    - rattle: 2x2x2 cubic fcc (32 atoms), lattice scaled by U(0.97, 1.03), Gaussian rattle 0.03-0.15 A;
    - strain: the same cell under a random symmetric strain with entries U(-0.04, 0.04), rattle 0.05 A;
    - surface: fcc111 slab 2x2x4 (16 atoms) with 6 A vacuum, periodic in x and y only, rattle 0.05 A;
    - md: Langevin MD snapshots at 300-1200 K, each from its own 50 fs run (see ``_md_snapshot``);
    - alloy: binary 2x2x2 cells of two random elements, rattle 0.05 A.
    """
    from ase.build import fcc111

    rng = np.random.default_rng(seed)
    frames = []
    k = max(per_element // 4, 1)
    for el in ELEMENTS:
        for _ in range(k):
            atoms = _bulk(el, rng.uniform(0.97, 1.03))
            atoms.rattle(rng.uniform(0.03, 0.15), rng=rng)
            atoms.info["config_type"] = "rattle"
            frames.append(_label(atoms))
        for _ in range(k):
            atoms = _bulk(el, 1.0)
            e = rng.uniform(-0.04, 0.04, (3, 3))
            atoms.set_cell(atoms.cell @ (np.eye(3) + (e + e.T) / 2), scale_atoms=True)
            atoms.rattle(0.05, rng=rng)
            atoms.info["config_type"] = "strain"
            frames.append(_label(atoms))
        for _ in range(k):
            atoms = fcc111(el, size=(2, 2, 4), vacuum=6.0)
            atoms.info.pop("adsorbate_info", None)
            atoms.rattle(0.05, rng=rng)
            atoms.info["config_type"] = "surface"
            frames.append(_label(atoms))
        frames.extend(_md_snapshot(el, rng) for _ in range(k))
    for _ in range(alloys):
        a, b = rng.choice(ELEMENTS, 2, replace=False)
        atoms = _alloy(str(a), str(b), rng)
        atoms.rattle(0.05, rng=rng)
        atoms.info["config_type"] = "alloy"
        frames.append(_label(atoms))
    return frames


def split_frames(frames: list, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, list]:
    """Shuffle (by ``seed``) and cut into train/valid/test by ``fractions``."""
    order = np.random.default_rng(seed + 1).permutation(len(frames))
    n_train, n_valid = int(fractions[0] * len(frames)), int(fractions[1] * len(frames))
    cuts = {"train": order[:n_train], "valid": order[n_train:n_train + n_valid], "test": order[n_train + n_valid:]}
    return {name: [frames[i] for i in idx] for name, idx in cuts.items()}


def emt_dataset(per_element: int = 40, alloys: int = 60, seed: int = 0, root: str | Path | None = None) -> dict[str, Path]:
    """Paths of ``{train,valid,test}.extxyz`` under ``root`` (default ``$PAPERZOO_CACHE/data/emt_...``),
    generating them on first use. Energies in eV, forces in eV/A, stress in eV/A^3 (ASE conventions)."""
    from ase.io import write

    from weights.checkpoint import atomic_write
    from weights.manifest import cache_dir

    name = f"emt_v{DATA_VERSION}_pe{per_element}_al{alloys}_seed{seed}"
    root = Path(root) if root is not None else cache_dir() / "data" / name
    paths = {s: root / f"{s}.extxyz" for s in SPLITS}
    if all(p.is_file() for p in paths.values()):
        return paths
    splits = split_frames(generate_emt(per_element, alloys, seed), seed)
    for name, frames in splits.items():
        atomic_write(paths[name], lambda tmp, frames=frames: write(tmp, frames, format="extxyz"))
    return paths


# MACE's extxyz keys for the reference labels (atoms.info, except the per-atom forces in atoms.arrays)
REF_KEYS = {"energy": "REF_energy", "forces": "REF_forces", "stress": "REF_stress"}


def _labelled(atoms, path: Path, index: int):
    """``atoms`` with its energy, forces (and stress if given) on its calculator: those ASE read from the plain
    ``energy``/``forces``/``stress`` keys, else MACE's ``REF_*`` keys; an error naming the frame when absent."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress

    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    given = {**atoms.info, **atoms.arrays}
    refs = {key: given[ref] for key, ref in REF_KEYS.items() if key not in results and ref in given}
    missing = [key for key in ("energy", "forces") if key not in results and key not in refs]
    if missing:
        raise ValueError(f"{path}, frame {index} (from 0; {atoms.get_chemical_formula()}): no {' and no '.join(missing)} "
                         "label; every frame needs an energy and forces, as the extxyz keys energy and forces (or "
                         "MACE's REF_energy and REF_forces)")
    if refs:
        if "stress" in refs and np.size(refs["stress"]) == 9:  # MACE writes the 3 x 3 tensor; ASE holds Voigt's 6
            refs["stress"] = full_3x3_to_voigt_6_stress(np.reshape(refs["stress"], (3, 3)))
        atoms.calc = SinglePointCalculator(atoms, **results, **refs)
    bad = [key for key, value in {**results, **refs}.items()
           if key in REF_KEYS and not np.isfinite(np.asarray(value, dtype=np.float64)).all()]
    if bad:  # a NaN energy would poison the reference energies' least squares, or a test MAE, without a name
        raise ValueError(f"{path}, frame {index} (from 0; {atoms.get_chemical_formula()}): its {' and '.join(bad)} "
                         "label holds NaN or inf")
    return atoms


def read_structures(path: str | Path) -> list:
    """All frames of an extxyz (or any ASE-readable) file, each with its energy and forces (and stress if given)
    on its calculator; a clear error when the file is missing or a frame lacks a label."""
    from ase.io import read

    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory; data.train/valid/test name the files themselves" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"structure file {path} {what}; for MPTrj download the extxyz files "
                                "(e.g. from the MACE-MP release) and point data.train/valid/test at them")
    try:
        frames = read(str(path), index=":")
    except Exception as err:  # ASE's reader errors (XYZError, ValueError, ...) do not name the file
        raise ValueError(f"{path} is not a structure file ASE can read (extxyz, or a format its suffix names): "
                         f"{type(err).__name__}: {err}") from err
    return [_labelled(atoms, path, index) for index, atoms in enumerate(frames)]
