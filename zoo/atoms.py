"""Atomic structures as graphs: the input format of the interatomic potentials (Facet).

A batch of structures is one flat graph: atoms of all structures concatenated, ``batch`` naming each atom's
structure, directed edges i -> j for every neighbour j of i within the cutoff (periodic images included),
each with an integer cell shift S so that r_ij = pos[j] - pos[i] + S @ cell. Neighbour lists come from
vesin (``vesin.NeighborList``), which handles per-direction periodicity and cells smaller than the cutoff.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from layers.autocast_off import autocast_off


@dataclass
class AtomGraph:
    """Flat batch of structures. Shapes: N atoms, E edges, G structures."""

    numbers: torch.Tensor    # (N,) atomic numbers Z
    positions: torch.Tensor  # (N, 3) Angstrom
    cell: torch.Tensor       # (G, 3, 3) rows are lattice vectors (zeros for a molecule)
    batch: torch.Tensor      # (N,) structure index of every atom
    edge_index: torch.Tensor  # (2, E) centre i, neighbour j
    shifts: torch.Tensor     # (E, 3) integer cell shifts, as positions' dtype

    @property
    def num_graphs(self) -> int:
        return self.cell.shape[0]

    def validate(self) -> None:
        """Raise one ValueError naming every field whose shape or dtype does not fit the others."""
        n = self.numbers.shape[0] if self.numbers.dim() == 1 else -1
        e = self.edge_index.shape[1] if self.edge_index.dim() == 2 else -1
        expected = {"numbers": ((n,), "integer"), "positions": ((n, 3), "float"), "cell": ((-1, 3, 3), "float"),
                    "batch": ((n,), "integer"), "edge_index": ((2, e), "integer"), "shifts": ((e, 3), "float")}
        problems = []
        for name, (shape, kind) in expected.items():
            t = getattr(self, name)
            fits = t.dim() == len(shape) and all(want in (-1, got) for want, got in zip(shape, t.shape))
            if not fits or t.is_floating_point() != (kind == "float") or n < 0:
                dims = ", ".join("G" if want == -1 and name == "cell" else str(want) for want in shape)
                problems.append(f"{name} must be a {kind} ({dims}) tensor, got {t.dtype} {tuple(t.shape)}")
        if problems:
            raise ValueError("AtomGraph: " + "; ".join(problems) + " (N atoms from numbers, E edges from edge_index)")
        # indices in range, one host sync for both: a bad index would otherwise be an IndexError deep inside
        g = self.cell.shape[0]
        edges_ok, batch_ok = ((self.edge_index >= 0) & (self.edge_index < n)).all(), ((self.batch >= 0) & (self.batch < g)).all()
        if not bool(edges_ok & batch_ok):
            bad = [f"edge_index must index atoms 0..{n - 1}, got {int(self.edge_index.min())}..{int(self.edge_index.max())}"
                   if not bool(edges_ok) else None,
                   f"batch must index the {g} cells, got {int(self.batch.min())}..{int(self.batch.max())}"
                   if not bool(batch_ok) else None]
            raise ValueError("AtomGraph: " + "; ".join(b for b in bad if b))

    def to(self, device=None, dtype=None) -> "AtomGraph":
        """Move to ``device``; ``dtype`` converts the floating tensors (positions, cell, shifts)."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            out[f.name] = t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)
        return AtomGraph(**out)

    def edge_vectors(self) -> torch.Tensor:
        """r_ij = pos[j] - pos[i] + S_ij @ cell[batch[i]], shape (E, 3)."""
        i, j = self.edge_index
        with autocast_off(self.positions.device.type):  # geometry keeps the graph's dtype under mixed precision
            offset = torch.einsum("ek,ekl->el", self.shifts, self.cell[self.batch[i]])
        return self.positions[j] - self.positions[i] + offset

    def strained(self, strain: torch.Tensor) -> "AtomGraph":
        """The graph under the homogeneous deformation x -> x (I + eps_g) per structure (eps: (G, 3, 3))."""
        deform = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        with autocast_off(strain.device.type):  # bf16 positions would be off by ~0.01 A
            pos = torch.einsum("nk,nkl->nl", self.positions, deform[self.batch])
            return replace(self, positions=pos, cell=self.cell @ deform)


def _gaps(along: np.ndarray, cutoff: float) -> list[np.ndarray]:
    """Indices of the runs of ``along`` (sorted) separated by gaps of more than ``cutoff``."""
    order = np.argsort(along, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(along[order]) > cutoff) + 1)


def _box(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell with a slab's or wire's non-periodic vectors (zero, or any: ASE ignores them) replaced by unit vectors
    normal to the periodic ones, so no image crosses them; a degenerate periodic cell is an error."""
    box = np.asarray(cell, dtype=np.float64)
    if pbc.any() and not pbc.all():
        from ase.cell import Cell

        box = np.where(pbc[:, None], box, Cell(np.where(pbc[:, None], box, 0.0)).complete().array)
    if pbc.any() and abs(np.linalg.det(box)) < 1e-12:
        raise ValueError(f"periodic structure (pbc={pbc.tolist()}) has a degenerate cell {box.tolist()}: its periodic "
                         "directions need independent, non-zero cell vectors")
    return box


def local_positions(atoms) -> np.ndarray:
    """``atoms``' positions (float64) moved by lattice vectors into the cell along its periodic directions, then all
    by their mean: the same structure (a translation and periodic images), with coordinates near 0, so a float32
    model keeps its precision for atoms that MD has carried far from the cell (ASE's MD does not wrap)."""
    pos = atoms.get_positions()
    bad = np.flatnonzero(~np.isfinite(pos).all(1))
    if len(bad):
        raise ValueError(f"atoms {bad[:8].tolist()}{' ...' if len(bad) > 8 else ''} have NaN or infinite positions")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and len(pos):
        box = _box(atoms.cell.array, pbc)
        frac = np.linalg.solve(box.T, pos.T).T
        frac[:, pbc] -= np.floor(frac[:, pbc])
        pos = frac @ box
    return pos - pos.mean(0) if len(pos) else pos


def neighbour_list(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float):
    """(i, j, S) of all pairs closer than ``cutoff`` (full list: both directions), by vesin."""
    from vesin import NeighborList

    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    if len(positions) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64)
    box = _box(cell, pbc)
    positions = np.asarray(positions, dtype=np.float64)
    groups = [np.arange(len(positions))]
    if pbc.any() and not pbc.all():  # apart along a non-periodic normal by more than the cutoff: no pair between
        for k in np.flatnonzero(~pbc):  # vesin's time grows with the occupied extent there (an atom 1e4 A off a
            groups = [g[part] for g in groups for part in _gaps(positions[g] @ box[k], cutoff)]  # slab: 0.7 s)
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    found = [nl.compute(points=positions[g], box=box, periodic=pbc.tolist(), quantities="ijSd") for g in groups]
    i, j = (np.concatenate([g[f[n]] for g, f in zip(groups, found)]) for n in (0, 1))
    S, d = (np.concatenate([f[n] for f in found]) for n in (2, 3))
    close = d < 1e-6  # two atoms at one place (or an atom on its own image): no direction, so no force
    if close.any():
        a, b = int(i[close][0]), int(j[close][0])
        raise ValueError(f"atoms {a} and {b} are {d[close][0]:.1e} apart ({int(close.sum()) // 2} such pairs): "
                         "coinciding atoms have no interatomic direction; remove or move one")
    return i.astype(np.int64), j.astype(np.int64), S.astype(np.int64)


def graph_from_atoms(structures, cutoff: float, dtype: torch.dtype = torch.float64) -> AtomGraph:
    """One flat AtomGraph from a list of ``ase.Atoms`` (or a single one)."""
    if not isinstance(structures, (list, tuple)):
        structures = [structures]
    if not structures:
        raise ValueError("graph_from_atoms: no structures given (an empty list)")
    numbers, positions, cells, batch, edges, shifts, start = [], [], [], [], [], [], 0
    for g, atoms in enumerate(structures):
        pos = local_positions(atoms)
        i, j, S = neighbour_list(pos, atoms.cell.array, atoms.pbc, cutoff)
        numbers.append(atoms.numbers)
        positions.append(pos)
        cells.append(atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3)))
        batch.append(np.full(len(atoms), g))
        edges.append(np.stack([i, j]) + start)
        shifts.append(S)
        start += len(atoms)
    return AtomGraph(
        numbers=torch.from_numpy(np.concatenate(numbers).astype(np.int64)),
        positions=torch.from_numpy(np.concatenate(positions)).to(dtype),
        cell=torch.from_numpy(np.stack(cells)).to(dtype),
        batch=torch.from_numpy(np.concatenate(batch).astype(np.int64)),
        edge_index=torch.from_numpy(np.concatenate(edges, axis=1)),
        shifts=torch.from_numpy(np.concatenate(shifts)).to(dtype),
    )


def pad_structures(structures, cutoff: float) -> dict[str, torch.Tensor]:
    """Structures with neighbour lists as padded tensors with the structure on dim 0, the training loop's batch
    format (it slices dim 0 across micro-batches and ranks). Padding atoms have number 0, padding edges -1.

    Keys: numbers (S, A), positions (S, A, 3), cell (S, 3, 3), edges (S, P, 2), shifts (S, P, 3), energy (S,),
    forces (S, A, 3), stress (S, 3, 3), has_stress (S,). Labels are read from each structure's calculator.
    """
    A = max(len(a) for a in structures)
    where = [local_positions(a) for a in structures]
    lists = [neighbour_list(pos, a.cell.array, a.pbc, cutoff) for pos, a in zip(where, structures)]
    P = max(max(len(i) for i, _, _ in lists), 1)
    S = len(structures)
    out = {"numbers": torch.zeros(S, A, dtype=torch.long), "positions": torch.zeros(S, A, 3, dtype=torch.float64),
           "cell": torch.zeros(S, 3, 3, dtype=torch.float64), "edges": torch.full((S, P, 2), -1, dtype=torch.long),
           "shifts": torch.zeros(S, P, 3, dtype=torch.float64), "energy": torch.zeros(S, dtype=torch.float64),
           "forces": torch.zeros(S, A, 3, dtype=torch.float64), "stress": torch.zeros(S, 3, 3, dtype=torch.float64),
           "has_stress": torch.zeros(S, dtype=torch.bool)}
    for s, (atoms, pos, (i, j, sh)) in enumerate(zip(structures, where, lists)):
        n = len(atoms)
        out["numbers"][s, :n] = torch.from_numpy(atoms.numbers.astype(np.int64))
        out["positions"][s, :n] = torch.from_numpy(pos)
        if atoms.pbc.any():
            out["cell"][s] = torch.from_numpy(atoms.cell.array)
        out["edges"][s, :len(i)] = torch.from_numpy(np.stack([i, j], 1))
        out["shifts"][s, :len(i)] = torch.from_numpy(sh.astype(np.float64))
        out["energy"][s] = atoms.get_potential_energy()
        out["forces"][s, :n] = torch.from_numpy(atoms.get_forces())
        if "stress" in atoms.calc.results:
            from ase.stress import voigt_6_to_full_3x3_stress

            out["stress"][s] = torch.from_numpy(voigt_6_to_full_3x3_stress(atoms.get_stress()))
            out["has_stress"][s] = True
    return out


def graph_from_padded(batch: dict[str, torch.Tensor]) -> tuple[AtomGraph, torch.Tensor]:
    """The flat AtomGraph of a padded batch and the (S, A) mask of real atoms.

    Real atoms and edges are found with one ``nonzero`` each and every field is gathered with ``index_select``:
    boolean-mask indexing would wait for the device once per field."""
    mask = batch["numbers"] > 0
    S, A = mask.shape
    P = batch["edges"].shape[1]
    atom = mask.flatten().nonzero().flatten()                            # (N,) flat (structure, slot) of atoms
    edge = (batch["edges"][..., 0] >= 0).flatten().nonzero().flatten()  # (E,) flat (structure, pair) of edges
    flat_index = torch.full((S * A,), -1, dtype=torch.long, device=mask.device)
    flat_index[atom] = torch.arange(len(atom), device=mask.device)
    pairs = batch["edges"].flatten(0, 1).index_select(0, edge)           # (E, 2) slots within the structure
    edge_index = flat_index[(edge // P * A)[None] + pairs.t()]
    graph = AtomGraph(numbers=batch["numbers"].flatten().index_select(0, atom),
                      positions=batch["positions"].flatten(0, 1).index_select(0, atom), cell=batch["cell"],
                      batch=atom // A, edge_index=edge_index, shifts=batch["shifts"].flatten(0, 1).index_select(0, edge))
    return graph, mask
