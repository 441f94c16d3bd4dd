import json

import pytest
import torch

import zoo
from train.cli import main
from weights import load_checkpoint, save_checkpoint


def test_list_and_info(capsys):
    main(["list", "alrnn*"])
    assert capsys.readouterr().out.split() == ["alrnn_m20_p1", "alrnn_m20_p2"]
    main(["info", "alrnn_m20_p1"])
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == 491 and info["config"]["P"] == 1


def test_unknown_model_is_a_clean_error(capsys):
    with pytest.raises(SystemExit) as err:
        main(["info", "alrnn_m2O_p2"])
    assert err.value.code == 2
    assert "did you mean: alrnn_m20_p2" in capsys.readouterr().err.lower()


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
