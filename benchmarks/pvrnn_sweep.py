"""PV-RNN meta-prior sweep: train the pvrnn-pfsm recipe at several w and tabulate reconstruction error, KL,
the generated branch probability against the true one, and the error-regression prediction error.

    python benchmarks/pvrnn_sweep.py --w 1e-4 1e-2 1 --steps 400 --out runs/pvrnn_sweep [--w1 W1] [--set key=value ...]

Writes <out>/sweep.json, <out>/sweep.md and <out>/sweep.png (metrics against w); each run's own plot (a training
sequence, free-running generation, posterior sigma during error regression) is <out>/w_<w>/pvrnn.png.
``--from-json FILE`` redraws the table and plot from a saved sweep.json. Runs resume: the same command again
continues an interrupted sweep from each run's newest checkpoint and re-evaluates the finished runs.
``--w1`` gives the first step's KL its own meta-prior at every w (``model_args.meta_prior_first``; a column w1).
w and w1 apply to every level, also of a model given other levels with --set (``model_args.d_sizes=[40]`` ...).
Columns kl_first_k and sigma_first_k: level k's KL per unit and posterior sigma at the first step (``first_step``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import machine, write_results as write_files
from train import fit, load_recipe
from weights import load_checkpoint
from zoo._registry import resolve_config


@torch.no_grad()
def first_step(model) -> dict[str, float]:
    """Level k's KL per latent unit and posterior sigma at the first step (whose prior is N(0, I)), means over the
    training sequences at their posterior means: how much each level codes there (kl_first_k, sigma_first_k)."""
    out = model(torch.arange(model.config.n_sequences, device=model.out.weight.device), noise=False)
    stats = {}
    for k, (level, z) in enumerate(zip(out["levels"], model.config.z_sizes)):
        stats |= {f"kl_first_{k}": float(level["kl"][:, 0].mean() / z),
                  f"sigma_first_{k}": float(level["post_sigma"][:, 0].mean())}
    return stats


def write_results(rows: list[dict], out: Path) -> str:
    """sweep.json, sweep.md and sweep.png (each metric against w; the true branch probability dashed)."""
    keys = [k for k in rows[0] if k not in ("w", "machine")]
    machines = list(dict.fromkeys(r["machine"] for r in rows if "machine" in r))  # files written before: none
    lines = [f"Trained on {m}" for m in machines] + [""] * bool(machines)
    lines += ["| w | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    cell = lambda v: f"{v:.4g}" if isinstance(v, (int, float)) else str(v)  # noqa: E731  (a text column: setting)
    lines += ["| " + " | ".join([f"{r['w']:g}"] + [cell(r[k]) for k in keys]) + " |" for r in rows]
    write_files(out, "sweep", rows, "\n".join(lines), show=False)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in keys if k not in ("p_b_true", "w1") and all(isinstance(r[k], (int, float)) for r in rows)]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.9 * len(shown), 2.9))
    ws = [r["w"] for r in rows]
    for ax, k in zip(axes, shown):
        ax.plot(ws, [r[k] for r in rows], marker="o")
        ax.set(xscale="log", xlabel="meta-prior w", title=k)
        if k in ("rec", "er_error") or k.startswith("kl_"):
            ax.set_yscale("log")
        if k == "p_b_generated" and "p_b_true" in rows[0]:
            ax.axhline(rows[0]["p_b_true"], ls="--", color="k", lw=0.8, label="true")
            ax.legend(fontsize=7)
        if k == "lambda_max":
            ax.axhline(0, color="k", lw=0.5)
    fig.tight_layout()
    fig.savefig(out / "sweep.png", dpi=110)
    plt.close(fig)
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--w", type=float, nargs="+", default=[1e-4, 1e-2, 1.0])
    ap.add_argument("--w1", type=float, help="the first step's meta-prior at every level (default: w)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="runs/pvrnn_sweep")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--from-json", help="redraw the table and plot from a sweep.json instead of training")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        if isinstance(saved, dict):  # {"command", "machine", "rows"}: a file assembled from several sweeps
            saved = [{"machine": saved["machine"], **row} if "machine" in saved else row for row in saved["rows"]]
        print(write_results(saved, out))
        return
    rows, here = [], None
    base = load_recipe("pvrnn-pfsm", args.overrides)  # the model's levels, as --set may give it one or three
    levels = len(resolve_config(base["model"], **base["model_args"]).d_sizes)
    for w in args.w:
        first = [] if args.w1 is None else [f"model_args.meta_prior_first={[args.w1] * levels}"]
        recipe = load_recipe("pvrnn-pfsm", [*args.overrides, f"model_args.meta_prior={[w] * levels}", *first,
                                            f"train.steps={args.steps}", "train.eval_every=0"])
        run = out / f"w_{w:g}"
        final = fit(recipe, out=run, resume=True)  # a rerun continues an interrupted sweep
        device = recipe["train"]["device"]  # one description per sweep, of the device the runs train on
        here = here or machine(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        rows.append({"w": w, **({} if args.w1 is None else {"w1": args.w1}),
                     **{k: v for k, v in final.items() if k not in ("step", "split")},
                     **first_step(load_checkpoint(run / "model.safetensors").eval()), "machine": here})
        table = write_results(rows, out)
    print(table)


if __name__ == "__main__":
    main()
