import argparse
import json
import os
import re
import signal

import pytest
import torch

import zoo
from train.cli import main
from weights import load_checkpoint, save_checkpoint


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert err.value.code == 2
    return capsys.readouterr().err


def test_list_and_info(capsys):
    main(["list", "alrnn*"])
    assert capsys.readouterr().out.split() == ["alrnn_m20_p1", "alrnn_m20_p2"]
    main(["info", "alrnn_m20_p1"])
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 491 and info["config"]["P"] == 1


def test_unknown_model_is_a_clean_error(capsys):
    assert "did you mean: alrnn_m20_p2" in _error(capsys, ["info", "alrnn_m2O_p2"]).lower()


def test_convert_original_state_dict(tmp_path, capsys):
    src = zoo.create_model("alrnn_m20_p2")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "original.pth")
    main(["convert", str(tmp_path / "original.pth"), "--model", "alrnn_m20_p2", "--out", str(tmp_path / "c.safetensors")])
    converted = load_checkpoint(tmp_path / "c.safetensors")
    for (k, a), b in zip(src.state_dict().items(), converted.state_dict().values()):
        assert torch.equal(a, b), k


def test_eval_and_estimate_on_a_checkpoint(tmp_path, capsys):
    m = zoo.create_model("alrnn_m20_p2")
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    small = ["--set", "data.train_steps=2000", "--set", "data.test_steps=1500", "--set", "task_args.seq_len=30"]
    main(["eval", str(path), "--recipe", "alrnn-lorenz63", *small, "--device", "cpu"])
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"D_stsp", "D_H", "PE_20", "subregions", "lambda_max"}
    assert "--device 'gpu' is not a device; use auto, cpu, cuda" in _error(capsys, ["eval", str(path), "--device", "gpu"])
    if not torch.cuda.is_available():
        assert "CUDA device(s) are visible; use --device cpu" in _error(capsys, ["eval", str(path), "--device", "cuda"])
    main(["estimate", str(path), "--recipe", "alrnn-lorenz63", *small, "--probe", "cell.W=condition_number",
          "--batch", "8"])
    point, name, value, unit = capsys.readouterr().out.split()
    from estimators import matrix_condition_number

    assert (point, name, unit) == ("cell.W", "condition_number_matrix", "ratio")
    assert float(value) == pytest.approx(matrix_condition_number(m.cell.W).item(), rel=1e-5)
    main(["estimate", str(path), "--recipe", "alrnn-lorenz63", *small, "--probe", "cell.W", "--estimator",
          "condition_number", "--batch", "8"])
    assert capsys.readouterr().out.split() == [point, name, value, unit]
    with pytest.raises(SystemExit):
        main(["estimate", str(path), "--recipe", "alrnn-lorenz63", *small, "--probe", "cell.W"])
    assert "names no estimator" in capsys.readouterr().err
    # a published checkpoint by its name (`zoo info alrnn_m20_p2` lists it), with its own recipe
    main(["estimate", "alrnn_m20_p2_lorenz63", *small, "--probe", "cell.W=condition_number", "--batch", "8"])
    shipped = zoo.create_model("alrnn_m20_p2", pretrained="alrnn_m20_p2_lorenz63")
    assert float(capsys.readouterr().out.split()[2]) == pytest.approx(
        matrix_condition_number(shipped.cell.W).item(), rel=1e-5)


def test_the_command_line_starts_without_the_heavy_imports():
    """`zoo` imports torch, transformers and the zoo inside main's error handling, so a Ctrl-C while they load is
    one line (exit 130), not an import traceback: importing train.cli (the console entry) loads none of them."""
    import subprocess
    import sys

    probe = "import sys, train.cli; print(sorted({'torch', 'transformers', 'zoo'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_model_that_does_not_fit_the_recipes_task_is_named(tmp_path, capsys):
    """A file from save_checkpoint or zoo convert records no task to check --recipe against: a model that the
    task cannot use is a one-line error naming both (it was an AttributeError traceback), in eval and estimate; so
    is one that the task's batches reach but do not fit (an AL-RNN on wine's 13 features: the model's shape error,
    which named neither the recipe nor the task)."""
    for name, recipe in (("ib_mlp_tanh", "alrnn-lorenz63"), ("alrnn_m20_p2", "pvrnn-pfsm"),
                         ("alrnn_m20_p2", "hopfield-tabular-wine")):
        path = save_checkpoint(zoo.create_model(name), tmp_path / f"{name}.safetensors")
        for command in (["eval"], ["estimate", "--probe", "*=effective_rank", "--batch", "8"]):
            err = _error(capsys, [command[0], str(path), "--recipe", recipe, *command[1:]])
            assert f"recipe {recipe!r} (task " in err and f"which holds {name}: " in err and "Traceback" not in err
            assert "pass --recipe of its own task" in err


def test_eval_uses_the_runs_own_recipe(tmp_path, capsys):
    """A run directory (or a step checkpoint in it) is evaluated with the run's resolved recipe.yaml, so a
    run trained on its own data split is scored on that split, not on the recipe's defaults."""
    from train import fit, load_recipe

    run = tmp_path / "run"
    fit(load_recipe("ib-tanh-12bit", ["train.steps=20", "train.ckpt_every=10", "data.train_fraction=0.3",
                                      "data.seed=4"]), run)
    summary = json.loads((run / "summary.json").read_text())
    for target in (run, run / "model.safetensors"):
        main(["eval", str(target)])
        assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
    main(["eval", str(run / "checkpoints" / "step_00000010")])  # step checkpoints record their recipe too
    assert "test_acc" in json.loads(capsys.readouterr().out)
    main(["eval", str(run / "checkpoints" / "step_00000020")])
    newest = json.loads(capsys.readouterr().out)
    # the checkpoints/ folder, and a run without a final model (interrupted), evaluate the newest step
    main(["eval", str(run / "checkpoints")])
    captured = capsys.readouterr()
    assert json.loads(captured.out) == newest and "step_00000020" in captured.err
    (run / "model.safetensors").rename(run / "final.safetensors")
    main(["eval", str(run)])
    assert json.loads(capsys.readouterr().out) == newest
    assert "no checkpoints/step_*" in _error(capsys, ["eval", str(tmp_path)])
    # a step checkpoint changed since it was written (its sha256.json) is named, also when picked as the newest
    step = run / "checkpoints" / "step_00000020" / "model.safetensors"
    intact = step.read_bytes()
    step.write_bytes(intact[:-8] + bytes(b ^ 0xFF for b in intact[-8:]))
    for target in (step.parent, run):
        err = _error(capsys, ["eval", str(target)])
        assert "step_00000020/model.safetensors cannot be evaluated: model.safetensors changed since it was written" in err
    step.write_bytes(intact)
    # a recipe of another task is refused by name, from the checkpoint's metadata or (a checkpoint that does not
    # record its task) from the run's recipe.yaml, or outside a run from the registered recipe it names
    untold = save_checkpoint(load_checkpoint(run / "final.safetensors"), run / "untold.safetensors",
                             extra_metadata={"recipe": "ib-tanh-12bit"})
    (tmp_path / "loose").mkdir()
    loose = tmp_path / "loose" / "untold.safetensors"
    loose.write_bytes(untold.read_bytes())
    for target in (run / "checkpoints" / "step_00000010", untold, loose):
        err = _error(capsys, ["eval", str(target), "--recipe", "alrnn-lorenz63"])
        assert "trained for the task 'classification' (recipe 'ib-tanh-12bit')" in err and "'dsr'" in err
    # settings that evaluation does not read are refused, not ignored
    for setting in ("train.steps=5", "model_args.sizes=[12,4,2]", "optim.lr=1"):
        for command in ("eval", "estimate"):
            extra = ["--probe", "t.0=effective_rank"] if command == "estimate" else []
            err = _error(capsys, [command, str(run), "--set", setting, *extra])
            assert f"--set {setting} has no effect on zoo " in err and "data.*" in err


def test_user_mistakes_are_clean_errors(tmp_path, capsys):
    src = save_checkpoint(zoo.create_model("alrnn_m20_p2"), tmp_path / "m.safetensors")
    assert "would overwrite it" in _error(capsys, ["convert", str(src), "--model", "alrnn_m20_p2"])
    # a misspelt model is named before any advice about the output file
    assert "unknown model 'alrnn_m20_pp'" in _error(capsys, ["convert", str(src), "--model", "alrnn_m20_pp"])
    (tmp_path / "cut.safetensors").write_bytes(src.read_bytes()[:100])
    assert "is a truncated safetensors file" in _error(
        capsys, ["convert", str(tmp_path / "cut.safetensors"), "--model", "alrnn_m20_p2", "--out", str(tmp_path / "o.safetensors")])
    for setting, message in (("train.log_every=0", "train.log_every must be an integer >= 1"),
                             ("train.steps=abc", "train.steps must be an integer >= 1, got 'abc'"),
                             ("train.device=gpu", "train.device must be auto, cpu, cuda"),
                             ("train.device=mps", "train.device must be auto, cpu, cuda or cuda:N, got 'mps'"),
                             ("train.select=foo", "train.select must look like 'min:METRIC'"),
                             ("train.select=max:", "train.select must look like 'min:METRIC'"),
                             ("task_args.seq_len=0", "task_args.seq_len must be an integer >= 1, got 0")):
        assert message in _error(capsys, ["train", "alrnn-lorenz63", "--set", setting, "--out", str(tmp_path / "r")])
        assert not (tmp_path / "r").exists()  # refused before anything is written
    for setting, message in (("task_args.seq_len=abc", "task_args.seq_len must be an integer, got 'abc'"),
                             ("task_args.seq_len=2.5", "task_args.seq_len must be an integer, got 2.5"),
                             ("task_args.pe_steps=-1", "task_args.pe_steps must be an integer >= 1, got -1"),
                             ("data.noise=.nan", "data.noise must be a finite number, got nan")):
        assert message in _error(capsys, ["eval", str(src), "--recipe", "alrnn-lorenz63", "--set", setting,
                                          "--set", "data.train_steps=2000", "--set", "data.test_steps=1500"])
    err = _error(capsys, ["info", "alrnn_m2O_p2"])
    assert not err.split("error: ", 1)[1].startswith(("'", '"'))  # a KeyError's message without repr quotes


def test_estimate_measures_a_held_out_batch_and_binds_a_target(tmp_path, capsys):
    """By default the batch comes from the task's held-out split; --target binds a batch tensor as Y of the
    two-variable estimators (KSG here, equal to computing it on the layer's output directly)."""
    from estimators import ksg_mutual_information
    from train import load_recipe
    from train.tasks import make_task

    torch.manual_seed(0)
    m = zoo.create_model("ib_mlp_tanh")
    path = save_checkpoint(m, tmp_path / "ib.safetensors")
    task = make_task(load_recipe("ib-tanh-12bit"))
    batch = task.held_out_batch(64, torch.Generator().manual_seed(0))
    test_rows = {tuple(r) for r in task.data["x_test"].tolist()}
    assert all(tuple(r) in test_rows for r in batch["x"].tolist())
    seen = {}
    m.t[2].register_forward_hook(lambda mod, inp, out: seen.setdefault("t.2", out))
    m(batch["x"])
    expected = ksg_mutual_information(seen["t.2"], batch["y"]).item()

    main(["estimate", str(path), "--recipe", "ib-tanh-12bit", "--probe", "t.2=ksg_mi,knn_entropy", "--target", "y"])
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [r[:2] for r in rows] == [["t.2", "ksg1_mi"], ["t.2", "knn_entropy"]]
    assert float(rows[0][2]) == pytest.approx(expected, rel=1e-5) and rows[0][3] == "nats"  # the row's unit

    assert "two-variable" in _error(capsys, ["estimate", str(path), "--recipe", "ib-tanh-12bit", "--probe", "t.2=ksg_mi"])
    assert "they hold ['x', 'y']" in _error(capsys, ["estimate", str(path), "--recipe", "ib-tanh-12bit",
                                                     "--probe", "t.2=ksg_mi", "--target", "labels"])
    err = _error(capsys, ["estimate", str(path), "--recipe", "ib-tanh-12bit", "--probe", "t.2=knn_entropy",
                          "--target", "y"])  # not silently ignored
    assert "--target y binds the Y of two-variable estimators (ksg_mi, binned_mi, ...), but none of knn_entropy" in err


def test_estimate_on_a_task_without_held_out_data_says_to_use_the_training_split(tmp_path, capsys):
    path = save_checkpoint(zoo.create_model("pvrnn_pfsm", n_sequences=4, seq_len=40), tmp_path / "pv.safetensors")
    # the task sizes its data from the checkpoint's own config (4 sequences of 40 steps), not the recipe's
    small = ["--recipe", "pvrnn-pfsm", "--probe", "levels.0.d=effective_rank", "--batch", "4"]
    assert "--split train" in _error(capsys, ["estimate", str(path), *small])
    main(["estimate", str(path), *small, "--split", "train"])
    point, name, value, _ = capsys.readouterr().out.split()
    assert (point, name) == ("levels.0.d", "effective_rank") and float(value) > 0


def test_bad_cli_arguments_are_clean_errors(tmp_path, capsys):
    path = save_checkpoint(zoo.create_model("alrnn_m20_p2"), tmp_path / "m.safetensors")
    for flag in ("--batch", "--samples"):
        assert f"{flag} must be >= 1" in _error(capsys, ["estimate", str(path), "--recipe", "alrnn-lorenz63",
                                                         "--probe", "z=condition_number", flag, "0"])
    assert "not a file" in _error(capsys, ["convert", str(tmp_path), "--model", "alrnn_m20_p2"])
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    assert "zoo train: error:" in _error(capsys, ["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")])


@pytest.fixture
def pvrnn_run(tmp_path):
    """A 2-step PV-RNN run of 6 sequences (a stochastic model: its loss and error regression sample noise)."""
    from train import fit, load_recipe

    run = tmp_path / "pv"
    fit(load_recipe("pvrnn-pfsm", ["model_args.n_sequences=6", "model_args.seq_len=40", "train.batch_size=6",
                                   "data.period=10", "task_args.er_streams=2", "task_args.er_length=20",
                                   "task_args.er_window=5", "task_args.er_iterations=2", "task_args.gen_steps=40",
                                   "task_args.lyapunov_steps=20", "train.steps=2", "probe=null"]), run)
    return run


def test_estimate_caps_the_batch_at_what_the_task_draws(pvrnn_run, capsys):
    main(["estimate", str(pvrnn_run), "--probe", "levels.*.d=effective_rank", "--split", "train"])
    captured = capsys.readouterr()
    assert "at most 6" in captured.err and "--batch 64" in captured.err and "train.batch_size" not in captured.err
    main(["estimate", str(pvrnn_run), "--probe", "levels.*.d=effective_rank", "--split", "train", "--batch", "6"])
    assert [r.split("\t")[0] for r in captured.out.splitlines()] == ["levels.0.d", "levels.1.d"]
    assert capsys.readouterr().out == captured.out


def test_eval_of_a_stochastic_model_repeats_the_runs_final_evaluation(pvrnn_run, capsys):
    """PV-RNN's evaluation (error regression, generation) draws a fixed noise stream, so zoo eval gives the
    numbers that the training run wrote."""
    main(["eval", str(pvrnn_run)])
    assert json.loads(capsys.readouterr().out) == {k: v for k, v in json.loads(
        (pvrnn_run / "summary.json").read_text()).items() if k not in ("step", "split")}


def test_eval_and_estimate_are_reproducible_for_a_stochastic_model(pvrnn_run, capsys):
    for argv in (["eval", str(pvrnn_run)],
                 ["estimate", str(pvrnn_run), "--probe", "levels.*.d=effective_rank", "--split", "train",
                  "--batch", "6"]):
        main(argv)
        first = capsys.readouterr().out
        torch.rand(3)  # whatever ran before does not matter
        main(argv)
        assert capsys.readouterr().out == first


def test_ctrl_c_during_train_names_the_checkpoint_to_resume_from(tmp_path, capsys, monkeypatch):
    import train.loop

    def interrupted(recipe, out, resume=False):
        if recipe["train"]["ckpt_every"]:
            (out / "checkpoints" / "step_00000010").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(train.loop, "fit", interrupted)
    monkeypatch.chdir(tmp_path)
    newest = tmp_path / "a" / "checkpoints" / "step_00000010"  # named in full though --out was relative
    for run, every, expected in (("a", 10, f"the newest checkpoint is {newest}; rerun the same command with --resume"),
                                 ("b", 0, "no checkpoint yet (train.ckpt_every is 0")):
        with pytest.raises(SystemExit) as err:
            main(["train", "alrnn-lorenz63", "--out", run, "--set", f"train.ckpt_every={every}"])
        assert err.value.code == 130
        message = capsys.readouterr().err
        assert message.startswith("zoo train: interrupted; ") and expected in message and message.count("\n") == 1
    def terminated(recipe, out, resume=False):  # as `timeout`, SLURM or docker stop end a run
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train.loop, "fit", terminated)
    with pytest.raises(SystemExit) as err:
        main(["train", "alrnn-lorenz63", "--out", "a"])
    assert err.value.code == 143 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is undone
    assert capsys.readouterr().err.startswith(f"zoo train: terminated (SIGTERM); the newest checkpoint is {newest}")
    monkeypatch.setattr(train.loop, "fit", lambda recipe, out, resume=False: {"step": 1})
    main(["train", "alrnn-lorenz63", "--out", "c"])
    assert capsys.readouterr().out.endswith(f"run directory: {tmp_path / 'c'}\n")


def test_an_io_error_during_train_names_the_checkpoint_to_resume_from(tmp_path, capsys, monkeypatch):
    import train.loop

    def disk_full(recipe, out, resume=False):
        (out / "checkpoints" / "step_00000010").mkdir(parents=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train.loop, "fit", disk_full)
    with pytest.raises(SystemExit) as err:
        main(["train", "alrnn-lorenz63", "--out", str(tmp_path / "run")])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("zoo train: error: [Errno 28] No space left on device; the newest checkpoint is ")
    assert "step_00000010; rerun the same command with --resume to continue once the cause is fixed" in message

    def refused(recipe, out, resume=False):  # the run directory's own check: its advice stands alone
        raise FileExistsError(f"{out} already holds checkpoints (step_00000010); pass --resume to continue")

    monkeypatch.setattr(train.loop, "fit", refused)
    message = _error(capsys, ["train", "alrnn-lorenz63", "--out", str(tmp_path / "run")])
    assert message.endswith("pass --resume to continue\n") and "once the cause is fixed" not in message


def test_an_estimator_error_names_the_point_and_two_variable_advice_names_the_flag(tmp_path, capsys):
    path = save_checkpoint(zoo.create_model("alrnn_m20_p2"), tmp_path / "m.safetensors")
    small = ["--recipe", "alrnn-lorenz63", "--set", "data.train_steps=2000", "--set", "data.test_steps=1500",
             "--batch", "8"]
    err = _error(capsys, ["estimate", str(path), *small, "--probe", "cell.*=condition_number"])
    assert "error: cell.A: condition_number_matrix: condition number needs a non-empty matrix" in err
    err = _error(capsys, ["estimate", str(path), *small, "--probe", "z=ksg_mi"])
    assert "ksg_mi is a two-variable estimator: pass --target KEY (this batch holds: x)" in err


def test_estimator_arguments_and_lists_on_the_command_line(tmp_path, capsys):
    path = save_checkpoint(zoo.create_model("alrnn_m20_p2"), tmp_path / "m.safetensors")
    small = ["--recipe", "alrnn-lorenz63", "--set", "data.train_steps=2000", "--set", "data.test_steps=1500",
             "--batch", "8"]
    main(["estimate", str(path), *small, "--probe", "z=condition_number(of=covariance, feature_dim=-1),effective_rank"])
    rows = [r.split("\t") for r in capsys.readouterr().out.splitlines()]
    assert [r[:2] for r in rows] == [["z", "condition_number_covariance"], ["z", "effective_rank"]]
    main(["estimate", str(path), *small, "--probe", "z", "--estimator",
          "condition_number(of=covariance),effective_rank"])
    assert [r.split("\t") for r in capsys.readouterr().out.splitlines()] == rows
    for spec, message in (("z=condition_number(of", "cannot read 'condition_number(of'"),
                          ("z=condition_number(covariance)", "cannot read 'condition_number(covariance)'"),
                          ("z=condition_number(off=covariance)", "unexpected keyword argument 'off'")):
        assert message in _error(capsys, ["estimate", str(path), *small, "--probe", spec])
    # a setting refused when the estimator is built names the point, as an error while it runs does
    for spec, message in (("z=knn_entropy(k=0)", "--probe z: knn_entropy: k must be an integer >= 1, got 0"),
                          ("z=knn_entropy(kk=3)", "--probe z: estimator 'knn_entropy': ")):
        assert message in _error(capsys, ["estimate", str(path), *small, "--probe", spec])


def test_convert_says_what_a_file_that_is_no_checkpoint_is(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "notes.txt").write_text("some notes\n")
    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    convert = ["--model", "alrnn_m20_p2", "--out", str(tmp_path / "o.safetensors")]
    err = _error(capsys, ["convert", str(tmp_path / "notes.txt"), *convert])
    assert "is not a PyTorch checkpoint (torch.save) or safetensors file: it starts with b'some notes\\n'" in err
    torch.save({"x": argparse.Namespace()}, tmp_path / "class.pth")  # torch's message has colour codes here
    for name, culprit in (("evil.pth", f"GLOBAL {os.system.__module__}.system"),
                          ("class.pth", "GLOBAL argparse.Namespace")):
        err = _error(capsys, ["convert", str(tmp_path / name), *convert])
        # torch's first sentence, whole, without its advice to unpickle
        assert re.search(rf"is corrupt \(UnpicklingError: [^()\n]*{culprit}[^()\n]*\.\)\. Refusing to unpickle it", err)
        assert "\x1b" not in err and "weights_only` set to `False`" not in err


def test_recipe_names(capsys):
    assert "Did you mean: alrnn-lorenz63, " in _error(capsys, ["train", "alrnn-lorenz"])
    assert "`zoo recipes`" in _error(capsys, ["eval", "x.safetensors", "--recipe", "alrnn-lorenz"])
    assert ("'alrnn-lorenz63' is a recipe, not a model; its model is 'alrnn_m20_p2': run `zoo info alrnn_m20_p2`"
            in _error(capsys, ["info", "alrnn-lorenz63"]))
    err = _error(capsys, ["info", "alrnn_m2O_p2"])
    assert "See `zoo list` for all" in err and "list_models" not in err
    main(["recipes", "alrnn-*"])
    rows = [r.split("\t") for r in capsys.readouterr().out.splitlines()]
    assert [r[:2] for r in rows] == [["alrnn-lorenz63", "alrnn_m20_p2"], ["alrnn-roessler", "alrnn_m20_p1"]]
    assert rows[0][2].startswith("AL-RNN")
    from train import load_recipe  # Python users get the same closest names (model names use _, recipes -)
    with pytest.raises(FileNotFoundError, match=r"no recipe 'alrnn_lorenz63'. Did you mean: alrnn-lorenz63"):
        load_recipe("alrnn_lorenz63")


def test_warnings_are_one_line(capsys, monkeypatch):
    """A warning (an unused --set, a warm-up longer than the run) reads as the command's own line, without the
    Python source line that raised it."""
    import warnings

    import train.cli

    monkeypatch.setattr(train.cli, "_cmd_list", lambda args: warnings.warn("data.seedd is not a setting", UserWarning))
    main(["list"])
    assert capsys.readouterr().err == "zoo list: warning: data.seedd is not a setting\n"


def test_out_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "notes.yaml").write_text("a file, not a run directory")
    message = _error(capsys, ["train", "alrnn-lorenz63", "--out", str(tmp_path / "notes.yaml")])
    assert "notes.yaml is a file; give a run directory" in message


def test_a_reader_that_stops_early_is_no_error():
    """`zoo list | head -1`: the closed pipe ends the command quietly, as for other tools (`true`
    reads nothing and leaves at once, long before the command's first line)."""
    import subprocess
    import sys

    run = subprocess.run(["bash", "-o", "pipefail", "-c", f"{sys.executable} -m train.cli list | true"],
                         capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stderr) == (141, "")  # as a command killed by SIGPIPE, without a message


def test_a_broken_pipe_while_training_is_an_error(tmp_path, capsys, monkeypatch):
    """Only the listing commands end quietly on a closed pipe; a run that meets one (a log pipe gone) says so."""
    import train.loop

    def broken(recipe, out, resume=False):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(train.loop, "fit", broken)
    assert "zoo train: error: [Errno 32] Broken pipe" in _error(capsys, ["train", "alrnn-lorenz63", "--out",
                                                                         str(tmp_path / "run")])


def test_measured_batches_hold_distinct_examples(capsys, tmp_path):
    """zoo estimate measures on a held-out batch, or on training examples with --split train: a repeated example
    would be a zero-distance neighbour that pushes k-NN estimates (KSG towards H(Y)), so both are drawn without
    replacement (training batches keep theirs)."""
    from train import load_recipe
    from train.tasks import make_task

    task = make_task(load_recipe("hopfield-tabular-wine"))
    n = len(task.data["x_test"])
    batch = task.held_out_batch(n, torch.Generator().manual_seed(0))
    assert len(torch.unique(batch["x"], dim=0)) == n  # every test example once
    with pytest.raises(ValueError, match=f"the split holds {n} examples, fewer than the {n + 1} distinct ones asked "
                                         f"for \\(--batch {n} measures on all of them\\)"):
        task.held_out_batch(n + 1, torch.Generator().manual_seed(0))
    n_train = len(task.data["x_train"])
    assert len(torch.unique(task.train_sample(n_train, torch.Generator().manual_seed(0))["x"], dim=0)) == n_train
    assert len(torch.unique(task.batch(n_train, torch.Generator().manual_seed(0))["x"], dim=0)) < n_train
    path = save_checkpoint(zoo.create_model("hopfield_tabular", in_features=13, num_classes=3), tmp_path / "m.safetensors")
    err = _error(capsys, ["estimate", str(path), "--recipe", "hopfield-tabular-wine", "--probe", "*=effective_rank",
                          "--batch", str(n + 1)])
    assert f"--batch {n} measures on all of them" in err
    err = _error(capsys, ["estimate", str(path), "--recipe", "hopfield-tabular-wine", "--probe", "*=effective_rank",
                          "--split", "train", "--batch", str(n_train + 1)])
    assert f"--batch {n_train} measures on all of them" in err


def test_estimate_pairs_a_target_only_with_points_of_one_row_per_example(tmp_path, capsys):
    """Facet's probe points have a row per atom; --target energy has one per structure: with --samples at or below
    the atom count the KSG ran on the first atoms against different structures' energies and printed a number."""
    path = save_checkpoint(zoo.create_model("facet_small", channels=8, layers=1, cutoff=4.0), tmp_path / "f.safetensors")
    small = ["--recipe", "facet-emt", "--set", "data.per_element=4", "--set", "data.alloys=4", "--batch", "3"]
    err = _error(capsys, ["estimate", str(path), *small, "--probe", "probes.0.l0=ksg_mi(k=1)", "--target", "energy",
                          "--samples", "3"])
    assert re.search(r"probes.0.l0 records \d+ rows per batch of 3 examples .* so its rows are not --target energy's", err)


def test_estimate_merges_repeated_globs_labels_estimators_apart_and_names_silent_points(tmp_path, capsys):
    """A glob given twice measures both lists (the second replaced the first); two estimators of one name at a point
    are labelled by the settings that differ; a --probe whose points never fire, and an --estimator that no --probe
    uses, are errors rather than an empty or partial table."""
    path = save_checkpoint(zoo.create_model("ib_mlp_tanh"), tmp_path / "ib.safetensors")
    small = ["estimate", str(path), "--recipe", "ib-tanh-12bit"]
    main([*small, "--probe", "t.0=effective_rank", "--probe", "t.0=dse(sigma=1.0)"])
    assert [r.split("\t")[:2] for r in capsys.readouterr().out.splitlines()] == [["t.0", "effective_rank"], ["t.0", "dse"]]
    main([*small, "--probe", "t.2=ksg_mi(k=3),ksg_mi(k=5),binned_mi(value_range=[-1, 1])", "--target", "y"])
    labels = [r.split("\t")[1] for r in capsys.readouterr().out.splitlines()]
    assert labels == ["ksg1_mi(k=3)", "ksg1_mi(k=5)", "binned_mi"]
    assert "--estimator nonexistent is used by no --probe" in _error(
        capsys, [*small, "--probe", "t.0=effective_rank", "--estimator", "nonexistent"])
    # local complexity runs the model on its own inputs after the batch: those rows are not the batch's
    relu = save_checkpoint(zoo.create_model("ib_mlp_relu"), tmp_path / "relu.safetensors")
    main(["estimate", str(relu), "--recipe", "ib-tanh-12bit", "--probe", "t.0=ksg_mi", "--probe", "=local_complexity",
          "--target", "y"])
    assert [r.split("\t")[1] for r in capsys.readouterr().out.splitlines()][0] == "ksg1_mi"


def test_device_and_bracket_mistakes_are_named_before_any_checkpoint_is_read(tmp_path, capsys, monkeypatch):
    """--device cuda:N beyond the visible GPUs (here one GPU pretended: cuda:0 is its only index) and a device
    that is neither cpu nor cuda are refused by name; a --probe whose brackets close more than they open is
    unreadable, as one that leaves them open is. All before the (missing) checkpoint is looked at."""
    missing = str(tmp_path / "missing.safetensors")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "--device cuda:1: 1 CUDA device(s) are visible" in _error(capsys, ["eval", missing, "--device", "cuda:1"])
    assert "--device meta: only cpu and cuda are supported" in _error(capsys, ["eval", missing, "--device", "meta"])
    for spec in ("z=condition_number(of=covariance))", "z=condition_number(of=covariance)(x)",
                 "z=condition_number(of=[covariance)"):
        err = _error(capsys, ["estimate", missing, "--probe", spec])
        assert "cannot read" in err and "write NAME or NAME(key=value,...)" in err


def test_an_interrupted_run_names_its_newest_checkpoint_and_an_early_io_error_stands_alone(tmp_path, capsys,
                                                                                          monkeypatch):
    """With step 10 and step 20 saved, Ctrl-C names step 20 (the newest, not the first); an OSError before any
    checkpoint exists is the error itself, with no advice about resuming."""
    import train.loop

    def interrupted(recipe, out, resume=False):
        for step in (10, 20):
            (out / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(train.loop, "fit", interrupted)
    with pytest.raises(SystemExit) as err:
        main(["train", "alrnn-lorenz63", "--out", str(tmp_path / "a")])
    assert err.value.code == 130
    assert f"the newest checkpoint is {tmp_path / 'a' / 'checkpoints' / 'step_00000020'};" in capsys.readouterr().err

    def unreadable(recipe, out, resume=False):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(train.loop, "fit", unreadable)
    message = _error(capsys, ["train", "alrnn-lorenz63", "--out", str(tmp_path / "b")])
    assert message == "zoo train: error: [Errno 13] Permission denied\n"


def test_a_batch_at_the_tasks_limit_draws_no_note_and_convert_names_a_bad_setting(pvrnn_run, tmp_path, capsys):
    """--batch equal to what the task draws (PV-RNN's 6 sequences) measures on all of them without a note; a
    convert --set whose key is no identifier is refused as KEY=VALUE advice, not passed to the converter."""
    main(["estimate", str(pvrnn_run), "--probe", "levels.0.d=effective_rank", "--split", "train", "--batch", "6"])
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("levels.0.d\teffective_rank\t")
    src = save_checkpoint(zoo.create_model("alrnn_m20_p2"), tmp_path / "m.safetensors")
    for setting in ("1M=30", "M 2=30", "=30"):
        err = _error(capsys, ["convert", str(src), "--model", "alrnn_m20_p2", "--out", str(tmp_path / "o.safetensors"),
                              "--set", setting])
        assert f"--set {setting!r}: write KEY=VALUE, a config setting of alrnn_m20_p2" in err


def test_train_prints_the_selected_model_and_refuses_an_empty_out(tmp_path, capsys, monkeypatch):
    """After the run's final metrics the command prints the model that train.select chose (best.json: its step
    and metrics); an --out of only blanks is an error, not a silent run into runs/RECIPE."""
    import train.loop

    def finished(recipe, out, resume=False):
        out.mkdir(parents=True)
        (out / "best.json").write_text(json.dumps({"step": 10, "D_stsp": 1.5}))
        return {"step": 20, "D_stsp": 2.5}

    monkeypatch.setattr(train.loop, "fit", finished)
    monkeypatch.chdir(tmp_path)
    main(["train", "alrnn-lorenz63", "--out", "run", "--set", "train.select=min:D_stsp"])
    final, selected = capsys.readouterr().out.split("selected by min:D_stsp (step 10, best.safetensors):\n")
    assert json.loads(final) == {"step": 20, "D_stsp": 2.5}
    best, where = selected.rsplit("}\n", 1)
    assert json.loads(best + "}") == {"step": 10, "D_stsp": 1.5} and where == f"run directory: {tmp_path / 'run'}\n"
    monkeypatch.setattr(train.loop, "fit", lambda recipe, out, resume=False: pytest.fail("trained into " + str(out)))
    for blank in ("", "  "):
        assert "--out is empty; give a run directory" in _error(capsys, ["train", "alrnn-lorenz63", "--out", blank])
    assert not (tmp_path / "runs").exists()


def test_a_step_checkpoint_is_evaluated_with_its_runs_recipe_and_a_step_without_weights_is_passed_over(
        tmp_path, capsys, monkeypatch):
    """checkpoints/step_*/model.safetensors is evaluated with the recipe.yaml of its run, two folders up (here a
    train_fraction of 0.3 and data seed 4, so another test split than the registered recipe's); a run without a
    final model uses its newest step folder that holds a model.safetensors, not an emptied newer one. A task error
    on a checkpoint whose task was checked stays that error, not advice about a model that does not fit."""
    import yaml

    from train import load_recipe
    from train.tasks import make_task
    from train.tasks.classification import ClassificationTask

    model = zoo.create_model("ib_mlp_tanh").eval()
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000010"
    save_checkpoint(model, step / "model.safetensors", extra_metadata={"recipe": "ib-tanh-12bit"})
    recipe = load_recipe("ib-tanh-12bit", ["data.train_fraction=0.3", "data.seed=4"])
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    expected = make_task(recipe).evaluate(model)
    assert expected != make_task(load_recipe("ib-tanh-12bit")).evaluate(model)  # the two recipes tell apart
    main(["eval", str(step)])
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected, rel=1e-6)
    (run / "checkpoints" / "step_00000020").mkdir()  # its model.safetensors deleted
    main(["eval", str(run)])
    captured = capsys.readouterr()
    assert json.loads(captured.out) == pytest.approx(expected, rel=1e-6) and "step_00000010" in captured.err

    def broken(self, model):
        raise AttributeError("'Tensor' object has no attribute 'bogus'")

    monkeypatch.setattr(ClassificationTask, "evaluate", broken)
    with pytest.raises(AttributeError, match="has no attribute 'bogus'"):
        main(["eval", str(step)])


def test_device_auto_is_a_visible_gpu_else_the_cpu(monkeypatch):
    """--device auto (the default of eval and estimate) picks cuda where a GPU is visible, as zoo train does."""
    from train.cli import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _device("auto") == torch.device("cuda") and _device("cuda:0") == torch.device("cuda:0")


def test_convert_of_a_published_original_and_of_a_file_beside_an_earlier_conversion(tmp_path, capsys, monkeypatch):
    """An original that a manifest entry publishes (same git blob id; a pretend entry here) goes into the cache
    without --out, is refused with --set there (the manifest's config is the one it was trained with), and goes to
    --out when one is given, the cache untouched. Another original never replaces ORIGINAL.safetensors that it did
    not name, and weights that do not fit the model's defaults end in advice to give the settings with --set."""
    import weights.manifest

    src = zoo.create_model("alrnn_m20_p2")
    torch.save(src.state_dict(), tmp_path / "published.pth")
    entry = {"name": "alrnn_pretend", "model": "alrnn_m20_p2", "file": "alrnn_pretend.safetensors", "url": None,
             "original": {"file": "published.pth", "url": "https://example.invalid/published.pth",
                          "git_blob_sha1": weights.manifest.git_blob_sha1(tmp_path / "published.pth")}}
    monkeypatch.setattr(weights.manifest, "checkpoints_for", lambda model: [entry] if model == entry["model"] else [])
    cached = weights.manifest.cache_dir() / entry["file"]
    err = _error(capsys, ["convert", str(tmp_path / "published.pth"), "--model", "alrnn_m20_p2", "--set", "M=20"])
    assert "is the published original of 'alrnn_pretend', converted with the manifest's config; drop --set" in err
    main(["convert", str(tmp_path / "published.pth"), "--model", "alrnn_m20_p2", "--out",
          str(tmp_path / "o.safetensors")])
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == str(tmp_path / "o.safetensors") and report["manifest_entry"] == "alrnn_pretend"
    assert (tmp_path / "o.safetensors").is_file() and not cached.exists()
    main(["convert", str(tmp_path / "published.pth"), "--model", "alrnn_m20_p2"])
    assert "is the published original of 'alrnn_pretend'; installed in" in capsys.readouterr().out
    assert torch.equal(load_checkpoint(cached).cell.W, src.cell.W)
    assert not (tmp_path / "published.safetensors").exists()

    torch.save(zoo.create_model("alrnn_m20_p2", M=30).state_dict(), tmp_path / "wide.pth")
    err = _error(capsys, ["convert", str(tmp_path / "wide.pth"), "--model", "alrnn_m20_p2", "--out",
                          str(tmp_path / "w.safetensors")])
    assert "mis-shaped" in err and "give them with --set KEY=VALUE" in err
    main(["convert", str(tmp_path / "wide.pth"), "--model", "alrnn_m20_p2", "--set", "M=30"])
    capsys.readouterr()
    assert load_checkpoint(tmp_path / "wide.safetensors").config.M == 30
    err = _error(capsys, ["convert", str(tmp_path / "wide.pth"), "--model", "alrnn_m20_p2", "--set", "M=30"])
    assert "wide.safetensors exists; pass --out" in err


def test_a_task_without_held_out_data_gets_no_note_about_its_training_batch_cap(tmp_path, capsys):
    """The cap at what a task draws (PV-RNN's n_sequences) is about training batches: asking a PV-RNN for a held-out
    batch larger than that is the one error saying to use --split train, with no note about measuring fewer."""
    path = save_checkpoint(zoo.create_model("pvrnn_pfsm", n_sequences=4, seq_len=40), tmp_path / "pv.safetensors")
    err = _error(capsys, ["estimate", str(path), "--recipe", "pvrnn-pfsm", "--probe", "levels.0.d=effective_rank",
                          "--batch", "64"])
    assert err.startswith("zoo estimate: error: ") and "--split train" in err and err.count("\n") == 1
    assert "note" not in err
