"""PV-RNN speed: training steps per second and error-regression latency per incoming observation.

    python benchmarks/pvrnn_speed.py [--threads 1] [--device cpu] [--out benchmarks/results]

Model pvrnn_pfsm (40+10 d units, 4+1 z). Training: Adam steps on batches of 12 x 200 and 24 x 400 steps.
Generation: ``generate(8, 2000)``.
Error regression: one stream, windows 10/30/50, K = 10 iterations, latency = wall time / observations
processed (and W = 10 with 8 and 32 streams in lockstep: wall time per observation step of all streams).
Every row is the best of 3 runs. The issue's goal is 100 Hz (10 ms per observation) on one CPU core. Writes
pvrnn_speed_<device>.json/.md.
"""
from __future__ import annotations

import argparse
import time

import torch

import zoo
from common import machine, sync, write_results


def train_steps_per_s(device, n_seq: int, seq_len: int, steps: int = 10, repeats: int = 3) -> float:
    model = zoo.create_model("pvrnn_pfsm", n_sequences=n_seq, seq_len=seq_len).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, ids = torch.randn(n_seq, seq_len, 2, device=device), torch.arange(n_seq, device=device)

    def block(n):
        for _ in range(n):
            loss, _ = model.loss(ids, x)
            opt.zero_grad()
            loss.backward()
            opt.step()

    block(2)  # warm-up
    return steps / best_seconds(lambda: block(steps), repeats, device)


def generation_s(device, batch: int = 8, steps: int = 2000, repeats: int = 3) -> float:
    """Seconds for ``model.generate(batch, steps)`` (free-running from the prior, with noise)."""
    model = zoo.create_model("pvrnn_pfsm").to(device)
    model.generate(batch, 50)  # warm-up
    return best_seconds(lambda: model.generate(batch, steps), repeats, device)


def er_latency_ms(device, window: int, iterations: int = 10, length: int = 60, repeats: int = 3,
                  streams: int = 1) -> float:
    model = zoo.create_model("pvrnn_pfsm", n_sequences=2, seq_len=50).to(device)
    stream = torch.randn(streams, window + length, 2, device=device)
    model.error_regression(stream[:, :window + 3], window=window, iterations=iterations)  # warm-up
    run = lambda: model.error_regression(stream, window=window, iterations=iterations)  # noqa: E731
    return 1e3 * best_seconds(run, repeats, device) / length


def best_seconds(run, repeats: int, device) -> float:
    """The fastest of ``repeats`` timed runs (this shared sandbox's speed varies between runs), each from an idle
    device to the end of its last kernel."""
    device = torch.device(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    res = {"machine": machine(device), "torch": torch.__version__,
           "train_steps_per_s": {f"{n}x{T}": train_steps_per_s(device, n, T) for n, T in ((12, 200), (24, 400))},
           "generate_8x2000_s": generation_s(device),
           "er_latency_ms_K10": {f"W{w}": er_latency_ms(device, w) for w in (10, 30, 50)},
           "er_latency_ms_K10_W10_streams": {f"B{b}": er_latency_ms(device, 10, streams=b) for b in (8, 32)}}
    lines = [f"Machine: {res['machine']}", "", "| measurement | value |", "|---|---|"]
    lines += [f"| training, batch {k} steps | {v:.2f} steps/s |" for k, v in res["train_steps_per_s"].items()]
    lines += [f"| generation, 8 streams x 2000 steps | {res['generate_8x2000_s']:.3f} s |"]
    lines += [f"| error regression, {k}, K=10 | {v:.1f} ms per observation ({1e3 / v:.0f} Hz) |"
              for k, v in res["er_latency_ms_K10"].items()]
    lines += [f"| error regression, W10, K=10, {k[1:]} streams in lockstep | {v:.1f} ms per observation step |"
              for k, v in res["er_latency_ms_K10_W10_streams"].items()]
    write_results(args.out, f"pvrnn_speed_{device.type}", res, "\n".join(lines))


if __name__ == "__main__":
    main()
