import collections
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm.layers
import torch
import yaml

import zoo
from train import fit, load_recipe
from train.recipe import RECIPES_DIR, apply_override, list_recipes, overridden_keys
from train.schedules import OPTIMIZERS, build_optimizer, lr_factor
from train.tasks import TASKS
from weights import CheckpointError, load_checkpoint
from zoo._registry import resolve_config

from .conftest import SMALL_DSR, free_port, killed_at_call, train_losses


def test_fit_writes_a_complete_run_and_loss_falls(tmp_path):
    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=100", "optim.name=adam", "optim.lr=1e-2",
                                                        "schedule.name=constant", "train.batch_size=32",
                                                        "train.eval_every=50"])
    final = fit(recipe, tmp_path / "run")
    out = tmp_path / "run"
    for name in ("recipe.yaml", "metrics.jsonl", "metrics.csv", "metrics.png", "attractor.png", "model.safetensors", "probe.csv",
                 "summary.json"):
        assert (out / name).is_file(), name
    losses = train_losses(out)
    first, last = sum(list(losses.values())[:5]) / 5, sum(list(losses.values())[-5:]) / 5
    assert last < 0.5 * first
    assert set(final) >= {"D_stsp", "D_H", "PE_20", "subregions"}
    evals = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in r]
    assert [r["step"] for r in evals] == [50, 100]
    best = json.loads((out / "best.json").read_text())  # recipe selects min:D_stsp, as the authors do
    assert best["D_stsp"] == min(r["D_stsp"] for r in evals)
    assert load_checkpoint(out / "best.safetensors").zoo_name == "alrnn_m20_p2"
    model = load_checkpoint(out / "model.safetensors")
    assert model.zoo_name == "alrnn_m20_p2"
    assert (out / "probe.csv").read_text().count("condition_number_covariance") == 10  # steps 0, 10, ..., 90


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    """Losses, weights, the metrics file (evaluations and the best choice included) and the probe's rows of a
    killed-and-resumed run equal the straight run's, also when the kill cut a metrics line short; resuming a
    finished run changes nothing."""
    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.eval_every=10", "probe.points={z: [{condition_number: "
                                                        "{of: covariance}}], L: [condition_number]}"])
    fit(recipe, tmp_path / "straight")
    assert "30,L," in (tmp_path / "straight" / "probe.csv").read_text()  # the final weights, measured at close

    from train.tasks.dsr import DSRTask

    # dies during step 25, after the checkpoint at step 20, while writing a metrics line
    with killed_at_call(DSRTask, "loss", 25), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "resumed")
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "spl')
    partial = tmp_path / "resumed" / "checkpoints" / "step_00000030.tmp"  # a save killed half-way leaves its folder
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(FileExistsError, match="--resume"):
        fit(recipe, tmp_path / "resumed")
    fit(recipe, tmp_path / "resumed", resume=True)

    a, b = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert list(a) == list(b) == list(range(1, 31))
    assert a == b  # bit-identical losses, including the steps after the resume
    ma, mb = load_checkpoint(tmp_path / "straight" / "model.safetensors"), load_checkpoint(tmp_path / "resumed" / "model.safetensors")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    for name in ("metrics.jsonl", "probe.csv", "best.json"):
        assert (tmp_path / "straight" / name).read_text() == (tmp_path / "resumed" / name).read_text(), name
    fit(recipe, tmp_path / "resumed", resume=True)  # already finished: the same files again
    for name in ("metrics.jsonl", "probe.csv", "best.json"):
        assert (tmp_path / "straight" / name).read_text() == (tmp_path / "resumed" / name).read_text(), name
    # environment.json: one entry per launch, each with what it ran on
    straight, = json.loads((tmp_path / "straight" / "environment.json").read_text())["launches"]
    launches = json.loads((tmp_path / "resumed" / "environment.json").read_text())["launches"]
    assert [launch["start_step"] for launch in launches] == [0, 20, 30]
    assert straight["torch"] == torch.__version__ and straight["device"] == "cpu" and straight["processes"] == 1
    assert straight["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert straight["paperzoo"] == zoo.__version__ and straight["packages"]["safetensors"]


def test_a_fresh_run_over_a_run_killed_before_its_first_checkpoint_starts_a_new_launch_record(tmp_path):
    """A run killed before its first checkpoint may be started again into the same folder (nothing to resume):
    its environment.json then lists that launch only, not the dead one before it."""
    from train.tasks.dsr import DSRTask

    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR)
    with killed_at_call(DSRTask, "loss", 5), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run")
    assert len(json.loads((tmp_path / "run" / "environment.json").read_text())["launches"]) == 1
    fit(recipe, tmp_path / "run")
    launches = json.loads((tmp_path / "run" / "environment.json").read_text())["launches"]
    assert [launch["start_step"] for launch in launches] == [0]


def test_a_resumed_run_draws_the_same_dropout_and_a_damaged_checkpoint_is_named(tmp_path):
    """Dropout (hopfield_tabular, 0.1, and an evaluation between steps) draws from RNGs seeded per step, so a
    resumed run equals the straight one with no RNG state saved; a newest checkpoint damaged outside the run is
    named with the older one to resume from."""
    from train.loop import _seed_step
    from train.tasks.classification import ClassificationTask

    recipe = load_recipe("hopfield-tabular-wine", ["train.steps=30", "train.ckpt_every=10", "train.eval_every=5"])
    fit(recipe, tmp_path / "straight")
    with killed_at_call(ClassificationTask, "loss", 25), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "resumed")
    fit(recipe, tmp_path / "resumed", resume=True)
    assert train_losses(tmp_path / "straight") == train_losses(tmp_path / "resumed")
    ma, mb = (load_checkpoint(tmp_path / run / "model.safetensors") for run in ("straight", "resumed"))
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    newest = tmp_path / "resumed" / "checkpoints" / "step_00000030" / "trainer.safetensors"
    intact = newest.read_bytes()
    newest.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match=r"--resume: .*step_00000030 cannot be loaded \(.*trainer.safetensors.*"
                                              r"move it away to resume from step_00000020"):
        fit(recipe, tmp_path / "resumed", resume=True)
    # bytes flipped in the tensor data (not the header) read as other numbers: the recorded sha256 names the file,
    # where the run went on from the damaged state (and, checkpoints rotating, deleted the intact older ones)
    newest.write_bytes(intact[:-200] + bytes(b ^ 0xFF for b in intact[-200:-100]) + intact[-100:])
    with pytest.raises(CheckpointError, match=r"step_00000030 cannot be loaded \(trainer.safetensors changed since it "
                                              r"was written \(its sha256 differs from sha256.json\)\); move it away"):
        fit(recipe, tmp_path / "resumed", resume=True)
    newest.write_bytes(intact)
    (newest.parent / "sha256.json").write_text("[]")  # a damaged record is named too, not an AttributeError
    with pytest.raises(CheckpointError, match=r"step_00000030 cannot be loaded \(sha256.json must map file names"):
        fit(recipe, tmp_path / "resumed", resume=True)
    # checkpoints written before the record are not checked; their optimizer state still is, below
    (newest.parent / "sha256.json").unlink()
    # another run's optimizer state: torch loads it without a word, then fails (or carries on) at the first update
    for name, overrides, message in (
            ("wider", ["model_args.embed_dim=16"], r"another model's: exp_avg of shape \(16, 13\) for a parameter of "
                                                   r"shape \(32, 13\)"),
            ("radam", ["optim={name: radam, lr: 0.003}"], r"another optimizer's: RAdam, where this run's is AdamW"),
            ("sgd", ["optim={name: sgd, lr: 0.1, momentum: 0.9}"], r"another optimizer's: SGD, where this run's is")):
        other = tmp_path / name
        fit(load_recipe("hopfield-tabular-wine", ["train.steps=10", "train.ckpt_every=10", "schedule.warmup=0",
                                                  *overrides]), other)
        newest.write_bytes((other / "checkpoints" / "step_00000010" / "trainer.safetensors").read_bytes())
        with pytest.raises(CheckpointError, match=rf"step_00000030 cannot be loaded \(its optimizer state is {message}"):
            fit(recipe, tmp_path / "resumed", resume=True)
    from weights.tree import load_tree, save_tree

    old = {k: v for k, v in load_tree(newest).items() if k != "optimizer_class"}  # as checkpoints before the record
    save_tree(old, newest)
    with pytest.raises(CheckpointError, match=r"another optimizer's: settings \['dampening', 'momentum', 'nesterov'\] "
                                              r"that this run's AdamW lacks"):
        fit(recipe, tmp_path / "resumed", resume=True)
    draws = {}
    for rank in (0, 1):  # torchrun ranks draw their own noise (dropout masks), each step anew
        _seed_step(0, 7, rank)
        draws[rank] = torch.rand(4)
    _seed_step(0, 7, 0)
    assert torch.equal(torch.rand(4), draws[0]) and not torch.equal(draws[0], draws[1])


def test_the_last_step_is_checkpointed_so_a_finished_run_resumes_to_its_evaluation(tmp_path, capsys, monkeypatch):
    """7 steps with ckpt_every 5 save steps 5 and 7: --resume of the finished run (a rerun of a sweep) evaluates
    it again without a training step, where it used to retrain steps 5..7 (or, with fewer steps than ckpt_every,
    was an error saying ckpt_every was 0); with its checkpoints removed the error says so."""
    from train.tasks.dsr import DSRTask

    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=7", "train.ckpt_every=5", "train.eval_every=0"])
    first = fit(recipe, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000005", "step_00000007"]
    monkeypatch.setattr(DSRTask, "loss", lambda *a: pytest.fail("a finished run trained again"))
    assert fit(recipe, tmp_path / "run", resume=True) == first
    assert "(already complete: evaluating the final model again)" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    with pytest.raises(FileExistsError, match=r"holds a finished run \(model.safetensors, summary.json\) whose "
                                              r"checkpoints were removed; nothing to resume"):
        fit(recipe, tmp_path / "run", resume=True)


def test_resume_names_the_settings_that_changed_and_why_it_starts_over(tmp_path, capsys):
    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=2", "train.ckpt_every=0"])
    fit(recipe, tmp_path / "run", resume=True)  # nothing there yet
    assert "no checkpoint in" in capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").is_file()  # finished, and saved without checkpoints
    with pytest.raises(FileExistsError, match=r"holds a finished run .* saved without checkpoints .*nothing to resume"):
        fit(recipe, tmp_path / "run", resume=True)
    (tmp_path / "run" / "summary.json").unlink()
    (tmp_path / "run" / "model.safetensors").unlink()  # as if killed before the end: it starts over, and says why
    fit(recipe, tmp_path / "run", resume=True)
    assert "train.ckpt_every is 0, so this recipe saves none); starting at step 0" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    with pytest.raises(FileNotFoundError, match=r"other holds files but no run .*a mistyped --out"):
        fit(recipe, tmp_path / "other", resume=True)
    done = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=2", "train.ckpt_every=2"])
    fit(done, tmp_path / "done")
    capsys.readouterr()
    fit(done, tmp_path / "done", resume=True)  # a finished run: says so, and evaluates again
    assert "steps 2..2 (already complete: evaluating the final model again)" in capsys.readouterr().err
    longer = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=3", "train.ckpt_every=0", "optim.lr=0.5",
                                                        "model_args.M=30"])
    with pytest.raises(ValueError, match=r"recipe.yaml: model_args.M: default -> 30; optim.lr: 0.001 -> 0.5; "
                                         r"train.steps: 2 -> 3 \(saved -> now\)"):  # M's default was shown as None
        fit(longer, tmp_path / "run", resume=True)
    # an optimizer and schedule given by name take their own settings; the same command resumes (the saved
    # sections used to get the default optimizer's weight_decay and warmup on reading: "0.0 -> None")
    named = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=2", "train.ckpt_every=1",
                                                       "optim={name: sgd, lr: 0.01}", "schedule={name: cosine}"])
    assert "weight_decay" not in named["optim"] and "warmup" not in named["schedule"]
    fit(named, tmp_path / "named")
    fit(named, tmp_path / "named", resume=True)
    assert "steps 2..2 (already complete" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"optim.weight_decay: default -> 0.1 \(saved -> now\)"):
        fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=2", "train.ckpt_every=1", "schedule={name: cosine}",
                                                       "optim={name: sgd, lr: 0.01, weight_decay: 0.1}"]),
            tmp_path / "named", resume=True)
    # the keys for people may change under a run (a run saved before a recipe gained baselines: resumes)
    import yaml

    from train.loop import _check_run_dir

    saved = yaml.safe_load((tmp_path / "done" / "recipe.yaml").read_text())
    (tmp_path / "done" / "recipe.yaml").write_text(yaml.safe_dump({k: v for k, v in saved.items()
                                                                    if k != "description"} | {"baselines": ["x"]}))
    _check_run_dir(done, tmp_path / "done", True)


def test_a_fresh_run_does_not_inherit_a_previous_runs_best_model(tmp_path):
    base = SMALL_DSR + ["train.steps=10", "train.ckpt_every=0", "train.eval_every=5"]
    fit(load_recipe("alrnn-lorenz63", base + ["optim.lr=0.05", "train.seed=7"]), tmp_path / "run")
    # a finished run is never trained over: its files would sit beside the new run's (eval would read its model)
    with pytest.raises(FileExistsError, match=r"already holds a finished run \(model.safetensors, summary.json\)"):
        fit(load_recipe("alrnn-lorenz63", base), tmp_path / "run")
    for name in ("model.safetensors", "summary.json"):  # as a run killed after an evaluation leaves it
        (tmp_path / "run" / name).unlink()
    fit(load_recipe("alrnn-lorenz63", base), tmp_path / "run")
    evals = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"eval"' in r]
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["D_stsp"] == min(r["D_stsp"] for r in evals)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from train.tasks.dsr import DSRTask

    original = DSRTask.loss
    calls = {"n": 0}

    def nan_after_15(self, model, batch):
        calls["n"] += 1
        loss, extra = original(self, model, batch)
        return (loss * float("nan") if calls["n"] > 15 else loss), extra

    monkeypatch.setattr(DSRTask, "loss", nan_after_15)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 16.*step_00000010"):
        fit(load_recipe("alrnn-lorenz63", SMALL_DSR), tmp_path / "run")
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step_00000010"]
    model = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000010" / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_metrics_are_written_as_strict_json_nulls(tmp_path, monkeypatch):
    """A diverged evaluation (NaN or inf metrics) still writes metrics.jsonl, summary.json and metrics.csv that
    strict JSON readers accept: non-finite values become null (an empty CSV cell)."""
    from train.loop import json_text
    from train.tasks.dsr import DSRTask

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    assert strict(json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2})) == {
        "a": None, "b": [1.0, None], "c": {"d": None}, "e": 2}
    original = DSRTask.evaluate
    monkeypatch.setattr(DSRTask, "evaluate", lambda self, model: {**original(self, model), "D_stsp": float("nan"),
                                                                   "D_H": float("inf")})
    out = tmp_path / "run"
    fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.eval_every=10"]), out)
    rows = [strict(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30] and all(r["D_stsp"] is None and r["D_H"] is None for r in evals)
    assert strict((out / "summary.json").read_text())["D_stsp"] is None
    assert {r["D_stsp"] for r in csv.DictReader((out / "metrics.csv").read_text().splitlines()) if r["split"] == "eval"} == {""}
    assert not (out / "best.json").exists()  # NaN is never the best


def test_an_infinite_best_metric_survives_a_resume(tmp_path):
    """best.json writes an infinite best as null; a resumed selection reads it back as that infinity, so a later
    infinite value does not replace it (as in the uninterrupted run) and a finite one does."""
    from train.loop import _BestSelector

    model = zoo.create_model("alrnn_m20_p2")
    _BestSelector("min:D_stsp", tmp_path, {"recipe": "r"}, resumed_at=0).update({"step": 10, "D_stsp": float("inf")}, model)
    assert json.loads((tmp_path / "best.json").read_text())["D_stsp"] is None
    resumed = _BestSelector("min:D_stsp", tmp_path, {"recipe": "r"}, resumed_at=10)
    resumed.update({"step": 20, "D_stsp": float("inf")}, model)
    assert json.loads((tmp_path / "best.json").read_text())["step"] == 10
    resumed.update({"step": 30, "D_stsp": 4.5}, model)
    assert json.loads((tmp_path / "best.json").read_text()) == {"step": 30, "D_stsp": 4.5}


def test_nan_gradient_of_a_finite_loss_stops_before_the_update(tmp_path, monkeypatch):
    """A finite loss whose gradient is NaN (0 * d sqrt(x)/dx at x = 0) must not reach the optimizer: the run stops
    at that step, names the gradient, and every checkpoint holds finite weights."""
    from train.tasks.dsr import DSRTask

    original = DSRTask.loss
    calls = {"n": 0}

    def nan_gradient_at_15(self, model, batch):
        calls["n"] += 1
        loss, extra = original(self, model, batch)
        if calls["n"] == 15:
            p = next(model.parameters())
            loss = loss + 0 * (p - p.detach()).square().sum().sqrt()
        return loss, extra

    monkeypatch.setattr(DSRTask, "loss", nan_gradient_at_15)
    with pytest.raises(FloatingPointError, match=r"gradient norm is nan \(the loss, .*, is finite\) at step 15.* Lower "
                                                 r"optim.lr \(train.clip is 1.0: clipping cannot repair a NaN or inf\)"):
        fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.clip=1.0"]), tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000010"]
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("override, message", [
    ("train.clip=-1", "train.clip must be a finite number >= 0"),
    ("train.clip=abc", "train.clip must be a finite number >= 0"),
    ("train.clip=.inf", r"train.clip must be a finite number >= 0 \(0 or null: no clipping\), got inf"),
    ("train.clip=.nan", r"train.clip must be a finite number >= 0 \(0 or null: no clipping\), got nan"),
    ("train.seed=abc", "train.seed must be an integer"),
    ("train.threads=0", "train.threads must be an integer >= 1 or null"),
    ("train.seed=-1", r"train.seed must be an integer in \[0, 4294967295\], got -1"),
    ("train.seed=4294967296", r"train.seed must be an integer in \[0, 4294967295\]"),
    ('train.compile="false"', "train.compile must be true or false, got 'false'"),
    ("train.sync_batchnorm=1", "train.sync_batchnorm must be true or false, got 1"),
    ("train.grad_accum=3", r"train.batch_size=8 must be divisible by grad_accum\*processes=3"),
])
def test_bad_train_values_are_named_before_any_work(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        fit(load_recipe("alrnn-lorenz63", SMALL_DSR + [override]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_run_directory_optimizer_and_schedule_are_checked_before_the_data_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("train.loop.make_task", lambda recipe: pytest.fail("read data before the checks"))
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        fit(load_recipe("alrnn-lorenz63"), tmp_path / "done")
    with pytest.raises(KeyError, match=r"optim: sgd has no setting \['betas'\]"):
        fit(load_recipe("alrnn-lorenz63", ["optim={name: sgd, lr: 0.1, betas: [0.9, 0.99]}"]), tmp_path / "a")
    with pytest.raises(KeyError, match="schedule.name 'cosin' is unknown"):
        fit(load_recipe("alrnn-lorenz63", ["schedule.name=cosin"]), tmp_path / "b")
    saved = load_recipe("alrnn-lorenz63")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "recipe.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ValueError, match=r"train.steps: 20000 -> 7"):
        fit(load_recipe("alrnn-lorenz63", ["train.steps=7"]), tmp_path / "c", resume=True)


def test_batch_seeds_keep_their_values_and_fit_torchs_32_bit_seeds():
    """The batch generator of (seed, step) is torch's generator seeded with seed * 1,000,003 + step (the seeds of
    the runs in this README), taken mod 2^32 as torch does, so the largest seed and step overflow nothing; seed 1
    starts where seed 0's millionth step would be."""
    from train.loop import MAX_SEED, _batch_generator

    def draw(generator):
        return torch.randint(0, 2**62, (4,), generator=generator).tolist()

    assert draw(_batch_generator(3, 17)) == draw(torch.Generator().manual_seed(3 * 1_000_003 + 17))
    assert draw(_batch_generator(4294, 999_999)) == draw(torch.Generator().manual_seed(4294 * 1_000_003 + 999_999))
    starts = {draw(_batch_generator(seed, 0))[0] for seed in range(4294)}  # one sequence per seed
    assert len(starts) == 4294 and draw(_batch_generator(1, 0)) == draw(_batch_generator(0, 1_000_003))
    assert draw(_batch_generator(MAX_SEED, 10**12)) != draw(_batch_generator(MAX_SEED, 10**12 + 1))


def test_recipe_files_and_set_values_that_are_not_yaml_name_where(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: x\nmodel: [alrnn\n")
    with pytest.raises(yaml.YAMLError, match=re.escape(str(tmp_path / "broken.yaml"))):
        load_recipe(str(tmp_path / "broken.yaml"))
    (tmp_path / "list.yaml").write_text("- name: x\n")
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        load_recipe(str(tmp_path / "list.yaml"))
    with pytest.raises(ValueError, match=r"override 'data.name=\[a,': the value '\[a,' is not YAML .* at column 4\)"):
        load_recipe("alrnn-lorenz63", ["data.name=[a,"])


def test_a_warmup_longer_than_the_run_is_warned_about():
    with pytest.warns(UserWarning, match=r"schedule.warmup \(20\) is longer than the run \(5 steps\): the learning "
                                         r"rate ends at 0.25 x optim.lr"):
        factor = lr_factor({"name": "cosine", "warmup": 20}, 5)
    assert [factor(s) for s in range(5)] == [0.05, 0.1, 0.15, 0.2, 0.25]
    # exponential: p = 1 at step `steps`, so the first n steps of a long run are a short run's
    long, short = lr_factor({"name": "exponential", "final_ratio": 0.01}, 100), lr_factor(
        {"name": "exponential", "final_ratio": 0.01 ** 0.2}, 20)
    assert all(abs(long(s) - short(s)) < 1e-12 for s in range(20))
    # after the warmup, decay starts from 1 at p = (s - w) / (total - w) = 0: cosine 0.5 halfway through the rest
    cosine = lr_factor({"name": "cosine", "warmup": 10}, 110)
    assert [cosine(s) for s in (9, 10, 60, 110)] == pytest.approx([1.0, 1.0, 0.5, 0.0])
    assert lr_factor({"name": "exponential", "warmup": 10, "final_ratio": 0.01}, 110)(60) == pytest.approx(0.1)


def test_a_misspelt_selection_metric_fails_before_the_first_step(tmp_path, monkeypatch):
    """With evaluations during the run, the first one comes before that step's checkpoint: one evaluation of the
    initial model names the misspelt metric before any training, instead of losing eval_every steps."""
    from train.tasks.dsr import DSRTask

    monkeypatch.setattr(DSRTask, "loss", lambda *a: pytest.fail("trained before the metric was checked"))
    with pytest.raises(KeyError, match="train.select names 'D_stp'"):
        fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.select=min:D_stp", "train.eval_every=10"]), tmp_path / "run")


def test_resume_without_the_runs_recipe_or_with_missing_metric_rows(tmp_path):
    """Checkpoints without recipe.yaml cannot be checked against the recipe: refused. metrics.jsonl that lost its
    rows (deleted, or a power loss before this version flushed it at each checkpoint) is warned about."""
    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=20"])
    fit(recipe, tmp_path / "run")
    for name in ("model.safetensors", "summary.json"):
        (tmp_path / "run" / name).unlink()
    (tmp_path / "run" / "recipe.yaml").rename(tmp_path / "recipe.yaml")
    with pytest.raises(FileNotFoundError, match="holds checkpoints but no recipe.yaml"):
        fit(recipe, tmp_path / "run", resume=True)
    (tmp_path / "recipe.yaml").rename(tmp_path / "run" / "recipe.yaml")
    (tmp_path / "run" / "metrics.jsonl").unlink()
    with pytest.warns(UserWarning, match=r"metrics.jsonl has no training row for step 20 \(it holds 0 rows"):
        fit(recipe, tmp_path / "run", resume=True)


def test_a_damaged_launch_record_restarts_at_the_resumed_launch(tmp_path):
    """environment.json edited into something else is not a reason to stop a resume: a warning, and the record
    holds this launch only; the source commit is the checkout's HEAD when paperzoo runs from a git checkout."""
    from train.environment import environment
    from train.tasks.dsr import DSRTask

    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=20"])
    with killed_at_call(DSRTask, "loss", 15), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run")
    for damaged in ('{"launches": {"start_step": 0}}', "not json"):
        (tmp_path / "run" / "environment.json").write_text(damaged)
        with pytest.warns(UserWarning, match="environment.json is not a launch record; it now holds this launch"):
            fit(recipe, tmp_path / "run", resume=True)
        launches = json.loads((tmp_path / "run" / "environment.json").read_text())["launches"]
        assert [launch["start_step"] for launch in launches] == [20 if damaged == "not json" else 10]
    root = Path(zoo.__file__).resolve().parent.parent
    if (root / ".git").exists():
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        assert environment(torch.device("cpu"))["source_commit"].startswith(head.strip())


def test_run_tables_and_pictures_are_replaced_whole(tmp_path, monkeypatch):
    """metrics.csv and the plots go through an atomic write: a failure while writing leaves the previous file."""
    import matplotlib.pyplot as plt

    from train.loop import _jsonl_to_csv
    from train.plots import save_figure

    src, dst = tmp_path / "metrics.jsonl", tmp_path / "metrics.csv"
    src.write_text('{"step": 1, "split": "train", "loss": 0.5}\n')
    dst.write_text("previous table")
    monkeypatch.setattr(csv.DictWriter, "writerows", lambda self, rows: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        _jsonl_to_csv(src, dst)
    assert dst.read_text() == "previous table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "metrics.jsonl"]  # no temporary left
    picture = tmp_path / "plot.png"
    picture.write_bytes(b"previous picture")
    fig = plt.figure()
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, picture)
    assert picture.read_bytes() == b"previous picture"


def test_a_failing_final_selection_keeps_the_trained_weights(tmp_path):
    """A misspelt train.select is found at the final evaluation (eval_every=0); the trained model is saved
    before it, so the run's work is not lost; the error lists the metrics only (not the row's step and split)."""
    with pytest.raises(KeyError, match=r"train.select names 'D_stp', but evaluation reports \['D_H', 'D_stsp', "
                                       r"'PE_20', 'lambda_max', 'subregions'\]\"$"):  # KeyError quotes
        fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.select=min:D_stp", "train.steps=5",
                                                       "train.ckpt_every=0"]), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "model.safetensors").zoo_name == "alrnn_m20_p2"


def test_parameter_rows_measure_the_weights_the_steps_forward_used(tmp_path):
    """Probe rows of step k (activations of step k's forward and the parameter L) both see the weights after k
    updates: the step-k row of L equals kappa(L) of the step-k checkpoint (step 0: the initial weights)."""
    from estimators import matrix_condition_number

    fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=3", "train.ckpt_every=1", "probe.every=1",
                                                   "train.keep_checkpoints=0", "probe.points={L: [condition_number]}"]),
        tmp_path / "run")
    rows = {int(r["step"]): float(r["value"]) for r in csv.DictReader((tmp_path / "run" / "probe.csv").read_text().splitlines())}
    assert sorted(rows) == [0, 1, 2, 3]
    for k in (1, 2, 3):
        weights = load_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{k:08d}" / "model.safetensors")
        assert rows[k] == pytest.approx(float(matrix_condition_number(weights.L)), rel=1e-6), k
    assert len(set(rows.values())) == 4  # no two steps share their weights


def test_micro_batches_of_all_processes_cut_the_global_batch_into_disjoint_equal_slices():
    """With grad_accum=2 and 3 processes, the 6 (micro-batch, rank) slices of a 12-row batch are 2 rows each, in
    order (micro 0: ranks 0, 1, 2; micro 1: ranks 0, 1, 2), and together are the batch, each row once."""
    from train.distributed import Dist
    from train.loop import _local_slice

    batch = {"x": torch.arange(12.0).view(12, 1), "y": torch.arange(12)}
    pieces = [_local_slice(batch, micro, 2, Dist(rank=rank, world=3)) for micro in range(2) for rank in range(3)]
    assert all(p["x"].shape == (2, 1) and torch.equal(p["x"][:, 0].long(), p["y"]) for p in pieces)
    assert torch.equal(torch.cat([p["y"] for p in pieces]), batch["y"])


def test_the_last_step_is_logged_when_log_every_does_not_divide_the_steps(tmp_path):
    """train.log_every=2 over 5 steps logs the training loss at steps 2 and 4, and at the final step 5."""
    fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=5", "train.ckpt_every=0", "train.log_every=2"]),
        tmp_path / "run")
    assert list(train_losses(tmp_path / "run")) == [2, 4, 5]


def test_fit_restores_the_thread_count(tmp_path, monkeypatch):
    """train.threads sets torch's thread count for the run only: afterwards it is the caller's again. The caller's
    count is made 3 here (under OMP_NUM_THREADS=1 a run at 1 thread would change nothing), without running on 3."""
    calls = []
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=2", "train.ckpt_every=0", "train.threads=1"]),
        tmp_path / "run")
    assert calls == [1, 3]


def test_grad_accumulation_equals_full_batch(tmp_path, monkeypatch):
    """Weights and logged numbers of a run with grad_accum=4 equal the full-batch run's: the loss and the task's
    extra metrics are logged as the batch's mean (a sum over micro-batches divided by 4), not 4 times it."""
    from train.tasks.dsr import DSRTask

    plain_loss = DSRTask.loss

    def with_extras(self, model, batch):  # the task's own loss, plus two extra metrics of known value
        loss, extra = plain_loss(self, model, batch)
        return loss, {**extra, "mse": loss.detach(), "one": 1.0}

    monkeypatch.setattr(DSRTask, "loss", with_extras)
    base = SMALL_DSR + ["train.steps=5", "train.ckpt_every=0"]
    fit(load_recipe("alrnn-lorenz63", base), tmp_path / "a")
    fit(load_recipe("alrnn-lorenz63", base + ["train.grad_accum=4"]), tmp_path / "b")
    ma, mb = load_checkpoint(tmp_path / "a" / "model.safetensors"), load_checkpoint(tmp_path / "b" / "model.safetensors")
    for (k, p), q in zip(ma.state_dict().items(), mb.state_dict().values()):
        # atol 1e-5: a power-iteration vector (sigmaReparam u, v) amplifies rounding-order differences ~10x
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")
    logged_a, logged_b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert logged_a.keys() == logged_b.keys()  # the logged loss is the batch's mean, not accum times it
    for step, loss in logged_a.items():
        assert logged_b[step] == pytest.approx(loss, rel=1e-5)
    for run in ("a", "b"):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        train_rows = [r for r in rows if r["split"] == "train"]
        assert len(train_rows) == 5 and all(r["one"] == pytest.approx(1.0, rel=1e-6) for r in train_rows)
        assert all(r["mse"] == pytest.approx(r["loss"], rel=1e-6) for r in train_rows)


def test_clipping_scales_the_update_to_the_clip_norm(tmp_path):
    """train.clip = c: with plain SGD one update moves the parameters by lr * c (the gradient's norm is far above
    c here), so runs at c and 2c from the same start differ by exactly lr * c."""
    base = SMALL_DSR + ["train.steps=1", "train.ckpt_every=0", "optim={name: sgd, lr: 0.1}", "schedule={name: constant}"]
    params = {}
    for clip in (1e-4, 2e-4):
        fit(load_recipe("alrnn-lorenz63", base + [f"train.clip={clip}"]), tmp_path / str(clip))
        model = load_checkpoint(tmp_path / str(clip) / "model.safetensors")
        params[clip] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((params[2e-4] - params[1e-4]).norm()) == pytest.approx(0.1 * 1e-4, rel=1e-3)


def test_recipe_overrides_are_checked():
    recipe = load_recipe("alrnn-lorenz63", ["train.steps=7", "optim.lr=0.5"])
    assert recipe["train"]["steps"] == 7 and recipe["optim"]["lr"] == 0.5
    with pytest.raises(KeyError, match=r"unknown key; did you mean 'steps'\? \(train has \["):
        apply_override(recipe, "train.stepz=3")
    with pytest.raises(KeyError, match=r"'trian' is not a section of the recipe; did you mean 'train'\? \(sections: data"):
        apply_override(recipe, "trian.steps=3")
    with pytest.raises(FileNotFoundError, match="alrnn-lorenz63"):
        load_recipe("alrnn-lorenz36")
    assert overridden_keys(["train.steps=3", "data={path: /d, seed: 1}", " optim.lr = 2"]) == {
        "train.steps", "data", "data.path", "data.seed", "optim.lr"}
    for bad in ("train.steps", "=3", "train..steps=3", "train.=3"):  # no '=', or an empty key part
        with pytest.raises(ValueError, match=r"must look like key.path=value \(e.g. train.steps=100\)"):
            apply_override(recipe, bad)


def test_settings_that_nothing_reads_are_named():
    """Free sections (task_args, data, schedule) take any key, so a misspelling must be caught by its reader:
    a warning for the task's sections (a --set cannot drop another data source's keys), an error for the
    schedule's."""
    from train.schedules import lr_factor
    from train.tasks import UnusedSettingWarning, make_task

    small = SMALL_DSR + ["data.train_steps=1500"]
    with pytest.warns(UnusedSettingWarning, match=r"does not use task_args.forcing_intervall \(did you mean "
                                                  r"task_args.forcing_interval\?\)"):
        make_task(load_recipe("alrnn-lorenz63", small + ["task_args.forcing_intervall=8"]))
    with pytest.warns(UnusedSettingWarning, match=r"does not use data.nosie"):
        make_task(load_recipe("alrnn-lorenz63", small + ["data.nosie=0.5"]))
    with pytest.raises(KeyError, match=r"schedule has no setting \['final_rati'\]"):
        lr_factor({"name": "exponential", "final_rati": 0.01}, 100)
    assert lr_factor({"name": "constant", "final_ratio": 0.01}, 100)(50) == 1.0  # switching schedules is fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every shipped key is read
        assert make_task(load_recipe("alrnn-lorenz63", small)).forcing_interval == 8


def test_missing_data_fails_before_joining_a_process_group(tmp_path, monkeypatch):
    """Under torchrun every rank must stop on the data error itself, not on a broken process group."""
    def setup(device):
        raise AssertionError("setup (init_process_group) ran before the task read its data")

    monkeypatch.setattr("train.loop.setup", setup)
    with pytest.raises(FileNotFoundError, match="MIL data file"):
        fit(load_recipe("hopfield-mil-tiger", [f"data.path={tmp_path / 'missing.mat'}"]), tmp_path / "run")


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_parses_and_names_what_exists(name):
    import zoo

    recipe = load_recipe(name)
    assert recipe["name"] == name and recipe["task"] in TASKS and recipe["optim"]["name"] in OPTIMIZERS
    assert recipe["model"] in zoo.list_models(), recipe["model"]
    assert 0 < lr_factor(recipe["schedule"], int(recipe["train"]["steps"]))(0) <= 1  # raises on an unknown name
    build_optimizer([torch.nn.Parameter(torch.zeros(1))], recipe["optim"])  # raises on a bad setting
    steps = recipe["train"]["steps"]  # every recipe checkpoints, so a killed run resumes instead of restarting
    assert 0 < recipe["train"]["ckpt_every"] <= steps
    filled = {k: v for k, v in recipe["model_args"].items() if v is not None}  # null: the task fills it in
    for model in [recipe["model"], *recipe.get("baselines", [])]:  # baselines run with --set model=NAME
        resolve_config(model, **filled)  # raises on an unknown name or key, or a wrong type


def test_a_mapping_given_for_probe_points_replaces_the_recipes_points(tmp_path):
    """probe.points maps points to estimators: --set probe.points={} turns probing off and a new mapping probes only
    its points (both merged into the recipe's points before: an empty one changed nothing, a new one was added)."""
    recipe = load_recipe("alrnn-lorenz63")
    assert recipe["probe"]["points"]  # the recipe probes something
    assert load_recipe("alrnn-lorenz63", ["probe.points={}"])["probe"]["points"] == {}
    assert load_recipe("alrnn-lorenz63", ["probe.points={cell.W: [condition_number]}"])["probe"]["points"] == \
        {"cell.W": ["condition_number"]}
    assert "cell.W" not in recipe["probe"]["points"]  # so merging and replacing differ below
    both = load_recipe("alrnn-lorenz63", ["probe={every: 7, points: {cell.W: [effective_rank]}}"])["probe"]
    assert both == {**recipe["probe"], "every": 7, "points": {"cell.W": ["effective_rank"]}}
    assert load_recipe("alrnn-lorenz63", ["probe={every: 7}"])["probe"]["points"] == recipe["probe"]["points"]
    fit(load_recipe("alrnn-lorenz63", [*SMALL_DSR, "train.steps=4", "probe.points={}"]), out=tmp_path / "run")
    assert not (tmp_path / "run" / "probe.csv").exists()


def test_a_minimal_recipe_gets_the_documented_defaults_and_overrides_leave_the_callers_recipe_alone(tmp_path):
    """A recipe of name, model and task only trains with the README's defaults (1000 steps, batch 16, the two
    newest checkpoints kept, a row every 10 steps, AdamW at 1e-3, a constant schedule); apply_override returns a
    changed copy and never edits the recipe it is given (the CLI applies --set flags one by one)."""
    (tmp_path / "minimal.yaml").write_text("name: minimal\nmodel: alrnn_m20_p2\ntask: dsr\n")
    recipe = load_recipe(str(tmp_path / "minimal.yaml"))
    assert recipe["train"] == {"steps": 1000, "batch_size": 16, "grad_accum": 1, "clip": 0.0, "eval_every": 0,
                               "ckpt_every": 0, "log_every": 10, "seed": 0, "precision": "auto", "device": "auto",
                               "keep_checkpoints": 2, "select": None, "threads": None, "compile": False,
                               "sync_batchnorm": False}
    assert recipe["optim"] == {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0}
    assert recipe["schedule"] == {"name": "constant", "warmup": 0}
    before = json.dumps(recipe, sort_keys=True)
    changed = apply_override(apply_override(recipe, "train.steps=5"), "model_args.x=[1]")
    assert changed["train"]["steps"] == 5 and changed["model_args"] == {"x": [1]}
    assert json.dumps(recipe, sort_keys=True) == before


def test_numbers_that_yaml_reads_as_strings_become_floats_also_in_lists():
    """YAML 1.1 reads 1e-5 (no dot) as a string; the PV-RNN sweep writes meta-priors that way."""
    import zoo

    recipe = load_recipe("pvrnn-pfsm", ["model_args.meta_prior=[1e-5, 2.5e-3]", "data.noise=5e-2",
                                        "task_args={er_lr: 1e-1, er_window: 10}"])
    assert recipe["model_args"]["meta_prior"] == [1e-5, 2.5e-3] and recipe["data"]["noise"] == 0.05
    # a mapping given for a section sets those keys; the recipe's others stay
    assert recipe["task_args"] == {"er_lr": 0.1, "er_window": 10, "er_streams": 4, "er_length": 80,
                                   "er_iterations": 20, "gen_steps": 2000}
    assert zoo.create_model("pvrnn_pfsm", **recipe["model_args"]).config.meta_prior == (1e-5, 2.5e-3)
    assert apply_override(recipe, "train.device=cpu")["train"]["device"] == "cpu"  # words stay words
    with pytest.raises(TypeError, match=r"meta_prior must be tuple\[float, \.\.\.\].*got \['x', 0.1\] of type list"):
        zoo.create_model("pvrnn_pfsm", meta_prior=["x", 0.1])
    # counts written as 1e2 are whole floats: accepted wherever a count is read
    from train.loop import _check_train_section, _probe_estimators

    counts = load_recipe("alrnn-lorenz63", ["train.steps=1e2", "schedule.warmup=1e1", "probe.every=1e1"])
    _check_train_section(counts["train"])
    assert [e.name for e in _probe_estimators(counts["probe"])["z"]] == ["condition_number_covariance"]
    assert lr_factor(counts["schedule"], 100)(4) == 0.5  # warmup 10: (4 + 1) / 10


@pytest.mark.parametrize("override, error", [
    ("probe.evry=3", r"probe has no setting \['evry'\]; the settings are points, every and max_samples"),
    ("probe.every=2.5", r"probe.every must be an integer >= 1, got 2.5"),
    ("probe.max_samples=0", r"probe.max_samples must be an integer >= 1 or null"),
    ("probe.points={z: entropy}", r"probe.points.z must be a non-empty list of estimators"),
    ("probe.points={z: [entrpy]}", r"unknown estimator 'entrpy'; available: \['adaptive_binned_mi'"),
    ("probe.points={z: [{entropy: {bins: 3}}]}", r"probe.points.z: estimator 'entropy': entropy\(\) got an unexpected keyword "
                                                     r"argument 'bins'; it takes entropy\(dim"),
])
def test_bad_probe_section_fails_before_the_data_is_read(override, error, tmp_path, monkeypatch):
    def make_task(recipe):
        raise AssertionError("the task read its data before the probe section was checked")

    monkeypatch.setattr("train.loop.make_task", make_task)
    with pytest.raises((ValueError, KeyError, TypeError), match=error):
        fit(load_recipe("alrnn-lorenz63", [override]), tmp_path / "run")
    fit_off = load_recipe("alrnn-lorenz63", ["probe.points={}"])  # empty points: probing off, not an error
    with pytest.raises(AssertionError, match="read its data"):
        fit(fit_off, tmp_path / "run")


@pytest.mark.parametrize("override, error", [
    ("optim.lr=abc", r"optim.lr must be a number in \[0, 3.40282346639e\+38\], got 'abc'"),
    ("optim.lr=1e39", r"optim.lr must be a number in \[0, 3.40282346639e\+38\], got 1e\+39"),
    ("optim.lr=-1e-3", r"optim.lr must be a number in \[0, 3.40282346639e\+38\], got -0.001"),
    ("optim.betas=0.9", r"optim.betas must be a pair \[beta1, beta2\], got 0.9"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas must be a number in \[0, 1\], got 1.5"),
    ("optim.momentum=0.9", r"optim: radam has no setting \['momentum'\]; its settings are \['lr', 'betas'"),
    ("schedule.warmup=-3", r"schedule.warmup must be an integer >= 0, got -3"),
    ("schedule.warmup=2.5", r"schedule.warmup must be an integer >= 0, got 2.5"),
    ("schedule.min_ratio=x", r"schedule.min_ratio must be a number in \[0, 1\], got 'x'"),
    ("schedule.final_ratio=0", r"schedule.final_ratio must be a number in \[1e-12, 1\], got 0"),
])
def test_bad_optimizer_and_schedule_settings_name_the_key(override, error):
    recipe = load_recipe("alrnn-lorenz63", ["schedule.name=cosine" if "min" in override else
                                            "schedule.name=exponential" if "final" in override else "optim.lr=1e-3",
                                            override])
    with pytest.raises((ValueError, KeyError), match=error):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], recipe["optim"])
        lr_factor(recipe["schedule"], 100)


FACET_TINY = ["data.per_element=4", "data.alloys=4", "model_args.channels=8", "model_args.layers=1",
              "model_args.cutoff=4.0", "train.batch_size=4", "train.eval_every=0", "probe.points={}"]


# SGD: Adam turns rounding-level gradient differences on near-zero gradients (cls_token) into lr-sized steps
SIGMA_VIT_TINY = ["model_args.depth=1", "model_args.patch_size=8", "train.batch_size=8", "train.eval_every=0",
                  "probe.points={}", "optim={name: sgd, lr: 0.05}"]


@pytest.mark.parametrize("name, extra", [("alrnn-lorenz63", SMALL_DSR + ["probe.every=100"]),
                                         ("facet-emt", FACET_TINY),  # forces by double backward under DDP
                                         # probe rows are atoms, 32 on one rank and 16 on the other in a step of
                                         # seed 2: with a cap of 20 the ranks' chunk counts differed and the run hung
                                         ("facet-emt", FACET_TINY[:-1] + ["train.grad_accum=2", "probe.every=1",
                                                                          "probe.max_samples=20", "train.seed=2"]),
                                         ("sigma-vit-digits", SIGMA_VIT_TINY)])  # power-iteration buffers u, v
def test_torchrun_two_processes_equal_single_process(tmp_path, name, extra):
    # one thread per process in both runs: the same reduction order inside each op (the ranks run with 1 thread)
    overrides = extra + ["train.steps=8", "train.ckpt_every=0", "train.threads=1"]
    fit(load_recipe(name, overrides), tmp_path / "single")
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "train.cli", "train", name, "--out", str(tmp_path / "ddp")]
    for o in overrides:
        cmd += ["--set", o]
    cmd += ["--set", "train.device=cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[rank 0/2]" in proc.stderr and "[rank 1/2]" in proc.stderr  # both ranks ran
    a = load_checkpoint(tmp_path / "single" / "model.safetensors")
    b = load_checkpoint(tmp_path / "ddp" / "model.safetensors")
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        # atol 1e-5: a power-iteration vector (sigmaReparam u, v) amplifies rounding-order differences ~10x
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")
    la, lb = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert la.keys() == lb.keys()
    for s in la:
        assert la[s] == pytest.approx(lb[s], rel=1e-5)
    if (tmp_path / "single" / "probe.csv").is_file():  # the probe sees the whole global batch, not rank 0's half
        pa, pb = (list(csv.DictReader((tmp_path / run / "probe.csv").read_text().splitlines())) for run in ("single", "ddp"))
        assert [(r["step"], r["point"], r["estimator"]) for r in pa] == [(r["step"], r["point"], r["estimator"])
                                                                         for r in pb] and pa
        for ra, rb in zip(pa, pb):
            assert float(ra["value"]) == pytest.approx(float(rb["value"]), rel=1e-3), ra



MBV2_TINY = ["data.size=16", "train.steps=3", "train.batch_size=8", "train.ckpt_every=0", "train.log_every=1",
             "schedule.warmup=1", "train.threads=1"]


def test_sync_batchnorm_is_a_no_op_in_one_process_and_refused_on_cpu_ranks(tmp_path):
    """train.sync_batchnorm converts the BatchNorms to SyncBatchNorm, which in one process is plain BatchNorm: the
    run equals one without it and its checkpoint loads into the plain model. Two CPU ranks are refused before any
    file is written (torch's SyncBatchNorm runs on CUDA only)."""
    plain = fit(load_recipe("mbv2-ca-digits", MBV2_TINY), tmp_path / "plain")
    converted = []
    original = timm.layers.convert_sync_batchnorm
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(timm.layers, "convert_sync_batchnorm", lambda module: converted.append(original(module)) or
                   converted[-1])
        synced = fit(load_recipe("mbv2-ca-digits", MBV2_TINY + ["train.sync_batchnorm=true"]), tmp_path / "sync")
    # timm's BatchNormAct2d keeps its activation (torch's converter would make it a bare SyncBatchNorm)
    kinds = collections.Counter(type(m).__name__ for m in converted[0].modules() if "Norm" in type(m).__name__)
    assert kinds == {"SyncBatchNormAct": 52, "SyncBatchNorm": 16}
    assert train_losses(tmp_path / "plain") == train_losses(tmp_path / "sync") and plain == synced
    a, b = (load_checkpoint(tmp_path / run / "model.safetensors").state_dict() for run in ("plain", "sync"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "train.cli", "train", "mbv2-ca-digits", "--out", str(tmp_path / "ddp")]
    for o in MBV2_TINY + ["train.sync_batchnorm=true", "train.device=cpu"]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode != 0
    assert "train.sync_batchnorm: torch's SyncBatchNorm runs on CUDA devices only, and this run's 2 processes " \
           "use cpu" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "ddp").exists() or not any((tmp_path / "ddp").iterdir())


def test_resume_of_a_run_saved_before_a_train_setting_existed(tmp_path):
    """A run whose recipe.yaml lacks a setting added since (train.sync_batchnorm here) resumes: the missing setting
    counts at its default, not as a changed recipe."""
    run = SMALL_DSR + ["train.steps=2", "train.ckpt_every=2"]
    fit(load_recipe("alrnn-lorenz63", run), tmp_path / "run")
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    del saved["train"]["sync_batchnorm"]
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump(saved))
    fit(load_recipe("alrnn-lorenz63", run), tmp_path / "run", resume=True)  # a finished run: evaluated again
    with pytest.raises(ValueError, match=r"train.steps: 2 -> 4"):  # a real change is still refused
        fit(load_recipe("alrnn-lorenz63", run + ["train.steps=4"]), tmp_path / "run", resume=True)


@pytest.mark.parametrize("device, precision, tol", [pytest.param("cpu", "fp32", 1e-5, marks=pytest.mark.slow),
                                                    pytest.param("cuda", "bf16", 3e-2, marks=pytest.mark.gpu)])
def test_compiled_training_forward_equals_eager_with_probes(tmp_path, device, precision, tol):
    """train.compile=true compiles the training forward only: same losses and probe rows as eager (about 60 s on CPU)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    base = ["train.steps=6", "train.eval_every=0", "train.log_every=1", "probe.every=3", "model_args.depth=1",
            "train.batch_size=16", f"train.device={device}", f"train.precision={precision}"]
    runs = {}
    for compiled in ("false", "true"):
        fit(load_recipe("sigma-vit-digits", base + [f"train.compile={compiled}"]), tmp_path / compiled)
        losses = list(train_losses(tmp_path / compiled).values())
        probe = list(csv.DictReader((tmp_path / compiled / "probe.csv").open()))
        runs[compiled] = losses, probe
    (eager, eager_probe), (compiled, compiled_probe) = runs["false"], runs["true"]
    assert len(eager) == 6 and max(abs(a - b) for a, b in zip(eager, compiled)) < tol
    assert [(r["step"], r["estimator"]) for r in eager_probe] == [(r["step"], r["estimator"]) for r in compiled_probe]
    assert {r["step"] for r in eager_probe} == {"0", "3"}  # probes run at scheduled steps before the last
    assert max(abs(float(a["value"]) - float(b["value"])) for a, b in zip(eager_probe, compiled_probe)) < 10 * tol


def test_compiled_forward_never_runs_with_probe_hooks(tmp_path, monkeypatch):
    """train.compile=true: probed steps run the eager model, so no compiled graph ever depends on the probe's hooks
    (on an H100 with torch 2.11 a compiled run lost a probed step's rows, most likely a graph traced without them)."""
    from layers import ProbePoint

    calls = []

    class Compiled(torch.nn.Module):  # stands in for torch.compile's wrapper, checks the hooks at each call
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            calls.append(any(m._forward_hooks for m in self.module.modules() if isinstance(m, ProbePoint)))
            return self.module(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", Compiled)
    fit(load_recipe("alrnn-lorenz63", SMALL_DSR + ["train.steps=6", "probe.every=3", "train.eval_every=0",
                                                   "train.compile=true"]), tmp_path)
    rows = list(csv.DictReader((tmp_path / "probe.csv").read_text().splitlines()))
    assert calls and not any(calls) and {r["step"] for r in rows} == {"0", "3"}


@pytest.mark.parametrize("make", [lambda p: torch.optim.AdamW([p], lr=0.1, weight_decay=0.1),
                                  lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9)], ids=["adamw", "sgd"])
def test_only_rows_updates_the_batch_rows_and_leaves_the_rest_and_their_state(make):
    """Rows outside the batch keep their value and optimizer state through a step (state the step creates is 0
    there); the batch's rows get exactly the update of a plain step, since these optimizers act elementwise."""
    from train.loop import only_rows

    torch.manual_seed(0)
    p, twin = torch.nn.Parameter(torch.randn(6, 3)), torch.nn.Parameter(torch.zeros(6, 3))
    twin.data.copy_(p.data)
    opt, plain = make(p), make(twin)
    for used in ([0, 3], [2, 3]):
        for q in (p, twin):
            q.grad = torch.randn(6, 3, generator=torch.Generator().manual_seed(len(used) + used[0]))
        before = p.detach().clone()
        state_before = {k: v.clone() for k, v in opt.state.get(p, {}).items() if v.shape == p.shape}
        with only_rows(opt, {p: torch.tensor(used)}):
            opt.step()
        plain.step()
        others = [r for r in range(6) if r not in used]
        assert torch.equal(p[others], before[others])
        for k, v in opt.state[p].items():
            if v.shape == p.shape:
                expected = state_before[k][others] if k in state_before else torch.zeros(len(others), 3)
                assert torch.equal(v[others], expected), k
        if used == [0, 3]:  # first step: both optimizers start from the same state
            assert torch.equal(p[used], twin[used])


@pytest.mark.parametrize("name, extra", [("alrnn-lorenz63", SMALL_DSR + ["data.noise=0.1"]),
                                         ("hopfield-mil-digits", ["data.train_bags=20", "data.test_bags=10"])],
                         ids=["dsr", "mil"])
def test_held_out_batches_come_from_the_held_out_data(name, extra):
    """Task.held_out_batch (what ``zoo estimate`` measures on): batch's format, rows of the test data only (DSR:
    windows of the test trajectory, without the training noise), a pure function of the generator."""
    from train.tasks import make_task

    task = make_task(load_recipe(name, extra))
    held = task.held_out_batch(6, torch.Generator().manual_seed(1))
    assert held.keys() == task.batch(6, torch.Generator().manual_seed(1)).keys()
    again = task.held_out_batch(6, torch.Generator().manual_seed(1))
    assert all(torch.equal(held[k], again[k]) for k in held)
    if name == "alrnn-lorenz63":
        T = held["x"].shape[1]
        windows = task.test_x.unfold(0, T, 1).transpose(1, 2)  # every window of the test trajectory
        assert all((windows == w).all(-1).all(-1).any() for w in held["x"])
        # measured samples are distinct windows (a repeat is a zero-distance neighbour to k-NN estimators), of the
        # clean training trajectory for --split train, and no more than there are
        n = len(windows)
        for sample, series in ((task.held_out_batch(n, torch.Generator().manual_seed(2)), task.test_x),
                               (task.train_sample(500, torch.Generator().manual_seed(2)), task.train_x)):
            x = sample["x"]
            assert len(torch.unique(x.flatten(1), dim=0)) == len(x)
            every = series.unfold(0, T, 1).transpose(1, 2)
            assert all((every == w).all(-1).all(-1).any() for w in x[:20])  # no training noise added
        with pytest.raises(ValueError, match=rf"the split holds {n} examples, fewer than the {n + 1} distinct"):
            task.held_out_batch(n + 1, torch.Generator())
    else:
        bags = task.test["x"].flatten(1)
        assert all((bags == b.flatten()).all(-1).any() for b in held["x"])


def test_pvrnn_trains_under_torchrun_with_row_sparse_updates(tmp_path):
    """PV-RNN under DDP (its loss goes through the wrapper's forward), 2 of 6 sequences per step: the sequences
    that no step's global batch contained keep their initial (zero) adaptive vectors. Its posterior samples draw
    each rank's own noise, so unlike the deterministic recipes above the run does not equal one process."""
    from train.loop import _batch_generator
    from train.tasks import make_task

    overrides = ["model_args.n_sequences=6", "model_args.seq_len=40", "train.batch_size=2", "data.period=10",
                 "task_args.er_streams=2", "task_args.er_length=20", "task_args.er_window=5",
                 "task_args.er_iterations=2", "task_args.gen_steps=40", "train.eval_every=0", "probe=null",
                 "train.steps=2", "train.ckpt_every=0"]
    recipe = load_recipe("pvrnn-pfsm", overrides)
    task = make_task(recipe)
    seen = {i for s in range(2) for i in task.batch(2, _batch_generator(0, s))["ids"].tolist()}
    assert len(seen) < 6
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "train.cli", "train", "pvrnn-pfsm", "--out", str(tmp_path / "ddp")]
    for o in overrides + ["train.device=cpu"]:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = load_checkpoint(tmp_path / "ddp" / "model.safetensors")
    for a in [*m.A_mu, *m.A_sigma]:
        assert {i for i in range(6) if a[i].abs().sum() > 0} == seen


def test_held_out_batches_from_too_little_data_are_clear_errors():
    from train.tasks import make_task

    dsr = make_task(load_recipe("alrnn-lorenz63", SMALL_DSR + ["data.test_steps=30"]))
    with pytest.raises(ValueError, match="holds no window of task_args.seq_len"):
        dsr.held_out_batch(2, torch.Generator().manual_seed(0))
    ib = make_task(load_recipe("ib-tanh-12bit", ["data.train_fraction=1.0"]))
    with pytest.raises(ValueError, match="holds no examples"):
        ib.held_out_batch(2, torch.Generator().manual_seed(0))


def test_cuda_device_choice_per_process_and_per_torchrun_rank(monkeypatch):
    """No GPU is needed: CUDA's presence is simulated, and setup stops before touching a device."""
    from train.distributed import setup

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert [setup(d).device for d in ("cuda", "cuda:1", "auto")] == [torch.device("cuda", i) for i in (0, 1, 0)]
    assert chosen == [torch.device("cuda", i) for i in (0, 1, 0)]  # set, so kernels launch on the chosen GPU
    with pytest.raises(ValueError, match=r"asks for GPU 2 but 2 CUDA device\(s\) are visible"):
        setup("cuda:2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"train.device=cuda:0 under torchrun would put all 2 ranks on one GPU"):
        setup("cuda:0")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)  # no process group is joined here
    assert setup("cuda").device == torch.device("cuda", 1)  # rank with LOCAL_RANK 1 takes cuda:1


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # the autocast object is only inspected here
def test_precision_auto_is_bf16_only_on_gpus_with_native_bf16(monkeypatch, tmp_path):
    from train.loop import _autocast

    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation
                        and native)
    for native, expected in ((True, torch.bfloat16), (False, None)):  # e.g. A100 and V100
        ctx = _autocast("auto", cuda)
        assert getattr(ctx, "fast_dtype", None) == expected
    assert isinstance(_autocast("auto", torch.device("cpu")), type(_autocast("fp32", cuda)))  # CPU: fp32
    monkeypatch.setattr("train.loop.make_task", lambda recipe: pytest.fail("read data before checking precision"))
    with pytest.raises(ValueError, match="train.precision must be auto, fp32 or bf16, got 'fp16'"):
        fit(load_recipe("alrnn-lorenz63", ["train.precision=fp16"]), tmp_path / "run")


def test_recipe_sections_typos_and_non_finite_settings_are_refused(tmp_path):
    """A section set to a non-mapping, an unknown train setting in a recipe file (a misspelt ckpt_every would
    turn checkpoints off), an infinite lr and a momentum above 1 are errors before anything runs."""
    from train.schedules import build_optimizer

    for override in ("train=5", "schedule=cosine", "data=[1, 2]"):
        with pytest.raises(ValueError, match=r"is a section; give a mapping"):
            load_recipe("ib-tanh-12bit", [override])
    # a new optimizer (a mapping with name) replaces the section: adamw's weight_decay is not sgd's
    assert load_recipe("hopfield-mil-digits", ["optim={name: sgd, lr: 0.1}"])["optim"] == {"name": "sgd", "lr": 0.1}
    assert load_recipe("hopfield-mil-digits", ["optim={lr: 0.1}"])["optim"]["weight_decay"] == 1e-4
    text = (RECIPES_DIR / "ib-tanh-12bit.yaml").read_text().replace("  ckpt_every:", "  ckpt_evry:")
    assert "ckpt_evry" in text
    (tmp_path / "typo.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"unknown train settings \['ckpt_evry'\] \(closest: \{'ckpt_evry': "
                                         r"\['ckpt_every'\]\}\)"):
        load_recipe(str(tmp_path / "typo.yaml"))
    (tmp_path / "baselines.yaml").write_text(text.replace("ckpt_evry", "ckpt_every") + "baselines: tabular_mlp\n")
    with pytest.raises(ValueError, match=r"baselines must be a list of model names, got 'tabular_mlp'"):
        load_recipe(str(tmp_path / "baselines.yaml"))
    with pytest.raises(ValueError, match=r"baselines must be a list of model names, got None"):
        load_recipe("hopfield-tabular-wine", ["baselines=null"])
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"optim.lr must be a number in \[0, 3.40282346639e\+38\], got inf"):
        build_optimizer(params, {"name": "adam", "lr": float("inf")})
    with pytest.raises(ValueError, match=r"optim.momentum must be a number in \[0, 1\], got 2"):
        build_optimizer(params, {"name": "sgd", "lr": 0.1, "momentum": 2})



def test_data_paths_starting_with_a_tilde_are_expanded(tmp_path, monkeypatch):
    """data.path=~/... (quoted in a recipe or --set, so no shell expanded it) reads from the home folder."""
    import numpy as np

    from train.data.emt import read_structures
    from train.data.sequences import load_sequences

    monkeypatch.setenv("HOME", str(tmp_path))
    np.save(tmp_path / "robot.npy", np.zeros((2, 5, 3), dtype=np.float32))
    train, test = load_sequences("~/robot.npy")
    assert train.shape == (2, 5, 3) and test is None
    with pytest.raises(FileNotFoundError, match=re.escape(f"structure file {tmp_path / 'mptrj.extxyz'} does not exist")):
        read_structures("~/mptrj.extxyz")


def test_lm_measured_samples_are_distinct_windows():
    """zoo estimate's samples of an LM: distinct window starts (randint repeated 416 of 4096 on the pytext valid
    split), an error above their count; training batches keep drawing with replacement."""
    from train.tasks import make_task

    task = make_task(load_recipe("transformer-lm-pytext", ["task_args.seq_len=32"]))
    count = len(task.valid_ids) - 32 + 1
    held = task.held_out_batch(4096, torch.Generator().manual_seed(0))["input_ids"]
    starts = torch.randperm(count, generator=torch.Generator().manual_seed(0))[:4096]  # distinct by construction
    assert torch.equal(held, task.valid_ids[starts[:, None] + torch.arange(32)])
    sample = task.train_sample(2000, torch.Generator().manual_seed(0))["input_ids"]
    assert sample.shape == (2000, 32)
    with pytest.raises(ValueError, match=rf"the split holds {count} examples, fewer than the {count + 1} distinct"):
        task.held_out_batch(count + 1, torch.Generator())


@pytest.mark.parametrize("override, message", [
    ("data.dt=0", r"data: train_steps and test_steps must be >= 1, transient and seed >= 0 and dt > 0"),
    ("data.seed=abc", r"data.seed must be an integer, got 'abc'"),
    ("data.train_steps=2.5", r"data.train_steps must be an integer"),
])
def test_dsr_data_settings_are_named(override, message):
    from train.tasks import make_task

    with pytest.raises(ValueError, match=message):
        make_task(load_recipe("alrnn-lorenz63", SMALL_DSR + [override]))
    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR)
    del recipe["data"]["system"]
    with pytest.raises(KeyError, match="data.system is missing"):
        make_task(recipe)


@pytest.mark.parametrize("recipe, override, message", [
    ("hopfield-tabular-wine", "data.test_fraction=0", r"data.test_fraction must leave at least one example of each of the 3"),
    ("hopfield-tabular-wine", "data.test_fraction=0.99", r"data.test_fraction must leave"),
    ("hopfield-mil-digits", "data.test_bags=0", r"data.train_bags and data.test_bags must be >= 1"),
    ("hopfield-mil-digits", "data.target=10", r"data.target a digit 0-9"),
    ("hopfield-mil-digits", "data.mean_bag_length=2000", r"a bag of \d+ instances needs more than the \d+ images"),
])
def test_dataset_size_settings_are_named(recipe, override, message):
    from train.tasks import make_task

    with pytest.raises(ValueError, match=message):
        make_task(load_recipe(recipe, [override]))


def test_seeded_block_repeats_its_draws_and_restores_the_callers_streams():
    """estimators.seeding.seeded: the report, PV-RNN's evaluation, the InfoNCE critic and the image augmentation
    draw from it; the caller's torch and Python streams continue as if the block had not run."""
    import random

    from estimators.seeding import seeded

    torch.manual_seed(5)
    random.seed(5)
    undisturbed = (torch.rand(3), random.random())
    torch.manual_seed(5)
    random.seed(5)
    with seeded(1):
        inside = (torch.rand(2), random.random())
    assert torch.equal(torch.rand(3), undisturbed[0]) and random.random() == undisturbed[1]
    with seeded(1, "cpu"):
        assert torch.equal(torch.rand(2), inside[0]) and random.random() == inside[1]
    torch.manual_seed(1)
    random.seed(1)
    assert torch.equal(torch.rand(2), inside[0]) and random.random() == inside[1]


TINY_IB = ["train.steps=6", "train.batch_size=32", "train.eval_every=0", "train.ckpt_every=0", "train.log_every=1",
           "task_args.information_plane=false"]


def test_the_logged_learning_rate_is_the_rate_the_steps_update_used(tmp_path):
    """The lr column of a step's row (step k = after k updates) is the rate update k used: lr_factor(k - 1) * lr,
    read before the scheduler steps (an exponential schedule changes it every step)."""
    recipe = load_recipe("ib-tanh-12bit", TINY_IB + ["schedule={name: exponential, final_ratio: 0.01}"])
    fit(recipe, tmp_path / "run")
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["lr"] for r in rows if r["split"] == "train"}
    assert list(logged) == [1, 2, 3, 4, 5, 6]
    factor = lr_factor(recipe["schedule"], 6)
    for step, lr in logged.items():
        assert lr == pytest.approx(factor(step - 1) * 0.05, rel=1e-12), step
    assert len(set(logged.values())) == 6


def test_keep_checkpoints_keeps_exactly_the_newest_ones(tmp_path):
    """train.keep_checkpoints = 2 with a checkpoint every step of 6: exactly steps 5 and 6 remain."""
    fit(load_recipe("ib-tanh-12bit", TINY_IB + ["train.ckpt_every=1", "train.keep_checkpoints=2"]), tmp_path / "run")
    left = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert left == ["step_00000005", "step_00000006"]


def test_each_step_seeds_its_own_noise(tmp_path, monkeypatch):
    """The global RNGs a step's forward draws from (torch's: dropout; Python's ``random``) are seeded from (seed,
    step, rank): step k draws what _seed_step(seed, k, 0) gives, and no two steps draw the same."""
    import random

    from train.loop import _seed_step
    from train.tasks.classification import ClassificationTask

    draws, python_draws, original = [], [], ClassificationTask.loss

    def drawing(self, model, batch):
        draws.append(torch.rand(4))
        python_draws.append(random.random())
        return original(self, model, batch)

    monkeypatch.setattr(ClassificationTask, "loss", drawing)
    fit(load_recipe("ib-tanh-12bit", TINY_IB + ["train.seed=3"]), tmp_path / "run")
    assert len(draws) == 6
    for step, draw in enumerate(draws):
        _seed_step(3, step, 0)
        assert torch.equal(draw, torch.rand(4)) and python_draws[step] == random.random(), step
    assert len({tuple(d.tolist()) for d in draws}) == 6 and len(set(python_draws)) == 6


def test_the_report_draws_the_selected_model(tmp_path, monkeypatch):
    """With train.select the task's report gets the selected model (best.safetensors), not the final one."""
    from train.tasks.classification import ClassificationTask

    seen = {}
    monkeypatch.setattr(ClassificationTask, "report",
                        lambda self, model, out: seen.update({k: v.clone() for k, v in model.state_dict().items()}))
    out = tmp_path / "run"
    fit(load_recipe("ib-tanh-12bit", TINY_IB + ["train.eval_every=2", "train.select=max:test_loss",
                                                 "optim.lr=0.5"]), out)
    assert json.loads((out / "best.json").read_text())["step"] < 6  # the worst model is an early one
    best, final = load_checkpoint(out / "best.safetensors"), load_checkpoint(out / "model.safetensors")
    assert seen.keys() == best.state_dict().keys()
    for k, v in best.state_dict().items():
        assert torch.equal(seen[k], v), k
    assert not all(torch.equal(seen[k], v) for k, v in final.state_dict().items())


def test_classification_test_loss_is_the_cross_entropy_on_the_test_split():
    """evaluate()'s test_loss is the mean cross-entropy of the model's logits on the test split."""
    import torch.nn.functional as F

    from train.tasks import make_task

    task = make_task(load_recipe("ib-tanh-12bit", ["task_args.information_plane=false"]))
    torch.manual_seed(0)
    model = zoo.create_model("ib_mlp_tanh").eval()
    with torch.no_grad():
        direct = float(F.cross_entropy(model(task.data["x_test"]).float(), task.data["y_test"]))
        on_train = float(F.cross_entropy(model(task.data["x_train"]).float(), task.data["y_train"]))
    assert task.evaluate(model)["test_loss"] == pytest.approx(direct, rel=1e-6)
    assert direct != pytest.approx(on_train, rel=1e-6)


def test_cosine_with_a_floor_after_warmup_is_torchs_cosine_annealing():
    """After w warm-up steps at (s + 1) / w of the rate, cosine is torch's CosineAnnealingLR with eta_min =
    min_ratio * lr over T = steps - w: min + (1 - min)(1 + cos(pi t / T)) / 2, 1 at t = 0 and min_ratio at step
    `steps`; the floor scales the cosine, it is not added to a full one. Past `steps` it stays at the floor."""
    import math

    total, warmup, floor, lr = 40, 8, 0.1, 0.3
    factor = lr_factor({"name": "cosine", "warmup": warmup, "min_ratio": floor}, total)
    assert [factor(s) for s in range(warmup)] == pytest.approx([(s + 1) / warmup for s in range(warmup)], rel=1e-12)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=floor * lr)
    for t in range(total - warmup + 1):
        closed = floor + (1 - floor) * (1 + math.cos(math.pi * t / (total - warmup))) / 2
        assert factor(warmup + t) == pytest.approx(closed, rel=1e-12), t
        assert factor(warmup + t) * lr == pytest.approx(annealing.get_last_lr()[0], rel=1e-9), t
        optimizer.step()
        annealing.step()
    assert factor(total) == pytest.approx(floor) and factor(total + 7) == pytest.approx(floor)


def test_a_warmup_as_long_as_the_run_reaches_the_full_rate_without_a_warning():
    """warmup == steps: the last update runs at optim.lr, so there is nothing to warn about, and the factor at step
    `steps` (the scheduler's step after the last update, an empty decay) is 1, not a division by zero."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        factor = lr_factor({"name": "cosine", "warmup": 5}, 5)
    assert [factor(s) for s in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0], rel=1e-12)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    from train.schedules import build_scheduler

    scheduler = build_scheduler(optimizer, {"name": "exponential", "warmup": 3, "final_ratio": 0.5}, 3)
    rates = []
    for _ in range(3):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5 / 3, 1.0 / 3, 0.5], rel=1e-12) and scheduler.get_last_lr()[0] == 0.5


def test_the_ends_of_the_setting_intervals_are_accepted_and_what_lies_outside_is_named():
    """README: min_ratio in [0, 1], final_ratio in (0, 1], momentum and dampening in [0, 1], lr, eps and
    weight_decay >= 0; the included ends work (a floor or final ratio of 1 is a constant rate), a value outside,
    an infinite one, a bool (YAML's yes) or a None is an error naming the key, not torch's comparison failure."""
    from train.recipe import check_number

    assert [lr_factor({"name": "cosine", "min_ratio": 1.0}, 10)(s) for s in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert lr_factor({"name": "exponential", "final_ratio": 1}, 10)(7) == 1.0
    for cfg, error in (({"name": "cosine", "min_ratio": -0.1}, r"schedule.min_ratio must be a number in \[0, 1\]"),
                       ({"name": "cosine", "min_ratio": 1.5}, r"schedule.min_ratio must be a number in \[0, 1\]"),
                       ({"name": "exponential", "final_ratio": 1.5}, r"schedule.final_ratio must be a number in "
                                                                       r"\[1e-12, 1\], got 1.5"),
                       ({"name": "cosine", "warmup": True}, r"schedule.warmup must be an integer >= 0, got True")):
        with pytest.raises(ValueError, match=error):
            lr_factor(cfg, 100)
    params = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer(params, {"name": "sgd", "lr": 0.1, "momentum": 1.0, "dampening": 1})
    assert sgd.param_groups[0]["momentum"] == 1.0 and sgd.param_groups[0]["dampening"] == 1
    for cfg, error in (({"name": "sgd", "lr": 0.1, "dampening": 1.5}, r"optim.dampening must be a number in \[0, 1\]"),
                       ({"name": "adamw", "lr": 0.1, "weight_decay": -0.1}, r"optim.weight_decay must be a number in"),
                       ({"name": "adam", "lr": 0.1, "eps": -1e-8}, r"optim.eps must be a number in \[0, "),
                       ({"name": "adam", "lr": True}, r"optim.lr must be a number in \[0, .*got True"),
                       ({"name": "adam", "lr": None}, r"optim.lr must be a number in \[0, .*got None"),
                       ({"name": "adam", "lr": 0.1, "betas": [0.9, 0.99, 0.5]}, r"optim.betas must be a pair"),
                       ({"name": "adam", "lr": 0.1, "betas": [0.9, 1.0]}, r"optim.betas must each lie in \[0, 1\)"),
                       ({"name": "adamw", "lr": 0.1, "betas": [1, 0.99]}, r"optim.betas must each lie in \[0, 1\)")):
        with pytest.raises(ValueError, match=error):
            build_optimizer(params, cfg)
    for value in (float("inf"), float("nan")):  # unbounded above: finiteness is its own check
        with pytest.raises(ValueError, match=r"train.clip must be a finite number >= 0"):
            check_number("train", "clip", value)
    assert check_number("train", "threads", None, low=1, integer=True, optional=True) is None


def test_a_schedule_or_optimizer_given_with_a_name_replaces_the_section_and_recipes_share_no_state():
    """`schedule={name: ...}` starts that schedule with its own settings (facet-emt's cosine warm-up of 50 does not
    carry over into an exponential one), a mapping without a name sets those keys only; and a loaded recipe's
    sections are its own: changing one (a section the file leaves to the defaults too) changes no later load."""
    assert load_recipe("facet-emt", ["schedule={name: exponential, final_ratio: 0.1}"])["schedule"] == {
        "name": "exponential", "final_ratio": 0.1}
    assert load_recipe("facet-emt", ["schedule={warmup: 3}"])["schedule"] == {"name": "cosine", "warmup": 3}
    first = load_recipe("ib-tanh-12bit")  # no model_args, probe or schedule section in the file
    expected = {key: json.loads(json.dumps(first[key])) for key in ("schedule", "probe", "model_args", "train")}
    first["schedule"]["warmup"] = 99
    first["probe"]["every"] = 3
    first["model_args"]["sizes"] = [1]
    first["train"]["steps"] = 1
    second = load_recipe("ib-tanh-12bit")
    assert {key: second[key] for key in expected} == expected and second["schedule"] == {"name": "constant",
                                                                                           "warmup": 0}


def test_set_values_that_spell_numbers_become_floats_and_others_stay_strings():
    """YAML 1.1 reads -.5e-3 and .5e3 (no digit before the dot) as strings: they are numbers too; a string that
    only starts like a number (1e-3x, 2abc) stays a string, and a --set that is not YAML still names its key."""
    from train.recipe import parse_value

    assert parse_value("-.5e-3") == -0.0005 and parse_value(".5e3") == 500.0 and parse_value("+2E2") == 200.0
    assert parse_value("[-1e-3, x1e2]") == [-0.001, "x1e2"]
    assert parse_value("1e-3x") == "1e-3x" and parse_value("2abc") == "2abc" and parse_value("e5") == "e5"
    assert overridden_keys(["data.name=[a,", "train.steps=3"]) == {"data.name", "train.steps"}


def test_recipe_files_that_are_missing_empty_or_incomplete_are_named_and_their_numbers_are_read(tmp_path):
    """A recipe path that does not exist is named as a file (not looked up among the registered names); an empty
    file or one without name, model or task names the missing keys; an unknown top-level key is refused with the
    valid ones; baselines must be a list of model names, strings. A user's file may write 5e-3 (a string to YAML
    1.1): it is the number, as in a --set."""
    (tmp_path / "mine.yaml").write_text("name: mine\nmodel: alrnn_m20_p2\ntask: dsr\noptim: {name: adam, lr: 5e-3}\n")
    recipe = load_recipe(str(tmp_path / "mine.yaml"))
    assert recipe["optim"]["lr"] == 0.005 and recipe["train"]["steps"] == 1000  # the default fills in
    with pytest.raises(FileNotFoundError, match=r"^no recipe file .*other\.yaml$"):
        load_recipe(str(tmp_path / "other.yaml"))
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match=r"empty.yaml lacks required keys \['name', 'model', 'task'\]"):
        load_recipe(str(tmp_path / "empty.yaml"))
    (tmp_path / "no_task.yaml").write_text("name: x\nmodel: alrnn_m20_p2\n")
    with pytest.raises(ValueError, match=r"no_task.yaml lacks required keys \['task'\]"):
        load_recipe(str(tmp_path / "no_task.yaml"))
    (tmp_path / "typo.yaml").write_text("name: x\nmodel: alrnn_m20_p2\ntask: dsr\nschedul: {name: cosine}\n")
    with pytest.raises(ValueError, match=r"unknown top-level keys \['schedul'\] \(closest: \{'schedul': "
                                         r"\['schedule'\]\}\); valid: \['baselines', 'data'"):
        load_recipe(str(tmp_path / "typo.yaml"))
    with pytest.raises(ValueError, match=r"baselines must be a list of model names, got \[1, 2\]"):
        load_recipe("hopfield-tabular-wine", ["baselines=[1, 2]"])


def test_build_optimizer_leaves_the_section_as_given_and_exponential_decays_to_one_percent_by_default():
    """build_optimizer reads the recipe's optim section without changing it (the recipe is written to the run and
    compared at --resume; a popped name would be lost); the exponential schedule's final_ratio defaults to 0.01
    (README), so half-way through the rate is 0.01 ** 0.5 = 0.1 of optim.lr and at the end 0.01."""
    section = {"name": "adam", "lr": 0.1, "betas": [0.8, 0.9]}
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], section)
    assert section == {"name": "adam", "lr": 0.1, "betas": [0.8, 0.9]}
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    factor = lr_factor({"name": "exponential"}, 100)
    assert [factor(s) for s in (0, 50, 100)] == pytest.approx([1.0, 0.1, 0.01], rel=1e-12)


def test_batch_seeds_in_the_upper_half_of_32_bits_keep_their_value():
    """seed * 1,000,003 + step between 2^31 and 2^32 (seed 3000, step 0: 3,000,009,000) seeds the batch generator
    with that value itself: it is reduced mod 2^32, not mod a smaller power of two."""
    from train.loop import _batch_generator

    assert 2**31 < 3000 * 1_000_003 < 2**32
    assert _batch_generator(3000, 0).initial_seed() == 3_000_009_000
    assert _batch_generator(4295, 0).initial_seed() == 4295 * 1_000_003 - 2**32


def test_resume_refuses_a_metrics_file_damaged_before_its_last_line(tmp_path):
    """Only a cut-short last line of metrics.jsonl is the mark of a kill (and dropped on resume); a damaged line
    before it was changed outside the run, so resuming names the file and the line instead of losing rows."""
    from train.tasks.classification import ClassificationTask

    recipe = load_recipe("hopfield-tabular-wine", ["train.steps=20", "train.ckpt_every=10", "train.eval_every=5",
                                                "train.log_every=1"])
    with killed_at_call(ClassificationTask, "loss", 15), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "run")
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert len(lines) > 3
    metrics.write_text("\n".join(lines[:1] + ['{"step": 2, "spl'] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2, is not JSON .*fix or delete that line to resume"):
        fit(recipe, tmp_path / "run", resume=True)


def test_a_best_choice_not_carried_into_this_run_is_deleted_and_only_by_the_main_rank(tmp_path):
    """best.json and best.safetensors are removed when a run cannot inherit them: a fresh run (also one that selects
    nothing, and one whose evaluations are all NaN, which never write a best of their own) and a resume from a
    checkpoint older than the choice. A choice at or before the checkpoint is kept, and a non-main rank deletes
    nothing (the main rank owns the run directory)."""
    from train.loop import _BestSelector

    model = zoo.create_model("alrnn_m20_p2")

    def chosen_at(step):
        _BestSelector("min:D_stsp", tmp_path, {"recipe": "r"}, resumed_at=0).update({"step": step, "D_stsp": 2.0},
                                                                                    model)
        assert (tmp_path / "best.json").is_file() and (tmp_path / "best.safetensors").is_file()

    def left():
        return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("best"))

    for spec in ("min:D_stsp", None):  # a fresh run, with a selection and without one
        chosen_at(15)
        fresh = _BestSelector(spec, tmp_path, {"recipe": "r"}, resumed_at=0)
        assert left() == [] and fresh.model(torch.device("cpu")) is None
    chosen_at(15)
    fresh = _BestSelector("min:D_stsp", tmp_path, {"recipe": "r"}, resumed_at=0)
    fresh.update({"step": 5, "D_stsp": float("nan")}, model)  # NaN is never best: nothing of the old run is left
    assert left() == []
    chosen_at(15)
    _BestSelector("min:D_stsp", tmp_path, {"recipe": "r"}, resumed_at=0, main=False)  # another torchrun rank
    assert left() == ["best.json", "best.safetensors"]
    kept = _BestSelector("min:D_stsp", tmp_path, {"recipe": "r"}, resumed_at=20)  # chosen before the checkpoint
    assert left() == ["best.json", "best.safetensors"] and kept.best == 2.0
    later = _BestSelector("min:D_stsp", tmp_path, {"recipe": "r"}, resumed_at=10)  # chosen after it: recomputed
    assert left() == [] and later.best is None


def test_a_checkpoint_follows_its_metrics_rows_to_disk_and_replaces_a_leftover_temp_folder(tmp_path, monkeypatch):
    """metrics.jsonl is flushed to disk (fsync) before the checkpoint is renamed into place, so a power cut never
    leaves a checkpoint newer than its metrics rows (a resume keeps the rows up to the checkpoint); a step_*.tmp
    folder left by a save killed midway is replaced, not merged into the new checkpoint."""
    import train.loop as loop

    model = zoo.create_model("alrnn_m20_p2")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    (tmp_path / "metrics.jsonl").write_text('{"step": 3, "split": "train", "loss": 1.0}\n')
    stale = tmp_path / "checkpoints" / "step_00000003.tmp"
    stale.mkdir(parents=True)
    (stale / "left_by_a_kill.bin").write_bytes(b"\0" * 10)
    flushed, original = [], loop.fsync_path

    def recording(path, folder=False):
        flushed.append((Path(path).name, (tmp_path / "checkpoints" / "step_00000003").exists()))
        original(path, folder=folder)

    monkeypatch.setattr(loop, "fsync_path", recording)
    final = loop._save_train_checkpoint(tmp_path, 3, model, optimizer, scheduler, 0, {"recipe": "r", "task": "dsr"})
    assert ("metrics.jsonl", False) in flushed  # flushed while the checkpoint was not yet in place
    assert sorted(p.name for p in final.iterdir()) == ["model.safetensors", "sha256.json", "trainer.safetensors"]
    assert not stale.exists() and load_checkpoint(final / "model.safetensors").zoo_name == "alrnn_m20_p2"
