"""FacetCalculator: a Facet potential as an ASE ``Calculator`` (energy, forces, stress) for optimisers and MD."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from .atoms import graph_from_atoms


def _load_model(model, pretrained) -> nn.Module:
    if isinstance(model, nn.Module):  # the calculator's own float64, frozen copy: the caller's model is untouched
        own = copy.deepcopy(model)
        for module in own.modules():  # hooks are closures on the caller's objects (e.g. its Probe): not copied
            for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                          module._backward_pre_hooks):
                hooks.clear()
        return own
    text = str(model)
    if text.endswith(".safetensors") or Path(text).is_file():
        from weights import load_checkpoint

        return load_checkpoint(model)
    if "/" in text or "\\" in text or Path(text).suffix:  # registered names are plain words
        raise FileNotFoundError(f"FacetCalculator: no checkpoint file at {text!r}; model must be a Facet module, a "
                                "registered name such as 'facet_small', or the path of a .safetensors checkpoint")
    from . import create_model

    return create_model(str(model), pretrained=pretrained)


class FacetCalculator(Calculator):
    """ASE calculator around a Facet model.

    ``model`` is a Facet module, a registered name (with ``pretrained=True`` or a checkpoint name from the
    manifest) or the path of a checkpoint written by ``weights.save_checkpoint`` / ``zoo train``; a module is
    copied, so a model still in training keeps its dtype, mode and gradients (rebuild the calculator to follow
    its later weights). Stress is
    available for fully periodic cells (eV/A^3, Voigt order xx yy zz yz xz xy, ASE's sign convention).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: nn.Module | str | Path = "facet_small", pretrained: bool | str = False,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64, **kwargs):
        super().__init__(**kwargs)
        self.model = _load_model(model, pretrained).to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype
        for p in self.model.parameters():
            p.requires_grad_(False)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        graph = graph_from_atoms(self.atoms, self.model.config.cutoff, dtype=self.dtype).to(self.device)
        want_stress = "stress" in properties and bool(self.atoms.pbc.all())
        out = self.model.predict(graph, stress=want_stress)
        energy = float(out["energy"][0].detach())
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": out["forces"].detach().cpu().numpy()}
        if want_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().cpu().numpy())
