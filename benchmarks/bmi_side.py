"""benchmark-mi side of the KSG comparison (issue 4): sample its tasks and run its own KSG estimator.

benchmark-mi 0.1.3 pins numpy<2, pandas<2 and pydantic<2, so this script runs in its own virtual environment
and imports nothing of paperzoo (bench_bmi.py creates it and calls this). It prints ONE JSON list on its last
stdout line: per task its id, name, dims, true MI (nats), the .npz with the samples, and bmi's KSG estimates.

    python benchmarks/bmi_side.py --out DIR --n 5000 --seeds 0 1 2 --k 10 [--tasks ID ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--tasks", nargs="*", default=None)
    args = ap.parse_args(argv)
    import numpy as np
    from bmi.benchmark import BENCHMARK_TASKS
    from bmi.estimators import KSGEnsembleFirstEstimator

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task_id, task in BENCHMARK_TASKS.items():
        if args.tasks and task_id not in args.tasks:
            continue
        samples = [task.sample(args.n, seed) for seed in args.seeds]
        file = out / f"{task_id}.npz"
        np.savez(file, x=np.stack([np.asarray(x) for x, _ in samples]), y=np.stack([np.asarray(y) for _, y in samples]))
        estimator = KSGEnsembleFirstEstimator(neighborhoods=(args.k,), standardize=True)
        rows.append({"id": task_id, "name": task.name, "dim_x": task.dim_x, "dim_y": task.dim_y,
                     "mi_true": float(task.mutual_information), "file": str(file),
                     "bmi_ksg": [float(estimator.estimate(np.asarray(x), np.asarray(y))) for x, y in samples]})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
