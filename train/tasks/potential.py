"""Interatomic potentials: fit energies, forces and stresses of labelled structures (EMT offline, or extxyz files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoo._registry import resolve_config
from zoo.atoms import graph_from_padded, neighbour_list, pad_structures

from ..data.emt import emt_dataset, read_structures
from .base import Task


class PotentialTask(Task):
    """Batches are padded structures with precomputed neighbour lists (``zoo.atoms.pad_structures``).

    ``data.source``: ``emt`` (offline, ``train.data.emt.emt_dataset`` with ``per_element``, ``alloys``,
    ``seed``) or ``files`` (``data.train``, ``data.valid``, ``data.test``: extxyz paths with energy/forces and
    optionally stress, e.g. MPTrj). Loss per batch (``task_args`` weights):
    w_E mean((dE / n_atoms)^2) + w_F mean(|dF|^2) / 3 + w_S mean(|d sigma|^2) / 9 over structures with stress.
    Before training, ``prepare`` fits per-species reference energies by least squares, sets the energy scale
    to the RMS training force and the mean neighbour count. Metrics: MAE of energy (meV/atom), forces
    (meV/A) and stress (meV/A^3) on ``valid`` during training and on ``test`` at every evaluation.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        self.cutoff = resolve_config(recipe["model"], **recipe.get("model_args", {})).cutoff
        source = d.get("source", "emt")
        if source == "emt":
            paths = emt_dataset(int(d.get("per_element", 40)), int(d.get("alloys", 60)), int(d.get("seed", 0)))
        elif source == "files":
            missing = [k for k in ("train", "valid", "test") if k not in d]
            if missing:
                raise KeyError(f"data.source=files needs data.{', data.'.join(missing)} (extxyz paths)")
            paths = {k: Path(d[k]).expanduser() for k in ("train", "valid", "test")}
        else:
            raise ValueError(f"data.source must be 'emt' or 'files', got {source!r}")
        self.structures = {k: read_structures(p) for k, p in paths.items()}
        self.padded = {k: pad_structures(v, self.cutoff) for k, v in self.structures.items()}
        self.w_energy = float(self.args.get("energy_weight", 1.0))
        self.w_forces = float(self.args.get("forces_weight", 10.0))
        self.w_stress = float(self.args.get("stress_weight", 0.0))
        self.eval_batch = int(self.args.get("eval_batch", 16))

    def prepare(self, model) -> None:
        train = self.structures["train"]
        species = sorted({int(z) for a in train for z in a.numbers})
        counts = np.array([[np.sum(a.numbers == z) for z in species] for a in train], dtype=np.float64)
        energies = np.array([a.get_potential_energy() for a in train])
        e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        forces = np.concatenate([a.get_forces() for a in train])
        neighbours = np.mean([len(neighbour_list(a.get_positions(), a.cell.array, a.pbc, self.cutoff)[0]) / len(a)
                              for a in train])
        model.set_statistics(dict(zip(species, e0.tolist())), float(np.sqrt(np.mean(forces**2))), float(neighbours))

    def batch(self, size, generator):
        idx = torch.randint(0, len(self.structures["train"]), (size,), generator=generator)
        return {k: v[idx] for k, v in self.padded["train"].items()}

    def _predict(self, model, batch, training: bool):
        graph, mask = graph_from_padded(batch)
        dtype = next(model.parameters()).dtype
        out = model.predict(graph.to(dtype=dtype), stress=self.w_stress > 0 or not training, training=training)
        return out, mask

    def loss(self, model, batch):
        module = getattr(model, "module", model)
        out, mask = self._predict(module, batch, training=True)
        n = mask.sum(1).to(out["energy"].dtype)
        e_err = (out["energy"] - batch["energy"].to(n.dtype)) / n
        f_err = out["forces"] - batch["forces"][mask].to(n.dtype)
        loss = self.w_energy * e_err.pow(2).mean() + self.w_forces * f_err.pow(2).mean()
        if self.w_stress > 0 and bool(batch["has_stress"].any()):
            s_err = (out["stress"] - batch["stress"].to(n.dtype))[batch["has_stress"]]
            loss = loss + self.w_stress * s_err.pow(2).mean()
        return loss, {"e_mae_meV_atom": 1000 * float(e_err.detach().abs().mean()),
                      "f_mae_meV_A": 1000 * float(f_err.detach().abs().mean())}

    def errors(self, model, split: str) -> dict[str, np.ndarray]:
        """Per-structure energy errors (eV/atom), per-component force errors (eV/A) and stress errors (eV/A^3)."""
        device = next(model.parameters()).device
        data, e, f, s = self.padded[split], [], [], []
        for start in range(0, len(data["energy"]), self.eval_batch):
            batch = {k: v[start:start + self.eval_batch].to(device) for k, v in data.items()}
            with torch.enable_grad():
                out, mask = self._predict(model, batch, training=False)
            n = mask.sum(1)
            e.append(((out["energy"].detach().double() - batch["energy"]) / n).cpu())
            f.append((out["forces"].detach().double() - batch["forces"][mask]).flatten().cpu())
            s.append((out["stress"].detach().double() - batch["stress"])[batch["has_stress"]].flatten().cpu())
        return {"energy": torch.cat(e).numpy(), "forces": torch.cat(f).numpy(), "stress": torch.cat(s).numpy()}

    def evaluate(self, model):
        metrics = {}
        for split in ("valid", "test"):
            err = self.errors(model, split)
            metrics[f"{split}_e_mae_meV_atom"] = 1000 * float(np.abs(err["energy"]).mean())
            metrics[f"{split}_f_mae_meV_A"] = 1000 * float(np.abs(err["forces"]).mean())
            if err["stress"].size:
                metrics[f"{split}_s_mae_meV_A3"] = 1000 * float(np.abs(err["stress"]).mean())
        return metrics

    def report(self, model, out: Path) -> list[Path]:
        """Parity plots of test energies per atom and force components."""
        import matplotlib.pyplot as plt

        model.eval()
        err = self.errors(model, "test")
        ref_e = np.array([a.get_potential_energy() / len(a) for a in self.structures["test"]])
        ref_f = np.concatenate([a.get_forces().ravel() for a in self.structures["test"]])
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
        for ax, ref, e, label in ((axes[0], ref_e, err["energy"], "energy (eV/atom)"),
                                  (axes[1], ref_f, err["forces"], "force component (eV/A)")):
            ax.scatter(ref, ref + e, s=4, alpha=0.6)
            lim = [ref.min(), ref.max()]
            ax.plot(lim, lim, "k--", lw=0.8)
            ax.set(xlabel=f"reference {label}", ylabel=f"predicted {label}",
                   title=f"MAE {1000 * np.abs(e).mean():.1f} m{label.split('(')[1][:-1]}")
        fig.tight_layout()
        path = Path(out) / "parity.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return [path]
