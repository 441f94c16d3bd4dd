"""Tasks by name: what a recipe's ``task:`` key selects."""
import difflib
import warnings
from pathlib import Path

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


class UnusedSettingWarning(UserWarning):
    """A recipe setting that nothing reads: most often a misspelt key."""


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


def with_run_files(recipe: dict, run: Path, given=()) -> dict:
    """``recipe`` with the data settings that its task's files in ``run`` stand for pointed at them (an LM's
    tokenizer.json: WordPiece training is not deterministic, so a vocabulary trained again would number the pieces
    differently), except the keys in ``given`` (data.KEY set on the command line)."""
    task = TASKS.get(recipe.get("task"))
    for file, key in (task.run_files if task else {}).items():
        if f"data.{key}" in given:
            continue
        if not (Path(run) / file).is_file():
            warnings.warn(f"{run} holds no {file}, so data.{key} is built again from the recipe and may differ from "
                          f"the model's (an LM tokenizer numbers its pieces differently each time it is trained); "
                          f"put the run's {file} there or --set data.{key}=PATH", stacklevel=2)
            continue
        recipe = {**recipe, "data": {**(recipe.get("data") or {}), key: str(Path(run) / file)}}
    return recipe


def make_task(recipe: dict) -> Task:
    """The recipe's task, built from its ``task_args`` and ``data``; a key there that the task does not read
    (a misspelling, a setting of another task, or of a data source the recipe no longer uses) gets a warning
    naming the keys it did read (not an error: a recipe switched to another source by --set cannot drop the
    old source's keys)."""
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
            warnings.warn(f"task {name!r} does not use {said}; in this recipe it reads {key}."
                          f"{{{', '.join(sorted(section.read))}}}", UnusedSettingWarning, stacklevel=2)
    return task


__all__ = ["Task", "TASKS", "make_task", "with_run_files", "UnusedSettingWarning", "ClassificationTask", "DSRTask",
           "MILTask"]
