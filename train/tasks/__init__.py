"""Tasks by name: what a recipe's ``task:`` key selects."""
from .base import Task
from .classification import ClassificationTask
from .dsr import DSRTask
from .image import ImageClassificationTask
from .lm import CausalLMTask
from .mil import MILTask
from .nli import NLITask
from .potential import PotentialTask
from .pvrnn import PVRNNTask

TASKS: dict[str, type[Task]] = {"dsr": DSRTask, "image": ImageClassificationTask, "lm": CausalLMTask, "mil": MILTask, "nli": NLITask, "potential": PotentialTask, "pvrnn": PVRNNTask, "classification": ClassificationTask}


def make_task(recipe: dict) -> Task:
    name = recipe["task"]
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r} in recipe {recipe.get('name')!r}; available: {sorted(TASKS)}")
    return TASKS[name](recipe)


__all__ = ["Task", "TASKS", "make_task", "ClassificationTask", "DSRTask", "MILTask"]
