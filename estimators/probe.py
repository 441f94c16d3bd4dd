"""Probe: attach estimators by glob to a model's ProbePoints (and parameters) and record them on a schedule."""
from __future__ import annotations

import contextlib
import csv
import difflib
import fnmatch
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .estimator import Estimator, ModuleEstimator, is_whole


def _is_probe_point(module: nn.Module) -> bool:
    return type(module).__name__ == "ProbePoint"  # estimators depend on nothing of ours


_ESTIMATING = [0]  # > 0 while any Probe's estimators run: their own forward passes (local complexity) go unrecorded


@contextlib.contextmanager
def _estimating():
    _ESTIMATING[0] += 1
    try:
        yield
    finally:
        _ESTIMATING[0] -= 1


def _equal(a, b) -> bool:
    """Settings compare equal: the same object, or equal plain values (tensors only by identity)."""
    if a is b:
        return True
    if torch.is_tensor(a) or torch.is_tensor(b) or type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # a value whose == is not a truth value
        return False


def _labelled(estimators: list[Estimator]) -> list[tuple[str, Estimator]]:
    """(row label, estimator) for one point: the estimator's name, with the settings that tell it apart where two
    share a name (``ksg1_mi(k=5)`` beside ``ksg1_mi(k=3)``), or ``#2``, ``#3`` where nothing printable does (two
    targets bound to one estimator name). An estimator that repeats an earlier one (its name, function and
    settings: a point that two globs match with the same estimator) is measured once."""
    kept: list[Estimator] = []
    for est in estimators:
        if not any(e.name == est.name and e.fn is est.fn and e.kwargs.keys() == est.kwargs.keys()
                   and all(_equal(e.kwargs[k], est.kwargs[k]) for k in e.kwargs) for e in kept):
            kept.append(est)
    labels = []
    for est in kept:
        same = [e for e in kept if e.name == est.name]
        differing = sorted({k for e in same for k in {**e.kwargs, **est.kwargs}
                            if not _equal(e.kwargs.get(k), est.kwargs.get(k))})
        shown = [k for k in differing if not torch.is_tensor(est.kwargs.get(k))]
        labels.append(est.name + (f"({', '.join(f'{k}={est.kwargs.get(k)!r}' for k in shown)})" if shown else ""))
    return [(label + (f"#{labels[:i].count(label) + 1}" if labels.count(label) > 1 else ""), est)
            for i, (label, est) in enumerate(zip(labels, kept))]


def _closest_globs(pattern: str, names: list[str]) -> list[str]:
    """Suggestions for a glob that matches none of ``names``: the glob under the parent path that makes it match
    (``layers.*.gate`` -> ``model.layers.*.gate``), else the three closest names."""
    prefixes = dict.fromkeys(name[:i + 1] for name in names for i, c in enumerate(name)
                             if c == "." and fnmatch.fnmatchcase(name[i + 1:], pattern))
    return [p + pattern for p in prefixes][:3] or difflib.get_close_matches(pattern, names, n=3)


class Probe:
    """Watch named tensors of ``model`` with estimators.

    ``points`` maps a glob over module names of ``layers.ProbePoint`` modules (their outputs are
    recorded) or over parameter names (the weight itself is read) to a list of estimators (or their names in
    ``estimators.ESTIMATORS``, with keyword arguments as ``{name: {kwargs}}``, as a recipe writes them); a
    ``ModuleEstimator`` (e.g. local complexity) matches its glob against every submodule's name and gets
    that module with the inputs it received. Hooks
    exist only during scheduled steps (``step % every == 0``), so an unscheduled step costs nothing.
    Outputs are accumulated on their own device along dim 0 up to ``max_samples`` rows per step (the first ones,
    in forward order: a step's first micro-batches),
    then each estimator runs once on the accumulated tensor when the step ends (``probe.step()``,
    or leaving the ``with`` block). Under data parallelism each process sees its slice of a batch: ``gather``
    (a collective ``tensor -> tensor`` that every process calls, e.g. ``train.distributed.gather_rows``) joins
    the slices in rank order before the estimators run, so they see the rows one process would.
    """

    def __init__(self, model: nn.Module, points: dict[str, list[Estimator]], every: int = 1,
                 max_samples: int | None = 4096, step: int = 0,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if not is_whole(every, 1):
            raise ValueError(f"Probe: every must be an integer >= 1, got {every!r}")
        if not (max_samples is None or is_whole(max_samples, 1)):
            raise ValueError(f"Probe: max_samples must be an integer >= 1 or None (no limit), got {max_samples!r}")
        if not is_whole(step, 0):
            raise ValueError(f"Probe: step must be an integer >= 0, got {step!r}")
        self.model, self.every, self.max_samples, self._step = model, every, max_samples, step
        self.gather = gather
        self.rows: list[dict] = []
        self._modules: dict[str, list[Estimator]] = {}
        self._params: dict[str, list[Estimator]] = {}
        self._inputs: dict[str, list[ModuleEstimator]] = {}
        modules = {n: m for n, m in model.named_modules() if _is_probe_point(m)}
        every_module = dict(model.named_modules())
        params = dict(model.named_parameters(remove_duplicate=False))  # a tied weight under each of its names
        from . import make_estimator  # the registry of names imports this module

        for pattern, estimators in points.items():
            estimators = list(estimators) if isinstance(estimators, (list, tuple)) else [estimators]
            estimators = [make_estimator(e) if isinstance(e, (str, dict)) else e for e in estimators]
            if not all(isinstance(e, Estimator) for e in estimators):
                raise TypeError(f"Probe: values must be lists of estimators or their names (e.g. [entropy()], "
                                f"['dse', {{'ksg_mi': {{'k': 3}}}}]), got {estimators!r} for {pattern!r}")
            of_modules = [e for e in estimators if isinstance(e, ModuleEstimator)]
            of_tensors = [e for e in estimators if not isinstance(e, ModuleEstimator)]
            if of_modules:
                hit = [n for n in every_module if fnmatch.fnmatchcase(n, pattern)]
                if not hit:
                    close = _closest_globs(pattern, [n for n in every_module if n])
                    raise KeyError(f"Probe: {pattern!r} matches no submodule of {type(model).__name__} for "
                                   f"{[e.name for e in of_modules]}" + (f"; did you mean {close}?" if close else ""))
                for n in hit:
                    self._inputs.setdefault(n, []).extend(of_modules)
            if not of_tensors:
                continue
            hit_m = [n for n in modules if fnmatch.fnmatchcase(n, pattern)]
            hit_p = [n for n in params if fnmatch.fnmatchcase(n, pattern)]
            if not hit_m and not hit_p:
                close = _closest_globs(pattern, [*modules, *params])
                raise KeyError(f"Probe: {pattern!r} matches no probe point or parameter of {type(model).__name__}"
                               + (f"; did you mean {close}?" if close else "")
                               + f"; probe points are {sorted(modules) or 'none'} "
                               "(parameters: model.named_parameters())")
            for n in hit_m:
                self._modules.setdefault(n, []).extend(of_tensors)
            for n in hit_p:
                self._params.setdefault(n, []).extend(of_tensors)
        for table in (self._modules, self._params, self._inputs):
            for n, ests in table.items():
                table[n] = _labelled(ests)
        self._named_modules = every_module
        self._handles: list = []
        self._paused = False
        self._buffers: dict[tuple[str, bool], list[torch.Tensor]] = {}
        self._params_done = False  # the parameter estimators ran for this step
        self._closed = False
        self._attach_if_scheduled()

    # -- schedule -------------------------------------------------------------------------------
    @property
    def scheduled(self) -> bool:
        return self._step % self.every == 0

    def _attach_if_scheduled(self):
        if self.scheduled and not self._handles:
            for name in self._modules:
                self._handles.append(self._named_modules[name].register_forward_hook(self._hook(name, of_input=False)))
            for name in self._inputs:  # with kwargs: a module called as block(x=x) has its input there
                self._handles.append(self._named_modules[name].register_forward_hook(
                    self._hook(name, of_input=True), with_kwargs=True))

    def _detach(self):
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def paused(self):
        """Forward passes inside this block are not recorded (e.g. an evaluation between training steps)."""
        previous, self._paused = self._paused, True
        try:
            yield self
        finally:
            self._paused = previous

    def _hook(self, name: str, of_input: bool):
        """Record the output of probe point ``name``, or (``of_input``) the first input of module ``name``; the
        buffer's key is (name, of_input)."""
        def record(module, inputs, *rest):
            if self._paused or _ESTIMATING[0]:  # any Probe's estimator running: its own forward passes
                return
            output = rest[-1]
            if of_input and not inputs and not rest[0]:
                raise ValueError(f"Probe: module {name or '<model>'} was called without inputs; a module estimator "
                                 "measures a module around its first input")
            chunks = self._buffers.get((name, of_input), [])
            have = sum(c.shape[0] if c.dim() else 1 for c in chunks)
            # with gather, every forward leaves a chunk (0 rows past the cap): each is gathered with one collective,
            # which every process must call equally often however many rows its slices held (atoms)
            if self.max_samples is None or have < self.max_samples or self.gather is not None:
                take = ((inputs[0] if inputs else next(iter(rest[0].values()))) if of_input else output).detach()
                if self.max_samples is not None and take.dim() > 0:
                    take = take[: max(0, self.max_samples - have)]
                # a copy: a view would keep the whole batch's tensor alive, and an in-place op after the point
                # (a ReLU(inplace=True)) would change what was recorded
                # stored once the copy is made: a failure on the way leaves no empty buffer behind
                self._buffers.setdefault((name, of_input), chunks).append(take.clone())
        return record

    # -- computing ------------------------------------------------------------------------------
    def _compute(self, point: str, label: str, estimator: Estimator, *args):
        """Record ``estimator(*args)`` for ``point`` under ``label``; its error is re-raised with the point and
        estimator named (same type where that type takes one message, else a ValueError)."""
        try:
            value = estimator(*args)
        except Exception as err:
            message = (f"{point or '<model>'}: {label}: "
                       f"{err.args[0] if isinstance(err, KeyError) and err.args else err}")
            try:
                named = type(err)(message)
            except Exception:
                named = ValueError(message)
            raise named from err
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, v in items:
            name = label if key is None else f"{label}/{key}"
            self.rows.append({"step": self._step, "point": point, "estimator": name,
                              "value": float(v.item() if torch.is_tensor(v) else v), "unit": estimator.unit})

    def flush(self):
        """Compute the probe points' estimators on what this step accumulated since the last flush, and the
        parameter estimators once per step (no-op on unscheduled steps)."""
        if not self.scheduled:
            return
        with torch.no_grad(), _estimating():  # an estimator's own forward passes go unrecorded, by every Probe
            for (name, of_input), chunks in self._buffers.items():
                shapes = {tuple(c.shape[1:]) for c in chunks}
                if len(shapes) > 1:
                    raise ValueError(f"Probe: {name} produced tensors of different shapes {sorted(shapes)} within "
                                     "one step; record one kind of forward pass per step (see Probe.paused())")
                if self.gather is not None and chunks[0].dim() > 0:
                    # each forward's rows from every process in rank order, which is the global batch's order (a
                    # micro-batch is cut into the ranks' slices); then the first max_samples of them
                    chunks = [self.gather(c) for c in chunks]
                x = torch.cat(chunks) if chunks[0].dim() > 0 else torch.stack(chunks)
                x = x[:self.max_samples]
                if of_input:
                    for label, est in self._inputs[name]:
                        self._compute(name, label, est, self._named_modules[name], x)
                else:
                    for label, est in self._modules[name]:
                        self._compute(name, label, est, x)
            if not self._params_done:
                params = dict(self.model.named_parameters(remove_duplicate=False))
                for name, ests in self._params.items():
                    for label, est in ests:
                        self._compute(name, label, est, params[name].detach())
                self._params_done = True
        self._buffers = {}

    def step(self):
        """End the current step: compute if it was scheduled, advance, attach hooks if the next is scheduled."""
        if self._closed:
            raise RuntimeError("Probe.step() after close(): a closed probe records nothing more; build a new Probe")
        try:
            self.flush()
        finally:
            self._buffers, self._params_done = {}, False
            self._step += 1
            if not self.scheduled:
                self._detach()
            self._attach_if_scheduled()

    # -- results --------------------------------------------------------------------------------
    def table(self) -> list[dict]:
        """Tidy rows: {step, point, estimator, value, unit}."""
        return list(self.rows)

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the rows as CSV (columns step, point, estimator, value, unit). A plain write: the training loop puts
        the run's probe.csv in place with ``weights.checkpoint.atomic_write(path, probe.to_csv)``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "point", "estimator", "value", "unit"])
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def read_csv(self, path: str | os.PathLike, before: int) -> None:
        """Take the rows of steps < ``before`` from a ``to_csv`` file (a run resumed at that step)."""
        with open(path, newline="") as f:
            self.rows = [{**r, "step": int(r["step"]), "value": float(r["value"]), "unit": r.get("unit") or ""}
                         for r in csv.DictReader(f) if int(r["step"]) < before]

    def close(self):
        """Compute the current step if it is scheduled (what its forward passes recorded, and the parameters:
        after a training loop's last ``step()``, the final weights), then remove every hook, even if an
        estimator fails."""
        try:
            self.flush()
        finally:
            self._abandon()

    def _abandon(self):
        """Forget what the forward passes recorded and remove every hook, computing nothing."""
        self._buffers, self._closed = {}, True
        self._detach()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # the block failed: nothing computed, so its exception is the one that surfaces
            self._abandon()
