"""``zoo`` command line: list, info, train, eval, estimate, convert."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_list(args):
    import zoo

    for name in zoo.list_models(args.pattern):
        print(name)


def _cmd_info(args):
    import zoo

    print(json.dumps(zoo.model_info(args.name), indent=2))


def _cmd_train(args):
    from .loop import fit
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    out = Path(args.out or f"runs/{recipe['name']}")
    final = fit(recipe, out, resume=args.resume)
    if final:
        print(json.dumps(final, indent=2))
        if (out / "best.json").is_file():
            best = json.loads((out / "best.json").read_text())
            print(f"selected by {recipe['train']['select']} (step {best['step']}, best.safetensors):")
            print(json.dumps(best, indent=2))
        print(f"run directory: {out}")


def _checkpoint_path(checkpoint: str) -> Path:
    """A checkpoint file, or a run / step directory holding model.safetensors."""
    path = Path(checkpoint)
    return path / "model.safetensors" if path.is_dir() else path


def _recipe_for(checkpoint: Path, name: str | None, overrides):
    """The recipe of the run that wrote ``checkpoint`` (its resolved recipe.yaml, beside the file or two levels
    up for checkpoints/step_*/), else the recipe named by --recipe or in the checkpoint's metadata."""
    from weights import read_metadata

    from .recipe import load_recipe

    if name is None:
        for run in (checkpoint.parent, checkpoint.parent.parent.parent):
            if (run / "recipe.yaml").is_file():
                return load_recipe(str(run / "recipe.yaml"), overrides)
    name = name or read_metadata(checkpoint).get("recipe")
    if not name:
        raise ValueError(f"{checkpoint} does not record its recipe and no recipe.yaml is beside it; pass --recipe NAME")
    return load_recipe(name, overrides)


def _cmd_eval(args):
    from weights import load_checkpoint

    from .tasks import make_task

    path = _checkpoint_path(args.checkpoint)
    model = load_checkpoint(path).eval()
    print(json.dumps(make_task(_recipe_for(path, args.recipe, args.set)).evaluate(model), indent=2))


def _with_target(name: str, target):
    """``make_estimator(name)``, with ``target`` bound where the estimator takes one (two-variable estimators)."""
    import inspect

    from estimators import ESTIMATORS, make_estimator

    factory = ESTIMATORS.get(name)
    if target is not None and factory is not None and "target" in inspect.signature(factory).parameters:
        return make_estimator({name: {"target": target}})
    return make_estimator(name)


def _cmd_estimate(args):
    """The estimators on one batch (seed 0) of the task's held-out data, or of its training data (--split
    train); --target binds a batch tensor as the Y of two-variable estimators."""
    import torch

    from estimators import Probe
    from weights import load_checkpoint

    from .tasks import make_task

    for name in ("batch", "samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    path = _checkpoint_path(args.checkpoint)
    model = load_checkpoint(path).eval()
    task = make_task(_recipe_for(path, args.recipe, args.set))
    draw = task.batch if args.split == "train" else task.held_out_batch
    try:
        batch = draw(args.batch, torch.Generator().manual_seed(0))
    except NotImplementedError as err:
        raise ValueError(f"{err}; pass --split train to measure on a training batch") from err
    if args.target is not None and args.target not in batch:
        raise KeyError(f"--target {args.target!r} is not in the task's batches; they hold {sorted(batch)}")
    points = {}
    for spec in args.probe:
        glob, _, names = spec.partition("=")
        names = [n for n in names.split(",") if n] or args.estimator
        if not names:
            raise ValueError(f"--probe {spec!r} names no estimator: write GLOB=NAME or add --estimator NAME")
        points[glob] = [_with_target(n, batch.get(args.target)) for n in names]
    with torch.no_grad(), Probe(model, points, max_samples=args.samples) as probe:
        task.loss(model, batch)
    for row in probe.table():
        print(f"{row['point']}\t{row['estimator']}\t{row['value']:.6g}")


def _cmd_convert(args):
    """Convert; an original that is a manifest entry's published file (same git blob id) goes, without
    --out, into the cache where ``pretrained=True`` finds it."""
    from weights.manifest import cache_dir, checkpoints_for, git_blob_sha1, install_original, sha256_of
    from weights.convert import convert

    if not Path(args.original).is_file():
        raise FileNotFoundError(f"original checkpoint not found (or not a file): {args.original}")
    blob = git_blob_sha1(args.original)
    entry = next((c for c in checkpoints_for(args.model) if (c.get("original") or {}).get("git_blob_sha1") == blob), None)
    if entry is not None and not args.out:
        out = install_original(entry, args.original)
        print(f"{args.original} is the published original of {entry['name']!r}; installed in {cache_dir()}")
    else:
        out = Path(args.out or Path(args.original).with_suffix(".safetensors"))
        if out.resolve() == Path(args.original).resolve():
            raise FileExistsError(f"converting {args.original} would overwrite it; pass --out OTHER.safetensors")
        out = convert(args.original, args.model, out)
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
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(fn=_cmd_list)
    p = sub.add_parser("info", help="family, paper, config, parameters, checkpoints, recipes of a model")
    p.add_argument("name")
    p.set_defaults(fn=_cmd_info)
    p = sub.add_parser("train", help="train a recipe (train/recipes/NAME.yaml or a path)")
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.steps=100")
    p.add_argument("--out", help="run directory (default runs/RECIPE)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.set_defaults(fn=_cmd_train)
    p = sub.add_parser("convert", help="convert an original checkpoint to safetensors for a model")
    p.add_argument("original")
    p.add_argument("--model", required=True)
    p.add_argument("--out")
    p.set_defaults(fn=_cmd_convert)
    for name, fn, helptext in (("eval", _cmd_eval, "evaluate a checkpoint with its recipe's task"),
                               ("estimate", _cmd_estimate, "run estimators on a checkpoint's probe points")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("checkpoint", help="a .safetensors file, or a run or checkpoints/step_* directory")
        p.add_argument("--recipe", help="recipe whose task to use (default: the run's recipe.yaml beside the "
                                        "checkpoint, else the recipe recorded in it)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
        p.set_defaults(fn=fn)
    p.add_argument("--probe", action="append", required=True, metavar="GLOB[=EST,...]",
                   help="probe points or parameters by glob, e.g. --probe z=condition_number")
    p.add_argument("--estimator", action="append", default=[], metavar="NAME",
                   help="estimator(s) for every --probe given without '=NAME' (see estimators.ESTIMATORS)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--split", choices=("held-out", "train"), default="held-out",
                   help="draw the batch from the task's held-out data (default) or from its training data")
    p.add_argument("--target", metavar="KEY",
                   help="bind the batch's KEY (e.g. y, x) as the target of two-variable estimators (ksg_mi, ...)")
    args = parser.parse_args(argv)
    import yaml

    try:
        args.fn(args)
    except (KeyError, ValueError, TypeError, OSError, FloatingPointError, yaml.YAMLError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err  # str(KeyError) adds quotes
        print(f"zoo {args.command}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
