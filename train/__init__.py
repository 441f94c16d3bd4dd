"""The one training loop, tasks, offline data, recipes and the ``zoo`` command line.

``fit`` is imported on first use (PEP 562), so ``zoo --help`` and the command line's start do not wait for torch,
transformers and the zoo before a Ctrl-C can be answered with one line."""
from .recipe import list_recipes, load_recipe

__all__ = ["fit", "load_recipe", "list_recipes"]


def __getattr__(name: str):
    if name == "fit":
        from .loop import fit

        return fit
    raise AttributeError(f"module 'train' has no attribute {name!r}")
