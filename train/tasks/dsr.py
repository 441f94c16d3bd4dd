"""Dynamical-systems reconstruction: teacher-forced training on a chaotic trajectory, long-term metrics."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from estimators.dynamics import power_spectrum_distance, prediction_error, state_space_divergence
from estimators.lyapunov import largest_lyapunov_exponent

from ..data.systems import SYSTEMS, cached_simulate, standardise
from .base import Task, draw_indices, real, whole


class DSRTask(Task):
    """Random windows of ``seq_len + 1`` steps from the standardised training trajectory, plus Gaussian noise
    (``data.noise`` std, as the AL-RNN authors add to every batch); loss = MSE of the teacher-forced
    one-step predictions. Evaluation free-runs the model from the first test state for the whole test
    length and reports D_stsp, D_H, the n-step prediction error, the linear subregions visited after a
    transient (``settling``) and the
    largest Lyapunov exponent of the model's map (per time unit: per step / data.dt; 4 trajectories started
    on the generated orbit, 5000 steps each, float64).
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d = recipe["data"]
        if "system" not in d:
            raise KeyError(f"data.system is missing: name the simulated system ({', '.join(sorted(SYSTEMS))})")
        steps = {k: whole(d, "data", k, None) for k in ("train_steps", "test_steps")}
        transient, seed = whole(d, "data", "transient", 1000), whole(d, "data", "seed", 0)
        dt = real(d, "data", "dt", None)
        if min(steps.values()) < 1 or transient < 0 or seed < 0 or not dt > 0:
            raise ValueError(f"data: train_steps and test_steps must be >= 1, transient and seed >= 0 and dt > 0, got "
                             f"{steps}, transient={transient}, seed={seed}, dt={dt}")
        train = cached_simulate(d["system"], steps["train_steps"], dt, transient, seed)
        test = cached_simulate(d["system"], steps["test_steps"], dt, transient, seed + 1)
        self.train_x, self.test_x = standardise(train, test)
        self.noise = real(d, "data", "noise", 0.0)
        self.seq_len = whole(self.args, "task_args", "seq_len", 200)
        self.forcing_interval = whole(self.args, "task_args", "forcing_interval", 16)
        self.alpha = real(self.args, "task_args", "alpha", 1.0)
        self.pe_steps = whole(self.args, "task_args", "pe_steps", 20)
        self.n_bins = whole(self.args, "task_args", "n_bins", 30)
        self.smoothing = real(self.args, "task_args", "smoothing", 20.0)
        self.dt = dt
        for key in ("seq_len", "pe_steps", "n_bins", "forcing_interval"):  # 0 or less failed only later
            if getattr(self, key) < 1:
                raise ValueError(f"task_args.{key} must be an integer >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.alpha <= 1.0:  # checked by the model too, but only at the first training step
            raise ValueError(f"task_args.alpha (generalized teacher forcing's weight) must lie in [0, 1], got {self.alpha}")
        if self.seq_len + 1 > len(self.train_x):
            raise ValueError(f"task_args.seq_len={self.seq_len} needs windows of seq_len + 1 = {self.seq_len + 1} steps; the "
                             f"training trajectory has {len(self.train_x)} (data.train_steps)")

    def batch(self, size, generator):
        x = self._windows(self.train_x, size, generator)
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator)
        return {"x": x}

    def train_sample(self, size, generator):
        """Distinct windows of the training trajectory, without the training noise."""
        return {"x": self._windows(self.train_x, size, generator, replace=False)}

    def held_out_batch(self, size, generator):
        """Distinct windows of the test trajectory, without the training noise."""
        return {"x": self._windows(self.test_x, size, generator, replace=False)}

    def _windows(self, series, size, generator, replace=True):
        if len(series) <= self.seq_len:
            raise ValueError(f"a trajectory of {len(series)} steps holds no window of task_args.seq_len + 1 = "
                             f"{self.seq_len + 1} steps; lengthen it (data.train_steps / data.test_steps)")
        starts = draw_indices(len(series) - self.seq_len, size, generator, replace)
        return series[starts[:, None] + torch.arange(self.seq_len + 1)]

    @staticmethod
    def _for(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x (float32 data) on the model's device in its dtype: a float64 checkpoint (a converted original kept in
        float64) or a float16 one evaluates on the same data."""
        p = next(model.parameters())
        return x.to(device=p.device, dtype=p.dtype)

    def loss(self, model, batch):
        x = self._for(model, batch["x"])
        pred = model(x, forcing_interval=self.forcing_interval, alpha=self.alpha)
        return F.mse_loss(pred.float(), x[:, 1:].float()), {}

    def free_run(self, model: nn.Module):
        """The model's free run from the first test state, (x, z) on the CPU; remembered for the same model with
        unchanged parameters (the final evaluation and the report at the end of a run share one)."""
        key = (id(model), tuple((p.data_ptr(), p._version) for p in model.parameters()))
        if getattr(self, "_last_free_run", (None,))[0] != key:
            x_gen, z = model.generate(self._for(model, self.test_x[:1]), len(self.test_x), return_latents=True)
            self._last_free_run = key, (x_gen[0].float().cpu(), z[0].float().cpu())
        return self._last_free_run[1]

    def evaluate(self, model):
        x_gen, z = self.free_run(model)
        if not torch.isfinite(x_gen).all():
            return {"D_stsp": float("inf"), "D_H": 1.0, f"PE_{self.pe_steps}": float("inf"), "subregions": 0,
                    "lambda_max": float("nan")}
        pred = model.n_step_prediction(self._for(model, self.test_x), self.pe_steps).float().cpu()
        codes = model.symbolic_code(z[self.settling(z):])
        return {
            "D_stsp": float(state_space_divergence(self.test_x, x_gen, n_bins=self.n_bins)),
            "D_H": float(power_spectrum_distance(self.test_x, x_gen, smoothing=self.smoothing)),
            f"PE_{self.pe_steps}": float(prediction_error(self.test_x[self.pe_steps:], pred)),
            "subregions": int(codes.unique().numel()),
            "lambda_max": self.lyapunov(model, z),
        }

    @staticmethod
    def settling(z: torch.Tensor) -> int:
        """Steps of a free run before it counts as on the attractor (for the subregion count): 1000, or a tenth
        of a shorter run; the initial state [x_1; L x_1] itself is usually off the attractor."""
        return min(1000, len(z) // 10)

    def lyapunov(self, model, z: torch.Tensor) -> float:
        """Largest Lyapunov exponent (1/time) of the model's latent map, from 4 states of the free run z (T, M)."""
        import copy

        cell = copy.deepcopy(model.cell).double().cpu()
        starts = z[torch.linspace(len(z) // 2, len(z) - 1, 4).long()].double()
        try:
            return float(largest_lyapunov_exponent(cell, starts, steps=5000, transient=500, dt=self.dt).mean())
        except FloatingPointError:
            return float("nan")

    def report(self, model, out: Path):
        from ..plots import plot_attractor

        x_gen, z = self.free_run(model)
        skip = self.settling(z)
        x_gen, codes = x_gen[skip:], model.symbolic_code(z[skip:])
        return [plot_attractor(self.test_x, x_gen, codes, Path(out) / "attractor.png",
                               title=f"{self.recipe['name']}: {codes.unique().numel()} linear subregions visited")]
