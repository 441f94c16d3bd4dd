"""PV-RNN meta-prior sweep: train the pvrnn-pfsm recipe at several w and tabulate reconstruction error, KL,
the generated branch probability against the true one, and the error-regression prediction error.

    python benchmarks/pvrnn_sweep.py --w 1e-4 1e-2 1 --steps 400 --out runs/pvrnn_sweep [--set key=value ...]

Writes <out>/sweep.json, <out>/sweep.md and <out>/sweep.png (metrics against w).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from train import fit, load_recipe


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--w", type=float, nargs="+", default=[1e-4, 1e-2, 1.0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="runs/pvrnn_sweep")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = []
    for w in args.w:
        recipe = load_recipe("pvrnn-pfsm", [f"model_args.meta_prior=[{w},{w}]", f"train.steps={args.steps}",
                                            "train.eval_every=0", *args.overrides])
        final = fit(recipe, out=out / f"w_{w:g}")
        rows.append({"w": w, **{k: v for k, v in final.items() if k not in ("step", "split")}})
        (out / "sweep.json").write_text(json.dumps(rows, indent=2))
    keys = [k for k in rows[0] if k != "w"]
    lines = ["| w | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([f"{r['w']:g}"] + [f"{r[k]:.4g}" for k in keys]) + " |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3))
    for ax, k in zip(axes, keys):
        ax.plot([r["w"] for r in rows], [r[k] for r in rows], marker="o")
        ax.set(xscale="log", xlabel="meta-prior w", title=k)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
