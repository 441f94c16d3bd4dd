"""Relaxation example: FIRE-relax rattled 32-atom fcc metal and alloy cells with a Facet potential through ASE.

    python benchmarks/facet_relax.py                                   # the shipped EMT-trained facet_small
    python benchmarks/facet_relax.py --model runs/facet-emt/best.safetensors --count 100 --fmax 0.05

Prints the number of structures that converged, the FIRE steps, and the wall time (total and per step).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402
from potential_workloads import measure_relax  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="facet_small", help="a registered Facet name or a checkpoint path")
    p.add_argument("--pretrained", default="facet_small_emt", help="manifest checkpoint for a registered name")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--fmax", type=float, default=0.05, help="eV/A")
    p.add_argument("--max-steps", type=int, default=500)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    from zoo.facet_calculator import FacetCalculator

    is_path = Path(args.model).is_file()
    calc = FacetCalculator(args.model, pretrained=False if is_path else args.pretrained, device=args.device,
                           dtype=getattr(torch, args.dtype))
    print(json.dumps({"model": args.model, "machine": machine(args.device), "device": args.device, "dtype": args.dtype,
                      **measure_relax(calc, args.count, args.fmax, args.max_steps)}))


if __name__ == "__main__":
    main()
