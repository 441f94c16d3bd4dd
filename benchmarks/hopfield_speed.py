"""Hopfield layer speed and memory: forward + backward of our one-step path against a naive einsum-softmax
implementation of the same equations, a bare SDPA implementation, and torch.nn.MultiheadAttention.

    python benchmarks/hopfield_speed.py [--lengths 256 512 ...] [--out benchmarks/results]

Writes hopfield_speed_<device><tag>.json and .md (machine named in both). "largest tensor" is the largest
tensor created during forward + backward (tracked with a dispatch mode) divided by the size of the association
matrix (batch x heads x L x L): >= 1 means the association matrix was materialised.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from common import machine, write_results
from estimators import Probe, entropy
from layers import Hopfield

NO_NORMS = {f"normalize_{w}{a}": False for w in ("stored_pattern", "state_pattern", "pattern_projection")
            for a in ("", "_affine")}


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor produced by an aten op."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if torch.is_tensor(t):
                self.largest = max(self.largest, t.numel())
        return out


def naive(h: Hopfield, x: torch.Tensor) -> torch.Tensor:
    """The same equations with an explicit association matrix: softmax(beta Q K^T) V, einsum + softmax."""
    core = h.association_core
    b, n, e = x.shape
    heads = core.num_heads
    q, k, v = F.linear(x, core.in_proj_weight, core.in_proj_bias).view(b, n, 3, heads, -1).unbind(2)
    xi = torch.einsum("bqhd,bkhd->bhqk", q, k).mul(core.scaling).softmax(-1)
    return core.out_proj(torch.einsum("bhqk,bkhd->bqhd", xi, v).reshape(b, n, e))


def bare_sdpa(h: Hopfield, x: torch.Tensor) -> torch.Tensor:
    """Projections + F.scaled_dot_product_attention + output projection, nothing else."""
    core = h.association_core
    b, n, e = x.shape
    q, k, v = F.linear(x, core.in_proj_weight, core.in_proj_bias).view(b, n, 3, core.num_heads, -1).unbind(2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=core.scaling)
    return core.out_proj(out.transpose(1, 2).reshape(b, n, e))


def timed(fn, x, repeats: int) -> tuple[float, int]:
    """Median seconds of forward + backward and the largest tensor (elements) of one such pass."""
    def step():
        x.grad = None
        fn(x).sum().backward()
    step()
    with LargestTensor() as track:
        step()
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), track.largest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-max", type=int, default=8192, help="skip the naive path above this length")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="", help="suffix of the result files, e.g. _b8 for a --batch 8 run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu, cuda or cuda:N (default: cuda where a GPU is visible)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    h = Hopfield(input_size=args.dim, num_heads=args.heads, **NO_NORMS).to(device)
    mha = torch.nn.MultiheadAttention(args.dim, args.heads, batch_first=True).to(device)
    mha.load_state_dict({k: v for k, v in h.association_core.state_dict().items()})
    paths = {"hopfield": h, "bare_sdpa": lambda x: bare_sdpa(h, x), "mha": lambda x: mha(x, x, x, need_weights=False)[0],
             "naive": lambda x: naive(h, x)}
    rows = []
    for n in args.lengths:
        x = torch.randn(args.batch, n, args.dim, device=device, requires_grad=True)
        row = {"length": n}
        for name, fn in paths.items():
            if name == "naive" and n > args.naive_max:
                continue
            row[f"{name}_s"], largest = timed(fn, x, args.repeats)
            row[f"{name}_largest"] = largest / (args.batch * args.heads * n * n)
        with Probe(h, {"association_core.association": [entropy()]}):
            row["hopfield_probed_largest"] = timed(h, x, 1)[1] / (args.batch * args.heads * n * n)
        rows.append(row)
        print(json.dumps(row), flush=True)
    name = machine(device)
    lines = [f"Forward + backward, batch {args.batch}, dim {args.dim}, {args.heads} heads, on {name} "
             f"(median of {args.repeats}).", "",
             "| L | Hopfield (ms) | bare SDPA (ms) | MHA (ms) | naive (ms) | Hopfield / SDPA | naive / Hopfield "
             "| largest tensor / association (B H L L): Hopfield, probed, naive |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nv = r.get("naive_s")
        naive_ms, ratio = ("-", "-") if nv is None else (f"{1e3 * nv:.1f}", f"{nv / r['hopfield_s']:.2f}")
        lines.append(f"| {r['length']} | {1e3 * r['hopfield_s']:.1f} | {1e3 * r['bare_sdpa_s']:.1f} | "
                     f"{1e3 * r['mha_s']:.1f} | {naive_ms} | {r['hopfield_s'] / r['bare_sdpa_s']:.2f} | {ratio} | "
                     f"{r['hopfield_largest']:.3g}, {r['hopfield_probed_largest']:.3g}, "
                     f"{r.get('naive_largest', float('nan')):.3g} |")
    write_results(args.out, f"hopfield_speed_{device.type}{args.tag}", {"machine": name, "args": vars(args), "rows": rows},
                  "\n".join(lines))


if __name__ == "__main__":
    main()
