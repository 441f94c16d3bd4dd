"""Facet vs MACE on the offline EMT data, in one run: test accuracy, energy+forces speed and memory at 64, 512 and
4096 atoms, and FIRE relaxations of rattled cells. MACE (mace-torch) runs in its own venv (it pins e3nn 0.4.4).

    zoo train facet-emt --out runs/facet-emt                       # the Facet model (~12 min on 2 CPU cores)
    python benchmarks/facet_vs_mace.py --facet runs/facet-emt/best.safetensors --mace-epochs 15

MACE is trained here with mace's own trainer on the same train/valid files, for the same number of passes over
the data as the Facet recipe (``--mace-epochs``), unless ``--mace-model`` names a trained one. Writes
facet_vs_mace_<device>.json and .md into ``--out`` (after each side) and names the machine of every measured part in
both: a partial rerun (``--parts``, ``--sides``) keeps the other parts with the machine they were measured on.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_results  # noqa: E402
from mace_side import ensure_venv, run_mace_side  # noqa: E402
from potential_workloads import measure_accuracy, measure_relax, measure_speed  # noqa: E402


def facet_side(checkpoint: str, paths: dict, args) -> dict:
    from weights import read_metadata
    from zoo.facet_calculator import FacetCalculator

    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    calc = FacetCalculator(checkpoint, device=args.device, dtype=dtype)
    n_params = sum(p.numel() for p in calc.model.parameters())
    run = {"evaluate": lambda: measure_accuracy(calc, str(paths["test"])),
           "speed": lambda: measure_speed(calc, args.sizes, args.repeats, 0, args.device),
           "relax": lambda: measure_relax(calc, args.relax, args.fmax, args.max_steps, 0)}
    return {"model": checkpoint, "name": read_metadata(checkpoint).get("model"), "params": n_params,
            **{part: run[part]() for part in args.parts}}


def mace_side(paths: dict, args, cutoff: float) -> dict:
    python = ensure_venv(args.venv)
    common = ["--device", args.device]
    if args.mace_model:
        model, train = args.mace_model, None
    else:
        train = run_mace_side(python, ["train", "--train", str(paths["train"]), "--valid", str(paths["valid"]),
                                       "--out", str(Path(args.out) / "mace_run"), "--channels", str(args.mace_channels),
                                       "--max-L", str(args.mace_max_l), "--r-max", str(cutoff), "--epochs",
                                       str(args.mace_epochs), "--batch-size", str(args.batch_size), "--dtype",
                                       args.dtype, *common], threads=args.threads)
        model = train["model"]
    argv = {"evaluate": ["--test", str(paths["test"])],
            "speed": ["--sizes", *map(str, args.sizes), "--repeats", str(args.repeats)],
            "relax": ["--count", str(args.relax), "--fmax", str(args.fmax), "--max-steps", str(args.max_steps)]}
    out = {"model": model, **({"train": train} if train else {})}
    for part in args.parts:
        out[part] = run_mace_side(python, [part, "--model", model, *argv[part], *common], threads=args.threads)
    return out


PARTS = ("evaluate", "speed", "relax")


def table(result: dict) -> str:
    """Markdown table of both sides; a part that a side has not measured (yet) shows as '-'."""
    sides = (result["facet"], result["mace"])

    def cells(fmt) -> str:
        out = []
        for side in sides:
            try:
                out.append(fmt(side))
            except (KeyError, StopIteration):
                out.append("-")
        return " | ".join(out)

    def speed(side, n):
        r = next(r for r in side["speed"]["rows"] if r["atoms"] == n)
        return f"{r['ms_per_structure']:.0f} ({r['atoms_per_s']:.0f}, {r['kib_per_atom']:.0f})"

    def relax(side):
        r = side["relax"]
        return f"{r['total_wall_s']:.1f} ({r['total_steps']}, {r['converged']})"

    measured = {}  # machine -> the side/part measured on it (a partial rerun keeps the others' machines)
    for name, side in (("Facet", result["facet"]), ("MACE", result["mace"])):
        for part in PARTS:
            if part in side:
                measured.setdefault(side[part].get("machine", result.get("machine", "?")), []).append(f"{name} {part}")
    rows = ["# Facet vs MACE on EMT data", "", *(f"- {', '.join(what)}: {where}" for where, what in measured.items()), "",
            "| | Facet | MACE |", "|---|---|---|",
            f"| parameters | {cells(lambda s: format(s['params'] if 'params' in s else s['train']['params'], ','))} |",
            f"| test energy MAE (meV/atom) | {cells(lambda s: format(s['evaluate']['energy_mae_mev_per_atom'], '.1f'))} |",
            f"| test force MAE (meV/A) | {cells(lambda s: format(s['evaluate']['force_mae_mev_per_A'], '.1f'))} |"]
    for n in sorted({r["atoms"] for side in sides for r in side.get("speed", {}).get("rows", [])}):
        rows.append(f"| E+F at {n} atoms: ms (atoms/s, KiB/atom) | {cells(lambda s: speed(s, n))} |")
    count = next((s["relax"]["count"] for s in sides if "relax" in s), None)
    if count is not None:
        rows.append(f"| FIRE relaxation of {count} cells: s (steps, converged) | {cells(relax)} |")
        rows.append(f"| relaxation time per step (ms) | {cells(lambda s: format(s['relax']['ms_per_step'], '.1f'))} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--facet", required=True, help="Facet checkpoint (.safetensors) trained on the EMT data")
    p.add_argument("--mace-model", default=None, help="a trained MACE model; default: train one here")
    p.add_argument("--mace-epochs", type=int, default=15)
    p.add_argument("--mace-channels", type=int, default=16)
    p.add_argument("--mace-max-l", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--venv", default=os.environ.get("PAPERZOO_MACE_VENV", str(Path.home() / ".cache/paperzoo/mace-venv")))
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 4096])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--relax", type=int, default=100)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--parts", nargs="+", choices=("evaluate", "speed", "relax"), default=["evaluate", "speed", "relax"],
                   help="measure only these; with an existing result file in --out, the others are kept from it")
    p.add_argument("--sides", nargs="+", choices=("facet", "mace"), default=["facet", "mace"],
                   help="measure only these models; the other's results are kept from an existing result file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from train.data.emt import emt_dataset
    from weights import read_metadata

    paths = emt_dataset()
    cutoff = json.loads(read_metadata(args.facet)["config"])["cutoff"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stem = Path(args.out) / f"facet_vs_mace_{args.device}"
    old = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").is_file() else {}
    for side in ("facet", "mace"):  # parts of an older file without their own machine: the file's
        for part in (*PARTS, "train"):
            if part in old.get(side, {}) and "machine" not in old[side][part]:
                old[side][part]["machine"] = old.get("machine", "?")
    result = {**old, "dtype": args.dtype, "data": {k: str(v) for k, v in paths.items()},  # the file's notes stay
              "facet": old.get("facet", {}), "mace": old.get("mace", {})}
    here = machine(args.device)
    for side, measure in (("facet", lambda: facet_side(args.facet, paths, args)),
                          ("mace", lambda: mace_side(paths, args, cutoff))):
        if side not in args.sides:
            continue
        new = measure()
        for part in (*PARTS, "train"):
            if part in new:  # the MACE side's parts name their own process (the venv's torch)
                new[part].setdefault("machine", here)
                new[part]["model"] = new["model"]
        same = (result[side].get("model"), result[side].get("params")) == (new["model"], new.get("params")) \
            and "train" not in new  # a MACE trained here replaces the file of the one measured before
        # parts kept from the file only when they measured this very model; else the side starts afresh
        result[side] = {**result[side], **new} if same else new
        # written after each side: a side that fails (MACE's venv offline) leaves the finished one on disk
        write_results(stem.parent, stem.name, result, table(result), show=False)
    print(table(result))


if __name__ == "__main__":
    main()
