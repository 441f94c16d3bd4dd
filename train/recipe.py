"""Recipes: YAML files under train/recipes/ resolved with ``key.path=value`` overrides."""
from __future__ import annotations

import copy
import difflib
import math
import numbers
import re
from pathlib import Path

import yaml

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"

DEFAULTS = {
    "pretrained": None,  # start from a published checkpoint: true (the model's first) or its manifest name
    "model_args": {},
    "task_args": {},
    "data": {},
    "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
    "schedule": {"name": "constant", "warmup": 0},
    "train": {"steps": 1000, "batch_size": 16, "grad_accum": 1, "clip": 0.0, "eval_every": 0, "ckpt_every": 0,
              "log_every": 10, "seed": 0, "precision": "auto", "device": "auto", "keep_checkpoints": 2,
              "select": None, "threads": None, "compile": False, "sync_batchnorm": False},
    "probe": {},
}
REQUIRED = ("name", "model", "task")
# Read by people and by zoo.model_info, never by the loop. baselines: the models this recipe also runs with
# --set model=NAME for the paper's comparison or ablation (model_info lists the recipe for them too).
METADATA = ("description", "reference", "baselines")


def check_number(section: str, key: str, value, low: float = 0.0, high: float = math.inf, integer: bool = False,
                 optional: bool = False):
    """``value`` if it is a finite number in [low, high] (a whole one with ``integer``, e.g. ``1e5`` steps; None too with
    ``optional``), else a ValueError naming ``section.key``. Bools are refused: YAML's ``yes`` is not a count."""
    if optional and value is None:
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
    if not ok or integer and not float(value).is_integer():
        kind = "an integer" if integer else "a finite number" if high == math.inf else "a number"
        bounds = (kind if low == -math.inf and high == math.inf else f"{kind} >= {low:g}" if high == math.inf
                  else f"{kind} <= {high:.12g}" if low == -math.inf else f"{kind} in [{low:g}, {high:.12g}]")
        bounds += " or null" if optional else ""
        raise ValueError(f"{section}.{key} must be {bounds}, got {value!r}")
    return value


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def with_defaults(recipe: dict, saved: bool = False) -> dict:
    """``recipe`` with every setting it leaves out at its default (a run saved before a setting existed gets it).
    ``saved``: a run's recipe.yaml, written resolved; an optim or schedule section there that names its kind is
    complete as written (``--set optim={name: sgd, lr: 0.01}`` gave it its own settings, torch's defaults for the
    rest), so the defaults of another optimizer or schedule are not put into it."""
    out = _merge(DEFAULTS, recipe)
    for key in ("optim", "schedule") if saved else ():
        if isinstance(recipe.get(key), dict) and "name" in recipe[key]:
            out[key] = copy.deepcopy(recipe[key])
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _numbers(value):
    """``value`` with every string that spells a number (``5e-3``, which YAML 1.1 reads as a string) a float, also
    inside lists and mappings."""
    if isinstance(value, str):
        return float(value) if _NUMBER.fullmatch(value) else value
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def parse_value(raw: str):
    """YAML scalar/list/dict, except that numbers like ``5e-3`` (a string to YAML 1.1) become floats, also inside
    lists and mappings (``model_args.meta_prior=[1e-5,1e-5]``)."""
    return _numbers(yaml.safe_load(raw))


def override_key(assignment: str) -> str:
    """The dotted key of ``key.path=value``; an assignment without '=' or with an empty key part is an error."""
    path, eq, _ = assignment.partition("=")
    path = path.strip()
    if not eq or not all(part.strip() for part in path.split(".")):
        raise ValueError(f"override must look like key.path=value (e.g. train.steps=100), got {assignment!r}")
    return path


def overridden_keys(overrides) -> set[str]:
    """The dotted keys that ``overrides`` set: ``data.tokenizer=X`` sets data.tokenizer, and a section given as a
    mapping, ``data={tokenizer: X}``, sets data and data.tokenizer."""
    keys = set()
    for assignment in overrides:
        key = override_key(assignment)
        keys.add(key)
        try:
            value = parse_value(assignment.partition("=")[2])
        except yaml.YAMLError:
            continue  # apply_override names the bad value
        if isinstance(value, dict):
            keys |= {f"{key}.{sub}" for sub in value}
    return keys


def apply_override(recipe: dict, assignment: str) -> dict:
    """Set ``a.b.c=value`` (value parsed as YAML) in a copy of ``recipe``; unknown paths are an error."""
    path, raw = override_key(assignment), assignment.partition("=")[2]
    keys = path.split(".")
    out = copy.deepcopy(recipe)
    node = out
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            sections = sorted(k for k, v in node.items() if isinstance(v, dict))
            close = difflib.get_close_matches(key, sections, n=1)
            raise KeyError(f"override {path!r}: {'.'.join(keys[:i + 1])!r} is not a section of the recipe"
                           + (f"; did you mean {close[0]!r}?" if close else "") + f" (sections: {', '.join(sections)})")
        node = node[key]
    free = keys[0] in ("model_args", "task_args", "data", "probe") or (len(keys) >= 2 and keys[0] in ("optim", "schedule"))
    if keys[-1] not in node and not free:
        close = difflib.get_close_matches(keys[-1], sorted(node), n=1)
        raise KeyError(f"override {path!r}: unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
                       + f" ({'.'.join(keys[:-1]) or 'top level'} has {sorted(node)})")
    try:
        value = parse_value(raw)
    except yaml.YAMLError as err:
        where = f" at column {err.problem_mark.column + 1}" if getattr(err, "problem_mark", None) else ""
        raise ValueError(f"override {assignment!r}: the value {raw!r} is not YAML ({getattr(err, 'problem', err)}"
                         f"{where}); a string holding YAML's characters needs quotes, e.g. {path}='\"a, [b]\"'") from None
    if isinstance(node.get(keys[-1]), dict) and not (keys == ["probe"] and value is None):  # probe=null: off
        # a section: a mapping sets those keys, the others stay
        if not isinstance(value, dict):
            raise ValueError(f"override {path!r}: {path} is a section; give a mapping ({path}={{key: value}}) or "
                             f"set one key ({path}.KEY=VALUE), got {value!r}")
        if keys == ["probe", "points"]:  # the points to probe, not settings: a mapping replaces them ({}: none)
            pass
        elif keys == ["probe"] and isinstance(value.get("points"), dict):
            value = {**_merge(node["probe"], {k: v for k, v in value.items() if k != "points"}),
                     "points": value["points"]}
        elif not (keys[-1] in ("optim", "schedule") and "name" in value):  # a new optimizer/schedule: its own settings
            value = _merge(node[keys[-1]], value)
    node[keys[-1]] = value
    return out


def _refuse_unknown(path, what: str, given: dict, valid) -> None:
    """A recipe file's keys outside ``valid``: an error listing them with the closest valid name of each."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        hints = {k: difflib.get_close_matches(k, sorted(valid), n=1) for k in unknown}
        raise ValueError(f"recipe {path}: unknown {what} {unknown} (closest: {hints}); valid: {sorted(valid)}")


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Load a recipe by name (train/recipes/NAME.yaml) or path, fill defaults, apply overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        if path.parent != RECIPES_DIR:
            raise FileNotFoundError(f"no recipe file {path}")
        names = list_recipes()
        close = difflib.get_close_matches(name_or_path, names, n=5, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise FileNotFoundError(f"no recipe {name_or_path!r}.{hint} See `zoo recipes` for all {len(names)} names.")
    with open(path) as f:  # a YAML error then names the file, not "<unicode string>"
        raw = _numbers(yaml.safe_load(f) or {})
    if not isinstance(raw, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping (name:, model:, task:, ...), got {type(raw).__name__}")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"recipe {path} lacks required keys {missing}")
    _refuse_unknown(path, "top-level keys", raw, set(DEFAULTS) | set(REQUIRED) | set(METADATA))
    train = raw.get("train") or {}
    if isinstance(train, dict):  # a misspelt ckpt_every would silently turn checkpoints (and resume) off
        _refuse_unknown(path, "train settings", train, DEFAULTS["train"])
    recipe = with_defaults(raw)
    for assignment in overrides:
        recipe = apply_override(recipe, assignment)
    baselines = recipe.get("baselines", [])  # from the file or a --set
    if not (isinstance(baselines, list) and all(isinstance(b, str) for b in baselines)):
        raise ValueError(f"recipe {path}: baselines must be a list of model names, got {baselines!r}")
    return recipe
