"""Peer packages whose pins clash with paperzoo's (mace-torch, benchmark-mi) run in their own virtual environments.

Standard library only, so the scripts that run inside those environments can import it too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def ensure_venv(path: str | os.PathLike, requirements: tuple[str, ...], check: str, otherwise: str = "") -> str:
    """Create a venv at ``path`` with ``requirements`` installed unless ``python -c check`` already succeeds
    there; return its python. A failed install (offline, no wheel) stops with a message naming the peer, the
    venv and how to provide it (``otherwise``: the script's way around it), not a traceback."""
    path = Path(path)
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    if subprocess.run([str(python), "-c", check], capture_output=True).returncode != 0:
        print(f"installing the peer {' '.join(requirements)} into its own venv {path}", file=sys.stderr)
        done = subprocess.run([str(python), "-m", "pip", "install", *requirements], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"could not install {' '.join(requirements)} into {path} (pip exit {done.returncode}; "
                             f"offline or no matching wheel?): {(done.stderr.strip().splitlines() or [''])[-1]}. "
                             f"Install them there yourself ({python} -m pip install {' '.join(requirements)}) or "
                             f"point --venv at a venv that has them{otherwise}")
    return str(python)


def run_json(python: str, script: str, argv: list[str], threads: int = 1) -> object:
    """Run ``script`` with ``python`` (one thread by default) and return the JSON value on its last stdout line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run([python, script, *argv], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(script).name} {argv[:1]} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
