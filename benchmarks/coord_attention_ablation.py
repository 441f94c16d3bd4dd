"""The paper's attention ablation (Table 1: baseline, SE, CBAM, CA in the same place) at toy scale, offline:
the ``mbv2-ca-digits`` recipe for each model and seed through the one training loop.

    python benchmarks/coord_attention_ablation.py [--seeds 0 1 2] [--set train.steps=600 ...]

Each seed sets train.seed and data.seed (a new split and initialisation). A run whose loss diverges counts as
diverged and the sweep goes on. Results are rewritten after every run (coord_attention_ablation_cpu.json/.md,
or ``--stem``), so an interrupted sweep keeps what finished.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import machine, write_results
from train import fit, load_recipe

MODELS = ("mobilenetv2_100", "mobilenetv2_se_100", "mobilenetv2_cbam_100", "mobilenetv2_ca_100")
PAPER_TOP1 = {"mobilenetv2_100": 72.3, "mobilenetv2_se_100": 73.5, "mobilenetv2_cbam_100": 73.6,
              "mobilenetv2_ca_100": 74.3}  # ImageNet top-1 %, Hou et al. 2021, Table 1


def markdown(res: dict) -> str:
    lines = [f"`mbv2-ca-digits` with overrides {res['overrides'] or 'none'}; mean ± std over seeds {res['seeds']} "
             f"on {res['machine']}.", "",
             "| model | test acc % | train acc % | s / run | ImageNet top-1 % (paper) |", "|---|---:|---:|---:|---:|"]
    for model, runs in res["runs"].items():
        finished = [r for r in runs if r["test_loss"] == r["test_loss"]]  # NaN: the loss diverged

        def stat(key, scale=100.0):
            values = [scale * r[key] for r in finished]
            if not values:
                return "-"
            return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"
        diverged = f" ({len(runs) - len(finished)} of {len(runs)} seeds diverged)" if len(finished) < len(runs) else ""
        lines.append(f"| {model}{diverged} | {stat('test_acc')} | {stat('train_acc')} | {stat('seconds', 1.0)} | "
                     f"{PAPER_TOP1[model]} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--stem", default="coord_attention_ablation_cpu")
    args = ap.parse_args()
    res = {"machine": machine(torch.device("cpu")), "seeds": args.seeds, "overrides": args.set, "runs": {}}
    for model in args.models:
        for seed in args.seeds:
            recipe = load_recipe("mbv2-ca-digits", [f"model={model}", f"train.seed={seed}", f"data.seed={seed}", *args.set])
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    final = fit(recipe, out=Path(tmp) / "run")
                except FloatingPointError as err:  # a diverged run is a result too
                    print(model, seed, err, flush=True)
                    final = {k: float("nan") for k in ("test_acc", "train_acc", "test_loss")}
            run = {"seed": seed, "seconds": time.perf_counter() - start,
                   **{k: final[k] for k in ("test_acc", "train_acc", "test_loss")}}
            res["runs"].setdefault(model, []).append(run)
            print(model, run, flush=True)
            write_results(args.out, args.stem, res, markdown(res))


if __name__ == "__main__":
    main()
