"""Tasks by name: what a recipe's ``task:`` key selects."""
from .base import Task
from .dsr import DSRTask

TASKS: dict[str, type[Task]] = {"dsr": DSRTask}


def make_task(recipe: dict) -> Task:
    name = recipe["task"]
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r} in recipe {recipe.get('name')!r}; available: {sorted(TASKS)}")
    return TASKS[name](recipe)


__all__ = ["Task", "TASKS", "make_task", "DSRTask"]
