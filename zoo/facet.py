"""Facet: an E(3)-equivariant interatomic potential with spline radial functions and spherical-grid mixing
(Miklaucic et al. 2025, arXiv 2509.08418).

Each atom carries C channels of every order l <= L (irreps C x (0e + 1o + ... )), initialised from a species
embedding in the scalars. Each of the ``layers`` blocks is

    h <- h + Conv(h)     message passing (the first block reads only the embedding's scalars): channel-wise tensor product with edge spherical harmonics, weighted by
                         radial splines (``layers.EquivariantConvolution``)
    h <- h + Mix(h)      spherical-grid MLP (``layers.SphericalGridMLP``), or a gate / tensor product (ablations)

and E = sum_i [ s * MLP(h_i^(l=0)) + E0(Z_i) ], with per-species reference energies E0 fitted by least squares
and the scale s set to the training forces' RMS. Forces F = -dE/dr and stress sigma = (1/V) dE/d(eps) come from
autograd, the strain eps applied to positions and cell together.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from layers import EquivariantConvolution, ProbePoint, make_mixing
from layers.equivariant_mixing import sphere_irreps

from ._registry import Paper, register_model
from .atoms import AtomGraph

PAPER = Paper(family="facet", title="Facet: highly efficient E(3)-equivariant networks for interatomic potentials",
              arxiv="2509.08418", authors="Miklaucic, Wei, Dong, Fu, Omee, Li, Dey, Fung, Hu", year=2025)


@dataclass
class FacetConfig:
    channels: int = 64        # C: channels per irreps order
    lmax: int = 2             # L: highest order of the node features
    sh_lmax: int = 2          # highest order of the edge spherical harmonics
    layers: int = 3           # message-passing blocks
    cutoff: float = 5.0       # Angstrom
    knots: int = 16           # spline control points per radial function
    radial: str = "spline"    # "spline" (Facet) or "mlp" (Bessel basis + MLP, the ablation)
    mixing: str = "grid"      # "grid" (Facet), "gate" or "tp" (ablations)
    grid_res: tuple[int, ...] = ()      # (beta, alpha) points of the spherical grid; () = (18, 17) as in the authors' code
    readout_hidden: int = 16
    num_elements: int = 89    # atomic numbers 1..num_elements are known (MPTrj has 89)


class Facet(nn.Module):
    """Energy model on an ``AtomGraph``. ``forward`` gives energies (G,); ``predict`` adds forces and stress.

    Probe points ``probes.<layer>.l<order>``: node features (N, C, 2l+1) after each block, per irreps order.
    """

    def __init__(self, config: FacetConfig):
        super().__init__()
        self.config = c = config
        counts = {"channels": 1, "lmax": 0, "sh_lmax": 0, "layers": 1, "readout_hidden": 1, "num_elements": 1}
        bad = [f"{k}={getattr(c, k)} (needs >= {least})" for k, least in counts.items() if getattr(c, k) < least]
        if not 0 < c.cutoff < float("inf"):
            bad.append(f"cutoff={c.cutoff} (needs a finite distance > 0, in Angstrom)")
        if bad:
            raise ValueError(f"Facet config: {', '.join(bad)}")
        self.irreps = sphere_irreps(c.channels, c.lmax)
        self.feature_dim = self.irreps.dim  # a plain int: forward never touches e3nn's Irreps (torch.compile)
        self.embedding = nn.Embedding(c.num_elements + 1, c.channels)
        self.convolutions = nn.ModuleList(
            EquivariantConvolution(c.channels, c.lmax, c.sh_lmax, c.cutoff, c.radial, c.knots, in_lmax=0 if k == 0 else None)
            for k in range(c.layers))
        grid = {"res": tuple(c.grid_res)} if c.mixing == "grid" and c.grid_res else {}
        self.mixings = nn.ModuleList(make_mixing(c.mixing, c.channels, c.lmax, **grid) for _ in range(c.layers))
        self.probes = nn.ModuleList(
            nn.ModuleDict({f"l{l}": ProbePoint() for l in range(c.lmax + 1)}) for _ in range(c.layers))
        self.readout = nn.Sequential(nn.Linear(c.channels, c.readout_hidden), nn.SiLU(), nn.Linear(c.readout_hidden, 1))
        self.register_buffer("atomic_energies", torch.zeros(c.num_elements + 1, dtype=torch.float64))
        # the atomic numbers the model accepts: 1..num_elements until set_statistics names the training species
        self.register_buffer("known_species", torch.arange(c.num_elements + 1) > 0)
        self.register_buffer("energy_scale", torch.tensor(1.0, dtype=torch.float64))

    def set_statistics(self, atomic_energies: dict[int, float], energy_scale: float, avg_num_neighbors: float):
        """Per-species reference energies E0(Z) (eV) of the training species, which become the only atomic numbers
        the model accepts; the energy scale s (eV) and the mean neighbour count."""
        self._check_numbers([int(z) for z in atomic_energies], trained_only=False)
        self.atomic_energies.zero_()
        self.known_species.zero_()
        for z, e in atomic_energies.items():
            self.atomic_energies[int(z)] = float(e)
            self.known_species[int(z)] = True
        self.energy_scale.fill_(float(energy_scale))
        for conv in self.convolutions:
            conv.avg_num_neighbors.fill_(float(avg_num_neighbors))

    @staticmethod
    def upgrade_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        """Checkpoints saved before ``known_species`` existed: the species with reference energies E0 (fitted for
        exactly the training species), or every element when no statistics were set."""
        key, energies = f"{prefix}known_species", state.get(f"{prefix}atomic_energies")
        if key in state or energies is None:
            return state
        known = energies != 0 if energies.any() else torch.arange(len(energies)) > 0
        return {**state, key: known}

    def _check_numbers(self, numbers: list[int], trained_only: bool = True) -> None:
        from ase.data import chemical_symbols

        def names(zs):
            return [chemical_symbols[v] if 0 <= v < len(chemical_symbols) else str(v) for v in zs]

        bad = sorted({v for v in numbers if not 1 <= v <= self.config.num_elements})
        if bad:
            raise ValueError(f"Facet knows atomic numbers 1..{self.config.num_elements}; got {names(bad)} (Z={bad})")
        known = self.known_species.nonzero().flatten().tolist()
        unseen = sorted({v for v in numbers if v not in known})
        if trained_only and unseen:
            raise ValueError(f"this Facet model was trained on {', '.join(names(known))} only; got {names(unseen)} "
                             f"(Z={unseen}), for which its energies mean nothing")

    def _check(self, graph: AtomGraph) -> None:
        if not isinstance(graph, AtomGraph):
            raise TypeError(f"Facet takes an AtomGraph (zoo.atoms.graph_from_atoms(ase_atoms, cutoff)), got "
                            f"{type(graph).__name__}")
        graph.validate()
        z = graph.numbers
        in_range = (z >= 1) & (z <= self.config.num_elements)
        if not bool(self.known_species[torch.where(in_range, z, 0)].all()):  # row 0 is never known: one check
            self._check_numbers(z.tolist())
        if not graph.positions.is_floating_point() or graph.positions.shape[-1] != 3:
            raise ValueError(f"positions must be a float (N, 3) tensor, got {graph.positions.dtype} "
                             f"{tuple(graph.positions.shape)}")
        dtype = self.readout[0].weight.dtype
        if graph.positions.dtype != dtype:
            raise TypeError(f"the graph is {graph.positions.dtype} but the model is {dtype}: build it with "
                            f"graph_from_atoms(..., dtype={dtype}) or graph.to(dtype=...), or convert the model")

    def node_features(self, graph: AtomGraph) -> torch.Tensor:
        """Final node features (N, C (L+1)^2) in e3nn layout."""
        self._check(graph)
        c = self.config
        scalars = self.embedding(graph.numbers).to(graph.positions.dtype)
        h = torch.cat([scalars, scalars.new_zeros(scalars.shape[0], self.feature_dim - c.channels)], -1)
        vectors = graph.edge_vectors()
        # every block uses the same edge harmonics (orders up to sh_lmax) and radial basis (same cutoff and knots)
        first = self.convolutions[0]
        sh, radial_features = first.sh(vectors), first.radial.features(vectors.norm(dim=-1))
        for conv, mix, probes in zip(self.convolutions, self.mixings, self.probes):
            h = h + conv(h, graph.edge_index, vectors, sh, radial_features)
            h = h + mix(h)
            start = 0
            for l in range(c.lmax + 1):
                size = c.channels * (2 * l + 1)
                probes[f"l{l}"](h[:, start:start + size].reshape(-1, c.channels, 2 * l + 1))
                start += size
        return h

    def forward(self, graph: AtomGraph, per_atom: bool = False) -> torch.Tensor:
        """Total energy per structure (G,) in eV, E = sum_i E_i; with ``per_atom`` the atomic energies E_i (N,)
        themselves. In the graph's dtype or float32 if narrower: in bf16 (autocast or a bf16 model) the reference
        energies (eV each) and their sum would round to 0.01-0.1 eV."""
        h = self.node_features(graph)
        dtype = torch.promote_types(graph.positions.dtype, torch.float32)
        e_atom = self.readout(h[:, :self.config.channels]).squeeze(-1).to(dtype) * self.energy_scale.to(dtype)
        e_atom = e_atom + self.atomic_energies.to(dtype)[graph.numbers]
        return e_atom if per_atom else graph_sums(graph, e_atom)

    def predict(self, graph: AtomGraph, stress: bool = False, training: bool = False,
                per_atom: bool = False) -> dict[str, torch.Tensor]:
        """Energies, forces and (optionally) stress: ``predict_with(self, ...)``."""
        return predict_with(self, graph, stress, training, per_atom)


def graph_sums(graph: AtomGraph, values: torch.Tensor) -> torch.Tensor:
    """Sum of per-atom values over each structure of the batch, (N,) -> (G,)."""
    return values.new_zeros(graph.num_graphs).index_add_(0, graph.batch, values)


def predict_with(energy_model: nn.Module, graph: AtomGraph, stress: bool = False,
                 training: bool = False, per_atom: bool = False) -> dict[str, torch.Tensor]:
    """energy (G,), forces (N, 3) = -dE/dr and, with ``stress``, stress (G, 3, 3) = (1/V) dE/d(eps) in eV/A^3
    (ASE's sign convention; NaN for structures without a cell); with ``per_atom``, the atomic energies (N,)
    as ``energies`` too (``energy_model(graph, per_atom=True)``). ``training`` keeps the graph for a force loss.

    ``energy_model`` maps an AtomGraph to energies: a Facet, or a wrapper such as DistributedDataParallel (whose
    forward must run for its gradient synchronisation). Forces need autograd, so it runs with gradients
    enabled even inside ``torch.no_grad()``; ``torch.inference_mode()`` is an error.
    """
    graph.validate()  # before requires_grad_ below, which would fail on integer positions with torch's message
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Facet forces and stress are gradients of the energy, which torch.inference_mode() "
                           "forbids; call predict under torch.no_grad() or without a context")
    with torch.enable_grad():
        positions = graph.positions.detach().requires_grad_(True)
        strain = torch.zeros_like(graph.cell, requires_grad=True)
        g = replace(graph, positions=positions)
        g = g.strained(strain) if stress else g
        atomic = energy_model(g, per_atom=True) if per_atom else None
        energy = graph_sums(g, atomic) if per_atom else energy_model(g)
        inputs = [positions, strain] if stress else [positions]
        grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training, allow_unused=True)
    out = {"energy": energy, "forces": -grads[0] if grads[0] is not None else torch.zeros_like(positions)}
    if per_atom:
        out["energies"] = atomic
    if stress:
        volume = torch.linalg.det(graph.cell.double()).abs().to(graph.cell.dtype)  # det has no bf16/fp16 kernel
        d_strain = grads[1] if grads[1] is not None else torch.zeros_like(graph.cell)
        periodic = (volume > 0)[:, None, None]
        # divide by 1 where there is no cell, then mask: a NaN inside the division would reach every gradient
        out["stress"] = torch.where(periodic, d_strain / torch.where(periodic, volume[:, None, None], 1.0), torch.nan)
    return out


@register_model(FacetConfig(channels=32, lmax=2, sh_lmax=2, layers=2), PAPER)
def facet_small(config: FacetConfig) -> Facet:
    return Facet(config)


@register_model(FacetConfig(channels=64, lmax=2, sh_lmax=2, layers=3), PAPER)
def facet_base(config: FacetConfig) -> Facet:
    return Facet(config)


@register_model(FacetConfig(channels=32, lmax=2, sh_lmax=2, layers=2, radial="mlp"), PAPER)
def facet_ablation_mlp_radial(config: FacetConfig) -> Facet:
    """facet_small with the Bessel-basis radial MLP in place of splines."""
    return Facet(config)


@register_model(FacetConfig(channels=32, lmax=2, sh_lmax=2, layers=2, mixing="gate"), PAPER)
def facet_ablation_gate(config: FacetConfig) -> Facet:
    """facet_small with a gate non-linearity in place of the spherical-grid MLP."""
    return Facet(config)


@register_model(FacetConfig(channels=32, lmax=2, sh_lmax=2, layers=2, mixing="tp"), PAPER)
def facet_ablation_tp(config: FacetConfig) -> Facet:
    """facet_small with a channel-wise self tensor product in place of the spherical-grid MLP."""
    return Facet(config)
