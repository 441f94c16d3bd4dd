import dataclasses
import re

import pytest
import zoo


def test_list_models_glob():
    assert zoo.list_models("alrnn_*") == ["alrnn_m20_p1", "alrnn_m20_p2"]
    assert zoo.list_models("nothing*") == []
    assert zoo.list_models("ALRNN_*") == []  # names match case-sensitively on every OS (fnmatchcase), as they are
    assert zoo.list_models(["alrnn_*", "pvrnn_p*"]) == ["alrnn_m20_p1", "alrnn_m20_p2", "pvrnn_pfsm"]
    assert zoo.list_models("*_m20_*", pretrained=True) == ["alrnn_m20_p1", "alrnn_m20_p2"]
    assert "facet_small" in zoo.list_models(pretrained=True) and "pvrnn_pfsm" not in zoo.list_models(pretrained=True)
    with pytest.raises(TypeError, match="a glob str or a list of them"):
        zoo.list_models({"alrnn_*"})


def test_create_model_applies_overrides_to_the_dataclass_config():
    m = zoo.create_model("alrnn_m20_p2", M=30)
    assert m.zoo_name == "alrnn_m20_p2"
    assert dataclasses.asdict(m.zoo_config) == {"M": 30, "P": 2, "N": 3}
    assert m.cell.W.shape == (30, 30)


def test_unknown_name_suggests_closest():
    with pytest.raises(KeyError) as err:
        zoo.create_model("alrnn_m20_p3")
    assert "alrnn_m20_p2" in str(err.value) and "did you mean" in str(err.value).lower()


def test_an_unknown_name_lists_up_to_five_loosely_close_names():
    """A bare family prefix ('alrnn', similarity 2 * 5 / 17 ~ 0.59 to 'alrnn_m20_p2') still gets its models
    suggested; a prefix shared by many names lists five of them, not one or all; the total count is the registry's."""
    with pytest.raises(KeyError) as err:
        zoo.create_model("alrnn")
    assert {"alrnn_m20_p1", "alrnn_m20_p2"} <= set(re.search(r"Did you mean: (.*)\?", str(err.value))[1].split(", "))
    with pytest.raises(KeyError) as err:
        zoo.create_model("transformer_lm")
    suggested = re.search(r"Did you mean: (.*)\? See zoo.list_models\(\) for all (\d+) names", str(err.value))
    assert len(suggested[1].split(", ")) == 5 and int(suggested[2]) == len(zoo.list_models())
    assert {"transformer_lm_13m", "transformer_lm_17m"} <= set(suggested[1].split(", "))


def test_unknown_override_lists_valid_keys():
    with pytest.raises(TypeError, match=r"unknown config override\(s\) \['Q'\]; valid keys are \['M', 'P', 'N'\]"):
        zoo.create_model("alrnn_m20_p2", Q=1)


def test_override_of_the_wrong_type_names_key_type_and_default():
    with pytest.raises(TypeError, match=r"alrnn_m20_p2: M must be int \(default 20\), got '30' of type str"):
        zoo.create_model("alrnn_m20_p2", M="30")
    with pytest.raises(TypeError, match="M must be int"):  # a bool is an int to Python, never a width
        zoo.create_model("alrnn_m20_p2", M=True)
    with pytest.raises(TypeError, match=r"windows must be tuple\[int, \.\.\.\]"):
        zoo.create_model("grassmann_lm_13m", windows=["1"])


def test_bools_strings_and_numpy_scalars_in_typed_fields(tmp_path):
    """A bool is no float (dropout=False), a string fits no float | None (scaling) nor a tuple of floats; a numpy
    float becomes a Python float, so the config writes as JSON; config_from_dict (a checkpoint's record) checks
    as create_model does and turns lists into tuples."""
    import numpy as np

    from zoo._registry import config_from_dict

    for name, field, value, kind in (("tabular_mlp", "dropout", False, "float"), ("tabular_mlp", "dropout", True, "float"),
                                     ("hopfield_tabular", "scaling", "big", "float | None"),
                                     ("pvrnn_small", "meta_prior_first", ("a",), r"tuple\[float, \.\.\.\] \| None")):
        with pytest.raises(TypeError, match=rf"{name}: {field} must be {kind} \(default"):
            zoo.create_model(name, **{field: value})
    assert type(zoo.create_model("tabular_mlp", dropout=np.float32(0.25)).zoo_config.dropout) is float
    with pytest.raises(TypeError, match=r"alrnn_m20_p2: M must be int \(default 20\), got '30'"):
        config_from_dict("alrnn_m20_p2", {"M": "30"})
    with pytest.raises(TypeError, match=r"alrnn_m20_p2: unknown config keys \['Q'\]"):
        config_from_dict("alrnn_m20_p2", {"Q": 1})
    assert config_from_dict("grassmann_lm_13m", {"windows": [1, 2]}).windows == (1, 2)


def test_a_dropout_of_one_is_refused_by_the_registry():
    """Dropout rates are probabilities in [0, 1): 0 is allowed, 1.0 (every unit dropped) is refused like 1.5, by the
    registry, for a model whose layers would take it (torch's Dropout accepts p=1)."""
    assert zoo.create_model("tabular_mlp", dropout=0.0).zoo_config.dropout == 0.0
    for rate in (1.0, 1, -0.1):
        with pytest.raises(ValueError, match=r"tabular_mlp: dropout is a probability in \[0, 1\), got "):
            zoo.create_model("tabular_mlp", dropout=rate)


def test_lists_become_tuples_and_every_default_config_fits_its_own_types():
    from zoo._registry import _REGISTRY, resolve_config

    assert resolve_config("grassmann_lm_13m", windows=[1, 2]).windows == (1, 2)  # YAML gives lists
    for name, entry in _REGISTRY.items():  # the checker accepts what every registered size ships with
        fields = {f.name: getattr(entry.config, f.name) for f in dataclasses.fields(entry.config)}
        assert resolve_config(name, **fields) == entry.config


def test_model_info_reports_family_paper_params_recipes():
    info = zoo.model_info("alrnn_m20_p2")
    assert info["family"] == "alrnn" and info["arxiv"] == "2410.14240"
    assert info["authors"].startswith("Brenner") and info["year"] == 2024  # for citing it
    # A (20) + W (20x20) + h (20) + L ((20-3) x 3) = 491
    assert info["params"] == 491
    assert info["recipes"] == ["alrnn-lorenz63"]
    assert zoo.model_info("alrnn_m20_p1")["checkpoints"] == ["alrnn_m20_p1_roessler"]
    # facet_base's checkpoint was trained by facet-emt (--set model=facet_base), whose model: is facet_small
    assert zoo.model_info("facet_base")["recipes"] == ["facet-emt", "facet-mptrj"]
    # the ablation and baseline models list the recipes that run them with --set model=NAME (their baselines:)
    assert zoo.model_info("mobilenetv2_se_100")["recipes"] == ["mbv2-ca-digits", "mbv2-ca-imagenet"]
    for ablation in zoo.list_models("facet_ablation_*"):  # benchmarks/facet_ablation.py trains each with facet-emt
        assert zoo.model_info(ablation)["recipes"] == ["facet-emt"], ablation
    assert zoo.model_info("tabular_mlp")["recipes"] == ["hopfield-tabular-breast-cancer", "hopfield-tabular-wine"]
    assert zoo.model_info("transformer_lm_13m")["recipes"] == ["sigma-lm-pytext", "transformer-lm-pytext",
                                                               "transformer-lm-wikitext2"]


def test_register_rejects_duplicate_names():
    from zoo._registry import register_model

    with pytest.raises(ValueError, match="registered twice"):
        register_model(zoo.alrnn.ALRNNConfig(), zoo.alrnn.PAPER, name="alrnn_m20_p2")(lambda c: None)


def test_pretrained_without_published_weights_names_the_models_that_have_them():
    with pytest.raises(KeyError, match=r"no published checkpoint for model 'hopfield_mil'; its checkpoints: none\. "
                                       r"Models with published weights: \[.*'alrnn_m20_p2'") as err:
        zoo.create_model("hopfield_mil", pretrained=True)
    assert str(err.value).startswith("no published")  # no quotes around it, as KeyError's own str would add


def test_the_installed_distribution_carries_zoos_version():
    """pyproject reads the version from zoo.__version__ (it was written in both places, free to drift apart); the
    checkpoints record zoo.__version__, pip reports the distribution's."""
    import importlib.metadata

    assert importlib.metadata.version("paperzoo") == zoo.__version__
