"""The model registry: ``@register_model`` factories, ``create_model``, ``list_models``, ``model_info``."""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn


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


class UnknownModelError(KeyError):
    """An unregistered model name (the message lists the closest registered names)."""

    def __str__(self):
        return str(self.args[0])


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


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a glob pattern, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} See zoo.list_models() for all {len(_REGISTRY)} names.")
    return _REGISTRY[name]


def resolve_config(name: str, **overrides) -> Any:
    """The default config of ``name`` with ``overrides`` applied; unknown keys are an error listing valid ones."""
    entry = get_entry(name)
    valid = [f.name for f in dataclasses.fields(entry.config)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(f"{name}: unknown config override(s) {unknown}; valid keys are {valid}")
    return dataclasses.replace(entry.config, **overrides)


def config_from_dict(name: str, saved: dict) -> Any:
    """Rebuild ``name``'s config from its JSON form (as stored in checkpoints): lists become tuples where the
    default is a tuple; keys the config does not have are an error."""
    entry = get_entry(name)
    defaults = {f.name: getattr(entry.config, f.name) for f in dataclasses.fields(entry.config)}
    unknown = sorted(set(saved) - set(defaults))
    if unknown:
        raise TypeError(f"{name}: config keys {unknown} are not fields of its config; valid keys are {list(defaults)}")
    fixed = {k: tuple(v) if isinstance(defaults[k], tuple) and isinstance(v, list) else v for k, v in saved.items()}
    return dataclasses.replace(entry.config, **fixed)


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
    """Names of recipes under train/recipes whose ``model:`` is ``name`` (read as data, train is not imported)."""
    spec = importlib.util.find_spec("train")
    if spec is None or not spec.submodule_search_locations:
        return []
    import yaml

    found = []
    for loc in spec.submodule_search_locations:
        for path in sorted(Path(loc, "recipes").glob("*.yaml")):
            if (yaml.safe_load(path.read_text()) or {}).get("model") == name:
                found.append(path.stem)
    return found


def model_info(name: str) -> dict:
    """Family, paper, resolved config, parameter count, published checkpoints and recipes for ``name``."""
    entry = get_entry(name)
    model = build(name, entry.config)
    from weights.manifest import checkpoints_for

    return {
        "name": name,
        "family": entry.paper.family,
        "paper": entry.paper.title,
        "arxiv": entry.paper.arxiv,
        "config": dataclasses.asdict(entry.config),
        "params": sum(p.numel() for p in model.parameters()),
        "checkpoints": [c["name"] for c in checkpoints_for(name)],
        "recipes": _recipes_using(name),
    }
