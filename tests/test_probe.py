import math
import re

import pytest
import torch
from torch import nn

from estimators import Probe, condition_number, entropy, make_estimator, shannon_entropy
from estimators.conditioning import covariance_condition_number, matrix_condition_number
from layers import ProbePoint


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.probs = ProbePoint()
        self.hidden = ProbePoint()

    def forward(self, x):
        h = self.hidden(self.lin(x))
        return self.probs(torch.softmax(h, -1))


def test_shannon_entropy_known_values():
    assert shannon_entropy(torch.full((8,), 1 / 8), base="bits").item() == pytest.approx(3.0)
    assert shannon_entropy(torch.tensor([1.0, 0.0, 0.0])).item() == 0.0
    p = torch.tensor([0.5, 0.25, 0.25])
    assert shannon_entropy(p).item() == pytest.approx(1.5 * math.log(2))
    with pytest.raises(TypeError, match="floating"):
        shannon_entropy(torch.tensor([1, 0]))
    masked = torch.tensor([[0.5, 0.5], [0.0, 0.0]])  # an all-zero row (fully masked attention) is left out
    assert shannon_entropy(masked).item() == pytest.approx(math.log(2))
    tiny = torch.tensor([1 - 1e-12, 1e-12], dtype=torch.float64)  # float64 stays float64
    assert shannon_entropy(tiny).item() == pytest.approx(1e-12 * (1 - math.log(1e-12)), rel=1e-6)
    for bad, match in ((torch.tensor([float("nan"), 0.5]), "NaN/inf"), (torch.tensor([-0.5, 1.5]), "negative"),
                       (torch.tensor([2.0, 2.0]), "sum to 1"), (torch.tensor([]), "empty"),
                       (torch.zeros(2, 3), "all zeros")):
        with pytest.raises(ValueError, match=match):
            shannon_entropy(bad)


def test_condition_numbers_known_values():
    w = torch.diag(torch.tensor([4.0, 2.0, 0.5]))
    assert matrix_condition_number(w).item() == pytest.approx(8.0)
    conv = torch.zeros(2, 1, 2, 2)
    conv[0, 0, 0, 0], conv[1, 0, 1, 1] = 3.0, 1.0  # reshaped to 2 x 4: singular values 3 and 1
    assert matrix_condition_number(conv).item() == pytest.approx(3.0)
    x = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 1.0])
    assert covariance_condition_number(x).item() == pytest.approx(9.0, rel=0.02)
    with pytest.raises(ValueError, match="matrix"):
        matrix_condition_number(torch.ones(3))
    with pytest.raises(ValueError, match="NaN/inf"):
        matrix_condition_number(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN/inf"):
        covariance_condition_number(torch.tensor([[1.0, float("inf")], [0.0, 1.0], [2.0, 3.0]]))


def test_probe_records_only_on_schedule_and_costs_nothing_otherwise():
    torch.manual_seed(0)
    model = Tiny()
    with Probe(model, {"probs": [entropy()], "lin.weight": [condition_number()]}, every=3) as probe:
        for step in range(7):
            scheduled = step % 3 == 0
            assert bool(model.probs._forward_hooks) == scheduled  # no hook at all on unscheduled steps
            model(torch.randn(16, 4))
            probe.step()
    rows = probe.table()
    assert sorted({r["step"] for r in rows}) == [0, 3, 6]
    assert {(r["point"], r["estimator"]) for r in rows} == {("probs", "entropy"), ("lin.weight", "condition_number_matrix")}
    assert not model.probs._forward_hooks  # detached on exit


def test_probe_value_equals_direct_computation_and_respects_max_samples(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    xs = [torch.randn(10, 4) for _ in range(3)]
    with Probe(model, {"probs": [entropy(base="bits")]}, max_samples=25) as probe:
        for x in xs:
            model(x)
    with torch.no_grad():
        expected = shannon_entropy(torch.softmax(model.lin(torch.cat(xs))[:25], -1), base="bits")
    assert probe.table()[0]["value"] == pytest.approx(expected.item(), abs=1e-6)
    csv = probe.to_csv(tmp_path / "probe.csv").read_text().splitlines()
    assert csv[0] == "step,point,estimator,value,unit" and csv[1].endswith(",bits") and len(csv) == 2


def test_every_registered_estimator_states_its_unit():
    """Rows carry the unit: the base's for information quantities, a named one for the others."""
    import inspect

    from estimators import ESTIMATORS

    units = {}
    for name, factory in ESTIMATORS.items():
        target = {"target": torch.zeros(1)} if "target" in inspect.signature(factory).parameters else {}
        units[name] = factory(**target).unit
    assert units["condition_number"] == "ratio" and units["effective_rank"] == "dimensions"
    assert units["feature_count"] == "features" and units["local_complexity"] == "count"
    assert units["dse"] == "bits" and units["cs_mi"] == "nats" and ESTIMATORS["dse"](base="nats").unit == "nats"
    assert ESTIMATORS["entropy"](base=10).unit == "base-10 units"
    assert all(units.values()), units


def test_estimators_attach_by_name_as_in_a_recipe():
    torch.manual_seed(0)
    model, x = Tiny(), torch.randn(64, 4)
    rows = []
    for points in ({"probs": [entropy()], "hidden": [condition_number(of="covariance")]},
                   {"probs": ["entropy"], "hidden": [{"condition_number": {"of": "covariance"}}]}):
        with Probe(model, points) as probe:
            model(x)
        rows.append(probe.table())
    assert rows[0] == rows[1] and len(rows[0]) == 2


def test_probe_paused_block_is_not_recorded():
    model = Tiny()
    with Probe(model, {"hidden": [condition_number(of="covariance")]}) as probe:
        model(torch.randn(64, 4))
        with probe.paused():
            model(torch.randn(3, 7, 4))  # different shape: would break the step if recorded
    assert len(probe.table()) == 1


def test_probe_bad_specs_are_clear():
    model = Tiny()
    with pytest.raises(KeyError, match="matches no probe point.*hidden"):
        Probe(model, {"attn.*": [entropy()]})
    with pytest.raises(TypeError, match="lists of estimators or their names"):
        Probe(model, {"probs": [len]})
    with pytest.raises(KeyError, match="unknown estimator"):
        make_estimator("mutual_info_of_nothing")
    with pytest.raises(KeyError, match="unknown estimator 'entropi'"):
        Probe(model, {"probs": ["entropi"]})
    with pytest.raises(TypeError, match=r"estimator 'binned_mi': .*'bins'; it takes binned_mi\(target=None, n_bins"):
        make_estimator({"binned_mi": {"bins": 30}})
    assert make_estimator({"condition_number": {"of": "covariance"}}).name == "condition_number_covariance"
    for kwargs, message in ((dict(every=0), "every must be an integer >= 1, got 0"),  # a modulo by zero
                            (dict(every=1.5), "every must be an integer >= 1, got 1.5"),
                            (dict(every=True), "every must be an integer >= 1, got True"),
                            (dict(max_samples=2.5), "max_samples must be an integer >= 1 or None"),
                            (dict(step=-1), "step must be an integer >= 0")):
        with pytest.raises(ValueError, match=re.escape(f"Probe: {message}")):  # not a slicing error in the hook
            Probe(model, {"probs": [entropy()]}, **kwargs)


def test_estimator_settings_out_of_range_are_refused_when_built():
    """Each shared setting is checked when the estimator is built: a base of 1 (log 1 = 0: inf) or below 1 (negative
    entropies), an infinite kernel width or radius, a bool variant; the error names the estimator."""
    for spec, message in (({"renyi_entropy": {"base": 1}}, "renyi_entropy: base must be 2, 'bits', 'nats', 'e' or a "
                                                            "number > 1, got 1"),
                          ({"renyi_entropy": {"base": 0.5}}, "number > 1, got 0.5"),
                          ({"renyi_entropy": {"sigma": math.inf}}, "sigma must be None or a finite number > 0, got inf"),
                          ({"local_complexity": {"radius": math.inf}}, "radius must be a finite number > 0, got inf"),
                          ({"ksg_mi": {"variant": True, "target": torch.zeros(4, 1)}},
                           "ksg_mi: variant must be 1 or 2, got True")):  # was named "ksgTrue_mi"
        with pytest.raises(ValueError, match=re.escape(message)):
            make_estimator(spec)


def test_a_parameter_glob_measures_every_match_and_nested_pauses_restore_each_level():
    """"*.weight" measures both layers' weights; leaving an inner paused() block keeps the outer one paused; a step
    whose estimator failed (and the caller went on) leaves nothing for the next step; forward passes of two widths
    within one step are named, with the way out."""
    from estimators import Estimator

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.p = nn.Linear(3, 3), nn.Linear(3, 3), ProbePoint()

        def forward(self, x):
            return self.p(self.b(self.a(x)))

    model = Two()
    with Probe(model, {"*.weight": [condition_number()]}, every=1) as probe:
        model(torch.randn(2, 3))
        probe.step()
    assert {r["point"] for r in probe.table()} == {"a.weight", "b.weight"}
    with Probe(model, {"p": [Estimator("rows", lambda v: float(v.shape[0]))]}, every=1, max_samples=None) as probe:
        with probe.paused():
            with probe.paused():
                model(torch.randn(5, 3))
            model(torch.randn(7, 3))  # still inside the outer pause
        model(torch.randn(2, 3))
        probe.step()
    assert [(r["step"], r["value"]) for r in probe.table()] == [(0, 2.0)]
    fails = iter([True, False])

    def once(v):
        if next(fails):
            raise FloatingPointError("once")
        return float(v.shape[0])

    with Probe(model, {"p": [Estimator("rows", once)]}, every=1, max_samples=None) as probe:
        model(torch.randn(5, 3))
        with pytest.raises(FloatingPointError):
            probe.step()
        model(torch.randn(2, 3))
        probe.step()
    assert [(r["step"], r["value"]) for r in probe.table()] == [(1, 2.0)]
    wide = nn.Linear(3, 5)
    with Probe(model, {"p": [Estimator("rows", lambda v: float(v.shape[0]))]}, every=1) as probe:
        model(torch.randn(2, 3))
        model.p(wide(torch.randn(2, 3)))
        with pytest.raises(ValueError, match=r"Probe: p produced tensors of different shapes \[\(3,\), \(5,\)\] within one "
                                             r"step; record one kind of forward pass per step \(see Probe.paused\(\)\)"):
            probe.step()


def test_a_closed_probe_stays_detached():
    model = Tiny()
    probe = Probe(model, {"probs": [entropy()]}, every=2)
    model(torch.randn(3, 4))
    probe.close()
    with pytest.raises(RuntimeError, match=r"Probe.step\(\) after close\(\)"):
        probe.step()  # used to attach its hooks again on the next scheduled step
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0 and len(probe.table()) == 1


def test_probe_detaches_even_when_an_estimator_or_the_block_fails():
    model = Tiny()
    hooks = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    with pytest.raises(ValueError, match="at least 2 samples"):  # the estimator's error, raised at exit
        with Probe(model, {"hidden": [condition_number(of="covariance")]}):
            model(torch.randn(1, 4))
    assert hooks() == 0
    with pytest.raises(RuntimeError, match="the block's own error"):  # not replaced by the estimator's
        with Probe(model, {"hidden": [condition_number(of="covariance")]}):
            model(torch.randn(1, 4))
            raise RuntimeError("the block's own error")
    assert hooks() == 0


def test_probe_steps_are_recorded_once():
    """flush() then step() does not record the parameters twice; closing after a loop's last step() measures
    the final weights (and no probe point, which saw no forward pass); a probe used for one measurement
    without step() records at close."""
    model = Tiny()
    with Probe(model, {"hidden": [condition_number(of="covariance")], "lin.weight": [condition_number()]}) as probe:
        for _ in range(2):
            model(torch.randn(8, 4))
            probe.flush()
            probe.step()
    assert [(r["step"], r["point"]) for r in probe.table()] == [(0, "hidden"), (0, "lin.weight"),
                                                               (1, "hidden"), (1, "lin.weight"), (2, "lin.weight")]
    with Probe(model, {"lin.weight": [condition_number()]}) as probe:
        pass
    assert len(probe.table()) == 1
    with pytest.raises(ValueError, match="max_samples"):
        Probe(model, {"hidden": [entropy()]}, max_samples=0)


def test_a_scalar_probe_point_recorded_twice_in_a_step():
    """0-d outputs count one sample each; two forwards in one step stack into a (2,) tensor."""
    from estimators import Estimator

    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = ProbePoint()

        def forward(self, x):
            return self.s(x.sum())

    model = Scalar()
    with Probe(model, {"s": [Estimator("mean", lambda v: v.mean())]}, max_samples=8) as probe:
        model(torch.ones(3))
        model(torch.ones(5))
    assert probe.table()[0]["value"] == 4.0


def test_an_estimators_error_names_the_point_and_the_estimator():
    """The error of an estimator that fails on one of the matched tensors says which, in the same type where
    that type takes one message, else as a ValueError."""
    from estimators import Estimator

    class Needs(Exception):  # its constructor takes more than a message
        def __init__(self, message, code):
            super().__init__(message)

    def positive(x):
        if (x < 0).any():
            raise FloatingPointError("negative entries")
        return x.mean()

    def never(x):
        raise Needs("cannot", 3)

    model = Tiny()
    nn.init.constant_(model.lin.bias, -10.0)  # hidden < 0 < probs
    for points, error, match in (({"[hp]*": [Estimator("positive", positive)]}, FloatingPointError,
                                  "^hidden: positive: negative entries$"),
                                 ({"lin.bias": [Estimator("never", never)]}, ValueError, "^lin.bias: never: cannot$")):
        with torch.no_grad(), pytest.raises(error, match=match), Probe(model, points):
            model(torch.rand(8, 4))


def test_probe_records_a_copy_of_only_the_rows_it_keeps():
    """The recorded rows are a copy: an in-place op after the probe point does not change them, and a batch larger
    than max_samples is not kept alive by a view of its first rows."""
    from estimators import Estimator

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = ProbePoint()

        def forward(self, x):
            return self.hidden(x * 1.0).relu_()  # the point's output is changed in place right after

    seen = []
    model = InPlace()
    with Probe(model, {"hidden": [Estimator("record", lambda x: seen.append(x) or x.min())]}, max_samples=2) as probe:
        model(-torch.ones(64, 3))
        (kept,) = probe._buffers[("hidden", False)]  # before the flush: its own 2 x 3 storage, not the batch's
        assert kept.shape == (2, 3) and kept.untyped_storage().nbytes() == 2 * 3 * 4
    assert probe.table()[0]["value"] == -1.0 and seen[0].shape == (2, 3)  # recorded before the ReLU



def test_probes_never_record_another_probes_estimator_passes_and_label_what_they_record():
    """Local complexity runs the model on its own cross-polytope inputs: a second Probe on the model recorded those
    too and changed its value. Two estimators of one name at a point are labelled by the settings that differ,
    and a point that two globs match with the same estimator is measured once."""
    from estimators import effective_rank, local_complexity_estimator as local_complexity

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), ProbePoint(), nn.Linear(16, 2))
    x = torch.randn(64, 6)
    with Probe(net, {"2": [effective_rank()]}) as alone:
        net(x)
    # second is entered first, so it is still attached while first's estimator runs the model (exits go in reverse)
    with Probe(net, {"2": [effective_rank()]}) as second, Probe(net, {"": [local_complexity()]}) as first:
        net(x)
    assert first.table() and second.table()[0]["value"] == alone.table()[0]["value"]
    with Probe(net, {"?": [effective_rank()], "2": [effective_rank(), make_estimator({"dse": {"sigma": 1.0}}),
                                                    make_estimator({"dse": {"sigma": 2.0}})]}) as probe:
        net(x)
    assert [r["estimator"] for r in probe.table()] == ["effective_rank", "dse(sigma=1.0)", "dse(sigma=2.0)"]
    a, b = torch.randn(64, 1), torch.randn(64, 1)  # two targets under one name: both kept, numbered
    with Probe(net, {"2": [make_estimator({"ksg_mi": {"target": a}}), make_estimator({"ksg_mi": {"target": b}})]}) as probe:
        net(x)
    assert [r["estimator"] for r in probe.table()] == ["ksg1_mi#1", "ksg1_mi#2"]


def test_module_estimators_take_a_keyword_input_and_tied_weights_and_typos_are_named():
    from estimators import local_complexity_estimator as local_complexity

    class KeywordCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(4, 8), nn.ReLU())

        def forward(self, x):
            return self.block(input=x)

    model = KeywordCall()
    with Probe(model, {"block": [local_complexity()]}) as probe:
        model(torch.randn(8, 4))  # an IndexError from inside the forward before
    assert {r["estimator"] for r in probe.table()} == {"local_complexity/neurons", "local_complexity/regions"}
    tied = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    tied[1].weight = tied[0].weight
    with Probe(tied, {"1.weight": [condition_number()]}) as probe:  # named_parameters() drops the second name
        pass
    assert probe.table()[0]["point"] == "1.weight"
    with pytest.raises(KeyError, match=r"did you mean \['0.weight'"):
        Probe(tied, {"0.weigth": [condition_number()]})
    # a glob that matches below another parent is offered under that parent (it was offered the closest names,
    # model.layers.1..., model.layers.0..., each a single point)
    nested = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    with pytest.raises(KeyError, match=r"did you mean \['0\.\[01\]\.weight'\]\?"):
        Probe(nested, {"[01].weight": [condition_number()]})


def test_local_complexity_of_inputs_recorded_under_bf16_autocast():
    """Under autocast (train.precision auto on a GPU) a module's recorded input is bf16; the estimator runs after the
    step, outside autocast, on the fp32 model: it fed bf16 into fp32 weights and failed at the first probed step."""
    from estimators import local_complexity_estimator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Sequential(nn.Linear(16, 16), nn.ReLU()), nn.Linear(16, 2))
    with Probe(net, {"1": [local_complexity_estimator()]}) as probe:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(torch.randn(8, 6))
    assert {r["estimator"] for r in probe.table()} == {"local_complexity/neurons", "local_complexity/regions"}


def test_gathered_rows_follow_the_global_batch_when_the_cap_cuts_into_a_later_micro_batch():
    """Under torchrun each forward's rows are gathered from every rank (rank order), micro-batch by micro-batch:
    the global batch's order. With a cap of 8 over two micro-batches of 3 rows on 2 ranks, the probe sees
    micro-batch 1 of both ranks (rows 0-2, 100-102), then the first 2 rows of micro-batch 2 (3, 4)."""
    from estimators import Estimator

    class Rows(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = ProbePoint()

        def forward(self, x):
            return self.p(x)

    seen = []
    model = Rows()
    other_rank = lambda t: torch.cat([t, t + 100])  # noqa: E731  (rank 1 holds rank 0's rows + 100)
    with Probe(model, {"p": [Estimator("rows", lambda v: seen.append(v[:, 0].tolist()) or v.sum())]},
               max_samples=8, gather=other_rank) as probe:
        model(torch.arange(3.0)[:, None])
        model(torch.arange(3.0, 6.0)[:, None])
    assert seen == [[0, 1, 2, 100, 101, 102, 3, 4]] and probe.table()[0]["value"] == 313
