"""The one training loop, tasks, offline data, recipes and the ``zoo`` command line."""
from .loop import fit
from .recipe import list_recipes, load_recipe

__all__ = ["fit", "load_recipe", "list_recipes"]
