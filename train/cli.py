"""``zoo`` command line: list, info, recipes, train, eval, estimate, convert."""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import json
import re
import signal
import sys
from pathlib import Path

from .recipe import list_recipes, load_recipe


def _cmd_list(args):
    import zoo

    for name in zoo.list_models(args.pattern):
        print(name)


def _cmd_info(args):
    import zoo

    if args.name not in zoo.list_models() and args.name in list_recipes():
        model = load_recipe(args.name)["model"]
        raise KeyError(f"{args.name!r} is a recipe, not a model; its model is {model!r}: run `zoo info {model}`")
    print(json.dumps(zoo.model_info(args.name), indent=2))


def _cmd_recipes(args):
    for name in list_recipes():
        if fnmatch.fnmatchcase(name, args.pattern):
            recipe = load_recipe(name)
            print(f"{name}\t{recipe['model']}\t{recipe.get('description', '')}")


def _cmd_train(args):
    from . import loop

    recipe = load_recipe(args.recipe, args.set)
    if args.out is not None and not args.out.strip():
        raise ValueError("--out is empty; give a run directory, or leave --out out for runs/RECIPE")
    out = Path(args.out or f"runs/{recipe['name']}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a run directory (it is created if missing)")

    def where() -> str:
        saved = loop.checkpoints(out)
        if saved:
            return f"the newest checkpoint is {saved[-1].absolute()}; rerun the same command with --resume to continue"
        return "no checkpoint yet" + ("" if recipe["train"]["ckpt_every"] else
                                      " (train.ckpt_every is 0: --set train.ckpt_every=N saves one every N steps)")

    def terminate(signum, frame):  # SIGTERM (timeout, SLURM, docker stop, torchrun) ends the run as Ctrl-C does
        raise KeyboardInterrupt("SIGTERM")

    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # only it may set a signal handler
    previous = signal.signal(signal.SIGTERM, terminate) if main_thread else None
    try:
        final = loop.fit(recipe, out, resume=args.resume)
    except KeyboardInterrupt as err:
        term = err.args == ("SIGTERM",)
        print(f"zoo train: {'terminated (SIGTERM)' if term else 'interrupted'}; {where()}", file=sys.stderr)
        raise SystemExit(143 if term else 130) from None
    except OSError as err:  # a full disk or a lost mount mid-run: what was saved, and how to go on
        if isinstance(err, (FileExistsError, FileNotFoundError)) or not loop.checkpoints(out):
            raise  # the run directory's own checks, or nothing saved yet
        raise OSError(f"{err}; {where()} once the cause is fixed") from err
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if final:
        print(loop.json_text(final, indent=2))
        if (out / "best.json").is_file():
            best = json.loads((out / "best.json").read_text())
            print(f"selected by {recipe['train']['select']} (step {best['step']}, best.safetensors):")
            print(loop.json_text(best, indent=2))
        print(f"run directory: {out.absolute()}")


def _checkpoint_path(checkpoint: str) -> Path:
    """A checkpoint file; a published checkpoint's name (``zoo info MODEL`` lists them); a run or checkpoints/step_*
    directory holding model.safetensors; or, for a run without one (still training or interrupted) and for its
    checkpoints/ directory, the newest checkpoints/step_*, with a note on stderr."""
    from weights import CheckpointError
    from weights.manifest import published_checkpoints, resolve

    from .loop import CHECKSUMS, check_checksums, checkpoints

    path = Path(checkpoint)
    published = [] if path.exists() else [entry for entry in published_checkpoints() if entry["name"] == checkpoint]
    if published:
        return resolve(published[0])
    if not path.is_dir() or (path / "model.safetensors").is_file():
        file = path / "model.safetensors" if path.is_dir() else path
    else:
        run = path.parent if path.name == "checkpoints" else path
        saved = [step for step in checkpoints(run) if (step / "model.safetensors").is_file()]
        if not saved:
            raise FileNotFoundError(f"{path} holds no model.safetensors and no checkpoints/step_* with one; pass a "
                                    ".safetensors file, a run directory or a checkpoints/step_* directory")
        print(f"zoo: {path} has no model.safetensors of its own; using the newest checkpoint, {saved[-1]}",
              file=sys.stderr)
        file = saved[-1] / "model.safetensors"
    if file.name == "model.safetensors" and (file.parent / CHECKSUMS).is_file():  # a step checkpoint, as written
        try:
            check_checksums(file.parent, (file.name,))
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{file} cannot be evaluated: {err}") from err
    return file


# the recipe sections that an evaluation reads; the model itself comes from the checkpoint
_EVAL_SECTIONS = ("data", "task_args")


def _check_eval_overrides(overrides, command: str) -> None:
    """``zoo eval`` / ``zoo estimate`` --set: only data.* and task_args.* change what is evaluated; any other
    key (train.steps, model_args.*, optim.*) would be accepted and do nothing, so it is an error."""
    from .recipe import override_key

    for assignment in overrides:
        if override_key(assignment).split(".")[0] not in _EVAL_SECTIONS:
            raise ValueError(f"--set {assignment} has no effect on zoo {command}: the model and its settings come "
                             f"from the checkpoint, and evaluation reads only {' and '.join(s + '.*' for s in _EVAL_SECTIONS)}")


def _recipe_for(checkpoint: Path, name: str | None, overrides) -> tuple[dict, bool]:
    """The recipe of the run that wrote ``checkpoint`` (its resolved recipe.yaml, beside the file or two levels
    up for checkpoints/step_*/), else the recipe named by --recipe or in the checkpoint's metadata; its model and
    model_args are the checkpoint's own, so the task sizes its data for the model it evaluates, and the task's
    run files in that run (or beside a checkpoint outside a run: an LM's tokenizer.json) replace the data
    settings they stand for, unless --set gives those. With it, whether the checkpoint's task was known and
    checked against the recipe's (a file from ``zoo convert`` or ``save_checkpoint`` records none)."""
    from weights import read_metadata

    from .recipe import overridden_keys
    from .tasks import with_run_files

    runs = [run for run in (checkpoint.parent, checkpoint.parent.parent.parent) if (run / "recipe.yaml").is_file()]
    meta = None  # read after the recipe where --recipe or a recipe.yaml names it, so a mistyped name is named first
    if name is None:
        if runs:
            name = str(runs[0] / "recipe.yaml")
        else:
            meta = read_metadata(checkpoint)
            name = meta.get("recipe")
        if not name:
            raise ValueError(f"{checkpoint} does not record its recipe and no recipe.yaml is beside it; pass --recipe NAME")
    recipe = load_recipe(name, overrides)
    meta = read_metadata(checkpoint) if meta is None else meta
    trained = meta.get("task") or _recorded_task(runs[0] / "recipe.yaml" if runs else None, meta.get("recipe"))
    if trained and recipe["task"] != trained:
        raise ValueError(f"{checkpoint} was trained for the task {trained!r} (recipe {meta.get('recipe', '?')!r}); "
                         f"recipe {recipe['name']!r} runs the task {recipe['task']!r}, which cannot evaluate it. "
                         f"Pass a recipe of the task {trained!r}, or leave out --recipe to use the run's own")
    if "config" in meta:
        recipe = {**recipe, "model": meta["model"], "model_args": json.loads(meta["config"])}
    return with_run_files(recipe, runs[0] if runs else checkpoint.parent, overridden_keys(overrides)), bool(trained)


@contextlib.contextmanager
def _model_fits(checkpoint: Path, recipe: dict, task_checked: bool, model_runs: bool = False):
    """Where the checkpoint records no task, a model that the recipe's task cannot use fails where the task
    reads or calls what it needs (an attribute the model lacks, a call it does not take) or, where the model runs
    on the task's batches (``model_runs``), in the model's own input check (a ValueError: the wrong shape): a
    one-line error that names that likely cause, and the other one (a setting), instead of that error alone."""
    try:
        yield
    except (AttributeError, TypeError, *((ValueError,) if model_runs else ())) as err:
        if task_checked:
            raise
        raise ValueError(f"recipe {recipe['name']!r} (task {recipe['task']!r}) failed on {checkpoint}, which holds "
                         f"{recipe['model']}: {err}. The file records no task to check --recipe against: if its model "
                         f"was not trained for the task {recipe['task']!r}, pass --recipe of its own task "
                         "(`zoo recipes` lists them); otherwise check the --set values") from err


def _recorded_task(run_recipe: Path | None, name: str | None) -> str | None:
    """The task of a checkpoint that does not record one (written before checkpoints did): its run's recipe.yaml's
    ``task``, else that of the registered recipe it names; None where neither can be read (no check then)."""
    import yaml

    from .recipe import RECIPES_DIR

    for path in (run_recipe, RECIPES_DIR / f"{name}.yaml" if name else None):
        try:
            task = (yaml.safe_load(path.read_text()) or {}).get("task") if path and path.is_file() else None
        except (OSError, yaml.YAMLError, AttributeError):  # not a readable mapping: no check, as before
            task = None
        if task:
            return task
    return None


def _seed_global_rngs():
    """Seed torch's and Python's global RNGs to 0, so that a stochastic model (PV-RNN's error regression and
    posterior noise) gives the same numbers on every run."""
    import random

    import torch

    torch.manual_seed(0)
    random.seed(0)


def _checkpoint_and_task(args, command: str):
    """``zoo eval`` / ``zoo estimate``: the checkpoint's model in eval mode on --device, the task of its recipe,
    the device, and a context that turns the model-does-not-fit-the-task errors into one line (``_model_fits``);
    the global RNGs seeded to 0."""
    from weights import load_checkpoint

    from .tasks import make_task

    _check_eval_overrides(args.set, command)
    device = _device(args.device)
    _seed_global_rngs()
    path = _checkpoint_path(args.checkpoint)
    recipe, task_checked = _recipe_for(path, args.recipe, args.set)
    model = load_checkpoint(path).eval().to(device)
    fits = functools.partial(_model_fits, path, recipe, task_checked)
    with fits():
        task = make_task(recipe)
    return model, task, device, fits


def _cmd_eval(args):
    from .loop import json_text

    model, task, _, fits = _checkpoint_and_task(args, "eval")
    with fits(model_runs=True):
        metrics = task.evaluate(model)
    print(json_text(metrics, indent=2))


def _device(name: str):
    """--device: auto (cuda if a GPU is visible, else cpu), cpu, cuda or cuda:N; a named error otherwise."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {name}: {torch.cuda.device_count()} CUDA device(s) are visible; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    return device


_ESTIMATOR = re.compile(r"\s*(\w+)\s*(?:\((.*)\))?\s*", re.DOTALL)


def _top_level(text: str) -> list[str] | None:
    """``text`` split at the commas outside brackets: ``a(x=[1, 2]),b`` -> ['a(x=[1, 2])', 'b']; None where the
    brackets do not balance (``k=3)``)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        if depth < 0:
            return None
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]] if depth == 0 else None


def _estimator_specs(text: str, flag: str) -> list[tuple[str, dict]]:
    """``NAME,NAME2(key=value,...)`` -> [(NAME, {}), (NAME2, {key: value})], the values read as YAML (lists and
    tuples too: ``binned_mi(value_range=[-1, 1])``)."""
    from .recipe import parse_value

    specs = []
    for item in filter(str.strip, _top_level(text) or [text]):
        match = _ESTIMATOR.fullmatch(item)
        arguments = _top_level(match[2] or "") if match else None
        pairs = [p.partition("=") for p in arguments if p.strip()] if arguments is not None else []
        if arguments is None or not all(eq and key.strip().isidentifier() for key, eq, _ in pairs):
            raise ValueError(f"{flag}: cannot read {item.strip()!r}; write NAME or NAME(key=value,...), e.g. "
                             "condition_number(of=covariance)")
        specs.append((match[1], {key.strip(): parse_value(value.strip()) for key, _, value in pairs}))
    return specs


def _takes_target(name: str) -> bool:
    """Whether the registered estimator ``name`` is a two-variable one (its factory takes a ``target``)."""
    import inspect

    from estimators import ESTIMATORS

    factory = ESTIMATORS.get(name)
    return factory is not None and "target" in inspect.signature(factory).parameters


def _estimator(glob: str, name: str, kwargs: dict, batch: dict, target: str | None):
    """``make_estimator({name: kwargs})`` for --probe GLOB, with batch[--target] bound as the Y of a two-variable
    estimator; a setting's error names the point and the estimator, as the ones raised while it runs do."""
    from estimators import make_estimator

    if _takes_target(name):
        if target is None:
            raise ValueError(f"{name} is a two-variable estimator: pass --target KEY (this batch holds: "
                             f"{', '.join(sorted(batch))})")
        kwargs = {**kwargs, "target": batch[target]}
    try:
        return make_estimator({name: kwargs})
    except (TypeError, ValueError) as err:
        raise (TypeError if isinstance(err, TypeError) else ValueError)(f"--probe {glob}: {err}") from err


def _draw(task, split: str, size: int) -> dict:
    """A batch of ``split`` with seed 0; ``size`` is capped at ``task.max_batch`` (a PV-RNN run draws at most its
    n_sequences), with a note."""
    import torch

    limit = task.max_batch if split == "train" else None
    if limit is not None and size > limit:
        print(f"zoo estimate: note: the task draws at most {limit} examples per batch; measuring on {limit}, not "
              f"--batch {size}", file=sys.stderr)
        size = limit
    draw = task.train_sample if split == "train" else task.held_out_batch
    return draw(size, torch.Generator().manual_seed(0))


def _cmd_estimate(args):
    """The estimators on one batch (seed 0) of the task's held-out data, or of its training data (--split
    train); --target binds a batch tensor as the Y of two-variable estimators."""
    import torch

    from estimators import Probe

    for name in ("batch", "samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    default = [spec for text in args.estimator for spec in _estimator_specs(text, "--estimator")]
    specs = {}
    for probe in args.probe:  # a glob given twice measures both lists
        glob, _, names = probe.partition("=")
        named = _estimator_specs(names, f"--probe {probe}") if names else default
        if not named:
            raise ValueError(f"--probe {probe!r} names no estimator: write GLOB=NAME or add --estimator NAME")
        specs.setdefault(glob, []).extend(named)
    if default and all("=" in probe for probe in args.probe):
        raise ValueError(f"--estimator {' '.join(args.estimator)} is used by no --probe: every one names its own "
                         "estimators (GLOB=NAME); drop --estimator, or give a --probe GLOB without =NAME")
    if args.target is not None and not any(_takes_target(name) for named in specs.values() for name, _ in named):
        names = sorted({name for named in specs.values() for name, _ in named})
        raise ValueError(f"--target {args.target} binds the Y of two-variable estimators (ksg_mi, binned_mi, ...), "
                         f"but none of {', '.join(names)} takes one; drop --target or add such an estimator")
    model, task, device, fits = _checkpoint_and_task(args, "estimate")
    try:
        batch = _draw(task, args.split, args.batch)
    except NotImplementedError as err:
        raise ValueError(f"{err}; pass --split train to measure on a training batch") from err
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    if args.target is not None and args.target not in batch:
        raise KeyError(f"--target {args.target!r} is not in the task's batches; they hold {sorted(batch)}")
    points = {glob: [_estimator(glob, name, kwargs, batch, args.target) for name, kwargs in named]
              for glob, named in specs.items()}
    paired = [glob for glob, named in specs.items() if any(_takes_target(name) for name, _ in named)]
    rows = {}  # the rows per batch of each probe point paired with --target, counted before --samples cuts them

    def count(name):
        return lambda module, inputs, out: rows.__setitem__(name, rows.get(name, 0) + (len(out) if out.dim() else 1))

    hooks = [module.register_forward_hook(count(name)) for name, module in model.named_modules()
             if type(module).__name__ == "ProbePoint" and any(fnmatch.fnmatchcase(name, glob) for glob in paired)]
    with torch.no_grad(), Probe(model, points, max_samples=args.samples) as probe:
        try:
            with fits(model_runs=True):
                task.loss(model, batch)
        finally:  # before the probe's estimators run: local complexity's own passes are not the batch's rows
            for hook in hooks:
                hook.remove()
    examples = len(batch[args.target]) if paired else None  # paired estimators need --target (checked above)
    for name, n in rows.items():
        if n != examples:
            raise ValueError(f"{name} records {n} rows per batch of {examples} examples (tokens, atoms, positions), so "
                             f"its rows are not --target {args.target}'s; pair a point with one row per example")
    silent = [glob for glob in specs if not any(fnmatch.fnmatchcase(r["point"], glob) for r in probe.table())]
    if silent:
        raise ValueError(f"--probe {', '.join(silent)}: the matched points recorded nothing; the task's forward "
                         "pass never reaches them")
    for row in probe.table():
        print(f"{row['point']}\t{row['estimator']}\t{row['value']:.6g}\t{row['unit']}")


def _cmd_convert(args):
    """Convert; an original that is a manifest entry's published file (same git blob id) goes, without
    --out, into the cache where ``pretrained=True`` finds it."""
    from weights import CheckpointError
    from weights.convert import convert
    from weights.manifest import cache_dir, checkpoints_for, git_blob_sha1, install_original, sha256_of

    from .recipe import parse_value

    from zoo._registry import get_entry

    get_entry(args.model)  # a misspelt --model first: before any advice about files
    if not Path(args.original).is_file():
        raise FileNotFoundError(f"original checkpoint not found (or not a file): {args.original}")
    config = {}
    for assignment in args.set:
        key, eq, raw = assignment.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ValueError(f"--set {assignment!r}: write KEY=VALUE, a config setting of {args.model}, e.g. cutoff=4.5")
        config[key.strip()] = parse_value(raw)
    blob = git_blob_sha1(args.original)
    entry = next((c for c in checkpoints_for(args.model) if (c.get("original") or {}).get("git_blob_sha1") == blob), None)
    if entry is not None and not args.out:
        if config:
            raise ValueError(f"{args.original} is the published original of {entry['name']!r}, converted with the "
                             "manifest's config; drop --set (or pass --out to convert it with other settings)")
        out = install_original(entry, args.original)
        print(f"{args.original} is the published original of {entry['name']!r}; installed in {cache_dir()}")
    else:
        out = Path(args.out or Path(args.original).with_suffix(".safetensors"))
        if out.resolve() == Path(args.original).resolve():
            raise FileExistsError(f"converting {args.original} would overwrite it; pass --out OTHER.safetensors")
        if not args.out and out.exists():  # a file the user did not name is never replaced
            raise FileExistsError(f"{out} exists; pass --out {out} to replace it, or --out OTHER.safetensors")
        try:
            out = convert(args.original, args.model, out, **config)
        except CheckpointError as err:
            if "mis-shaped" not in str(err):
                raise
            raise CheckpointError(f"{err}. If the original was trained with other settings than {args.model}'s "
                                  f"defaults (`zoo info {args.model}` lists them), give them with --set KEY=VALUE") from err
    digest = sha256_of(out)
    # the manifest entry that publishes this file: full sha256 of the conversion, and what it was converted from
    published = {k: v for k, v in (entry or {}).items() if k != "original"}
    published |= {"name": published.get("name", Path(out).stem), "model": args.model, "file": Path(out).name,
                  "url": published.get("url"), "sha256": digest,
                  "converted_from": {"file": Path(args.original).name, "sha256": sha256_of(args.original),
                                     "git_blob_sha1": blob}}
    print(json.dumps({"file": str(out), "sha256": digest, "original": str(args.original),
                      "original_git_blob_sha1": blob, "manifest_entry": entry["name"] if entry else None,
                      "manifest": published}, indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="zoo", description="paperzoo: models from papers, one loop, probes")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="registered model names")
    p.add_argument("pattern", nargs="?", default="*", help="a glob, case-sensitive (e.g. 'facet*'); default all")
    p.set_defaults(fn=_cmd_list)
    p = sub.add_parser("info", help="family, paper, config, parameters, checkpoints, recipes of a model")
    p.add_argument("name", help="a model name (zoo list)")
    p.set_defaults(fn=_cmd_info)
    p = sub.add_parser("recipes", help="recipe names with their model and description")
    p.add_argument("pattern", nargs="?", default="*", help="a glob, case-sensitive (e.g. 'alrnn-*'); default all")
    p.set_defaults(fn=_cmd_recipes)
    p = sub.add_parser("train", help="train a recipe (train/recipes/NAME.yaml or a path)")
    p.add_argument("recipe", help="a recipe name (zoo recipes) or a .yaml path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.steps=100")
    p.add_argument("--out", help="run directory (default runs/RECIPE)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out (a new or "
                                                         "empty --out starts at step 0)")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("convert", help="convert an original checkpoint to safetensors for a model")
    p.add_argument("original", help="the original file (torch.save or safetensors), read without unpickling")
    p.add_argument("--model", required=True, help="the zoo model whose layout to convert to (zoo list)")
    p.add_argument("--out", help="the .safetensors to write (default: ORIGINAL.safetensors beside it, or the cache "
                                 "for a published original)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config setting the original was trained with, where it is not the model's default "
                        "(recorded in the file, so load_checkpoint rebuilds that model), e.g. cutoff=4.5")
    p.set_defaults(fn=_cmd_convert)
    for name, fn, helptext in (("eval", _cmd_eval, "evaluate a checkpoint with its recipe's task"),
                               ("estimate", _cmd_estimate, "run estimators on a checkpoint's probe points")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("checkpoint", help="a .safetensors file, a run or checkpoints/step_* directory, or a "
                                          "published checkpoint's name (zoo info MODEL lists them)")
        p.add_argument("--device", default="auto", help="auto (a GPU if one is visible, as zoo train), cpu, cuda or "
                                                        "cuda:N")
        p.add_argument("--recipe", help="recipe whose task to use (default: the run's recipe.yaml beside the "
                                        "checkpoint, else the recipe recorded in it)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override data.* or task_args.* of the recipe, e.g. data.eval_limit=500")
        p.set_defaults(fn=fn)
    p.add_argument("--probe", action="append", required=True, metavar="GLOB[=EST,...]",
                   help="probe points or parameters by glob, with estimators and their arguments (YAML values), "
                        "e.g. --probe 'z=condition_number(of=covariance),effective_rank'")
    p.add_argument("--estimator", action="append", default=[], metavar="EST[,EST...]",
                   help="estimator(s) for every --probe given without '=EST' (see estimators.ESTIMATORS)")
    p.add_argument("--batch", type=int, default=64, help="examples in the batch (default 64; at most what the task "
                                                           "draws, e.g. a PV-RNN run's n_sequences)")
    p.add_argument("--samples", type=int, default=4096,
                   help="rows (dim 0) of a probe point's output that its estimators see at most (default 4096): the "
                        "first ones, as the training probe's max_samples")
    p.add_argument("--split", choices=("held-out", "train"), default="held-out",
                   help="draw the batch from the task's held-out data (default) or from its training data")
    p.add_argument("--target", metavar="KEY",
                   help="bind the batch's KEY (e.g. y, x) as the target of two-variable estimators (ksg_mi, ...)")
    args = parser.parse_args(argv)
    import warnings

    import yaml

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"zoo {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show  # one line per warning, not the source line that raised it
            args.fn(args)
    except KeyboardInterrupt:  # Ctrl-C while starting up (imports, data): one line, as during training
        print(f"zoo {args.command}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (KeyError, ValueError, TypeError, OSError, FloatingPointError, yaml.YAMLError) as err:
        if isinstance(err, BrokenPipeError) and args.command in ("list", "info", "recipes"):
            # `zoo list | head -1`: the reader left. Quiet, with the status of a command killed by SIGPIPE as other
            # tools end; stdout goes to /dev/null so that the interpreter's last flush does not fail again
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(141) from None
        from zoo._registry import UnknownModelError

        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # str(KeyError) adds quotes
        if isinstance(err, UnknownModelError):  # a user of the CLI lists models with `zoo list`
            message = message.replace("zoo.list_models()", "`zoo list`")
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
