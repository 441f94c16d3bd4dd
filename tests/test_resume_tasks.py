"""An interrupted run resumes exactly, for every task kind: MIL, potentials, language models, image
classification on digits and NLI, each through a shrunken copy of its shipped recipe."""
import json
import random

import pytest
import torch

from train import fit, load_recipe
from train.tasks import TASKS
from weights import load_checkpoint

from .conftest import killed_at_call, random_snli_rows, train_losses, write_mil_npz, write_snli

# 6 steps, checkpoints at 3 and 6, evaluations at 2, 4 and 6; the kill comes during step 5, after the evaluation at
# step 4, which the resumed run (from step 3) does again, and after the step-4 training row, which it writes again
STEPS = ["train.steps=6", "train.batch_size=4", "train.eval_every=2", "train.ckpt_every=3", "train.log_every=1"]
KILLED_AT_LOSS_CALL = 5
# train.select where a recipe has none: best.json, chosen before the kill (also after the checkpoint), is compared too
TINY_LM = ["model_args.num_hidden_layers=1", "model_args.hidden_size=32", "model_args.intermediate_size=64",
           "model_args.vocab_size=1000", "data.vocab_size=1000", "data.docstrings=false", "task_args.seq_len=16",
           "task_args.eval_tokens=256", "model_args.dropout=0.1", "probe.every=3", "train.select=min:valid_loss"]
TINY_MIL = ["model_args.embed_dims=[16]", "model_args.hidden_size=8", "model_args.num_heads=2", "schedule.warmup=2",
            "probe.every=3", "train.select=max:auc"]
TINY_NLI_HEAD = ["model_args.hidden_size=32", "model_args.intermediate_size=64", "model_args.num_hidden_layers=1",
                 "schedule.warmup=2"]
NLI_ENCODER = {"model_type": "distilbert", "vocab_size": 21, "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64,
               "max_position_embeddings": 64}

CASES = {
    "hopfield-mil-digits": TINY_MIL + ["data.train_bags=40", "data.test_bags=20"],
    "hopfield-mil-tiger": TINY_MIL + ["data.folds=4", "model_args.in_features=5"],  # its file: _mil_file's
    "facet-emt": ["data.per_element=4", "data.alloys=4", "model_args.channels=8", "model_args.layers=1",
                  "model_args.cutoff=4.0", "schedule.warmup=2", "probe.every=3", "task_args.stress_weight=1.0"],
    "grassmann-lm-pytext": TINY_LM + ["schedule.warmup=2"],
    "transformer-lm-pytext": TINY_LM + ["schedule.warmup=2"],
    "sigma-lm-pytext": TINY_LM + ["model_args.dropout=0.0"],  # constant rate, no warm-up, no dropout: as shipped
    # power-iteration buffers u, v, dropout, and the SGD with Nesterov momentum that mbv2-ca-digits trains with (its
    # own case would take 15 s: a MobileNetV2 evaluated on all 1,797 digits three times a run)
    "sigma-vit-digits": ["data.size=16", "model_args.img_size=16", "model_args.depth=1", "model_args.patch_size=8",
                         "model_args.drop_rate=0.1", "probe.every=3",
                         "optim={name: sgd, lr: 0.01, momentum: 0.9, nesterov: true, weight_decay: 4.0e-5}",
                         "train.select=max:test_acc"],
    "grassmann-nli-snli": TINY_NLI_HEAD,  # data and encoder written by _snli_files
}


def _mil_file(root) -> list[str]:
    """A small MIL file (24 bags of 3 instances, 5 features), as the override that points hopfield-mil-tiger at it
    (the benchmark files themselves are not part of the install)."""
    root.mkdir(parents=True)
    write_mil_npz(root / "bags.npz")
    return [f"data.path={root / 'bags.npz'}"]


def _snli_files(root) -> list[str]:
    """SNLI files and a one-layer DistilBERT config written under ``root``, as grassmann-nli-snli's overrides."""
    rng = random.Random(0)
    splits = {name: random_snli_rows(n, rng) for name, n in (("train", 40), ("dev", 12), ("test", 12))}
    return write_snli(root, splits) + ["task_args.max_len=16", f"model_args.encoder_config={json.dumps(NLI_ENCODER)}"]


@pytest.mark.parametrize("name", list(CASES))
def test_a_killed_and_resumed_run_equals_the_straight_run(tmp_path, name):
    """Killed during step 5 (after the step-3 checkpoint and the evaluation at step 4) and resumed, a run has the
    straight run's training losses bit for bit, the same final weights and buffers, and the same metrics.jsonl,
    best.json, probe.csv and summary.json: the data order, the dropout noise, the optimizer and schedule state, the
    best choice so far and the probe's rows all come back."""
    files = {"grassmann-nli-snli": _snli_files, "hopfield-mil-tiger": _mil_file}.get(name)
    overrides = STEPS + CASES[name] + (files(tmp_path / "data") if files else [])
    recipe = load_recipe(name, overrides)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    fit(recipe, straight)
    with killed_at_call(TASKS[recipe["task"]], "loss", KILLED_AT_LOSS_CALL), pytest.raises(KeyboardInterrupt):
        fit(recipe, resumed)
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["step_00000003"]
    killed = [json.loads(r) for r in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in killed if r["step"] >= 3] == [(3, "train"), (4, "train"), (4, "eval")]
    fit(recipe, resumed, resume=True)

    a, b = train_losses(straight), train_losses(resumed)
    assert list(a) == list(b) == list(range(1, 7))
    assert a == b  # bit-identical, the steps after the resume included
    evals = [json.loads(r)["step"] for r in (straight / "metrics.jsonl").read_text().splitlines() if '"eval"' in r]
    assert evals == [2, 4, 6]
    ma, mb = (load_checkpoint(run / "model.safetensors").state_dict() for run in (straight, resumed))
    assert list(ma) == list(mb)
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key
    for file in ("metrics.jsonl", "best.json", "probe.csv", "summary.json"):
        assert (straight / file).is_file() == (resumed / file).is_file(), file
        if (straight / file).is_file():
            assert (straight / file).read_text() == (resumed / file).read_text(), file
