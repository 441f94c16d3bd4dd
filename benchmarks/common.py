"""Shared by the benchmark scripts: the machine's name, device sync, a median timer, and writing <stem>.json + <stem>.md
(each file whole or not at all)."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch


def machine(device: torch.device | str = "cpu") -> str:
    """What a result was measured on: the GPU's name (with the host CPU, where a peer or the data pipeline may run),
    or the CPU with the kernels torch dispatches to (AVX2, AVX512: their sums round differently), its cores, torch's
    threads and the load."""
    device = torch.device(device)
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)} (host {cpu_name()}, {os.cpu_count()} cores), "
                f"torch {torch.__version__}")
    return (f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()} kernels), {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else its architecture. Not imported from paperzoo's
    ``train.environment``: ``mace_side.py`` runs with this module in a virtual environment without paperzoo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def run_and_label(spec: str) -> tuple[Path, str]:
    """A command line's RUN_DIR[:LABEL]: the run directory and its label (the directory's name without one)."""
    if ":" in spec and not Path(spec).is_dir():
        run, label = spec.rsplit(":", 1)
        return Path(run), label
    return Path(spec), Path(spec).name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls, after one warm-up call (CPU: no device sync)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, so a stopped run leaves the old file or the new
    one, never a truncated one (result files are read back: ``pvrnn_sweep --from-json``, ``bench_bmi --reuse``).
    Not ``weights.checkpoint.atomic_write``: this module also runs in MACE's venv, where paperzoo is not installed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_results(out: str | os.PathLike, stem: str, res: dict, markdown: str, show: bool = True) -> None:
    """Write ``res`` as <out>/<stem>.json and ``markdown`` as <out>/<stem>.md, and print the markdown if ``show``."""
    write_text(Path(out) / f"{stem}.json", json.dumps(res, indent=2))
    write_text(Path(out) / f"{stem}.md", markdown.rstrip("\n") + "\n")
    if show:
        print(markdown)
