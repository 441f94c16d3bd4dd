"""Nested cross-validation for the Hopfield MIL benchmark sets: hyperparameters chosen inside each training fold.

    python benchmarks/hopfield_mil_search.py [--recipes hopfield-mil-elephant hopfield-mil-ucsb] [--seeds 0]
                                             [--inner-folds 3] [--jobs 2] [--out benchmarks/results]
    python benchmarks/hopfield_mil_search.py --merge A/hopfield_mil_search.json B/hopfield_mil_search.json

The paper searched hyperparameters for each data set; our recipes are fixed. Here every outer fold of a
recipe's stratified 10-fold split (one split per seed) scores each candidate of GRID by its mean AUC over
``--inner-folds`` inner folds of that fold's training bags (``data.inner_fold``), retrains the best candidate
on the whole training fold and scores it once on the test fold. The test bags take no part in the choice.
GRID is ours (the paper's search space is not reproduced): training length, dropout and weight decay, the knobs
against the overfitting of the fixed recipes. Runs go to ``--jobs`` processes of one torch thread each.
Writes hopfield_mil_search.json and hopfield_mil_search.md, naming the machine; ``--merge`` joins the seeds of
earlier runs (same grid and inner folds) into one table.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from common import machine, write_results
from hopfield_tasks import PAPER_AUC, mil_data_missing, run, summary
from train import load_recipe

GRID = [[f"train.steps={steps}", f"model_args.dropout={dropout}", f"optim.weight_decay={decay}"]
        for steps, dropout, decay in itertools.product([250, 1000], [0.2, 0.5], [1e-3, 1e-1])]
QUIET = ["train.eval_every=0", "train.log_every=1000000", "train.threads=1"]


def auc(name: str, seed: int, overrides: list[str]) -> float:
    """Final AUC % of one quiet run of recipe ``name`` (``hopfield_tasks.run``: seeded, throw-away directory)."""
    return 100 * run(name, seed, [*overrides, *QUIET])["auc"]


def nested_cv(pool: ProcessPoolExecutor, name: str, seed: int, inner_folds: int) -> list[dict]:
    """One repetition of 10-fold CV with an inner search per outer fold; one record per outer fold."""
    folds = int(load_recipe(name)["data"]["folds"])
    inner = {(f, c, k): pool.submit(auc, name, seed, [f"data.fold={f}", *GRID[c], f"data.inner_folds={inner_folds}",
                                                      f"data.inner_fold={k}"])
             for f in range(folds) for c in range(len(GRID)) for k in range(inner_folds)}
    records = []
    for f in range(folds):
        scores = [statistics.mean(inner[f, c, k].result() for k in range(inner_folds)) for c in range(len(GRID))]
        best = max(range(len(GRID)), key=scores.__getitem__)  # first of equals
        records.append({"fold": f, "inner_auc": scores, "chosen": GRID[best],
                        "test_auc": pool.submit(auc, name, seed, [f"data.fold={f}", *GRID[best]])})
    for r in records:
        r["test_auc"] = r["test_auc"].result()
    return records


def report(res: dict) -> str:
    lines = [f"Nested cross-validation on {res['machine']}: outer stratified 10-fold split per seed {res['seeds']}, "
             f"{res['inner_folds']} inner folds choose one of {len(res['grid'])} candidates per outer fold.", "",
             "| recipe | AUC % (nested CV) | AUC % (paper) | candidates chosen (steps, dropout, weight decay) |",
             "|---|---|---|---|"]
    for name, r in res["recipes"].items():
        chosen = [", ".join(o.split("=")[1] for o in rec["chosen"]) for recs in r["repetitions"].values()
                  for rec in recs]
        counts = "; ".join(f"({c}) x{chosen.count(c)}" for c in sorted(set(chosen), key=chosen.index))
        lines.append(f"| {name} | {summary(r['repetition_means'])} | {PAPER_AUC.get(name, '-')} | {counts} |")
    return "\n".join(lines) + "\n"


def merge(paths: list[str]) -> dict:
    """One result from several runs' JSON files: their seeds' repetitions side by side, per recipe."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if any((r["grid"], r["inner_folds"]) != (runs[0]["grid"], runs[0]["inner_folds"]) for r in runs):
        raise ValueError("--merge: the runs used different grids or inner folds")
    seeds = [s for r in runs for s in r["seeds"]]
    if len(set(seeds)) < len(seeds):  # repetitions are keyed by seed: a repeat would replace the earlier one
        raise ValueError(f"--merge: seed {next(s for s in seeds if seeds.count(s) > 1)} is in more than one of "
                         f"{', '.join(paths)}; merge runs of distinct seeds")
    res = {**runs[0], "machine": "; ".join(dict.fromkeys(r["machine"] for r in runs)),
           "seeds": seeds, "recipes": {}}
    for name in dict.fromkeys(n for r in runs for n in r["recipes"]):
        reps = {s: recs for r in runs for s, recs in r["recipes"].get(name, {}).get("repetitions", {}).items()}
        res["recipes"][name] = {"repetitions": reps, "repetition_means": [
            statistics.mean(rec["test_auc"] for rec in recs) for recs in reps.values()]}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["hopfield-mil-elephant", "hopfield-mil-ucsb"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--inner-folds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="join earlier runs' results instead of running")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    no_folds = [n for n in args.recipes if "folds" not in load_recipe(n)["data"]]
    if no_folds:
        ap.error(f"{no_folds}: nested cross-validation needs a recipe with data.folds (a benchmark file), such as "
                 "hopfield-mil-elephant, -fox, -tiger or -ucsb")
    if args.merge:
        res = merge(args.merge)
        write_results(args.out, "hopfield_mil_search", res, report(res))
        return
    res = {"machine": machine(), "seeds": args.seeds, "inner_folds": args.inner_folds, "grid": GRID, "recipes": {}}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for name in args.recipes:
            if (why := mil_data_missing(load_recipe(name))) is not None:
                print(f"skip {name}: {why}")
                continue
            runs = {seed: nested_cv(pool, name, seed, args.inner_folds) for seed in args.seeds}
            means = [statistics.mean(r["test_auc"] for r in recs) for recs in runs.values()]
            res["recipes"][name] = {"repetitions": runs, "repetition_means": means}
            print(name, means, flush=True)
    write_results(args.out, "hopfield_mil_search", res, report(res))


if __name__ == "__main__":
    main()
