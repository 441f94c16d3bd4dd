"""What a run ran on: a run directory's ``environment.json`` (one entry per launch, so a run resumed elsewhere
says so). Exact numbers of a training run depend on more than the recipe and seed: the same commit and packages
gave a different sigma-lm-pytext loss with torch's AVX2 and AVX-512 CPU kernels on one machine."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

import zoo

PACKAGES = ("numpy", "timm", "transformers", "safetensors", "accelerate", "e3nn", "ase", "scikit-learn", "scipy")


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} CPU"


def _source_commit() -> str | None:
    """The git commit of paperzoo's source when it runs from a checkout (an editable install), else None."""
    root = Path(zoo.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode:
        return None
    return done.stdout.strip() + ("+uncommitted" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device, world: int = 1) -> dict:
    """paperzoo's version and source commit, Python, torch (with its CUDA and the CPU kernels it dispatches to),
    the device, threads, processes and the versions of the packages that compute or feed a run."""
    env = {
        "paperzoo": zoo.__version__, "source_commit": _source_commit(),
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(), "device": str(device), "processes": world,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env | {"packages": {name: _version(name) for name in PACKAGES}}
