"""Tasks by name: what a recipe's ``task:`` key selects."""
import difflib

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


class _ReadKeys(dict):
    """A recipe section that remembers which keys the task read."""

    def __init__(self, section: dict):
        super().__init__(section)
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def make_task(recipe: dict) -> Task:
    """The recipe's task, built from its ``task_args`` and ``data``; a key there that the task never reads
    (a misspelling, or a setting of another task) is an error naming the keys it did read."""
    name = recipe["task"]
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r} in recipe {recipe.get('name')!r}; available: {sorted(TASKS)}")
    sections = {key: _ReadKeys(recipe.get(key) or {}) for key in ("task_args", "data")}
    task = TASKS[name]({**recipe, **sections})
    for key, section in sections.items():
        unused = sorted(set(section) - section.read)
        if unused:
            hints = {k: difflib.get_close_matches(k, sorted(section.read), n=1) for k in unused}
            said = ", ".join(f"{key}.{k}" + (f" (did you mean {key}.{h[0]}?)" if h else "") for k, h in hints.items())
            raise KeyError(f"task {name!r} does not use {said}; in this recipe it reads {key}."
                           f"{{{', '.join(sorted(section.read))}}}")
    return task


__all__ = ["Task", "TASKS", "make_task", "ClassificationTask", "DSRTask", "MILTask"]
