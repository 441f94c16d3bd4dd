"""PV-RNN training: the model's per-sequence adaptive vectors are indexed by the batch's sequence ids."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from estimators.seeding import seeded
from zoo._registry import resolve_config
from zoo.pvrnn import join_state

from ..data.pfsm import branch_probability, pfsm_sequences
from ..data.sequences import load_sequences
from .base import Task, real, whole


class PVRNNTask(Task):
    """Training set: the model's ``n_sequences`` sequences of ``seq_len`` steps; a batch is a random subset of
    sequence ids with their sequences. ``data.source``: ``pfsm`` (default; generated offline: period, p_b, noise,
    seed) or ``file`` (``data.path``: ``train.data.sequences.load_sequences``; its (N, T, D) must match the
    model's n_sequences, seq_len and out_size; its test streams, if any, are error regression's, else the first
    ``er_streams`` training sequences are, reported as ``er_error_train``).
    Loss: the model's objective (reconstruction + meta-prior-weighted KL). Evaluation: posterior-mean
    reconstruction error and KL per level on the training set, the one-step prediction error of error regression
    (``task_args``: er_streams, er_length, er_window, er_iterations, er_lr, gen_steps) on unseen test streams,
    the largest Lyapunov exponent (per step) of the noise-free generative map from 4 states reached by generation
    (``lyapunov_steps``), and for PFSM data the branch probability P(B | branch) of free-running generation
    against the true ``p_b``.
    """

    def __init__(self, recipe: dict):
        super().__init__(recipe)
        d, a = recipe["data"], self.args
        cfg = resolve_config(recipe["model"], **recipe.get("model_args", {}))
        self.n, self.seq_len = cfg.n_sequences, cfg.seq_len
        self.max_batch = self.n  # a batch is a set of distinct training sequences
        self.er = {"window": whole(a, "task_args", "er_window", 20),
                   "iterations": whole(a, "task_args", "er_iterations", 20), "lr": real(a, "task_args", "er_lr", 0.1)}
        self.gen_steps = whole(a, "task_args", "gen_steps", 2000)
        self.lyapunov_steps = whole(a, "task_args", "lyapunov_steps", 2000)
        # generated test streams, or (file without test streams) how many training sequences to regress on
        er_streams, er_length = whole(a, "task_args", "er_streams", 4), whole(a, "task_args", "er_length", 80)
        self.source, self.er_key = d.get("source", "pfsm"), "er_error"
        if self.source == "pfsm":
            self.period, self.p_b = whole(d, "data", "period", 20), real(d, "data", "p_b", 0.7)
            noise, seed = real(d, "data", "noise", 0.05), whole(d, "data", "seed", 0)
            self.train_x, _ = pfsm_sequences(self.n, self.seq_len, self.period, self.p_b, noise, seed)
            self.test_x, _ = pfsm_sequences(er_streams, er_length, self.period, self.p_b, noise, seed + 1)
        elif self.source == "file":
            if not d.get("path"):
                raise ValueError(f"recipe {recipe.get('name')!r}: data.source=file needs data.path (--set data.path=...)")
            self.train_x, test = load_sequences(d["path"])
            N, T, D = self.train_x.shape
            if (N, T, D) != (self.n, self.seq_len, cfg.out_size):
                batch = int((recipe.get("train") or {}).get("batch_size") or 0)
                smaller = f" --set train.batch_size={N}" if batch > N else ""  # a batch holds distinct sequences
                raise ValueError(f"{d['path']} holds {N} sequences of {T} steps and {D} dims, but the model has "
                                 f"n_sequences={self.n}, seq_len={self.seq_len}, out_size={cfg.out_size}. To train "
                                 f"on this file, pass --set model_args.n_sequences={N} --set model_args.seq_len={T} "
                                 f"--set model_args.out_size={D}{smaller} to zoo train; a checkpoint (zoo eval, zoo "
                                 f"estimate) keeps its sizes, so point data.path at sequences of its shape ({self.n}, "
                                 f"{self.seq_len}, {cfg.out_size}) with --set data.path=...")
            # without test streams, error regression runs on training sequences and its metric says so
            self.test_x = test if test is not None else self.train_x[:er_streams]
            self.er_key = "er_error" if test is not None else "er_error_train"
        else:
            raise ValueError(f"PVRNNTask: data.source must be 'pfsm' or 'file', got {self.source!r}")
        # checked now, not at the first evaluation after training
        T_er, where = self.test_x.shape[1], ("task_args.er_length" if self.source == "pfsm" else
                                             f"the test streams of {d.get('path')}")
        if not 1 <= self.er["window"] < T_er or self.er["iterations"] < 0 or not self.er["lr"] > 0:
            raise ValueError(f"PVRNNTask: task_args.er_window must lie in [1, {T_er - 1}] (the {T_er} steps of "
                             f"{where} less the predicted one), er_iterations >= 0 and er_lr > 0; got "
                             f"er_window={self.er['window']}, er_iterations={self.er['iterations']}, "
                             f"er_lr={self.er['lr']}")

    def batch(self, size, generator):
        if size > self.max_batch:
            raise ValueError(f"train.batch_size={size} exceeds the model's n_sequences={self.n}")
        ids = torch.randperm(self.n, generator=generator)[:size]
        return {"ids": ids, "x": self.train_x[ids]}

    def sparse_rows(self, model, batch):
        return {a: batch["ids"] for a in [*model.A_mu, *model.A_sigma]}

    def loss(self, model, batch):
        # the unroll goes through ``model`` itself, so that a DistributedDataParallel wrapper sees the forward
        return getattr(model, "module", model).loss(batch["ids"], batch["x"], forward=model)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics from a fixed noise stream (torch's global RNG forked and seeded 0, then restored): the same
        model gets the same numbers at the end of training and in ``zoo eval``, and evaluating leaves the
        training run's RNG stream untouched."""
        device = model.out.weight.device
        with seeded(0, device):
            return self._evaluate(model, device)

    def _evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        ids = torch.arange(self.n, device=device)
        x = self.train_x.to(device)
        rec, kl = model.elbo_terms(model(ids, noise=False), x)
        er = model.error_regression(self.test_x.to(device), **self.er)
        metrics = {"rec": float(rec.mean()), **{f"kl_{k}": float(v) for k, v in enumerate(kl.mean((0, 1)))},
                   self.er_key: float(er["error"].mean()), "lambda_max": self.lyapunov(model)}
        if self.source == "pfsm":
            gen = model.generate(8, self.gen_steps).cpu()
            metrics |= {"p_b_generated": float(branch_probability(gen, self.period)), "p_b_true": self.p_b}
        return metrics

    def lyapunov(self, model) -> float:
        """Largest Lyapunov exponent (per step) of ``model.prior_mean_map`` from the state after 500 generated
        steps, of 4 sequences, averaged; the estimator discards a further 200 steps of transient first."""
        from estimators.lyapunov import largest_lyapunov_exponent

        state = model.unroll(500, model.initial_state(4), first=True, noise=True)["state"]
        h = join_state(state)[0].double()
        try:
            return float(largest_lyapunov_exponent(copy.deepcopy(model).double().prior_mean_map, h,
                                                   steps=self.lyapunov_steps, transient=200).mean())
        except FloatingPointError:
            return float("nan")

    def report(self, model, out: Path):
        import matplotlib.pyplot as plt

        from ..plots import save_figure

        with torch.no_grad():
            gen = model.generate(1, 400).cpu()[0]
        er = model.error_regression(self.test_x[:1].to(model.out.weight.device), **self.er)
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        axes[0].plot(*self.train_x[0].T.numpy(), lw=0.6)
        axes[0].set_title("training sequence 0")
        axes[1].plot(*gen.T.numpy(), lw=0.6, color="C1")
        axes[1].set_title("free-running generation (prior)")
        for k, s in enumerate(er["post_sigma"]):
            axes[2].plot(s[0].mean(-1).cpu().numpy(), label=f"level {k} posterior sigma")
        axes[2].plot(er["error"][0].cpu().numpy(), label="one-step prediction error", color="k", lw=0.8)
        axes[2].set(xlabel="error-regression step", title="error regression on a test stream")
        axes[2].legend(fontsize=7)
        fig.tight_layout()
        path = Path(out) / "pvrnn.png"
        return [save_figure(fig, path)]
