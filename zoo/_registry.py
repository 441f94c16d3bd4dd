"""The model registry: ``@register_model`` factories, ``create_model``, ``list_models``, ``model_info``."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib.util
import math
import numbers
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ._inputs import is_int


@dataclass(frozen=True)
class Paper:
    """The paper a family implements."""

    family: str
    title: str
    arxiv: str
    authors: str = ""
    year: int | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[[Any], nn.Module]
    config: Any  # the default config dataclass instance for this name
    paper: Paper


_REGISTRY: dict[str, ModelEntry] = {}


class PlainKeyError(KeyError):
    """A KeyError that prints its message as given (KeyError's own ``str`` puts it in quotes)."""

    def __str__(self):
        return str(self.args[0])


class UnknownModelError(PlainKeyError):
    """An unregistered model name (the message lists the closest registered names)."""


def register_model(config: Any, paper: Paper, name: str | None = None):
    """Register ``factory(config) -> nn.Module`` under its function name (or ``name``).

    ``config`` is the default dataclass instance for this size; ``create_model`` overrides its fields.
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"register_model: config must be a dataclass instance, got {config!r}")

    def wrap(factory):
        key = name or factory.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice ({_REGISTRY[key].factory.__module__} and {factory.__module__})")
        _REGISTRY[key] = ModelEntry(key, factory, config, paper)
        return factory

    return wrap


def register_timm_model(name: str, config: Any, paper: Paper, module: str,
                        finish: Callable[[nn.Module], None] | None = None):
    """Register timm's model ``name`` here too: ``create_model(name, ...)`` is ``timm.create_model(name, **fields of
    the config)``, then ``finish(model)``, so both registries build the same model. ``module`` is the family's zoo
    module (pass ``__name__``): ``zoo convert`` finds its ``checkpoint_filter_fn`` there."""

    def factory(cfg: Any) -> nn.Module:
        import timm

        model = timm.create_model(name, **dataclasses.asdict(cfg))
        if finish is not None:
            finish(model)
        return model

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = module
    register_model(config, paper, name=name)(factory)


RATE_KEYS = ("dropout", "drop_rate", "drop_path_rate")  # config keys that are probabilities; no weight depends on them


def list_models(pattern: str | list[str] | tuple[str, ...] = "*", pretrained: bool = False) -> list[str]:
    """Registered names matching a glob pattern (or any of several), sorted; ``pretrained=True`` keeps those with a
    published checkpoint (``model_info(name)["checkpoints"]``), as timm's ``list_models`` does."""
    patterns = [pattern] if isinstance(pattern, str) else pattern
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"list_models: pattern is a glob str or a list of them, got {pattern!r}")
    names = sorted(n for n in _REGISTRY if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if pretrained:
        from weights.manifest import published_checkpoints  # zoo reaches weights only when asked about checkpoints

        published = {entry["model"] for entry in published_checkpoints()}
        names = [n for n in names if n in published]
    return names


def get_entry(name: str) -> ModelEntry:
    if not isinstance(name, str):
        raise TypeError(f"a model name is a str (see zoo.list_models()), got {name!r}")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} See zoo.list_models() for all {len(_REGISTRY)} names.")
    return _REGISTRY[name]


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the config field type ``hint`` (int, float, bool, str, tuple[...], dict, unions
    with None); a float field takes an int, an int field refuses a bool; other annotations take anything."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is tuple or typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        return isinstance(value, tuple) and (len(items) != 2 or items[1] is not Ellipsis
                                             or all(_fits(v, items[0]) for v in value))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _replace(name: str, config: Any, values: dict, what: str) -> Any:
    """``config`` with ``values`` set: unknown keys and values of the wrong type are errors naming the key; lists
    become tuples where the field is a tuple (YAML and JSON have no tuples)."""
    hints = typing.get_type_hints(type(config))
    valid = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise TypeError(f"{name}: unknown {what} {unknown}; valid keys are {valid}")
    fixed = {}
    for key, value in values.items():
        hint = hints[key]
        if isinstance(value, list) and _fits(tuple(value), hint):
            value = tuple(value)
        if not _fits(value, hint):
            shown = hint.__name__ if isinstance(hint, type) else str(hint)
            raise TypeError(f"{name}: {key} must be {shown} (default {getattr(config, key)!r}), "
                            f"got {value!r} of type {type(value).__name__}")
        if is_int(value):
            value = int(value)  # numpy's int64: the config is written as JSON into every checkpoint
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: {key} must be a finite number, got {value!r}")
        if key in RATE_KEYS and not 0 <= value < 1:
            raise ValueError(f"{name}: {key} is a probability in [0, 1), got {value!r}")
        fixed[key] = value
    return dataclasses.replace(config, **fixed)


def resolve_config(name: str, **overrides) -> Any:
    """The default config of ``name`` with ``overrides`` applied; unknown keys and wrongly typed values are errors
    naming the key."""
    return _replace(name, get_entry(name).config, overrides, "config override(s)")


def config_from_dict(name: str, saved: dict) -> Any:
    """Rebuild ``name``'s config from its JSON form (as stored in checkpoints), checked like ``resolve_config``."""
    return _replace(name, get_entry(name).config, saved, "config keys")


def build(name: str, config: Any) -> nn.Module:
    """Build ``name`` from a resolved config and stamp it with its registry identity."""
    model = get_entry(name).factory(config)
    model.zoo_name = name
    model.zoo_config = config
    return model


def create_model(name: str, pretrained: bool | str = False, **overrides) -> nn.Module:
    """Build a registered model by name.

    ``pretrained=True`` loads the default published checkpoint for ``name`` from the manifest
    (``pretrained="<checkpoint name>"`` picks one), built with the config it was trained with; overrides then
    must match it.
    """
    if not isinstance(pretrained, (bool, str)) or pretrained == "":  # "" read as False built random weights
        raise TypeError(f"pretrained is True, False or a checkpoint name (a non-empty str), got {pretrained!r}")
    checkpoint = None if pretrained is True else pretrained
    if pretrained:
        from weights.manifest import pretrained_entry  # weights depends on zoo, so import at call time

        overrides = {**pretrained_entry(name, checkpoint).get("config", {}), **overrides}
    model = build(name, resolve_config(name, **overrides))
    if pretrained:
        from weights.manifest import load_pretrained

        load_pretrained(model, checkpoint)
    return model


def _recipes_using(name: str) -> list[str]:
    """Names of recipes under train/recipes whose ``model:`` is ``name`` or whose ``baselines:`` hold it (read as
    data, train is not imported)."""
    spec = importlib.util.find_spec("train")
    if spec is None or not spec.submodule_search_locations:
        return []
    import yaml

    found = []
    for loc in spec.submodule_search_locations:
        for path in sorted(Path(loc, "recipes").glob("*.yaml")):
            recipe = yaml.safe_load(path.read_text()) or {}
            if recipe.get("model") == name or name in (recipe.get("baselines") or []):
                found.append(path.stem)
    return found


def model_info(name: str) -> dict:
    """Family, paper, resolved config, parameter count, published checkpoints and recipes for ``name``: those whose
    ``model:`` is ``name`` or that run it as a baseline, and those its checkpoints were trained with (``facet-emt`` trains ``facet_base`` with
    ``--set model=facet_base``). A model that loads a part from a hub (the NLI heads' encoder) and cannot reach it
    has ``params`` None and the reason in ``params_unavailable``."""
    entry = get_entry(name)
    from weights.manifest import checkpoints_for

    try:
        params, unavailable = sum(p.numel() for p in build(name, entry.config).parameters()), None
    except FileNotFoundError as err:
        params, unavailable = None, str(err)
    published = checkpoints_for(name)  # one read of the manifest
    info = {
        "name": name,
        "family": entry.paper.family,
        "paper": entry.paper.title,
        "arxiv": entry.paper.arxiv,
        "authors": entry.paper.authors,
        "year": entry.paper.year,
        "config": dataclasses.asdict(entry.config),
        "params": params,
        "checkpoints": [c["name"] for c in published],
        "recipes": sorted({*_recipes_using(name), *(c["recipe"] for c in published if c.get("recipe"))}),
    }
    return info if unavailable is None else {**info, "params_unavailable": unavailable}
