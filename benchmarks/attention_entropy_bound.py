"""Measured attention entropy beside Zhai et al.'s lower bound (Theorem 3.1), over the checkpoints of ViT runs.

    python benchmarks/attention_entropy_bound.py RUN_DIR[:LABEL] [RUN_DIR[:LABEL] ...] [--images 64] --out bound.png

For every checkpoint of each run (checkpoints/step_*/model.safetensors and the final model.safetensors), the first
``--images`` test images of the run's recipe go through the model; for every block and head it records
sigma = sigma_w * sigma_x (``layers.attention_logit_norms``; sigma_x per image) and the mean and minimum row
entropy. The left panel shows each head's mean entropy at its median sigma with the bound for T tokens as a curve,
the right one the same entropies against sigma_w alone (what sigmaReparam controls); the table states how many
(image, head, query) rows sit at or above the bound (the theorem says all); it is printed and written beside the
figure (``--out`` with the suffix .md).
"""
from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import torch
import yaml
from common import run_and_label, write_text

from estimators import attention_entropy_lower_bound
from layers import attention_logit_norms
from train.tasks import make_task
from weights import load_checkpoint


def measure(model: torch.nn.Module, x: torch.Tensor) -> list[dict]:
    """Per block and head: sigma per image, mean/min row entropy per image, and whether every row obeys the bound."""
    seen, hooks = {}, []
    for i, block in enumerate(model.blocks):
        attn = block.attn
        hooks.append(attn.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(("x", i), args[0])))
        hooks.append(attn.probs.register_forward_hook(lambda m, inp, out, i=i: seen.__setitem__(("p", i), out)))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for i, block in enumerate(model.blocks):
        sigma_w, sigma_x = attention_logit_norms(block.attn, seen[("x", i)])
        p = seen[("p", i)].double()
        entropy = -torch.special.xlogy(p, p).sum(-1)  # (images, heads, queries)
        sigma = sigma_x[:, None] * sigma_w[None]  # (images, heads)
        bound = attention_entropy_lower_bound(sigma, p.shape[-1])
        for h in range(p.shape[1]):
            rows.append({"block": i, "head": h, "sigma": float(sigma[:, h].median()), "sigma_w": float(sigma_w[h]),
                         "entropy": float(entropy[:, h].mean()), "min_entropy": float(entropy[:, h].min()),
                         "rows": entropy[:, h].numel(),
                         "above": int((entropy[:, h] >= bound[:, h, None] - 1e-6).sum())})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="RUN_DIR[:LABEL] (the label defaults to the directory's name)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", default="runs/attention_entropy_bound.png")  # runs/ is ignored by git
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_w) = plt.subplots(1, 2, figsize=(12, 4.5))
    tokens, lines = None, ["| run | step | heads | sigma (median over heads) | mean entropy (nats) | rows at or above the bound |",
                           "|---|---:|---:|---:|---:|---:|"]
    for spec in args.runs:
        run, label = run_and_label(spec)
        files = sorted(run.glob("checkpoints/step_*/model.safetensors"))
        recipe = yaml.safe_load((run / "recipe.yaml").read_text())
        last = f"step_{recipe['train']['steps']:08d}"
        if (run / "model.safetensors").is_file() and not any(f.parent.name == last for f in files):
            files.append(run / "model.safetensors")
        task = make_task(recipe)
        if recipe.get("task") != "image" or getattr(task, "dataset", None) != "digits":
            raise SystemExit(f"{run}: the bound is measured on ViT runs of the digits image task (sigma-vit-digits "
                             f"and its baseline); this run's task is {recipe.get('task')!r}")
        x = task.data["x_test"][:args.images]
        points = []
        for f in files:
            step = int(re.search(r"step_(\d+)", str(f))[1]) if "step_" in str(f) else recipe["train"]["steps"]
            rows = measure(load_checkpoint(f), x)
            tokens = tokens or load_checkpoint(f).patch_embed.num_patches + 1
            points += [(r["sigma"], r["entropy"], r["sigma_w"]) for r in rows]
            lines.append(f"| {label} | {step} | {len(rows)} | {statistics.median(r['sigma'] for r in rows):.3g} | "
                         f"{sum(r['entropy'] for r in rows) / len(rows):.3f} | "
                         f"{sum(r['above'] for r in rows)} / {sum(r['rows'] for r in rows)} |")
        s, e, s_w = zip(*points)
        ax.scatter(s, e, s=10, alpha=0.6, label=f"{label} (heads x blocks x checkpoints)")
        ax_w.scatter(s_w, e, s=10, alpha=0.6, label=label)
    grid = torch.logspace(-3, 5, 400, dtype=torch.float64)
    ax.plot(grid, attention_entropy_lower_bound(grid, tokens), "k-", lw=1.5, label=f"Theorem 3.1 bound, T = {tokens}")
    ax.axhline(float(torch.log(torch.tensor(float(tokens)))), color="gray", ls=":", lw=1, label="log T")
    ax.set_xscale("log")
    ax.set_xlabel("sigma = ||W_K W_Q^T||_2 ||X X^T||_2 (per head, median over images)")
    ax.set_ylabel("attention entropy (nats)")
    ax.legend(fontsize=8, loc="lower left")
    ax_w.set_xscale("log")
    ax_w.set_xlabel("sigma_w = ||W_K W_Q^T||_2 / sqrt(d_head) (biases absorbed)")
    ax_w.set_ylabel("attention entropy (nats)")
    ax_w.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    write_text(Path(args.out).with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
