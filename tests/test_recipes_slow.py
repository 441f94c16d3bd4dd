"""Full recipes: minutes each, run with `python -m pytest -m slow`."""
import json

import pytest

from train import fit, load_recipe


@pytest.mark.slow
def test_alrnn_roessler_reconstructs_the_attractor_with_two_subregions(tmp_path):
    fit(load_recipe("alrnn-roessler"), tmp_path / "run")
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    assert best["D_stsp"] < 2.0 and best["D_H"] < 0.5
    assert best["subregions"] == 2  # spiral + reinjection: the minimal PWL representation (Brenner et al. 2024)


@pytest.mark.slow
def test_shipped_lorenz_checkpoint_reproduces_its_reported_metrics():
    import zoo
    from train.tasks import make_task
    from weights import checkpoints_for

    entry = checkpoints_for("alrnn_m20_p2")[0]
    model = zoo.create_model("alrnn_m20_p2", pretrained=True).eval()
    metrics = make_task(load_recipe(entry["recipe"])).evaluate(model)
    for key in ("D_stsp", "D_H", "PE_20"):
        assert metrics[key] == pytest.approx(entry["ours"][key], rel=1e-3), key
    assert metrics["subregions"] == entry["ours"]["subregions"]
