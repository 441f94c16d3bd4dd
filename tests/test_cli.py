import json

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
    main(["eval", str(path), "--recipe", "alrnn-lorenz63", *small])
    metrics = json.loads(capsys.readouterr().out)
    assert set(metrics) == {"D_stsp", "D_H", "PE_20", "subregions", "lambda_max"}
    main(["estimate", str(path), "--recipe", "alrnn-lorenz63", *small, "--probe", "cell.W=condition_number",
          "--batch", "8"])
    point, name, value = capsys.readouterr().out.split()
    from estimators import matrix_condition_number

    assert (point, name) == ("cell.W", "condition_number_matrix")
    assert float(value) == pytest.approx(matrix_condition_number(m.cell.W).item(), rel=1e-5)
    main(["estimate", str(path), "--recipe", "alrnn-lorenz63", *small, "--probe", "cell.W", "--estimator",
          "condition_number", "--batch", "8"])
    assert capsys.readouterr().out.split() == [point, name, value]
    with pytest.raises(SystemExit):
        main(["estimate", str(path), "--recipe", "alrnn-lorenz63", *small, "--probe", "cell.W"])
    assert "names no estimator" in capsys.readouterr().err


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


def test_user_mistakes_are_clean_errors(tmp_path, capsys):
    src = save_checkpoint(zoo.create_model("alrnn_m20_p2"), tmp_path / "m.safetensors")
    assert "would overwrite it" in _error(capsys, ["convert", str(src), "--model", "alrnn_m20_p2"])
    (tmp_path / "cut.safetensors").write_bytes(src.read_bytes()[:100])
    assert "not a readable safetensors file" in _error(
        capsys, ["convert", str(tmp_path / "cut.safetensors"), "--model", "alrnn_m20_p2", "--out", str(tmp_path / "o.safetensors")])
    for setting, message in (("train.log_every=0", "train.log_every must be an integer >= 1"),
                             ("train.steps=abc", "train.steps must be an integer >= 1, got 'abc'"),
                             ("train.device=gpu", "train.device must be auto, cpu, cuda")):
        assert message in _error(capsys, ["train", "alrnn-lorenz63", "--set", setting, "--out", str(tmp_path / "r")])
    err = _error(capsys, ["info", "alrnn_m2O_p2"])
    assert not err.split("error: ", 1)[1].startswith(("'", '"'))  # a KeyError's message without repr quotes
