"""MACE side of the Facet-vs-MACE comparison (issue 9): train, evaluate, time and relax with mace-torch.

mace-torch 0.3.16 pins e3nn==0.4.4 while paperzoo uses e3nn 0.6, so this script runs in its own virtual
environment and imports nothing of paperzoo. From our side (system python, stdlib only at import time):

    from benchmarks.mace_side import ensure_venv, run_mace_side
    python = ensure_venv("/work/mace_venv")                  # creates + installs on first use
    result = run_mace_side(python, ["evaluate", "--model", "run/mace.model", "--test", "test.extxyz"])

Command line (in the MACE venv; every subcommand prints ONE JSON object on its last stdout line):

    python benchmarks/mace_side.py train --train T --valid V --out DIR --channels 32 --max-L 1 --r-max 5.0 \
        --num-interactions 2 --epochs 100 --batch-size 8 --seed 0
    python benchmarks/mace_side.py evaluate --model DIR/mace.model --test TEST
    python benchmarks/mace_side.py speed --model DIR/mace.model --sizes 64 512 4096 --repeats 5
    python benchmarks/mace_side.py relax --model DIR/mace.model --count 100 --fmax 0.05

The measurements themselves live in potential_workloads.py (ase + numpy + torch only), which the Facet side
(facet_vs_mace.py) uses too, so both models are timed on identical inputs by identical code.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import venvs  # noqa: E402
from common import machine  # noqa: E402
from potential_workloads import labelled_frames, measure_accuracy, measure_relax, measure_speed  # noqa: E402

MACE_REQUIREMENTS = ("torch==2.13.0", "mace-torch==0.3.16")  # the version the README's numbers come from


def ensure_venv(path: str | os.PathLike) -> str:
    """Create a venv at `path` with mace-torch installed (if it is not already) and return its python."""
    return venvs.ensure_venv(path, MACE_REQUIREMENTS, "import torch, mace.calculators",
                             "; facet_vs_mace.py --sides facet measures Facet alone")


def run_mace_side(python: str, argv: list[str], threads: int = 1) -> dict:
    """Run this script with the venv's `python` and return the JSON object on its last stdout line."""
    return venvs.run_json(python, __file__, ["--threads", str(threads), *argv], threads)






def _calculator(args):
    from mace.calculators import MACECalculator

    return MACECalculator(model_paths=args.model, device=args.device, default_dtype=args.dtype or "")




def _rewrite_with_ref_keys(src: str, flag: str, dst: Path) -> int:
    """Copy an extxyz whose labels live in ASE's SinglePointCalculator into REF_energy / REF_forces /
    REF_stress (the keys MACE recommends; surfaces without stress get no REF_stress, so MACE weights it 0)."""
    import ase.io

    frames = labelled_frames(src, flag)
    for atoms in frames:
        results = atoms.calc.results
        atoms.info["REF_energy"] = float(results["energy"])
        atoms.arrays["REF_forces"] = results["forces"].copy()
        if "stress" in results:
            atoms.info["REF_stress"] = atoms.get_stress(voigt=False)
        atoms.calc = None
    ase.io.write(dst, frames, format="extxyz")
    return len(frames)


def _seconds_between(log: str, first: str, last: str) -> float:
    """Seconds between the log lines containing `first` and `last` (mace stamps lines '%Y-%m-%d %H:%M:%S.%f')."""
    from datetime import datetime

    stamps = {}
    for line in log.splitlines():
        for marker in (first, last):
            if marker in line:
                stamps[marker] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
    if len(stamps) != 2:
        raise RuntimeError(f"mace log lacks '{first}' or '{last}'; did training run?")
    return (stamps[last] - stamps[first]).total_seconds()


def cmd_train(args) -> dict:
    import torch
    from mace import tools
    from mace.cli.run_train import run

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        # mace's end-of-run evaluation loads the highest-epoch checkpoint it finds, stale ones included
        raise SystemExit(f"--out: expected a new or empty directory, got non-empty {out}")
    out.mkdir(parents=True, exist_ok=True)
    n_train = _rewrite_with_ref_keys(args.train, "--train", out / "train_ref.xyz")
    n_valid = _rewrite_with_ref_keys(args.valid, "--valid", out / "valid_ref.xyz")
    loss = "stress" if args.stress_weight > 0 else "weighted"
    argv = [
        "--name", "mace", "--seed", str(args.seed), "--device", args.device, "--default_dtype", args.dtype,
        "--work_dir", str(out), "--model_dir", str(out),
        "--train_file", str(out / "train_ref.xyz"), "--valid_file", str(out / "valid_ref.xyz"),
        "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--stress_key", "REF_stress",
        "--model", "ScaleShiftMACE", "--num_channels", str(args.channels), "--max_L", str(args.max_L),
        "--max_ell", str(args.max_ell), "--correlation", str(args.correlation), "--r_max", str(args.r_max),
        "--num_interactions", str(args.num_interactions), "--E0s", "average",
        "--loss", loss, "--energy_weight", str(args.energy_weight), "--forces_weight", str(args.forces_weight),
        "--stress_weight", str(args.stress_weight), "--compute_stress", str(loss == "stress"),
        "--batch_size", str(args.batch_size), "--valid_batch_size", str(args.batch_size),
        "--max_num_epochs", str(args.epochs), "--lr", str(args.lr), "--error_table", "PerAtomMAE",
        "--plot", "False", "--num_workers", "0", "--pin_memory", "False", "--save_cpu",
    ]
    mace_args = tools.build_default_arg_parser().parse_args(argv)
    start = time.perf_counter()
    run(mace_args)
    wall = time.perf_counter() - start
    model_path = out / "mace.model"
    log = (out / "logs" / f"mace_run-{args.seed}.log").read_text()
    loop_s = _seconds_between(log, "Started training", "Training complete")
    compiled = torch.jit.load(out / "mace_compiled.model", map_location="cpu")  # TorchScript, not a pickle
    return {
        "subcommand": "train", "model": str(model_path), "compiled_model": str(out / "mace_compiled.model"),
        "params": sum(p.numel() for p in compiled.parameters()),
        "train_wall_s": round(wall, 2), "training_loop_s": round(loop_s, 2),
        "n_train": n_train, "n_valid": n_valid, "epochs": args.epochs, "batch_size": args.batch_size,
        "channels": args.channels, "max_L": args.max_L, "max_ell": args.max_ell, "correlation": args.correlation,
        "r_max": args.r_max, "num_interactions": args.num_interactions, "device": args.device, "dtype": args.dtype,
        "loss": loss,
        "weights": {"energy": args.energy_weight, "forces": args.forces_weight, "stress": args.stress_weight},
        "E0s": "average (least squares over the training set)", "lr": args.lr, "seed": args.seed,
        "threads": args.threads, "argv": argv, "machine": machine(args.device),
    }


def _run_info(args, calc) -> dict:
    """What ran: this process's machine and torch (the venv's, which facet_vs_mace.py's own differs from)."""
    return {"subcommand": args.subcommand, "model": args.model, "device": args.device, "dtype": calc.default_dtype,
            "threads": args.threads, "machine": machine(args.device)}


def cmd_evaluate(args) -> dict:
    calc = _calculator(args)
    return {**_run_info(args, calc), "test": args.test, **measure_accuracy(calc, args.test)}


def cmd_speed(args) -> dict:
    calc = _calculator(args)
    return {**_run_info(args, calc), **measure_speed(calc, args.sizes, args.repeats, args.seed, args.device)}


def cmd_relax(args) -> dict:
    calc = _calculator(args)
    return {**_run_info(args, calc), **measure_relax(calc, args.count, args.fmax, args.max_steps, args.seed)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    sub = parser.add_subparsers(dest="subcommand", required=True)

    train = sub.add_parser("train", help="train ScaleShiftMACE with mace's own run_train")
    train.add_argument("--train", required=True)
    train.add_argument("--valid", required=True)
    train.add_argument("--out", required=True)
    train.add_argument("--channels", type=int, default=32)
    train.add_argument("--max-L", dest="max_L", type=int, default=1)
    train.add_argument("--max-ell", dest="max_ell", type=int, default=3, help="edge spherical harmonics order")
    train.add_argument("--correlation", type=int, default=3)
    train.add_argument("--r-max", dest="r_max", type=float, default=5.0)
    train.add_argument("--num-interactions", type=int, default=2)
    train.add_argument("--epochs", type=int, default=100)
    train.add_argument("--batch-size", type=int, default=8)
    train.add_argument("--lr", type=float, default=0.01)
    train.add_argument("--energy-weight", type=float, default=1.0)
    train.add_argument("--forces-weight", type=float, default=100.0)
    train.add_argument("--stress-weight", type=float, default=0.0, help=">0 trains on stress too (loss 'stress')")
    train.add_argument("--seed", type=int, default=0)

    evaluate = sub.add_parser("evaluate", help="energy/force MAE and time per structure on a test extxyz")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--test", required=True)

    speed = sub.add_parser("speed", help="energy+forces time and memory on rattled fcc Cu supercells")
    speed.add_argument("--model", required=True)
    speed.add_argument("--sizes", type=int, nargs="+", default=[64, 512, 4096])
    speed.add_argument("--repeats", type=int, default=5)
    speed.add_argument("--seed", type=int, default=0)

    relax = sub.add_parser("relax", help="FIRE relaxation of rattled 32-atom fcc metal/alloy cells")
    relax.add_argument("--model", required=True)
    relax.add_argument("--count", type=int, default=100)
    relax.add_argument("--fmax", type=float, default=0.05)
    relax.add_argument("--max-steps", type=int, default=500)
    relax.add_argument("--seed", type=int, default=0)

    train.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    for p in (evaluate, speed, relax):
        p.add_argument("--dtype", choices=("float64", "float32"), default=None, help="default: the model's dtype")
    for p in (train, evaluate, speed, relax):
        p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    positive = ["threads", "channels", "num_interactions", "epochs", "batch_size", "repeats", "count", "max_steps"]
    for name in positive:
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if min(getattr(args, "sizes", [1])) < 1:
        parser.error(f"--sizes: expected atom counts >= 1, got {args.sizes}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    command = {"train": cmd_train, "evaluate": cmd_evaluate, "speed": cmd_speed, "relax": cmd_relax}
    result = command[args.subcommand](args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
