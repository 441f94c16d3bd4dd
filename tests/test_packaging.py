"""The distribution a user installs: the wheel holds every file of the five packages that git tracks (recipes,
the weights manifest, shipped checkpoints) and nothing else of the repository; the source distribution holds the
whole checkout, test suite included. An editable install reads the checkout, so it would hide a missing file."""
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo", "layers", "estimators", "train", "weights")


def _tracked() -> set[str]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    return set(subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split())


def _build(kind: str, tracked: set[str], tmp_path: Path) -> Path:
    """setuptools' PEP 517 hook, as pip runs it without build isolation, in a copy of the tracked files (as they
    are in the working tree): a checkout's own build leftovers (a stale egg-info) cannot change the result."""
    src, out = tmp_path / "src", tmp_path / "dist"
    for name in tracked:
        if (ROOT / name).is_file():  # a file deleted but not yet staged is not there
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    name = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, check=True)
    return out / name.stdout.split()[-1]


def test_the_wheel_holds_every_tracked_package_file_and_nothing_else(tmp_path):
    tracked = _tracked()
    with zipfile.ZipFile(_build("wheel", tracked, tmp_path)) as wheel:
        names = {n for n in wheel.namelist() if ".dist-info/" not in n}
        metadata = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        scripts = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    expected = {f for f in tracked if f.split("/")[0] in PACKAGES}
    assert names == expected, (sorted(expected - names)[:10], sorted(names - expected)[:10])
    assert {"train/recipes/alrnn-lorenz63.yaml", "weights/manifest.json"} <= names
    assert any(n.startswith("weights/files/") and n.endswith(".safetensors") for n in names)
    assert "zoo = train.cli:main" in scripts and "Requires-Dist: torch" in metadata


def test_the_source_distribution_holds_the_checkout_with_its_tests(tmp_path):
    tracked = _tracked()
    with tarfile.open(_build("sdist", tracked, tmp_path)) as sdist:
        names = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile() and "/" in m.name}
    missing = tracked - names - {".gitignore", ".ci/run"}  # CI's script runs in a checkout, not from an sdist
    assert not missing, sorted(missing)[:10]
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
