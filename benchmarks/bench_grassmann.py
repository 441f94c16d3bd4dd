"""One CausalGrassmannMixing layer against one fused-SDPA causal attention layer of the same width.

For each sequence length L (batch adjusted so that batch x L stays fixed) it times forward + backward (median
of ``--reps`` after warm-up) and measures activation memory: the bytes autograd saves for the backward pass
(every device), and the peak allocated memory on CUDA. Then it times greedy generation with the Grassmann
cache against the Transformer's KV cache. Prints the machine; writes JSON and a markdown table to
benchmarks/results/bench_grassmann_<device>.{json,md}.

    python benchmarks/bench_grassmann.py                    # CPU: L = 256 ... 2048
    python benchmarks/bench_grassmann.py --device cuda --lengths 512 1024 2048 4096 8192 16384 --tokens 65536
    python benchmarks/bench_grassmann.py --device cuda --lengths 4096 16384 --tokens 65536 --compile --gen-tokens 0
    python benchmarks/bench_grassmann.py --device cuda --lengths 4096 --tokens 65536 --dtype bfloat16 --profile

``--profile`` adds <stem>_profile.txt: torch.profiler's operator table (by device time, then CPU time) for one
Grassmann forward + backward at the first length, to show where the layer's time goes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from common import machine, sync, write_results, write_text
from layers import CausalGrassmannMixing, CausalSelfAttention

RESULTS = Path(__file__).resolve().parent / "results"


def saved_bytes(layer, x) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward (activation memory; a tensor
    saved by several ops, or a view of one, counts once)."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t.detach()  # returning t itself ties saved outputs to their own graph: a cycle gc cannot free

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    del out
    return sum(storages.values())


def fwd_bwd(layer, x, device, reps: int) -> tuple[float, int | None]:
    """Median seconds of forward + backward, and peak CUDA memory (None on CPU)."""
    for _ in range(2):
        layer(x).sum().backward()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        x.grad = None
        start = time.perf_counter()
        layer(x).sum().backward()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(times), peak


class Grassmann(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.mix = CausalGrassmannMixing(d, rank=32)

    def forward(self, x):
        return self.mix(x)[0]


def bench_layers(device, lengths, tokens, d, reps, dtype, compiled=False):
    rows = []
    for L in lengths:
        B = max(1, tokens // L)
        row = {"L": L, "batch": B}
        for name, layer in (("grassmann", Grassmann(d)), ("attention", CausalSelfAttention(d, 4))):
            layer = layer.to(device, dtype)
            x = torch.randn(B, L, d, device=device, dtype=dtype, requires_grad=True)
            row[f"{name}_saved_MB"] = saved_bytes(layer, x) / 2**20  # eager: what autograd keeps without fusion
            seconds, peak = fwd_bwd(torch.compile(layer, dynamic=False) if compiled else layer, x, device, reps)
            row[f"{name}_ms"] = 1000 * seconds
            if peak is not None:
                row[f"{name}_peak_MB"] = peak / 2**20
            del layer, x
        row["speedup"] = row["attention_ms"] / row["grassmann_ms"]
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return rows


def profile_table(device, L, tokens, d, dtype) -> str:
    """torch.profiler's top operators of one Grassmann forward + backward (after two warm-up passes)."""
    from torch.profiler import ProfilerActivity, profile

    layer = Grassmann(d).to(device, dtype)
    x = torch.randn(max(1, tokens // L), L, d, device=device, dtype=dtype, requires_grad=True)
    for _ in range(2):
        layer(x).sum().backward()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        layer(x).sum().backward()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=30)


@torch.no_grad()
def bench_generation(device, new_tokens: int, prompt: int, batch: int):
    import zoo

    out = {}
    for name in ("grassmann_lm_13m", "transformer_lm_13m"):
        model = zoo.create_model(name, max_position_embeddings=prompt + new_tokens).to(device).eval()
        ids = torch.randint(5, 30000, (batch, prompt), device=device)
        model.generate(ids, max_new_tokens=min(4, new_tokens), do_sample=False)  # warm-up
        sync(device)
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        sync(device)
        out[name] = batch * new_tokens / (time.perf_counter() - start)
        print(f"{name}: {out[name]:.1f} generated tokens/s", flush=True)
    return out


def markdown(meta, rows, gen) -> str:
    lines = [f"Machine: {meta['machine']}; d={meta['d']}, r=32, windows 1,2,4,8,12,16, 4 heads; batch x L = "
             f"{meta['tokens']}; {meta['dtype']}; median of {meta['reps']} forward+backward passes"
             + ("; both layers under torch.compile (saved MB: eager)." if meta.get("compiled") else "."), "",
             "| L | batch | Grassmann ms | SDPA attention ms | attention / Grassmann | Grassmann saved MB | "
             "attention saved MB |" + (" Grassmann peak MB | attention peak MB |" if "grassmann_peak_MB" in rows[0] else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if "grassmann_peak_MB" in rows[0] else "")]
    for r in rows:
        line = (f"| {r['L']} | {r['batch']} | {r['grassmann_ms']:.1f} | {r['attention_ms']:.1f} | {r['speedup']:.2f} | "
                f"{r['grassmann_saved_MB']:.1f} | {r['attention_saved_MB']:.1f} |")
        if "grassmann_peak_MB" in r:
            line += f" {r['grassmann_peak_MB']:.0f} | {r['attention_peak_MB']:.0f} |"
        lines.append(line)
    faster = [r["L"] for r in rows if r["speedup"] > 1]
    lines += ["", f"Crossover (first L where Grassmann is faster): {faster[0] if faster else 'none in this range'}."]
    if gen:
        lines += ["", f"Greedy generation, batch {meta['gen_batch']}, prompt {meta['gen_prompt']}, "
                      f"{meta['gen_tokens']} new tokens: grassmann_lm_13m {gen['grassmann_lm_13m']:.1f} tokens/s "
                      f"(cache of 16 reduced vectors per layer), transformer_lm_13m {gen['transformer_lm_13m']:.1f} "
                      "tokens/s (KV cache)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--tokens", type=int, default=4096, help="batch x L for every length")
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="time both layers under torch.compile")
    parser.add_argument("--profile", action="store_true", help="also write the profiler table at the first length")
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--gen-prompt", type=int, default=64)
    parser.add_argument("--gen-batch", type=int, default=1)
    parser.add_argument("--out", default=None, help="file stem, relative to benchmarks/results or absolute "
                                                    "(default bench_grassmann_<device>); .json and .md are added")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    meta = {"machine": machine(device), "d": args.d, "tokens": args.tokens, "reps": args.reps, "dtype": args.dtype,
            "gen_tokens": args.gen_tokens, "gen_prompt": args.gen_prompt, "gen_batch": args.gen_batch,
            "compiled": args.compile}
    print(meta["machine"], flush=True)
    rows = bench_layers(device, args.lengths, args.tokens, args.d, args.reps, dtype, args.compile)
    gen = bench_generation(device, args.gen_tokens, args.gen_prompt, args.gen_batch) if args.gen_tokens else {}
    stem = RESULTS / (args.out or f"bench_grassmann_{device.type}")
    write_results(stem.parent, stem.name, {"meta": meta, "layers": rows, "generation": gen}, markdown(meta, rows, gen))
    if args.profile:
        table = profile_table(device, args.lengths[0], args.tokens, args.d, dtype)
        write_text(stem.with_name(stem.name + "_profile.txt"), f"{meta['machine']}; L = {args.lengths[0]}\n{table}\n")
        print(table)


if __name__ == "__main__":
    main()
