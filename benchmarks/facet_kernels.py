"""Facet's two CPU kernels against the e3nn modules they replace, side by side in one run: the spherical-grid MLP
as two dense matrices (against e3nn's ToS2Grid/FromS2Grid) and the convolution's tensor product as batched matmuls
(``layers.EdgeTensorProduct``, against e3nn's TensorProduct followed by the scatter over neighbours). Each kernel
is timed alone and inside energy+forces of the shipped ``facet_small_emt``.

    python benchmarks/facet_kernels.py [--sizes 64 512 4096] [--repeats 5] [--threads 2] [--out benchmarks/results]

The e3nn paths are the layers' forwards with our kernel swapped for the e3nn composition it was built from; all
paths run in the same process on the same inputs, taking turns. Writes facet_kernels_cpu.json/.md.
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from e3nn import o3

from common import machine, median_ms, write_results
from layers import EquivariantConvolution, SphericalGridMLP
from layers.equivariant_mixing import from_channels, to_channels
from potential_workloads import speed_structures

_E3NN_TP: dict[int, torch.nn.Module] = {}  # id(convolution) -> its e3nn TensorProduct
_E3NN_GRID: dict[int, tuple] = {}  # id(mixing) -> its e3nn ToS2Grid and FromS2Grid


def e3nn_grid_forward(self: SphericalGridMLP, x: torch.Tensor) -> torch.Tensor:
    if id(self) not in _E3NN_GRID:
        _E3NN_GRID[id(self)] = (o3.ToS2Grid(self.lmax, self.res).to(x.dtype),
                                o3.FromS2Grid(self.res, self.lmax).to(x.dtype))
    to_grid, from_grid = _E3NN_GRID[id(self)]
    grid = to_grid(to_channels(x, self.channels, self.lmax))  # (N, C, beta, alpha)
    return from_channels(from_grid(self.mlp(grid.movedim(1, -1)).movedim(-1, 1)), self.lmax)


def e3nn_tp_forward(self: EquivariantConvolution, h, edge_index, vectors, sh=None, radial_features=None):
    tp = _E3NN_TP.setdefault(id(self), self.tp.reference().to(h.dtype))
    i, j = edge_index
    if radial_features is None:
        radial_features = self.radial.features(vectors.norm(dim=-1))
    messages = tp(self.linear_up(h[:, :self.in_dim]).index_select(0, j), self.sh(vectors) if sh is None else sh,
                  self.radial.weights(radial_features))
    summed = messages.new_zeros(h.shape[0], messages.shape[1]).index_add_(0, i, messages)
    return self.linear_out(summed / self.avg_num_neighbors)


@contextlib.contextmanager
def patched(cls, forward):
    ours = cls.forward
    cls.forward = forward
    try:
        yield
    finally:
        cls.forward = ours


PATHS = {"ours": contextlib.nullcontext, "e3nn_grid": lambda: patched(SphericalGridMLP, e3nn_grid_forward),
         "e3nn_tp": lambda: patched(EquivariantConvolution, e3nn_tp_forward)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from zoo.atoms import graph_from_atoms
    from zoo.facet_calculator import FacetCalculator

    calc = FacetCalculator("facet_small", pretrained=True, dtype=torch.float32)
    grid_layer, conv = calc.model.mixings[0], calc.model.convolutions[-1]
    res = {"machine": machine(torch.device("cpu")), "torch": torch.__version__, "repeats": args.repeats, "rows": []}
    for atoms in speed_structures(sorted(args.sizes)):
        graph = graph_from_atoms(atoms, calc.model.config.cutoff, dtype=torch.float32)
        x = torch.randn(len(atoms), grid_layer.irreps.dim)
        atoms.calc = calc

        def energy_forces():
            calc.reset()
            atoms.get_forces()

        row = {"atoms": len(atoms), "edges": graph.edge_index.shape[1]}
        with torch.no_grad():
            for label in ("ours", "e3nn_grid"):
                with PATHS[label]():
                    row[f"grid_layer_ms_{label}"] = median_ms(lambda: grid_layer(x), args.repeats)
            vectors = graph.edge_vectors()
            for label in ("ours", "e3nn_tp"):
                with PATHS[label]():
                    row[f"conv_layer_ms_{label}"] = median_ms(lambda: conv(x, graph.edge_index, vectors), args.repeats)
        for label, path in PATHS.items():
            with path():
                row[f"energy_forces_ms_{label}"] = median_ms(energy_forces, args.repeats)
        res["rows"].append(row)
        print(row, flush=True)
    lines = [f"Shipped `facet_small_emt`, float32, median of {args.repeats}, on {res['machine']}.",
             "Layer columns time one forward without gradients; energy+forces is the ASE calculator's call.", "",
             "| atoms | edges | grid layer: ours / e3nn (ms) | conv layer: ours / e3nn (ms) | energy+forces: ours (ms) | "
             "with e3nn's grid projections | with e3nn's tensor product |", "|---:|---:|---|---|---:|---:|---:|"]
    for r in res["rows"]:
        ef = r["energy_forces_ms_ours"]
        lines.append(f"| {r['atoms']} | {r['edges']} | {r['grid_layer_ms_ours']:.1f} / {r['grid_layer_ms_e3nn_grid']:.1f} | "
                     f"{r['conv_layer_ms_ours']:.1f} / {r['conv_layer_ms_e3nn_tp']:.1f} | {ef:.0f} | "
                     f"{r['energy_forces_ms_e3nn_grid']:.0f} ({r['energy_forces_ms_e3nn_grid'] / ef:.2f}x) | "
                     f"{r['energy_forces_ms_e3nn_tp']:.0f} ({r['energy_forces_ms_e3nn_tp'] / ef:.2f}x) |")
    write_results(args.out, "facet_kernels_cpu", res, "\n".join(lines))


if __name__ == "__main__":
    main()
