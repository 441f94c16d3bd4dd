"""Interatomic potentials: fit energies, forces and stresses of labelled structures (EMT offline, or extxyz files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoo._registry import resolve_config
from zoo.atoms import graph_from_padded, pad_structures
from zoo.facet import predict_with

from ..data.emt import emt_dataset, read_structures
from .base import Task, draw_rows, real, whole


def energy_scale(forces: np.ndarray, residuals: np.ndarray) -> float:
    """The scale s (eV) of the model's atomic energies: the RMS training force component (eV/A, read as eV per unit
    length), as MACE scales; when every force is 0 (perfect cells, e.g. an equation of state, whose symmetric forces
    extxyz stores as exact zeros) the RMS per-atom energy left after the reference energies, and 1 if that is 0 too.
    A scale of 0 would make every energy sum E0(Z) with no gradient to any weight."""
    for scale in (np.sqrt(np.mean(forces ** 2)) if forces.size else 0.0, np.sqrt(np.mean(residuals ** 2))):
        if np.isfinite(scale) and scale > 0:
            return float(scale)
    return 1.0


class PotentialTask(Task):
    """Batches are padded structures with precomputed neighbour lists (``zoo.atoms.pad_structures``).

    ``data.source``: ``emt`` (offline, ``train.data.emt.emt_dataset`` with ``per_element``, ``alloys``,
    ``seed``) or ``files`` (``data.train``, ``data.valid``, ``data.test``: extxyz paths with energy/forces and
    optionally stress, or MACE's REF_energy/REF_forces/REF_stress, e.g. MPTrj). Loss per batch (``task_args``
    weights), every term a mean over structures s (structures without stress count 0), so splitting a batch across
    micro-batches or ranks keeps the gradient:
    w_E mean_s((dE_s / n_s)^2) + w_F mean_s(sum_i |dF_i|^2 / (3 n_s)) + w_S mean_s(|d sigma_s|^2 / 9).
    Before training, ``prepare`` fits per-species reference energies by least squares, sets the energy scale
    (``energy_scale``) and the mean neighbour count. Metrics: MAE of energy (meV/atom), forces
    (meV/A) and stress (meV/A^3, over the 9 components of the 3 x 3 tensor) on ``valid`` during training and on
    ``test`` at every evaluation.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        self.w_energy = real(self.args, "task_args", "energy_weight", 1.0)
        self.w_forces = real(self.args, "task_args", "forces_weight", 10.0)
        self.w_stress = real(self.args, "task_args", "stress_weight", 0.0)
        if recipe.get("train", {}).get("compile") and (self.w_forces or self.w_stress):
            raise ValueError("train.compile cannot train on forces or stress: their loss differentiates the energy "
                             "twice, and torch.compile's AOT autograd has no double backward. Train eagerly; a "
                             "trained model compiles for inference (torch.compile(model) with zoo.facet.predict_with).")
        self.cutoff = resolve_config(recipe["model"], **recipe.get("model_args", {})).cutoff
        source = d.get("source", "emt")
        if source == "emt":
            paths = emt_dataset(whole(d, "data", "per_element", 40), whole(d, "data", "alloys", 60),
                                whole(d, "data", "seed", 0))
        elif source == "files":
            missing = [k for k in ("train", "valid", "test") if k not in d]
            if missing:
                raise KeyError(f"data.source=files needs data.{', data.'.join(missing)}: extxyz files with energy, "
                               "forces (and stress), e.g. MPTrj as split in the MACE-MP release; pass --set "
                               "data.train=PATH --set data.valid=PATH --set data.test=PATH")
            paths = {k: Path(d[k]).expanduser() for k in ("train", "valid", "test")}
        else:
            raise ValueError(f"data.source must be 'emt' or 'files', got {source!r}")
        self.paths = paths
        self.structures = {k: read_structures(p) for k, p in paths.items()}
        self.padded = {k: pad_structures(v, self.cutoff) for k, v in self.structures.items()}
        self.eval_batch = whole(self.args, "task_args", "eval_batch", 16)

    def prepare(self, model) -> None:
        from ase.data import chemical_symbols

        train = self.structures["train"]
        species = sorted({int(z) for a in train for z in a.numbers})
        for split in ("valid", "test"):  # the model predicts only the elements it has reference energies for
            unseen = sorted({int(z) for a in self.structures[split] for z in a.numbers} - set(species))
            if unseen:
                raise ValueError(f"the {split} split ({self.paths[split]}) has {[chemical_symbols[z] for z in unseen]}"
                                 f", which the training split ({self.paths['train']}) lacks: a potential predicts "
                                 f"only the elements it was trained on ({[chemical_symbols[z] for z in species]}); "
                                 "add structures with them to the training file or drop them from this one")
        counts = np.array([[np.sum(a.numbers == z) for z in species] for a in train], dtype=np.float64)
        energies = np.array([a.get_potential_energy() for a in train])
        e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
        forces = np.concatenate([a.get_forces() for a in train])
        padded = self.padded["train"]  # its neighbour lists, computed once in __init__
        neighbours = float(((padded["edges"][..., 0] >= 0).sum(1) / (padded["numbers"] > 0).sum(1)).double().mean())
        residuals = (energies - counts @ e0) / counts.sum(1)
        model.set_statistics(dict(zip(species, e0.tolist())), energy_scale(forces, residuals), float(neighbours))

    def batch(self, size, generator):
        return draw_rows(self.padded["train"], size, generator)

    def train_sample(self, size, generator):
        return draw_rows(self.padded["train"], size, generator, replace=False)

    def held_out_batch(self, size, generator):
        return draw_rows(self.padded["valid"], size, generator, replace=False)

    def _predict(self, model, batch, training: bool):
        graph, mask = graph_from_padded(batch)
        dtype = next(model.parameters()).dtype
        out = predict_with(model, graph.to(dtype=dtype), stress=self.w_stress > 0 or not training, training=training)
        return out, graph, mask

    def loss(self, model, batch):
        out, graph, mask = self._predict(model, batch, training=True)
        n = mask.sum(1).to(out["energy"].dtype)
        e_err = (out["energy"] - batch["energy"].to(n.dtype)) / n
        f_err = out["forces"] - batch["forces"][mask].to(n.dtype)
        f_sq = torch.zeros_like(n).index_add_(0, graph.batch, f_err.pow(2).sum(-1)) / (3 * n)
        loss = self.w_energy * e_err.pow(2).mean() + self.w_forces * f_sq.mean()
        if self.w_stress > 0:  # rows without a stress label (NaN without a cell) count 0: no mask, no wait
            s_err = torch.where(batch["has_stress"][:, None, None], out["stress"] - batch["stress"].to(n.dtype), 0.0)
            loss = loss + self.w_stress * s_err.pow(2).mean((1, 2)).sum() / len(n)
        return loss, {"e_mae_meV_atom": 1000 * e_err.detach().abs().mean(),
                      "f_mae_meV_A": 1000 * f_err.detach().abs().mean()}

    def errors(self, model, split: str) -> dict[str, np.ndarray]:
        """Per-structure energy errors (eV/atom), per-component force errors (eV/A) and stress errors (eV/A^3)."""
        device = next(model.parameters()).device
        data, e, f, s = self.padded[split], [], [], []
        for start in range(0, len(data["energy"]), self.eval_batch):
            batch = {k: v[start:start + self.eval_batch].to(device) for k, v in data.items()}
            with torch.enable_grad():
                out, _, mask = self._predict(model, batch, training=False)
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

        from ..plots import save_figure

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
        return [save_figure(fig, path)]
