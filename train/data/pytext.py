"""An English corpus that ships with CPython: the pydoc topics (language reference) and the stdlib docstrings.

Nothing is downloaded. ``pydoc_data.topics`` holds about 65k words of the language reference; the docstrings of
the pure-Python standard library (read with ``ast``, nothing is imported) add about 250k more. The text
depends on the Python version, which is therefore part of every cache key that holds it.
"""
from __future__ import annotations

import ast
import hashlib
import sys
import sysconfig
from pathlib import Path

SKIPPED_PACKAGES = ("site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo", "__pycache__")
SPLITS = ("train", "valid", "test")


def corpus_version() -> str:
    return f"py{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def pydoc_topics() -> list[tuple[str, str]]:
    """(id, text) for every topic of ``pydoc_data.topics``, sorted by id."""
    from pydoc_data.topics import topics

    return [(f"topic:{key}", topics[key]) for key in sorted(topics)]


def stdlib_docstrings() -> list[tuple[str, str]]:
    """(id, text) for every module, class and function docstring of the pure-Python stdlib, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts) & set(SKIPPED_PACKAGES))
    docs = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are templates or in other encodings
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.get_docstring(node)
                if text:
                    docs.append((f"doc:{rel}:{getattr(node, 'name', '')}:{getattr(node, 'lineno', 0)}", text))
    return docs


def split_of(key: str, valid: float, test: float) -> str:
    """Deterministic split by the sha256 of ``key`` (a document's text): adding documents never moves the others."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "valid" if u < valid else "test" if u < valid + test else "train"


def pytext_splits(docstrings: bool = True, valid: float = 0.05, test: float = 0.05) -> dict[str, str]:
    """The corpus as {"train", "valid", "test"} -> text, documents separated by blank lines. A document's split
    follows its text, not its id: the stdlib repeats some docstrings verbatim, and all copies share one split."""
    if not (0 < valid and 0 < test and valid + test < 1):
        raise ValueError(f"pytext_splits: valid and test fractions must be > 0 with sum < 1, got {valid}, {test}")
    docs = pydoc_topics() + (stdlib_docstrings() if docstrings else [])
    parts: dict[str, list[str]] = {s: [] for s in SPLITS}
    for _, text in docs:
        parts[split_of(text.strip(), valid, test)].append(text.strip())
    return {s: "\n\n".join(parts[s]) for s in SPLITS}
