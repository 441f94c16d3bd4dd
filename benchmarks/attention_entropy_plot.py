"""Attention entropy per layer and training loss over steps, for runs that probed ``attention_entropy``.

    python benchmarks/attention_entropy_plot.py RUN_DIR[:LABEL] [RUN_DIR[:LABEL] ...] --out entropy.png

Reads each run directory's probe.csv (rows point, step, estimator attention_entropy/mean) and metrics.jsonl
(train loss), draws one panel of per-layer mean entropy per run plus one panel of the loss curves, and prints
a table of the entropy at the last probed step and the final evaluation.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from collections import defaultdict
from pathlib import Path

from common import run_and_label


def load(run: Path) -> tuple[dict[int, list[tuple[int, float]]], list[tuple[int, float]], dict]:
    entropy = defaultdict(list)
    with open(run / "probe.csv") as f:
        for row in csv.DictReader(f):
            if row["estimator"] == "attention_entropy/mean":
                layer = int(re.search(r"\.(\d+)\.attn\.probs$", row["point"]).group(1))
                entropy[layer].append((int(row["step"]), float(row["value"])))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    loss = [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]
    final = [r for r in rows if r["split"] == "eval"][-1]
    return dict(sorted(entropy.items())), loss, final


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="RUN_DIR[:LABEL] (the label defaults to the directory's name)")
    ap.add_argument("--out", default="runs/attention_entropy.png")  # runs/ is ignored by git
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run_and_label(spec) for spec in args.runs]
    fig, axes = plt.subplots(1, len(runs) + 1, figsize=(4.2 * (len(runs) + 1), 3.4))
    print("| run | attention entropy at the last probed step, layers 0.. (nats) | final evaluation |")
    print("|---|---|---|")
    for ax, (run, label) in zip(axes, runs):
        entropy, loss, final = load(run)
        for layer, series in entropy.items():
            ax.plot(*zip(*series), label=f"layer {layer}")
        ax.set(title=f"{label}: attention entropy", xlabel="step", ylabel="nats")
        ax.legend(fontsize=7)
        axes[-1].plot(*zip(*loss), label=label)
        last = ", ".join(f"{series[-1][1]:.2f}" for series in entropy.values())
        shown = {k: round(v, 4) for k, v in final.items() if k not in ("split",)}
        print(f"| {label} | {last} (step {next(iter(entropy.values()))[-1][0]}) | {shown} |")
    axes[-1].set(title="training loss", xlabel="step", yscale="log")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
