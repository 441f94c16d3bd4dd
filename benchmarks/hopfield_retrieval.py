"""Retrieval demo: store scikit-learn digits in a modern Hopfield network and retrieve them from masked and
noisy queries with one update, xi_new = X^T softmax(beta X xi) (Ramsauer et al. 2021, Eq. 3).

    python benchmarks/hopfield_retrieval.py [--stored 1000] [--beta 4.0] [--out hopfield_retrieval.png]
                                            [--results benchmarks/results]

Reports the fraction of queries whose retrieved pattern is the stored original (the largest association
weight points at it), the mean squared error to the original and, among the other queries, how often the stored
image they point at shows the same digit; saves a picture grid and writes hopfield_retrieval.{json,md}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import machine, write_results
from layers import Hopfield

STATIC = dict(stored_pattern_as_static=True, state_pattern_as_static=True, pattern_projection_as_static=True,
              disable_out_projection=True, **{f"normalize_{w}{a}": False for a in ("", "_affine")
                                              for w in ("stored_pattern", "state_pattern", "pattern_projection")})


def corrupt(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """``masked``: the lower half of the 8x8 image set to 0 (unknown: no vote); ``noisy``: + N(0, 0.5^2)."""
    if kind == "masked":
        q = x.clone().view(-1, 8, 8)
        q[:, 4:] = 0.0
        return q.view(-1, 64)
    return x + 0.5 * torch.randn(x.shape, generator=generator)


def main():
    from sklearn.datasets import load_digits

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stored", type=int, default=1000, help="how many digits to store (at most 1797)")
    ap.add_argument("--beta", type=float, default=4.0)
    ap.add_argument("--show", type=int, default=8, help="columns in the picture grid")
    ap.add_argument("--out", default="runs/hopfield_retrieval.png")  # runs/ is ignored by git
    ap.add_argument("--results", default="benchmarks/results", help="folder for hopfield_retrieval.{json,md}")
    args = ap.parse_args()
    if not 1 <= args.stored <= 1797:
        raise ValueError(f"--stored must be in [1, 1797], got {args.stored}")
    if not 1 <= args.show <= args.stored:
        raise ValueError(f"--show must be in [1, --stored={args.stored}], got {args.show}")
    digits = load_digits()
    images = torch.as_tensor(digits.data[: args.stored], dtype=torch.float32) / 8.0 - 1.0  # in [-1, 1]
    labels = torch.as_tensor(digits.target[: args.stored])
    g = torch.Generator().manual_seed(0)
    hopfield = Hopfield(scaling=args.beta, **STATIC)
    stored = images[None]
    results, rows = {}, {}
    for kind in ("masked", "noisy"):
        queries = corrupt(images, kind, g)[None]
        retrieved = hopfield((stored, queries, stored))[0]
        target = hopfield.get_association_matrix((stored, queries, stored))[0, 0].argmax(-1)
        hit = target == torch.arange(args.stored)
        results[kind] = (queries[0], retrieved)
        rows[kind] = {"retrieved_original": float(hit.float().mean()),
                      "mse_retrieved": float(((retrieved - images) ** 2).mean()),
                      "mse_query": float(((queries[0] - images) ** 2).mean()),
                      # None (null in the JSON) when every query found its original
                      "same_digit_when_missed": float((labels[target] == labels)[~hit].float().mean())
                      if (~hit).any() else None}
    table = {"machine": machine(), "stored": args.stored, "beta": args.beta, "queries": rows}
    lines = [f"Hopfield retrieval, one update, {args.stored} stored scikit-learn digits, beta = {args.beta}, on "
             f"{table['machine']}.", "",
             "| query | retrieved the original | MSE retrieved | MSE query | missed: points at the same digit |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {r['retrieved_original']:.1%} | {r['mse_retrieved']:.3f} | {r['mse_query']:.3f} | "
              + ("no misses |" if r["same_digit_when_missed"] is None else f"{r['same_digit_when_missed']:.0%} |")
              for k, r in rows.items()]
    write_results(args.results, "hopfield_retrieval", table, "\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("stored", images), ("masked query", results["masked"][0]), ("retrieved", results["masked"][1]),
            ("noisy query", results["noisy"][0]), ("retrieved", results["noisy"][1])]
    fig, axes = plt.subplots(len(rows), args.show, figsize=(1.2 * args.show, 1.3 * len(rows)), squeeze=False)
    for r, (label, data) in enumerate(rows):
        for c in range(args.show):
            ax = axes[r, c]
            ax.imshow(data[c].view(8, 8).clamp(-1, 1), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"Modern Hopfield retrieval, one update, beta={args.beta}, {args.stored} stored digits", fontsize=9)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
