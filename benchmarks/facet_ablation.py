"""Facet's ablation on the EMT data: spline vs MLP radial functions, spherical-grid MLP vs gate vs tensor-product
mixing. For each variant: parameters, time of one training step (energy + forces + backward) and of an
energy+forces call on a 512-atom cell, the radial function / mixing layer alone, and test MAE after the same
short training with the shared loop.

    python benchmarks/facet_ablation.py --steps 300 [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("facet_small", "facet_ablation_mlp_radial", "facet_ablation_gate", "facet_ablation_tp")


def measure(name: str, steps: int, cutoff: float, repeats: int) -> dict:
    import zoo
    from train import fit, load_recipe
    from train.tasks import make_task
    from zoo.atoms import graph_from_atoms

    from common import median_ms
    from potential_workloads import speed_structures

    recipe = load_recipe("facet-emt", [f"model={name}", f"model_args.cutoff={cutoff}", f"train.steps={steps}",
                                       f"train.eval_every={steps}", "train.ckpt_every=0", "probe.points={}"])
    task = make_task(recipe)
    model = zoo.create_model(name, cutoff=cutoff)
    task.prepare(model)
    batch = task.batch(4, torch.Generator().manual_seed(0))

    def train_step():
        loss, _ = task.loss(model, batch)
        loss.backward()

    cell = graph_from_atoms(speed_structures([512])[0], cutoff, dtype=torch.float32)
    conv, mix = model.convolutions[1], model.mixings[1]
    r = cell.edge_vectors().norm(dim=-1)
    h = torch.randn(cell.numbers.shape[0], model.irreps.dim)
    row = {"model": name, "params": sum(p.numel() for p in model.parameters()),
           "train_step_ms": median_ms(train_step, repeats),
           "energy_forces_512_ms": median_ms(lambda: model.predict(cell), repeats),
           "radial_512_ms": median_ms(lambda: conv.radial(r), repeats),
           "mixing_512_ms": median_ms(lambda: mix(h), repeats)}
    with tempfile.TemporaryDirectory() as out:
        final = fit(recipe, Path(out) / "run")
    row.update({k: final[k] for k in ("test_e_mae_meV_atom", "test_f_mae_meV_A")})
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--cutoff", type=float, default=4.5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    from common import write_results
    from facet_vs_mace import machine as describe_machine

    machine = describe_machine("cpu")
    rows = [measure(name, args.steps, args.cutoff, args.repeats) for name in VARIANTS]
    keys = list(rows[0])
    lines = [f"# Facet ablation on EMT data, {args.steps} training steps ({machine})", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(f"{r[k]:.1f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |" for r in rows]
    write_results(args.out, "facet_ablation_cpu", {"machine": machine, "steps": args.steps, "rows": rows},
                  "\n".join(lines))


if __name__ == "__main__":
    main()
