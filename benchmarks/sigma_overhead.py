"""sigmaReparam overhead on ViT-S: training step against the plain model, and inference after folding.

    python benchmarks/sigma_overhead.py [--img 224] [--batch 32] [--steps 10] [--device cuda] [--bf16] [--compile]
                                        [--out benchmarks/results]

Models: timm's ViT-S/16 (LayerNorm, plain Linear), the same with sigmaReparam on every Linear and the patch
embedding keeping the LayerNorms (the reparametrisation's own cost), and the paper's variant without LayerNorm.
Training: SGD steps (forward, backward, update) on random images, mean over ``--steps`` after 2 warm-up steps;
the models take turns for ``--rounds`` rounds and each keeps its fastest round.
Inference: eval-mode forward of the plain model and of the sigmaReparam model after ``remove_sigma_reparam``
(folded into plain weights). ``--compile`` runs every model through torch.compile (the power iteration's small
kernels fuse). The issue's goal: under 5% training overhead on GPU; 0% after folding.
Writes sigma_overhead_<device>[_bf16][_compiled].json/.md.
"""
from __future__ import annotations

import argparse
import copy
import time

import timm
import torch

import zoo  # noqa: F401  (registers the _sigma ViTs with timm)
from common import machine, sync, write_results
from layers import remove_sigma_reparam


def step_ms(model, x, y, steps: int, train: bool, bf16: bool = False) -> float:
    device = x.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train(train)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            t = time.perf_counter()
        if train:
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        else:
            with torch.no_grad(), autocast:
                model(x)
    sync(device)
    return 1e3 * (time.perf_counter() - t) / steps


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (as the loop runs on GPU); writes *_bf16 files")
    ap.add_argument("--compile", action="store_true", help="torch.compile every model; writes *_compiled files")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.img, args.img, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    kw = dict(img_size=args.img)
    models = {"plain ViT-S/16": timm.create_model("vit_small_patch16_224", **kw),
              "sigmaReparam, LayerNorm kept": timm.create_model("vit_small_patch16_224_sigma", remove_norms=False, **kw),
              "sigmaReparam, no LayerNorm (paper)": timm.create_model("vit_small_patch16_224_sigma", **kw)}
    res = {"machine": machine(device), "torch": torch.__version__, "img": args.img, "batch": args.batch, "train_ms": {},
           "infer_ms": {}}
    folded = remove_sigma_reparam(copy.deepcopy(models["sigmaReparam, LayerNorm kept"]).eval())
    inference = {"plain ViT-S/16": models["plain ViT-S/16"], "sigmaReparam folded (LayerNorm kept)": folded}
    for model in [*models.values(), folded]:
        model.to(device)
    if args.compile:
        models = {name: torch.compile(model) for name, model in models.items()}
        inference = {name: torch.compile(model) for name, model in inference.items()}
    for _ in range(args.rounds):  # interleaved rounds, minimum per model: drift of a shared machine cancels out
        for name, model in models.items():
            t = step_ms(model, x, y, args.steps, train=True, bf16=args.bf16)
            res["train_ms"][name] = min(t, res["train_ms"].get(name, t))
        for name, model in inference.items():
            t = step_ms(model, x, y, args.steps, train=False, bf16=args.bf16)
            res["infer_ms"][name] = min(t, res["infer_ms"].get(name, t))
    base_t, base_i = res["train_ms"]["plain ViT-S/16"], res["infer_ms"]["plain ViT-S/16"]
    res["precision"] = ("bf16 autocast" if args.bf16 else "fp32") + (", torch.compile" if args.compile else "")
    lines = [f"Machine: {res['machine']}; ViT-S/16 at {args.img}x{args.img}, batch {args.batch}, {res['precision']}", "",
             "| model | training step [ms] | overhead |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {100 * (v / base_t - 1):+.1f}% |" for k, v in res["train_ms"].items()]
    lines += ["", "| model | inference forward [ms] | overhead |", "|---|---|---|"]
    lines += [f"| {k} | {v:.1f} | {100 * (v / base_i - 1):+.1f}% |" for k, v in res["infer_ms"].items()]
    write_results(args.out, f"sigma_overhead_{device.type}" + ("_bf16" if args.bf16 else "") + ("_compiled" if args.compile else ""), res, "\n".join(lines))


if __name__ == "__main__":
    main()
