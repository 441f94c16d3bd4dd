"""Our KSG on the benchmark-mi tasks (Czyz et al., "Beyond Normal", NeurIPS 2023) against the true MI and bmi's KSG.

    python benchmarks/bench_bmi.py [--venv /work/bmi_venv] [--n 5000] [--seeds 0 1 2] [--k 10] [--out benchmarks/results]

benchmark-mi runs in its own venv (bmi_side.py, created on first use): it samples each task (n points per
seed) and estimates MI with its KSG (first variant, k neighbours, standardised, Euclidean norms within X and
within Y). Here our ``ksg_mutual_information`` (KSG-1, same k, standardised) runs on the very same samples with
our default max-norm and with Euclidean marginal norms. Writes bench_bmi_cpu.json/.md: per task the true MI and
mean +- sd over seeds of each estimate, all in nats. ``--reuse`` takes the samples and bmi's estimates of a
previous run (<samples>/bmi_side.json) instead of rerunning benchmark-mi.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

import venvs
from common import machine, write_results, write_text
from estimators import ksg_mutual_information

BMI_REQUIREMENTS = ("benchmark-mi==0.1.3", "jax==0.4.30", "jaxlib==0.4.30")  # newer jax breaks its tfp 0.20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default="/work/bmi_venv")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--samples", default="/tmp/bmi_samples")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--reuse", action="store_true")
    args = ap.parse_args(argv)
    saved = Path(args.samples) / "bmi_side.json"
    if args.reuse and saved.is_file():  # the saved run's n, seeds and k describe its samples and bmi's column
        run = json.loads(saved.read_text())
        if isinstance(run, list):  # written before the settings were saved beside the rows: k was not recorded
            shape = np.load(run[0]["file"])["x"].shape
            run = {"n": shape[1], "seeds": f"{shape[0]} (ids not recorded)", "k": args.k, "tasks": run}
            print(f"--reuse: {saved} does not record its seeds and k; assuming --k {args.k}", file=sys.stderr)
        args.n, args.seeds, args.k, rows = run["n"], run["seeds"], run["k"], run["tasks"]
    else:
        python = venvs.ensure_venv(args.venv, BMI_REQUIREMENTS, "import bmi",
                                   "; --reuse reads the samples and bmi's column of an earlier run")
        side = str(Path(__file__).resolve().parent / "bmi_side.py")
        rows = venvs.run_json(python, side, ["--out", args.samples, "--n", str(args.n), "--k", str(args.k),
                                             "--seeds", *map(str, args.seeds)])
        write_text(saved, json.dumps({"n": args.n, "seeds": args.seeds, "k": args.k, "tasks": rows}))
    for row in rows:
        data = np.load(row["file"])
        for metric in ("chebyshev", "euclidean"):
            row[f"ours_{metric}"] = [float(ksg_mutual_information(torch.from_numpy(x), torch.from_numpy(y), k=args.k,
                                                                  metric=metric)) for x, y in zip(data["x"], data["y"])]

    def mean_sd(values):
        return f"{statistics.mean(values):.3f} +- {statistics.pstdev(values):.3f}"

    lines = [f"Machine: {machine(torch.device('cpu'))}; n = {args.n}, seeds {args.seeds}, k = {args.k}; nats", "",
             "| task | dims | true MI | ours, max-norm (default) | ours, Euclidean marginals | benchmark-mi KSG "
             "(Euclidean marginals) | max abs difference, same norms |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = max(abs(a - b) for a, b in zip(r["ours_euclidean"], r["bmi_ksg"]))
        lines.append(f"| {r['name']} | {r['dim_x']} x {r['dim_y']} | {r['mi_true']:.3f} | {mean_sd(r['ours_chebyshev'])} | "
                     f"{mean_sd(r['ours_euclidean'])} | {mean_sd(r['bmi_ksg'])} | {diff:.1e} |")
    write_results(args.out, "bench_bmi_cpu", {"machine": machine(torch.device("cpu")), "n": args.n, "k": args.k,
                                               "tasks": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
