"""Facet's spherical-grid MLP with dense projection matrices (ours) against e3nn's ToS2Grid/FromS2Grid modules
(the FFT path it replaced), for the layer alone and for energy+forces of the shipped ``facet_small_emt``.

    python benchmarks/facet_grid_kernel.py [--sizes 64 512 4096] [--repeats 5] [--threads 2] [--out benchmarks/results]

Both paths run in the same process on the same inputs, taking turns; the e3nn path is the layer's forward with the
two matrix products replaced by the e3nn modules (the composition the layer was built from). Writes
facet_grid_kernel_cpu.json/.md.
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from common import machine, median_ms, write_results
from layers import SphericalGridMLP
from layers.equivariant_mixing import from_channels, to_channels
from potential_workloads import speed_structures


def e3nn_forward(self: SphericalGridMLP, x: torch.Tensor) -> torch.Tensor:
    grid = self.to_grid(to_channels(x, self.channels, self.lmax))  # (N, C, beta, alpha)
    return from_channels(self.from_grid(self.mlp(grid.movedim(1, -1)).movedim(-1, 1)), self.lmax)


@contextlib.contextmanager
def e3nn_path():
    dense = SphericalGridMLP.forward
    SphericalGridMLP.forward = e3nn_forward
    try:
        yield
    finally:
        SphericalGridMLP.forward = dense


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from zoo.facet_calculator import FacetCalculator

    calc = FacetCalculator("facet_small", pretrained=True, dtype=torch.float32)
    layer = calc.model.mixings[0]
    res = {"machine": machine(torch.device("cpu")), "torch": torch.__version__, "repeats": args.repeats, "rows": []}
    for atoms in speed_structures(sorted(args.sizes)):
        x = torch.randn(len(atoms), layer.irreps.dim)
        atoms.calc = calc

        def energy_forces():
            calc.reset()
            atoms.get_forces()

        row = {"atoms": len(atoms)}
        for label, path in (("dense", contextlib.nullcontext), ("e3nn", e3nn_path)):
            with path(), torch.no_grad():
                row[f"layer_ms_{label}"] = median_ms(lambda: layer(x), args.repeats)
            with path():
                row[f"energy_forces_ms_{label}"] = median_ms(energy_forces, args.repeats)
        res["rows"].append(row)
        print(row, flush=True)
    lines = [f"Shipped `facet_small_emt`, float32, median of {args.repeats}, on {res['machine']} (torch {res['torch']}).", "",
             "| atoms | grid layer, dense (ms) | grid layer, e3nn (ms) | speed-up | energy+forces, dense (ms) | "
             "energy+forces, e3nn (ms) | speed-up |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['atoms']} | {r['layer_ms_dense']:.1f} | {r['layer_ms_e3nn']:.1f} | "
                     f"{r['layer_ms_e3nn'] / r['layer_ms_dense']:.2f}x | {r['energy_forces_ms_dense']:.0f} | "
                     f"{r['energy_forces_ms_e3nn']:.0f} | {r['energy_forces_ms_e3nn'] / r['energy_forces_ms_dense']:.2f}x |")
    write_results(args.out, "facet_grid_kernel_cpu", res, "\n".join(lines))


if __name__ == "__main__":
    main()
