"""The one training loop: every family trains through ``fit(recipe, out)``."""
from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import shutil
import sys
import warnings
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import zoo
from estimators.seeding import seeded
from weights import CheckpointError, load_checkpoint, load_into, save_checkpoint, sha256_of
from weights.checkpoint import atomic_write, fsync_path
from weights.tree import load_tree, save_tree

from .distributed import Dist, all_mean, gather_rows, setup, teardown, world_size
from .environment import environment
from .plots import plot_metrics
from .recipe import METADATA, check_number, with_defaults
from .schedules import build_optimizer, build_scheduler, lr_factor
from .tasks import make_task, with_run_files
from .tasks.base import Task


def _batch_generator(seed: int, step: int) -> torch.Generator:
    """The global batch depends only on (seed, step): resumed and multi-process runs draw the same one. torch's
    CPU generator keeps 32 bits of its seed, here (seed * 1,000,003 + step) mod 2^32: one sequence per seed, and
    seeds 0 to 4293 never share a batch in runs of up to 1,000,003 steps (other pairs of seeds may, shifted)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**32)


MAX_SEED = 2**32 - 1  # torch's generators keep 32 bits: seed 2^32 would repeat seed 0


def _local_slice(batch: dict, micro: int, accum: int, d: Dist) -> dict:
    """This rank's part of micro-batch ``micro``: the global batch cut into accum * world equal slices."""
    n = next(iter(batch.values())).shape[0]
    per = n // (accum * d.world)
    i = micro * d.world + d.rank
    return {k: v[i * per:(i + 1) * per].to(d.device, non_blocking=True) for k, v in batch.items()}


def _autocast(precision: str, device: torch.device):
    """bf16 autocast for ``bf16``, and for ``auto`` on a GPU with native bf16 (Ampere and later; older GPUs would
    emulate it slowly, so auto stays fp32 there, as on CPU)."""
    if precision == "auto":
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        precision = "bf16" if native else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seed_step(seed: int, step: int, rank: int) -> None:
    """Seed torch's (CPU and CUDA) and Python's global RNGs, which dropout and a model's sampling noise draw from,
    from (seed, step, rank) at the start of every step: each torchrun rank draws its own noise (not copies of one
    mask on different examples), a resumed run draws what the uninterrupted one drew without saving any RNG state,
    and an evaluation between steps cannot shift the training noise. numpy's SeedSequence mixes the three."""
    import numpy as np

    low, high = np.random.SeedSequence([seed, step, rank]).generate_state(2).tolist()
    # torch.manual_seed's values without its cost (0.2-0.5 ms a call: it queues seeds for uninitialised CUDA, XPU
    # and MTIA, recording a stack trace each time)
    torch.default_generator.manual_seed(low | high << 32)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(low | high << 32)
    random.seed(low)


def _provenance(recipe: dict) -> dict:
    """The metadata every checkpoint of a run records: its recipe's name and task (``zoo eval`` and ``zoo
    estimate`` default to that recipe and refuse one of another task)."""
    return {"recipe": recipe["name"], "task": recipe["task"]}


def _record_launch(path: Path, start: int, d: Dist) -> None:
    """environment.json: one entry per launch of the run (the step it started at and what it ran on); a resume
    appends to the entries of the launches before it, a fresh run starts the list."""
    launches = []
    if start and path.is_file():
        try:
            launches = json.loads(path.read_text())["launches"]
        except (ValueError, KeyError, TypeError):
            launches = None
        if not isinstance(launches, list):  # damaged outside the run: the record starts again at this launch
            launches = []
            warnings.warn(f"--resume: {path} is not a launch record; it now holds this launch only", stacklevel=3)
    _write_text(path, json_text({"launches": [*launches, {"start_step": start, **environment(d.device, d.world)}]},
                                indent=2))


def checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step_*[0-9]"))


STATE_FILES = ("model.safetensors", "trainer.safetensors")  # a step checkpoint's files
CHECKSUMS = "sha256.json"  # beside them: their sha256, checked on resume


def check_checksums(folder: Path, names: tuple[str, ...] = STATE_FILES) -> None:
    """A ValueError when a step checkpoint's file ``names`` no longer have the sha256 recorded when they were written
    (a bit flipped on disk or in a copy loads without a word: safetensors reads any bytes as numbers). Folders
    written before the record existed are not checked."""
    if not (folder / CHECKSUMS).is_file():
        return
    recorded = json.loads((folder / CHECKSUMS).read_text())
    if not isinstance(recorded, dict):
        raise ValueError(f"{CHECKSUMS} must map file names to their sha256, got {type(recorded).__name__}")
    damaged = [name for name in names if sha256_of(folder / name) != recorded.get(name)]
    if damaged:
        raise ValueError(f"{', '.join(damaged)} changed since it was written (its sha256 differs from {CHECKSUMS})")


def _save_train_checkpoint(out: Path, step: int, model, optimizer, scheduler, keep: int, provenance: dict,
                           probe=None) -> Path:
    """model.safetensors + trainer.safetensors in a temp dir, renamed into place: never half-written. The
    probe's rows so far go to probe.csv the same way, so a resumed run keeps them."""
    final = out / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if (out / "metrics.jsonl").is_file():  # its rows up to this step reach the disk before the checkpoint does
        fsync_path(out / "metrics.jsonl")
    save_checkpoint(model, tmp / "model.safetensors", extra_metadata=provenance)
    if probe is not None:
        atomic_write(out / "probe.csv", probe.to_csv)
    save_tree({"step": step, "optimizer": optimizer.state_dict(), "optimizer_class": type(optimizer).__name__,
               "scheduler": scheduler.state_dict()}, tmp / "trainer.safetensors")
    _write_text(tmp / CHECKSUMS, json_text({name: sha256_of(tmp / name) for name in STATE_FILES}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_path(final.parent, folder=True)  # the rename on disk before an older checkpoint is removed
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


class _BestSelector:
    """``train.select: "min:D_stsp"`` keeps the evaluated model with the best metric as best.safetensors
    (+ best.json), as the AL-RNN authors select the checkpoint with minimal D_stsp."""

    def __init__(self, spec: str | None, out: Path, provenance: dict, resumed_at: int, main: bool = True):
        self.out, self.provenance, self.best = out, provenance, None
        self.mode, _, self.metric = (spec or "").partition(":")
        saved = out / "best.json"
        chosen = json.loads(saved.read_text()) if spec and resumed_at and saved.is_file() else None
        if chosen is not None and chosen["step"] <= resumed_at:
            # strict JSON stored an infinite best as null: the worst value, which only a first evaluation is chosen
            # with, so that a resumed run chooses as the uninterrupted one
            worst = math.inf if self.mode == "min" else -math.inf
            self.best = worst if chosen[self.metric] is None else chosen[self.metric]
        elif main:  # a fresh run (or a choice made after the checkpoint we resume from) starts over
            for name in ("best.json", "best.safetensors"):
                (out / name).unlink(missing_ok=True)

    def model(self, device: torch.device):
        """The selected model (loaded from best.safetensors onto ``device``), or None when nothing is selected."""
        if self.best is None:
            return None
        return load_checkpoint(self.out / "best.safetensors", map_location=device).eval()

    def check(self, row: dict) -> None:
        metrics = sorted(k for k in row if k not in ("step", "split"))  # the final row also holds these two
        if self.metric and self.metric not in metrics:
            raise KeyError(f"train.select names {self.metric!r}, but evaluation reports {metrics}")

    def update(self, row: dict, model) -> None:
        if not self.metric:
            return
        self.check(row)
        value = row[self.metric]
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better and value == value:  # NaN is never best
            self.best = value
            save_checkpoint(model, self.out / "best.safetensors", extra_metadata=self.provenance)
            _write_text(self.out / "best.json", json_text(row, indent=2))


def json_text(obj, indent: int | None = None) -> str:
    """``obj`` as strict JSON, NaN and +-inf written as null (they are not JSON: jq, JavaScript and most JSON
    Lines readers reject Python's bare ``NaN``), inside mappings and lists too."""
    def finite(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        return [finite(v) for v in x] if isinstance(x, (list, tuple)) else x

    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def _write_text(path: Path, text: str) -> None:
    """Replace ``path``'s content atomically: a kill leaves the old file or the new one, never a part."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _stop_before_update(what: str, step: int, name: str, out: Path, clip):
    last = checkpoints(out)
    remedy = (f"Lower optim.lr (train.clip is {clip}: clipping cannot repair a NaN or inf)" if clip
              else "Lower optim.lr or set train.clip")
    raise FloatingPointError(
        f"{what} at step {step + 1} of {name}; stopped before the update. {remedy} and "
        "train again into a new --out (--resume continues only the same recipe)"
        + (f"; the last good weights are in {last[-1] / 'model.safetensors'} (weights.load_into puts them into a "
           "model)." if last else "; no checkpoint yet."))


def _jsonl_to_csv(src: Path, dst: Path) -> None:
    """metrics.jsonl as one CSV table (columns: the union of keys; empty where a row lacks one)."""
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    columns = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(dst, write)


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json_text(row) + "\n")


def _read_rows(path: Path) -> list[dict]:
    """The rows of metrics.jsonl; a last line cut short (a run killed while writing it) is dropped."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}, line {i + 1}, is not JSON ({err}); fix or delete that line to resume") from err
    return rows


def _probe_estimators(cfg: dict) -> dict:
    """{glob: [Estimator, ...]} from the section probe: {points: {glob: [estimator, ...]}, every: integer >= 1,
    max_samples: integer >= 1 or null}; an empty or absent ``points`` turns probing off ({}). Built before any
    data is read, so a misspelt name or setting fails first."""
    from estimators import make_estimator

    if not isinstance(cfg, dict):
        raise ValueError(f"probe must be a section {{points, every, max_samples}}, got {cfg!r}")
    unknown = sorted(set(cfg) - {"points", "every", "max_samples"})
    if unknown:
        raise KeyError(f"probe has no setting {unknown}; the settings are points, every and max_samples")
    check_number("probe", "every", cfg.get("every", 100), low=1, integer=True)
    check_number("probe", "max_samples", cfg.get("max_samples", 4096), low=1, integer=True, optional=True)
    points = cfg.get("points") or {}
    if not isinstance(points, dict):
        raise ValueError(f"probe.points must map globs to lists of estimators, got {points!r}")
    built = {}
    for glob, specs in points.items():
        if not isinstance(specs, list) or not specs:
            raise ValueError(f"probe.points.{glob} must be a non-empty list of estimators (names or {{name: "
                             f"{{arguments}}}}), got {specs!r}")
        for spec in specs:
            try:
                built.setdefault(glob, []).append(make_estimator(spec))
            except TypeError as err:  # not a name or {name: {settings}}, or a setting the estimator does not take
                raise TypeError(f"probe.points.{glob}: {err}") from err
            except ValueError as err:
                if "two-variable estimator" not in str(err):
                    raise ValueError(f"probe.points.{glob}: {err}") from err
                raise ValueError(f"probe.points.{glob}: {spec!r} is a two-variable estimator, which needs a target "
                                 "tensor that a recipe cannot name; measure it on a trained run with `zoo estimate "
                                 "RUN --probe GLOB=NAME --target KEY`, or use estimators.information_plane") from None
    return built


def _make_probe(model, cfg: dict, points: dict, step: int):
    """The recipe's Probe; under torchrun it joins the ranks' rows, so each step is measured on the whole global
    batch, as in one process."""
    if not points:
        return None
    from estimators import Probe

    limit = cfg.get("max_samples", 4096)
    return Probe(model, points, every=int(cfg.get("every", 100)), max_samples=None if limit is None else int(limit),
                 step=step, gather=gather_rows if world_size() > 1 else None)


def fit(recipe: dict, out: str | Path = "runs/run", resume: bool = False) -> dict:
    """Train ``recipe`` into the run directory ``out``; returns the final evaluation metrics.

    ``out`` receives recipe.yaml, the task's run files (an LM's tokenizer.json), metrics.jsonl, metrics.png, the
    task's plots, checkpoints/step_*/ (model + optimizer/scheduler state) and model.safetensors.
    ``resume=True`` continues from the newest checkpoint and gives the same losses as an uninterrupted run.
    """
    out = Path(out)
    cfg = recipe["train"]
    _check_train_section(cfg)
    _check_run_dir(recipe, out, resume)
    build_optimizer([torch.zeros(1, requires_grad=True)], recipe["optim"])  # its settings, before any data is read
    with warnings.catch_warnings():  # the schedule's settings, checked early; its warning comes once, when built
        warnings.simplefilter("ignore")
        lr_factor(recipe["schedule"], int(cfg["steps"]))
    points = _probe_estimators(recipe.get("probe") or {})
    threads = torch.get_num_threads()
    try:
        if cfg["threads"]:  # small sequential models (AL-RNN) run fastest on one thread per process
            torch.set_num_threads(int(cfg["threads"]))
        torch.manual_seed(int(cfg["seed"]))
        random.seed(int(cfg["seed"]))
        # reads the data: a missing path fails here, before the ranks join a process group; a resumed run reads it
        # as it did before (with its saved tokenizer)
        task = make_task(with_run_files(recipe, out) if resume else recipe)
        if task.max_batch is not None and int(cfg["batch_size"]) > task.max_batch:  # before the run writes a file
            raise ValueError(f"train.batch_size={cfg['batch_size']} exceeds the {task.max_batch} examples that "
                             f"task {recipe['task']!r} can put in one batch here; pass --set "
                             f"train.batch_size={task.max_batch} (or less)")
        d = setup(cfg["device"])
        try:
            return _fit(recipe, cfg, out, resume, d, task, points)
        finally:
            teardown()
    finally:
        torch.set_num_threads(threads)


def _check_train_section(cfg: dict) -> None:
    """Counts in the recipe's train section are integers: >= 1 for steps, batch_size, grad_accum and log_every,
    >= 0 for eval_every, ckpt_every and keep_checkpoints (0: keep all), >= 1 or null for threads; seed in
    [0, 2^32 - 1]; compile and sync_batchnorm true or false."""
    for key, least in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("log_every", 1), ("eval_every", 0),
                       ("ckpt_every", 0), ("keep_checkpoints", 0)):
        check_number("train", key, cfg[key], low=least, integer=True)
    check_number("train", "seed", cfg["seed"], high=MAX_SEED, integer=True)
    check_number("train", "threads", cfg["threads"], low=1, integer=True, optional=True)
    for key in ("compile", "sync_batchnorm"):
        if not isinstance(cfg[key], bool):  # the string "false" would be true
            raise ValueError(f"train.{key} must be true or false, got {cfg[key]!r}")
    parts = int(cfg["grad_accum"]) * world_size()
    if int(cfg["batch_size"]) % parts:
        raise ValueError(f"train.batch_size={cfg['batch_size']} must be divisible by grad_accum*processes={parts}")
    clip = cfg["clip"]
    if clip not in (None, False) and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                      or not math.isfinite(clip) or clip < 0):
        raise ValueError(f"train.clip must be a finite number >= 0 (0 or null: no clipping), got {clip!r}")
    mode, _, metric = str(cfg["select"] or "").partition(":")
    if cfg["select"] and (mode not in ("min", "max") or not metric.strip()):
        raise ValueError(f"train.select must look like 'min:METRIC' or 'max:METRIC', got {cfg['select']!r}")
    if cfg["precision"] not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {cfg['precision']!r}")
    if cfg["device"] != "auto":
        try:
            kind = torch.device(cfg["device"]).type
        except (RuntimeError, TypeError):
            kind = None
        if kind not in ("cpu", "cuda"):  # mps or meta parse, then fail deep inside the run
            raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {cfg['device']!r}")


@contextlib.contextmanager
def only_rows(optimizer: torch.optim.Optimizer, rows: dict[torch.nn.Parameter, torch.Tensor]):
    """An ``optimizer.step()`` inside the block changes only the given rows (dim 0) of these parameters: every
    other row is put back afterwards, with its optimizer state (exp_avg, momentum, ...: each state tensor shaped
    like the parameter), or that state set to 0 where the step created it (lazy updates, as for sparse embeddings)."""
    def row_state(param):  # the optimizer state with one row per row of ``param``
        state = optimizer.state.get(param, {})
        return {k: v for k, v in state.items() if torch.is_tensor(v) and v.shape == param.shape}

    saved, unused = [], {}
    for param, used in rows.items():
        # the rows to put back, found on the host (the ids are the CPU batch's) and sent once per id set and row
        # count: a mask and nonzero on the device would wait for it twice per parameter
        key = (id(used), param.shape[0], param.device)
        if key not in unused:
            keep = torch.ones(param.shape[0], dtype=torch.bool)
            keep[used.cpu()] = False
            unused[key] = keep.nonzero().flatten().to(param.device, non_blocking=True)
        idx = unused[key]
        old = {k: v[idx].clone() for k, v in row_state(param).items()}
        saved.append((param, idx, param.detach()[idx].clone(), old))
    yield
    for param, idx, value, old in saved:
        param.detach().index_copy_(0, idx, value)
        for k, v in row_state(param).items():
            if k in old:
                v.index_copy_(0, idx, old[k])
            else:
                v.index_fill_(0, idx, 0)


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """``key.path: saved -> now`` for every setting where two recipes differ; a setting one of them leaves out
    (a model's or an optimizer's own default) shows as ``default``."""
    found, unset = [], object()
    shown = lambda value: "default" if value is unset else repr(value)  # noqa: E731
    for key in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(key, unset), now.get(key, unset)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {shown(a)} -> {shown(b)}")
    return found


def _check_run_dir(recipe: dict, out: Path, resume: bool) -> None:
    """A fresh run needs a directory without another run's checkpoints or results; a resumed one, the same recipe."""
    found = checkpoints(out)
    if found and not resume:
        raise FileExistsError(f"{out} already holds checkpoints ({found[-1].name}); pass --resume to continue "
                              "that run or choose another --out")
    finished = [name for name in ("model.safetensors", "summary.json") if (out / name).is_file()]
    if finished and not resume:  # its files would sit beside the new run's, and eval would read the old model
        raise FileExistsError(f"{out} already holds a finished run ({', '.join(finished)}); choose another --out, "
                              "or delete that run first")
    if resume and found and not (out / "recipe.yaml").is_file():
        raise FileNotFoundError(f"--resume: {out} holds checkpoints but no recipe.yaml to check this recipe against "
                                "(the schedule and data depend on it); put the run's recipe.yaml back, or train into "
                                "a new --out")
    if resume and (out / "recipe.yaml").is_file():
        # what the run computes must match; the keys for people (description, baselines) may change under it
        # a setting added since the run was saved counts at its default
        saved, now = ({k: v for k, v in r.items() if k not in METADATA}
                      for r in (with_defaults(yaml.safe_load((out / "recipe.yaml").read_text()) or {}, saved=True),
                                  recipe))
        if saved != now:
            raise ValueError(f"--resume with a different recipe than the one in {out}/recipe.yaml: "
                             f"{'; '.join(_differences(saved, now))} (saved -> now). A resumed run repeats its "
                             "recipe (the schedule depends on train.steps): drop those --set flags, or train into a "
                             "new --out")
    if resume and not found and finished:  # saved without checkpoints: resuming would train it all again
        where = ("its results are in summary.json" if "summary.json" in finished else
                 f"its final weights are in model.safetensors (`zoo eval {out}` evaluates them)")
        how = ("saved without checkpoints (train.ckpt_every 0)" if not recipe["train"]["ckpt_every"] else
               "whose checkpoints were removed")
        raise FileExistsError(f"--resume: {out} holds a finished run ({', '.join(finished)}) {how}; nothing to "
                              f"resume: {where}")
    if resume and not found and out.is_dir() and any(out.iterdir()) and not (out / "recipe.yaml").is_file():
        raise FileNotFoundError(f"--resume: {out} holds files but no run (no recipe.yaml, no checkpoint): a mistyped "
                                "--out? An empty or new folder starts a run at step 0")


def _check_ranks_agree(task, d: Dist) -> None:
    """Every rank built its task from the same data; data state built on each (an LM's tokenizer) must agree."""
    digests = [None] * d.world
    torch.distributed.all_gather_object(digests, task.digest())
    if len(set(digests)) > 1:
        raise ValueError(f"the {d.world} ranks read the data in {len(set(digests))} different ways: each "
                         "trained its own tokenizer, as happens when their machines do not share "
                         "$PAPERZOO_CACHE; build the cache once (or give data.tokenizer a tokenizer.json) and "
                         "give every machine the same one")


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict``, refusing (ValueError) the state of another optimizer (its class, recorded
    with the state; in checkpoints older than that record, settings this optimizer lacks, as SGD's momentum for
    AdamW) or of other parameters (a state tensor shaped unlike its parameter), which torch loads without a word
    and then fails on, or silently uses, at the first update. Settings a newer torch added load as torch's
    defaults."""
    saved, kind = state["optimizer"], state.get("optimizer_class", type(optimizer).__name__)
    own = set().union(*(set(g) - {"params"} for g in optimizer.param_groups))
    foreign = sorted(set().union(*(set(g) - {"params"} for g in saved.get("param_groups", []))) - own)
    if kind != type(optimizer).__name__:
        raise ValueError(f"its optimizer state is another optimizer's: {kind}, where this run's is "
                         f"{type(optimizer).__name__}")
    if foreign:
        raise ValueError(f"its optimizer state is another optimizer's: settings {foreign} that this run's "
                         f"{type(optimizer).__name__} lacks")
    optimizer.load_state_dict(saved)
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                    raise ValueError(f"its optimizer state is another model's: {key} of shape {tuple(value.shape)} "
                                     f"for a parameter of shape {tuple(p.shape)}")


def _fit(recipe: dict, cfg: dict, out: Path, resume: bool, d: Dist, task, points: dict) -> dict:
    if d.world > 1:
        _check_ranks_agree(task, d)
    sync_bn = cfg["sync_batchnorm"]  # a checked bool; in one process (no process group) it is plain BatchNorm
    if sync_bn and d.world > 1 and d.device.type != "cuda":
        raise ValueError(f"train.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only, and this run's "
                         f"{d.world} processes use {d.device.type}; drop the setting (each rank then normalises "
                         "over its own slice of the batch)")
    steps, accum, batch_size = int(cfg["steps"]), int(cfg["grad_accum"]), int(cfg["batch_size"])
    found = checkpoints(out)
    model_args = task.model_args(recipe["model_args"])
    model = zoo.create_model(recipe["model"], pretrained=recipe.get("pretrained") or False, **model_args).to(d.device)
    if sync_bn:  # BatchNorm statistics over the global batch: same parameters and buffers, so checkpoints match
        from timm.layers import convert_sync_batchnorm  # torch's own turns timm's BatchNormAct2d into a bare
        # SyncBatchNorm, dropping the activation; timm's keeps it (SyncBatchNormAct) and converts plain BatchNorm too
        model = convert_sync_batchnorm(model)
    task.prepare(model)
    optimizer = build_optimizer(model.parameters(), recipe["optim"])
    # the backward fills these only: a leaf that is no parameter (Facet's positions, made to require grad for the
    # forces) would otherwise get a gradient nobody reads, 10% of a Facet training step
    trainable = [p for p in model.parameters() if p.requires_grad]
    scheduler = build_scheduler(optimizer, recipe["schedule"], steps)
    metrics_path = out / "metrics.jsonl"
    start = 0
    if resume and found:
        try:
            check_checksums(found[-1])
            load_into(model, found[-1] / "model.safetensors")
            state = load_tree(found[-1] / "trainer.safetensors")
            _load_optimizer_state(optimizer, state)
            scheduler.load_state_dict(state["scheduler"])  # no RNG state: each step seeds its own (_seed_step)
        except (OSError, ValueError, KeyError) as err:  # a file damaged or replaced outside the run
            older = f"move it away to resume from {found[-2].name}" if len(found) > 1 else "no older checkpoint is left"
            raise CheckpointError(f"--resume: {found[-1]} cannot be loaded ({err}); {older}") from err
        start = int(state["step"])
    elif resume:
        why = "train.ckpt_every is 0, so this recipe saves none" if not cfg["ckpt_every"] else "none saved yet"
        print(f"--resume: no checkpoint in {out} ({why}); starting at step 0", file=sys.stderr)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        _write_text(out / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
        task.write_run_files(out)
        rows = _read_rows(metrics_path) if start else []
        # the rows up to the checkpoint, less the final evaluation (always recomputed at the end)
        kept = [r for r in rows if r["step"] <= start and not (r["split"] == "eval" and r["step"] == steps)]
        last_logged = start - start % int(cfg["log_every"])
        if last_logged and not any(r["step"] == last_logged and r["split"] == "train" for r in kept):
            warnings.warn(f"--resume: {metrics_path} has no training row for step {last_logged} (it holds "
                          f"{len(kept)} rows up to step {start}); the run goes on, and its metrics miss those "
                          "steps", stacklevel=2)
        _write_text(metrics_path, "".join(json_text(r) + "\n" for r in kept))
        _record_launch(out / "environment.json", start, d)

    provenance = _provenance(recipe)
    selector = _BestSelector(cfg["select"], out, provenance, start, d.main)
    if d.main and selector.metric and not start and 0 < int(cfg["eval_every"]) < steps:
        # one evaluation of the initial model names a misspelt metric now, not at the first evaluation, which comes
        # before that step's checkpoint (the final one comes after the weights are saved)
        model.eval()
        selector.check(task.evaluate(model))
    print(f"[rank {d.rank}/{d.world}] {recipe['name']} on {d.device}, steps {start}..{steps}"
          + (" (already complete: evaluating the final model again)" if start == steps else ""), file=sys.stderr)
    eager_net = DistributedDataParallel(model) if d.world > 1 else model
    # train.compile compiles the training forward only; evaluation, probes' weights and checkpoints use ``model``.
    # A probed step runs eager: the probe adds and removes hooks, which a compiled graph may not see (on an H100
    # with torch 2.11 a compiled run lost a probed step's rows), and its recording is Python a graph should not hold.
    net = torch.compile(eager_net) if cfg["compile"] else eager_net
    probe = _make_probe(model, recipe.get("probe") or {}, points, start)
    if probe is not None and start and (out / "probe.csv").is_file():  # the rows before the checkpoint
        probe.read_csv(out / "probe.csv", before=start)
    prefetching = type(task).prefetch is not Task.prefetch
    upcoming = None  # with prefetching, the next step's global batch, drawn one step early
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not d.main, desc=recipe["name"],
               dynamic_ncols=True)
    for step in bar:
        _seed_step(int(cfg["seed"]), step, d.rank)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        total, extras = torch.zeros((), device=d.device), {}
        if upcoming is not None:  # drawn (and prefetched) during the previous step
            global_batch, upcoming = upcoming, None
        else:
            global_batch = task.batch(batch_size, _batch_generator(int(cfg["seed"]), step))
        if prefetching and step + 1 < steps:  # the next step's batch is known now: let the task start on it
            upcoming = task.batch(batch_size, _batch_generator(int(cfg["seed"]), step + 1))
            for micro in range(accum):
                task.prefetch(_local_slice(upcoming, micro, accum, d))
        forward = eager_net if probe is not None and probe.scheduled else net
        for micro in range(accum):
            batch = _local_slice(global_batch, micro, accum, d)
            sync = contextlib.nullcontext() if micro == accum - 1 or d.world == 1 else eager_net.no_sync()
            with sync, _autocast(cfg["precision"], d.device):
                loss, extra = task.loss(forward, batch)
            (loss / accum).backward(inputs=trainable)
            total += loss.detach().float() / accum
            for k, v in extra.items():  # the batch's mean over micro-batches (and, when logged, processes)
                extras[k] = extras.get(k, 0.0) + torch.as_tensor(v).detach().float() / accum  # a tensor: no sync
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=d.device)  # all-reduced
        # both numbers in one device-to-host transfer: the step's one wait for the device
        loss_value, grad_norm = torch.stack([all_mean(total, d).double(), norm.detach().double()]).tolist()
        if not math.isfinite(loss_value):
            _stop_before_update(f"loss is {loss_value}", step, recipe["name"], out, cfg["clip"])
        if not math.isfinite(grad_norm):
            _stop_before_update(f"the gradient norm is {grad_norm} (the loss, {loss_value:.6g}, is finite)", step,
                                recipe["name"], out, cfg["clip"])
        if cfg["clip"]:
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), float(cfg["clip"]), norm)
        if probe is not None:  # before the update: a step's parameter rows see the weights its forward used
            probe.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        with only_rows(optimizer, task.sparse_rows(model, global_batch)):
            optimizer.step()
        scheduler.step()
        done = step + 1
        log_now = done % int(cfg["log_every"]) == 0 or done == steps
        if log_now and extras:  # numbers only when logged: one transfer for all of them
            extras = dict(zip(extras, all_mean(torch.stack([v.to(d.device) for v in extras.values()]), d).tolist()))
        if d.main and log_now:
            row = {"step": done, "split": "train", "loss": loss_value, "lr": lr, **extras}
            if cfg["clip"]:
                row["grad_norm"] = grad_norm
            _append(metrics_path, row)
            bar.set_postfix(loss=f"{loss_value:.4g}")
        if d.main and cfg["eval_every"] and done % int(cfg["eval_every"]) == 0 and done != steps:
            model.eval()
            with probe.paused() if probe is not None else contextlib.nullcontext():
                row = {"step": done, "split": "eval", **task.evaluate(model)}
            _append(metrics_path, row)
            selector.update(row, model)
        if d.main and cfg["ckpt_every"] and (done % int(cfg["ckpt_every"]) == 0 or done == steps):  # the end too
            _save_train_checkpoint(out, done, model, optimizer, scheduler, int(cfg["keep_checkpoints"]),
                                   provenance, probe)
    bar.close()

    if not d.main:
        return {}
    # the trained weights first: a failing estimator, evaluation or selection must not lose them
    save_checkpoint(model, out / "model.safetensors", extra_metadata=provenance)
    if probe is not None:
        probe.close()
        atomic_write(out / "probe.csv", probe.to_csv)
    model.eval()
    final = {"step": steps, "split": "eval", **task.evaluate(model)}
    _append(metrics_path, final)
    selector.update(final, model)
    _jsonl_to_csv(metrics_path, out / "metrics.csv")
    plot_metrics(metrics_path, out / "metrics.png")
    with seeded(int(cfg["seed"]), d.device):  # a report that samples (generation) draws the same in a resumed run
        task.report(selector.model(d.device) or model, out)
    _write_text(out / "summary.json", json_text(final, indent=2))
    return final
