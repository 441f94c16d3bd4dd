"""Inference latency and throughput of MobileNetV2-1.0 with SE, CBAM and coordinate attention against the plain
model, next to their parameter and MAC overheads.

    python benchmarks/coord_attention_speed.py [--batches 1 64] [--img 224] [--seconds 1] [--rounds 3]
                                               [--no-compile | --compile-batches 64] [--device cuda]
                                               [--out benchmarks/results]

Eval-mode forward under no_grad on random images, for three layouts: eager NCHW, eager channels_last, and
``torch.compile`` (channels_last). For each batch size and layout the models take turns for ``--rounds``
rounds of about ``--seconds`` of timed forwards (after warm-up) and each keeps its fastest round. The issue's goal: CA
at most 10% slower than the plain model at batch 64 on GPU. Writes coord_attention_speed_<device>.json/.md.
"""
from __future__ import annotations

import argparse
import copy
import math
import time

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo  # noqa: F401  (registers the attention variants with timm)
from common import machine, sync, write_results

MODELS = ("mobilenetv2_100", "mobilenetv2_se_100", "mobilenetv2_cbam_100", "mobilenetv2_ca_100")
LAYOUTS = ("eager NCHW", "eager channels_last", "compiled channels_last")


def macs(model: torch.nn.Module, img: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, img, img))
    return counter.get_total_flops() // 2


def forward_ms(model, x, seconds: float) -> float:
    """Mean ms per forward over enough forwards (at least 2) to fill ``seconds``, after a warm-up and a sizing forward."""
    with torch.no_grad():
        model(x)
        sync(x.device)
        start = time.perf_counter()
        model(x)
        sync(x.device)
        iters = max(2, math.ceil(seconds / (time.perf_counter() - start)))
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync(x.device)
    return 1e3 * (time.perf_counter() - start) / iters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--seconds", type=float, default=1.0, help="timed duration of one round per model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-batches", type=int, nargs="+", default=None,
                    help="time the compiled layout only at these batch sizes (each costs a compilation per model)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    layouts = LAYOUTS[:2] if args.no_compile else LAYOUTS
    base = {name: timm.create_model(name).eval() for name in MODELS}
    res = {"machine": machine(device), "torch": torch.__version__, "img": args.img, "seconds": args.seconds,
           "rounds": args.rounds, "params": {n: sum(p.numel() for p in m.parameters()) for n, m in base.items()},
           "macs": {n: macs(m, args.img) for n, m in base.items()}, "ms": {}}
    variants = {}
    for name, model in base.items():
        model = model.to(device)
        variants[(name, "eager NCHW")] = model
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)  # Module.to works in place: copy first
        variants[(name, "eager channels_last")] = cl
        if "compiled channels_last" in layouts:
            variants[(name, "compiled channels_last")] = torch.compile(cl)
    for batch in args.batches:
        x = torch.randn(batch, 3, args.img, args.img, device=device)
        for layout in layouts:
            if layout.startswith("compiled") and args.compile_batches is not None and batch not in args.compile_batches:
                continue
            xl = x if layout == "eager NCHW" else x.contiguous(memory_format=torch.channels_last)
            best = {name: float("inf") for name in MODELS}
            for _ in range(args.rounds):
                for name in MODELS:
                    best[name] = min(best[name], forward_ms(variants[(name, layout)], xl, args.seconds))
            for name in MODELS:
                res["ms"][f"{name}|{layout}|{batch}"] = best[name]
            print(batch, layout, {n: round(v, 2) for n, v in best.items()}, flush=True)
    write_results(args.out, f"coord_attention_speed_{device.type}", res, markdown(res, args.batches, layouts))


def markdown(res: dict, batches: list[int], layouts: tuple[str, ...]) -> str:
    p0, m0 = res["params"][MODELS[0]], res["macs"][MODELS[0]]
    lines = [f"Eval forward, {res['img']}x{res['img']}, fastest of {res['rounds']} interleaved rounds of about "
             f"{res['seconds']:g} s each (at least 2 forwards), on {res['machine']}. "
             "Overheads are against mobilenetv2_100.", "",
             "| model | params | MACs | layout | " + " | ".join(f"batch {b}: ms (overhead), img/s" for b in batches) + " |",
             "|---|---:|---:|---|" + "---:|" * len(batches)]
    for name in MODELS:
        for layout in layouts:
            cells = []
            for b in batches:
                if f"{name}|{layout}|{b}" not in res["ms"]:
                    cells.append("not run")
                    continue
                ms, ms0 = res["ms"][f"{name}|{layout}|{b}"], res["ms"][f"{MODELS[0]}|{layout}|{b}"]
                cells.append(f"{ms:.1f} ({100 * (ms / ms0 - 1):+.1f}%), {1e3 * b / ms:.0f}")
            params = f"{res['params'][name]:,} ({100 * (res['params'][name] / p0 - 1):+.1f}%)"
            mac = f"{res['macs'][name] / 1e6:.1f}M ({100 * (res['macs'][name] / m0 - 1):+.1f}%)"
            lines.append(f"| {name} | {params} | {mac} | {layout} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
