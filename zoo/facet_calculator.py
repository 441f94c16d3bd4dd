"""FacetCalculator: a Facet potential as an ASE ``Calculator`` (energy, forces, stress) for optimisers and MD."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from .atoms import graph_from_atoms
from .facet import Facet


def _load_model(model, pretrained) -> nn.Module:
    """The model a module, a checkpoint path or a registered name (with ``pretrained``) stands for."""

    def refuse_pretrained():
        if pretrained:
            raise ValueError("FacetCalculator: pretrained= applies to a registered model name; a module or a "
                             "checkpoint path already holds its weights")

    if isinstance(model, nn.Module):  # the calculator's own float64, frozen copy: the caller's model is untouched
        refuse_pretrained()
        own = copy.deepcopy(model)
        for module in own.modules():  # hooks are closures on the caller's objects (e.g. its Probe): not copied
            for hooks in (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks,
                          module._backward_pre_hooks):
                hooks.clear()
        return own
    text = str(model)
    if text.endswith(".safetensors") or Path(text).is_file():
        refuse_pretrained()
        from weights import load_checkpoint

        return load_checkpoint(model)
    if "/" in text or "\\" in text or Path(text).suffix:  # registered names are plain words
        raise FileNotFoundError(f"FacetCalculator: no checkpoint file at {text!r}; model must be a Facet module, a "
                                "registered name such as 'facet_small', or the path of a .safetensors checkpoint")
    from . import create_model

    return create_model(text, pretrained=pretrained)


class FacetCalculator(Calculator):
    """ASE calculator around a Facet model.

    ``model`` is a Facet module, a registered name (with ``pretrained=True`` or a checkpoint name from the
    manifest) or the path of a checkpoint written by ``weights.save_checkpoint`` / ``zoo train``; a module is
    copied, so a model still in training keeps its dtype, mode and gradients (rebuild the calculator to follow
    its later weights). ``dtype`` (torch.float64 or "float64", torch.float32 or "float32") is the model's
    precision; results are float64 arrays either way. Every calculation gives the energy, the per-atom energies
    (``atoms.get_potential_energies()``), the forces and, for fully periodic cells, the stress (eV/A^3, Voigt
    order xx yy zz yz xz xy, ASE's sign convention): one forward and backward pass, whichever ASE asks for.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]
    # Calculator's own (restart files hold no Facet state: restart=None is all that makes sense); any other
    # keyword would be stored and do nothing
    _ASE_KEYWORDS = ("restart", "ignore_bad_restart_file", "label", "atoms", "directory")

    def __init__(self, model: nn.Module | str | Path = "facet_small", pretrained: bool | str = False,
                 device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float64, **kwargs):
        unknown = sorted(set(kwargs) - set(self._ASE_KEYWORDS))
        if unknown:  # Calculator would store them in .parameters, as if they had been applied
            raise TypeError(f"FacetCalculator got unknown keyword arguments {unknown}; it takes model, pretrained, "
                            f"device, dtype and ASE's {list(self._ASE_KEYWORDS)} (the cutoff and the species are "
                            "the model's: build the model with them)")
        dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
        if dtype not in (torch.float64, torch.float32):
            raise TypeError(f"FacetCalculator: dtype must be torch.float64, torch.float32, 'float64' or 'float32', "
                            f"got {dtype!r}")
        super().__init__(**kwargs)
        self.model = _load_model(model, pretrained).to(device=device, dtype=dtype).eval()
        if not isinstance(self.model, Facet):  # it would fail at the first calculation, on a missing cutoff
            raise TypeError(f"FacetCalculator needs a Facet potential (zoo.list_models('facet*')), got "
                            f"{type(self.model).__name__} from {model if isinstance(model, (str, Path)) else 'the module'}")
        self.device, self.dtype = torch.device(device), dtype
        self._source = {"model": model if isinstance(model, str) else str(model) if isinstance(model, Path)
                        else type(model).__name__, "pretrained": pretrained}
        for p in self.model.parameters():
            p.requires_grad_(False)

    def todict(self) -> dict:
        """What built this calculator, for ASE's trajectory and database records."""
        return {**self._source, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        graph = graph_from_atoms(self.atoms, self.model.config.cutoff, dtype=self.dtype).to(self.device)
        periodic = bool(self.atoms.pbc.all())  # the stress costs no extra pass: one call serves get_stress() too
        out = {k: v.detach().cpu().double().numpy()
               for k, v in self.model.predict(graph, stress=periodic, per_atom=True).items()}
        energy = float(out["energy"][0])
        self.results = {"energy": energy, "free_energy": energy, "energies": out["energies"], "forces": out["forces"]}
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0])
