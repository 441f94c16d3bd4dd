"""Hopfield MIL and tabular results over seeds, through the one training loop and the shipped recipes.

    python benchmarks/hopfield_tasks.py [--seeds 0 1 2 3 4] [--out benchmarks/results]

Each seed sets train.seed and data.seed (new bags / a new split / a new CV fold order). MIL recipes that
read data by path run only where the file exists (the paper's AUCs are listed next to ours). Tabular
recipes also train the logistic-regression and MLP baselines with the same recipe (model=...).
Writes hopfield_tasks.json and hopfield_tasks.md, naming the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

from train import fit, load_recipe

PAPER_AUC = {"hopfield-mil-tiger": 91.3, "hopfield-mil-fox": 64.05, "hopfield-mil-elephant": 94.9,
             "hopfield-mil-ucsb": 89.5}  # Ramsauer et al. 2021, Table 1 (mean AUC, %)
MIL = ["hopfield-mil-digits", *PAPER_AUC]
TABULAR = {"hopfield-tabular-breast-cancer": ["hopfield_tabular", "tabular_logreg", "tabular_mlp"],
           "hopfield-tabular-wine": ["hopfield_tabular", "tabular_logreg", "tabular_mlp"]}


def run(recipe_name: str, seed: int, extra: list[str]) -> dict:
    recipe = load_recipe(recipe_name, [f"train.seed={seed}", f"data.seed={seed}", *extra])
    with tempfile.TemporaryDirectory() as tmp:
        return fit(recipe, out=Path(tmp) / "run")


def summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    machine = f"{platform.machine()} CPU, {os.cpu_count()} cores"
    results = {"machine": machine, "seeds": args.seeds, "mil": {}, "tabular": {}}
    for name in MIL:
        path = load_recipe(name)["data"].get("path")
        if path and not Path(path).is_file():
            print(f"skip {name}: {path} not found")
            continue
        results["mil"][name] = [100 * run(name, s, [])["auc"] for s in args.seeds]
        print(name, results["mil"][name], flush=True)
    for name, models in TABULAR.items():
        for model in models:
            acc = [100 * run(name, s, [f"model={model}"])["test_acc"] for s in args.seeds]
            results["tabular"][f"{name}/{model}"] = acc
            print(name, model, acc, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hopfield_tasks.json").write_text(json.dumps(results, indent=2))
    lines = [f"Mean ± std over seeds {args.seeds} on {machine}.", "",
             "| MIL recipe | AUC % (ours) | AUC % (paper) |", "|---|---|---|"]
    lines += [f"| {n} | {summary(v)} | {PAPER_AUC.get(n, '-')} |" for n, v in results["mil"].items()]
    lines += ["", "| tabular recipe | model | test accuracy % |", "|---|---|---|"]
    for key, v in results["tabular"].items():
        name, model = key.split("/")
        lines.append(f"| {name} | {model} | {summary(v)} |")
    (out / "hopfield_tasks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
