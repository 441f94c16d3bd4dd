"""Calculator-agnostic workloads for interatomic potentials: accuracy on labelled frames, energy+forces speed and
memory on fcc supercells, FIRE relaxations. Needs only ase, numpy and torch, so the same code measures Facet (in
our environment) and MACE (in its own venv, through mace_side.py): both models see identical inputs and timers.
"""
from __future__ import annotations

import os
import time

ELEMENTS = ("Cu", "Al", "Ni", "Ag", "Au", "Pd", "Pt")


def speed_structures(sizes: list[int], seed: int = 0) -> list:
    """fcc Cu supercells (cubic 4-atom cell repeated a x b x c, a*b*c nearest size/4, most cubic shape),
    positions rattled with a 0.05 A Gaussian from a fixed seed."""
    from ase.build import bulk

    structures = []
    for size in sizes:
        cells = max(1, round(size / 4))
        side = round(cells ** (1 / 3)) + 2
        reps = min(((a, b, max(1, round(cells / (a * b)))) for a in range(1, side + 1) for b in range(a, 2 * side + 1)),
                   key=lambda r: (abs(r[0] * r[1] * r[2] - cells), max(r) / min(r)))
        atoms = bulk("Cu", "fcc", cubic=True).repeat(reps)
        atoms.rattle(stdev=0.05, seed=seed)
        structures.append(atoms)
    return structures


def relax_structures(count: int, seed: int = 0) -> list:
    """`count` 32-atom fcc cells (2x2x2 cubic) of one of the seven EMT metals at its ASE reference lattice
    constant; every other cell is a random binary alloy (a quarter of the sites swapped to a second metal);
    positions rattled with a 0.1 A Gaussian. Deterministic in `seed`."""
    import numpy as np
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    structures = []
    for i in range(count):
        host, guest = rng.choice(len(ELEMENTS), size=2, replace=False)
        atoms = bulk(ELEMENTS[host], "fcc", cubic=True).repeat((2, 2, 2))
        if i % 2:
            symbols = atoms.get_chemical_symbols()
            for site in rng.choice(len(atoms), size=len(atoms) // 4, replace=False):
                symbols[site] = ELEMENTS[guest]
            atoms.set_chemical_symbols(symbols)
        atoms.rattle(stdev=0.1, seed=int(rng.integers(2**31)))
        structures.append(atoms)
    return structures


def labelled_frames(path: str, flag: str) -> list:
    """All frames of an extxyz whose `energy` and `forces` ASE read into a SinglePointCalculator."""
    import ase.io

    frames = ase.io.read(path, index=":")
    for i, atoms in enumerate(frames):
        if atoms.calc is None or not {"energy", "forces"} <= atoms.calc.results.keys():
            raise SystemExit(f"{flag}: expected every frame to carry energy and forces (extxyz keys "
                             f"'energy', 'forces'), got frame {i} of {path} without them")
    return frames


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (VmHWM). Unlike getrusage's ru_maxrss, which a child started
    with fork+exec inherits from its parent, VmHWM belongs to the process image and can be reset."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024  # kB


def reset_peak_rss() -> None:
    """Set VmHWM back to the current RSS (Linux: writing 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_accuracy(calc, path: str) -> dict:
    """Energy (meV/atom), force (meV/A) and stress (meV/A^3) MAE of `calc` on the labelled frames in `path`,
    and the mean time per structure of energy+forces."""
    import numpy as np

    frames = labelled_frames(path, "--test")
    warm = frames[0].copy()
    warm.calc = calc
    warm.get_forces()
    e_err, f_err, s_err, seconds = [], [], [], []
    for ref in frames:
        atoms = ref.copy()
        atoms.calc = calc
        calc.reset()  # frame 0 equals the warm-up structure; never time a cached result
        start = time.perf_counter()
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        seconds.append(time.perf_counter() - start)
        e_err.append(abs(energy - ref.calc.results["energy"]) / len(atoms))
        f_err.append(np.abs(forces - ref.calc.results["forces"]).ravel())
        if "stress" in ref.calc.results:
            s_err.append(np.abs(atoms.get_stress() - ref.calc.results["stress"]))
    return {
        "n_structures": len(frames),
        "n_atoms": int(sum(len(a) for a in frames)),
        "energy_mae_mev_per_atom": round(1000 * float(np.mean(e_err)), 4),
        "force_mae_mev_per_A": round(1000 * float(np.mean(np.concatenate(f_err))), 4),
        "stress_mae_mev_per_A3": round(1000 * float(np.mean(s_err)), 4) if s_err else None,
        "n_with_stress": len(s_err),
        "ms_per_structure": round(1000 * float(np.mean(seconds)), 3),
        "timing": "ASE calculator energy+forces per structure (neighbour list included), after 1 warm-up",
    }


def measure_speed(calc, sizes: list[int], repeats: int, seed: int = 0, device: str = "cpu") -> dict:
    """Median energy+forces time per call, atoms/s and memory on `speed_structures(sizes)`."""
    import numpy as np
    import torch

    baseline = current_rss_mib() if device == "cpu" else torch.cuda.memory_allocated() / 2**20
    rows = []
    for atoms in speed_structures(sorted(sizes), seed=seed):
        atoms.calc = calc
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()
        atoms.get_forces()  # warm-up
        seconds = []
        for _ in range(repeats):
            calc.reset()
            start = time.perf_counter()
            atoms.get_potential_energy()
            atoms.get_forces()
            seconds.append(time.perf_counter() - start)
        peak = peak_rss_mib() if device == "cpu" else torch.cuda.max_memory_allocated() / 2**20
        ms = 1000 * float(np.median(seconds))
        rows.append({
            "atoms": len(atoms), "ms_per_structure": round(ms, 3),
            "ms_mean": round(1000 * float(np.mean(seconds)), 3), "atoms_per_s": round(len(atoms) / ms * 1000, 1),
            "peak_mib": round(peak, 1), "peak_over_baseline_mib": round(peak - baseline, 1),
            "kib_per_atom": round((peak - baseline) * 1024 / len(atoms), 2),
        })
    return {
        "repeats": repeats, "rows": rows,
        "timing": "median wall time of the ASE calculator's energy+forces per call, neighbour list "
                  "included, after 1 warm-up call per size",
        "memory": ("peak RSS (VmHWM, reset before each size's warm-up) minus RSS after model load (/proc/self/statm)"
                   if device == "cpu" else
                   "torch.cuda.max_memory_allocated per size (peak reset before its warm-up) minus "
                   "memory_allocated after model load"),
        "baseline_mib": round(baseline, 1),
    }


def measure_relax(calc, count: int, fmax: float, max_steps: int, seed: int = 0) -> dict:
    """FIRE relaxations of `relax_structures(count)` to `fmax` (eV/A): steps, converged count and wall time."""
    from ase.optimize import FIRE

    warm = relax_structures(1, seed=seed)[0]
    warm.calc = calc
    warm.get_forces()
    calc.reset()  # the first structure equals the warm-up one
    steps, converged = [], 0
    start = time.perf_counter()
    for atoms in relax_structures(count, seed=seed):
        atoms.calc = calc
        opt = FIRE(atoms, logfile=None)
        converged += bool(opt.run(fmax=fmax, steps=max_steps))
        steps.append(opt.nsteps)
    wall = time.perf_counter() - start
    return {
        "count": count, "fmax": fmax, "max_steps": max_steps, "converged": converged, "total_steps": int(sum(steps)),
        "mean_steps": round(sum(steps) / len(steps), 2), "total_wall_s": round(wall, 3),
        "ms_per_step": round(1000 * wall / sum(steps), 3) if sum(steps) else None,
        "optimizer": "ase.optimize.FIRE, positions only, one energy+forces call per step",
    }
