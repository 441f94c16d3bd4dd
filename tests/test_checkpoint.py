import json
import warnings
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from weights.checkpoint import atomic_write, load_state_into
from weights import CheckpointError, load_checkpoint, load_into, read_metadata, save_checkpoint, sha256_of
from weights import manifest as manifest_mod


def _same_outputs(a, b):
    x = torch.randn(2, 30, 3)
    a.eval(), b.eval()
    return torch.equal(a(x), b(x)) and torch.equal(a.generate(x[:, 0], 50), b.generate(x[:, 0], 50))


def test_save_load_roundtrip_rebuilds_model_with_its_config(tmp_path):
    m = zoo.create_model("alrnn_m20_p2", M=12)
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    meta = read_metadata(path)
    assert meta["model"] == "alrnn_m20_p2" and json.loads(meta["config"]) == {"M": 12, "P": 2, "N": 3}
    m2 = load_checkpoint(path)
    assert m2.zoo_config.M == 12
    assert _same_outputs(m, m2)


def test_a_file_in_another_checkpoint_format_is_refused_by_name(tmp_path):
    """A newer paperzoo's format may give keys or metadata another meaning: load_checkpoint and load_into refuse
    it with the format and the way out, where they used to load it as if it were this version's."""
    m = zoo.create_model("alrnn_m20_p2", M=12)
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    newer = tmp_path / "newer.safetensors"
    save_file(load_file(path), newer, metadata=read_metadata(path) | {"format": "paperzoo/2", "paperzoo": "9.0"})
    message = r"newer.safetensors is in checkpoint format 'paperzoo/2' \(written by paperzoo 9.0\); paperzoo .* reads 'paperzoo/1': upgrade paperzoo"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(newer)
    with pytest.raises(CheckpointError, match=message):
        load_into(zoo.create_model("alrnn_m20_p2", M=12), newer)
    # torch.load's mapping form of map_location does not apply to a rebuilt model: named before the file is read
    with pytest.raises(TypeError, match=r"map_location must be a device or its name \('cpu', 'cuda:0'\), got dict"):
        load_checkpoint(tmp_path / "absent.safetensors", map_location={"cuda:0": "cpu"})
    assert load_checkpoint(path, map_location=torch.device("cpu")).zoo_config.M == 12
    plain = tmp_path / "plain.safetensors"  # a file without paperzoo's metadata is not a format question
    save_file(load_file(path), plain)
    assert _same_outputs(m, load_into(zoo.create_model("alrnn_m20_p2", M=12), plain))


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    m = zoo.create_model("alrnn_m20_p2")
    path = save_checkpoint(m, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def half_then_fail(tmp):
        with open(tmp, "wb") as f:
            f.write(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr("weights.checkpoint.atomic_write",
                        lambda path, write: atomic_write(path, lambda tmp: (write(tmp), half_then_fail(tmp))))
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(zoo.create_model("alrnn_m20_p2"), path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temp file left behind


def test_a_symlinked_checkpoint_stays_a_link_to_the_new_file(tmp_path):
    """Saving onto a symbolic link (a run's model.safetensors pointing at a bigger disk) replaces the file it
    points to, atomically in that file's folder, and leaves the link in place."""
    (tmp_path / "disk").mkdir()
    (tmp_path / "run").mkdir()
    link = tmp_path / "run" / "model.safetensors"
    link.symlink_to(tmp_path / "disk" / "weights.safetensors")
    save_checkpoint(zoo.create_model("alrnn_m20_p2", M=7), link)
    save_checkpoint(zoo.create_model("alrnn_m20_p2", M=9), link)
    assert link.is_symlink() and load_checkpoint(link).zoo_config.M == 9
    assert load_checkpoint(tmp_path / "disk" / "weights.safetensors").zoo_config.M == 9
    assert os.listdir(tmp_path / "disk") == ["weights.safetensors"] and os.listdir(tmp_path / "run") == ["model.safetensors"]


def test_equal_content_gives_equal_bytes(tmp_path):
    """safetensors writes its metadata in a random order; our files sort the header, so a conversion or a
    checkpoint has one sha256."""
    torch.manual_seed(0)
    m = zoo.create_model("alrnn_m20_p2")
    digests = {sha256_of(save_checkpoint(m, tmp_path / f"m{i}.safetensors", extra_metadata={"recipe": "r"}))
               for i in range(6)}
    assert len(digests) == 1
    raw = (tmp_path / "m0.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert n % 8 == 0 and list(header["__metadata__"]) == sorted(header["__metadata__"])
    assert _same_outputs(m, load_checkpoint(tmp_path / "m0.safetensors"))


def test_load_into_warns_when_the_file_is_another_models_or_configs(tmp_path):
    """Weights of another registered model or config whose shapes match load, with a warning naming the
    differences (dropout rates aside); the model's own checkpoint loads silently."""

    from weights import ConfigMismatchWarning

    relu = save_checkpoint(zoo.create_model("ib_mlp_relu"), tmp_path / "relu.safetensors")
    with pytest.warns(ConfigMismatchWarning, match=r"saved from 'ib_mlp_relu' and is loaded into 'ib_mlp_tanh'; "
                                                  r"\(file, model\) config per key: \{'activation': \('relu', 'tanh'\)\}"):
        load_into(zoo.create_model("ib_mlp_tanh"), relu)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_into(zoo.create_model("ib_mlp_relu"), relu)
    # another registered name with the very same config: still named, with no per-key differences
    with pytest.warns(ConfigMismatchWarning, match=r"saved from 'ib_mlp_relu' and is loaded into 'ib_mlp_tanh'$"):
        load_into(zoo.create_model("ib_mlp_tanh", activation="relu"), relu)
    # a model built outside the registry (a Hugging Face config class, from_pretrained) is compared by its config
    from zoo.transformer_lm import TransformerLMConfig, TransformerLMForCausalLM

    lm = save_checkpoint(zoo.create_model("transformer_lm_13m", num_hidden_layers=1, vocab_size=100),
                         tmp_path / "lm.safetensors")
    eight = TransformerLMForCausalLM(TransformerLMConfig(num_hidden_layers=1, vocab_size=100, num_attention_heads=8))
    with pytest.warns(ConfigMismatchWarning, match=r"loaded into a TransformerLMForCausalLM built outside the "
                                                  r"registry; .*'num_attention_heads': \(4, 8\)"):
        load_into(eight, lm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_into(TransformerLMForCausalLM(TransformerLMConfig(num_hidden_layers=1, vocab_size=100)), lm)
    with pytest.warns(UserWarning, match="was not built by zoo.create_model, so .* records no registry name and "
                                         "load_checkpoint cannot rebuild it; .*weights.load_into"):
        outside = save_checkpoint(eight, tmp_path / "outside.safetensors")
    # its Hugging Face config is recorded, so loading it into a model of other settings but equal shapes warns too
    # (the file recorded nothing, and 8-head weights went into a 4-head model silently)
    four = TransformerLMForCausalLM(TransformerLMConfig(num_hidden_layers=1, vocab_size=100))
    with pytest.warns(ConfigMismatchWarning, match=r"saved from a model built outside the registry and is loaded "
                                                  r"into a TransformerLMForCausalLM .*'num_attention_heads': \(8, 4\)"):
        load_into(four, outside)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_into(TransformerLMForCausalLM(TransformerLMConfig(num_hidden_layers=1, vocab_size=100,
                                                               num_attention_heads=8)), outside)
    # a registry name given by hand would make a file that load_checkpoint cannot rebuild (no config of it)
    with pytest.raises(ValueError, match=r"extra_metadata must map new names to strings \(the file's own are "
                                         r"\['format', 'paperzoo', 'torch', 'model', 'config'\]\)"):
        save_checkpoint(eight, tmp_path / "named.safetensors", extra_metadata={"model": "transformer_lm_13m"})


def test_a_head_or_vocabulary_changed_after_building_is_recorded(tmp_path):
    """resize_token_embeddings (transformers) and reset_classifier (timm) change the model after the registry
    built it: the checkpoint records the live sizes, so load_checkpoint rebuilds the model it holds."""
    lm = zoo.create_model("transformer_lm_13m", num_hidden_layers=1, vocab_size=100)
    lm.resize_token_embeddings(128, mean_resizing=False)
    back = load_checkpoint(save_checkpoint(lm, tmp_path / "lm.safetensors"))
    assert back.config.vocab_size == 128 and torch.equal(back.get_input_embeddings().weight,
                                                          lm.get_input_embeddings().weight)
    image = zoo.create_model("mobilenetv2_ca_100")
    image.reset_classifier(10)
    assert load_checkpoint(save_checkpoint(image, tmp_path / "image.safetensors")).num_classes == 10


def test_load_into_names_missing_unexpected_and_misshaped_keys(tmp_path):
    m = zoo.create_model("alrnn_m20_p2")
    state = {k: v.clone() for k, v in m.state_dict().items()}
    del state["cell.h"]
    extra = [f"extra.{i}.weight" for i in range(12)]  # every bad key is named, however many
    state.update({k: torch.zeros(1) for k in extra})
    state["L"] = torch.zeros(5, 3)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_into(m, tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert "missing keys (1): cell.h" in msg
    assert "unexpected keys (12): " in msg and all(k in msg for k in extra)
    assert "L: checkpoint (5, 3) vs model (17, 3)" in msg


def test_corrupt_and_missing_files_give_clear_errors(tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    model = zoo.create_model("alrnn_m20_p2")
    torch.save(model.state_dict(), tmp_path / "authors.pth")  # an original checkpoint, as its repository ships it
    for load in (lambda: load_checkpoint(tmp_path / "authors.pth"), lambda: load_into(model, tmp_path / "authors.pth")):
        with pytest.raises(CheckpointError, match=r"authors.pth is a PyTorch torch.save file, not safetensors; "
                                                  r"convert it first with `zoo convert .*authors.pth --model NAME`"):
            load()
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError, match="no paperzoo metadata"):
        load_checkpoint(plain)
    good = save_checkpoint(zoo.create_model("tabular_mlp"), tmp_path / "good.safetensors")
    state, meta = load_file(good), read_metadata(good)
    for config, message in (("null", "must be a mapping"), (json.dumps({"in_features": -5}), "in_features must be an integer >= 1")):
        save_file(state, tmp_path / "cfg.safetensors", metadata={**meta, "config": config})
        with pytest.raises(CheckpointError, match=f"recorded config does not build 'tabular_mlp'.*{message}"):
            load_checkpoint(tmp_path / "cfg.safetensors")
    key = next(k for k, v in state.items() if v.is_floating_point())
    save_file({**state, key: state[key] > 0}, tmp_path / "bool.safetensors", metadata=meta)  # values would become 0/1
    with pytest.raises(CheckpointError, match=f"mis-typed keys \\(1\\): {key}: checkpoint torch.bool vs model torch.float32"):
        load_checkpoint(tmp_path / "bool.safetensors")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_model_saved_in_one_floating_dtype_loads_back_in_it(tmp_path, dtype):
    m = zoo.create_model("tabular_mlp").to(dtype)
    for p in m.parameters():
        p.data.add_(torch.randn_like(p) * 1e-12 if dtype == torch.float64 else 0)  # digits float32 would lose
    m2 = load_checkpoint(save_checkpoint(m, tmp_path / "m.safetensors"))
    assert all(v.dtype == dtype and torch.equal(v, m.state_dict()[k]) for k, v in m2.state_dict().items())
    x = torch.randn(4, 30, dtype=dtype)
    assert torch.equal(m.eval()(x), m2.eval()(x))
    into = load_into(zoo.create_model("tabular_mlp"), tmp_path / "m.safetensors")  # load_into keeps the model's dtype
    assert next(into.parameters()).dtype == torch.float32


def test_a_file_of_mixed_floating_dtypes_loads_in_the_models_dtype(tmp_path):
    """A file whose floating tensors have several dtypes (float64 and bfloat16 here) gives the model in the dtype it
    is built with (float32), each value cast to it; the model is not cast to one of the file's dtypes."""
    good = save_checkpoint(zoo.create_model("tabular_mlp"), tmp_path / "good.safetensors")
    state, meta = load_file(good), read_metadata(good)
    mixed = {k: v.to(torch.float64 if i % 2 else torch.bfloat16) for i, (k, v) in enumerate(sorted(state.items()))}
    assert {v.dtype for v in mixed.values()} == {torch.float64, torch.bfloat16}
    save_file(mixed, tmp_path / "mixed.safetensors", metadata=meta)
    m = load_checkpoint(tmp_path / "mixed.safetensors")
    assert {v.dtype for v in m.state_dict().values()} == {torch.float32}
    assert all(torch.equal(v, mixed[k].float()) for k, v in m.state_dict().items())


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    from zoo._registry import build

    m = build("alrnn_m20_p2", zoo.alrnn.ALRNNConfig())
    m.head = torch.nn.Linear(3, 3, bias=False)
    m.tail = torch.nn.Linear(3, 3, bias=False)
    m.tail.weight = m.head.weight  # tie
    path = save_checkpoint(m, tmp_path / "tied.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert "head.weight" in keys and "tail.weight" not in keys
    m2 = build("alrnn_m20_p2", zoo.alrnn.ALRNNConfig())
    m2.head = torch.nn.Linear(3, 3, bias=False)
    m2.tail = torch.nn.Linear(3, 3, bias=False)
    m2.tail.weight = m2.head.weight
    load_into(m2, path)
    assert torch.equal(m2.tail.weight, m.head.weight)
    # a state dict holding both tied names: equal values load, unequal ones are refused (one would overwrite the other)
    state = {**m.state_dict(), "tail.weight": m.head.weight.detach().clone()}
    load_state_into(m2, state)
    state["tail.weight"] = state["tail.weight"] + 1
    with pytest.raises(CheckpointError, match=r"tied in the model, unequal in the checkpoint keys \(1\): tail.weight vs "
                                              r"head.weight"):
        load_state_into(m2, state)


def _fake_entry(tmp_path, monkeypatch, model, sha, url=None):
    entry = {"name": "test_ckpt", "model": "alrnn_m20_p2", "file": "test_ckpt.safetensors", "sha256": sha,
             "url": url, "source": "test", "license": "test", "reported": {}}
    monkeypatch.setattr(manifest_mod, "published_checkpoints", lambda: [entry])
    return entry


def test_pretrained_resolves_from_cache_and_verifies_full_sha256(tmp_path, monkeypatch):
    trained = zoo.create_model("alrnn_m20_p2")
    cache = manifest_mod.cache_dir()
    path = save_checkpoint(trained, cache / "test_ckpt.safetensors")
    _fake_entry(tmp_path, monkeypatch, trained, sha256_of(path))
    m = zoo.create_model("alrnn_m20_p2", pretrained=True)
    assert _same_outputs(m, trained)

    _fake_entry(tmp_path, monkeypatch, trained, "0" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        zoo.create_model("alrnn_m20_p2", pretrained=True)


def test_pretrained_offline_says_what_to_download_and_where(tmp_path, monkeypatch):
    _fake_entry(tmp_path, monkeypatch, None, "0" * 64, url="http://127.0.0.1:9/none.safetensors")
    with pytest.raises(FileNotFoundError) as err:
        zoo.create_model("alrnn_m20_p2", pretrained=True)
    msg = str(err.value)
    assert "http://127.0.0.1:9/none.safetensors" in msg and str(manifest_mod.cache_dir()) in msg


def test_git_blob_sha1_is_the_id_git_gives_the_content(tmp_path):
    """git_blob_sha1 hashes b"blob <size>\\0" + content: the ids `git hash-object` prints for known contents."""
    from weights.manifest import git_blob_sha1

    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "hello").write_bytes(b"hello\n")
    assert git_blob_sha1(tmp_path / "empty") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert git_blob_sha1(tmp_path / "hello") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_a_shipped_checkpoint_wins_over_a_stale_cached_file_of_its_name(tmp_path, monkeypatch):
    """Resolution order is shipped file, then cache: another file of the same name left in the cache (an older
    download) neither hides the shipped one nor breaks its sha256 check."""
    entry = next(c for c in manifest_mod.published_checkpoints() if c["name"] == "alrnn_m20_p2_lorenz63")
    shipped = manifest_mod.PACKAGE_DIR / "files" / entry["file"]
    stale = save_checkpoint(zoo.create_model("alrnn_m20_p2"), manifest_mod.cache_dir() / entry["file"])
    assert sha256_of(stale) != entry["sha256"]
    assert manifest_mod.resolve(entry) == shipped
    m = zoo.create_model("alrnn_m20_p2", pretrained=True)
    assert all(torch.equal(v, load_file(shipped)[k]) for k, v in m.state_dict().items())


def test_pretrained_with_conflicting_override_is_an_error(tmp_path, monkeypatch):
    path = save_checkpoint(zoo.create_model("alrnn_m20_p2"), manifest_mod.cache_dir() / "test_ckpt.safetensors")
    _fake_entry(tmp_path, monkeypatch, None, sha256_of(path))
    with pytest.raises(CheckpointError, match="different config"):
        zoo.create_model("alrnn_m20_p2", pretrained=True, M=30)


def test_pretrained_override_against_the_entrys_config_is_an_error_not_replaced(tmp_path, monkeypatch):
    """An override that contradicts the config a checkpoint was trained with (the manifest entry's ``config``) is
    refused naming it, not silently replaced by the entry's value; an override equal to it loads."""
    trained = zoo.create_model("alrnn_m20_p2", P=1)
    path = save_checkpoint(trained, manifest_mod.cache_dir() / "test_ckpt.safetensors")
    entry = _fake_entry(tmp_path, monkeypatch, None, sha256_of(path))
    entry["config"] = {"P": 1}
    assert zoo.create_model("alrnn_m20_p2", pretrained=True).zoo_config.P == 1
    assert _same_outputs(zoo.create_model("alrnn_m20_p2", pretrained=True, P=1), trained)
    with pytest.raises(CheckpointError, match=r"different config; .*'P': \(1, 2\)"):
        zoo.create_model("alrnn_m20_p2", pretrained=True, P=2)


def test_original_pth_is_read_without_unpickling(tmp_path):
    from weights.convert import read_original

    torch.save({"A": torch.ones(3)}, tmp_path / "orig.pth")
    assert torch.equal(read_original(tmp_path / "orig.pth")["A"], torch.ones(3))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_original(tmp_path / "evil.pth")


def test_shipped_checkpoints_load_offline_with_verified_hash():
    from weights import published_checkpoints

    shipped = [c for c in published_checkpoints() if (manifest_mod.PACKAGE_DIR / "files" / c["file"]).is_file()]
    assert shipped, "the package ships at least one trained checkpoint"
    for entry in shipped:
        assert manifest_mod.sha256_of(manifest_mod.resolve(entry)) == entry["sha256"]
        model = zoo.create_model(entry["model"], pretrained=entry["name"])
        assert model.zoo_name == entry["model"]
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_compiled_or_wrapped_model_saves_its_own_keys(tmp_path):
    """torch.compile's wrapper (``_orig_mod.*``) and DataParallel's (``module.*``) are unwrapped on save, so the
    file loads back by name."""
    model = zoo.create_model("alrnn_m20_p2")
    for wrapped in (torch.compile(model), torch.nn.DataParallel(model)):
        path = save_checkpoint(wrapped, tmp_path / "m.safetensors")
        loaded = load_checkpoint(path)
        assert loaded.state_dict().keys() == model.state_dict().keys()
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_concurrent_conversions_of_one_original_both_land(tmp_path, monkeypatch):
    """torchrun ranks converting the same original at once: each uses its own temporary file (a shared one was
    replaced or deleted under the other rank, which then failed)."""
    import weights.convert as convert_mod
    from weights.manifest import git_blob_sha1, install_original, resolve

    src = tmp_path / "orig.pth"
    torch.save(zoo.create_model("alrnn_m20_p2").state_dict(), src)
    entry = {"name": "test_ckpt", "model": "alrnn_m20_p2", "file": "test_ckpt.safetensors", "sha256": None,
             "original": {"url": "http://127.0.0.1:9/orig.pth", "file": "orig.pth", "git_blob_sha1": git_blob_sha1(src)}}
    real, calls, nested = convert_mod.convert, [], []

    def interleaved(source, name, out, **kw):  # another rank runs a whole conversion in the middle of this one
        calls.append(out)
        path = real(source, name, out, **kw)
        if len(calls) == 1:
            nested.append(install_original(entry, source))
        return path

    monkeypatch.setattr(convert_mod, "convert", interleaved)
    dest = install_original(entry, src)
    assert nested == [dest] and len(set(calls)) == 2 and resolve(entry) == dest  # the recorded sha256 verifies
    assert not [p.name for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_pretrained_ignores_dropout_rates_and_adapts_the_stem_to_other_input_channels(monkeypatch):
    trained = zoo.create_model("mobilenetv2_ca_100", num_classes=10)
    path = save_checkpoint(trained, manifest_mod.cache_dir() / "test_ckpt.safetensors")
    entry = {"name": "test_ckpt", "model": "mobilenetv2_ca_100", "file": "test_ckpt.safetensors", "url": None,
             "sha256": sha256_of(path), "config": {"num_classes": 10}}
    monkeypatch.setattr(manifest_mod, "published_checkpoints", lambda: [entry])
    dropped = zoo.create_model("mobilenetv2_ca_100", pretrained=True, drop_rate=0.3)  # no weight depends on it
    assert dropped.drop_rate == 0.3
    assert all(torch.equal(a, b) for a, b in zip(dropped.state_dict().values(), trained.state_dict().values()))
    gray = zoo.create_model("mobilenetv2_ca_100", pretrained=True, in_chans=1)  # timm's adapt_input_conv: a sum
    assert torch.allclose(gray.conv_stem.weight, trained.conv_stem.weight.sum(1, keepdim=True))
    assert torch.equal(gray.blocks[1][0].se.conv1.weight, trained.blocks[1][0].se.conv1.weight)


def test_original_with_non_tensor_entries_names_them(tmp_path):
    from weights.convert import read_original

    torch.save({"A": torch.ones(3), "epoch": 3}, tmp_path / "orig.pth")
    with pytest.raises(CheckpointError, match=r"entries \['epoch'\] are not tensors"):
        read_original(tmp_path / "orig.pth")


def test_original_training_checkpoint_layout_converts_and_only_a_wholly_prefixed_dict_is_unwrapped(tmp_path):
    """``{"model_state_dict": state}`` (a common training-checkpoint layout) converts; the ``module.`` prefix is
    dropped only when every key has it (DataParallel), not from a submodule that is really named ``module``."""
    from weights.convert import convert, read_original

    small = zoo.create_model("alrnn_m20_p2", M=12)
    torch.save({"model_state_dict": small.state_dict()}, tmp_path / "train.pth")
    out = convert(tmp_path / "train.pth", "alrnn_m20_p2", tmp_path / "t.safetensors", M=12)
    assert _same_outputs(load_checkpoint(out), small)
    mixed = {"module.weight": torch.ones(2), "module.bias": torch.zeros(2), "head.weight": torch.ones(3)}
    torch.save(mixed, tmp_path / "mixed.pth")
    assert sorted(read_original(tmp_path / "mixed.pth")) == ["head.weight", "module.bias", "module.weight"]
    torch.save({f"module.{k}": v for k, v in mixed.items()}, tmp_path / "dp.pth")
    assert sorted(read_original(tmp_path / "dp.pth")) == sorted(mixed)


def test_training_state_trees_round_trip_exactly_or_refuse(tmp_path):
    """save_tree/load_tree: paths that spell the same key (``a.b`` and ``a: {b}``, ``0`` and 0) keep both tensors;
    one tensor in two places is stored once and comes back as one; a view into a stored tensor is copied; a key
    JSON cannot give back (a tuple) is refused when saving."""
    from weights.tree import load_tree, save_tree

    a, b, x = torch.tensor([1.0]), torch.tensor([2.0]), torch.arange(6.0).view(2, 3)
    state = {"a.b": a, "a": {"b": b}, 0: a * 3, "0": b * 3, "x": x, "again": x, "row": x[1], "t": (x.t(), [b])}
    loaded = load_tree(save_tree(state, tmp_path / "state.safetensors"))
    assert list(loaded) == list(state) and loaded["a"]["b"].item() == 2.0 and loaded["a.b"].item() == 1.0
    assert loaded[0].item() == 3.0 and loaded["0"].item() == 6.0 and loaded["again"] is loaded["x"]
    assert torch.equal(loaded["row"], x[1]) and torch.equal(loaded["t"][0], x.t()) and isinstance(loaded["t"], tuple)
    keys = {0.5: a, 2: b, True: x, None: 4, "s": [5]}  # every key type the tree keeps (a scheduler's milestones)
    back = load_tree(save_tree({"keys": keys}, tmp_path / "keys.safetensors"))["keys"]
    assert [(type(k), k) for k in back] == [(type(k), k) for k in keys] and back[None] == 4 and back["s"] == [5]
    assert torch.equal(back[0.5], a) and torch.equal(back[2], b) and torch.equal(back[True], x)
    with pytest.raises(TypeError, match=r"cannot store the key \(1, 2\) \(tuple\) at 'opt'"):
        save_tree({"opt": {(1, 2): a}}, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="holds no training state .* it is a model checkpoint"):
        load_tree(save_checkpoint(zoo.create_model("alrnn_m20_p2"), tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="is training state .* weights.tree.load_tree reads it"):
        load_checkpoint(tmp_path / "state.safetensors")
    with pytest.raises(IsADirectoryError, match="is a folder, not a checkpoint file"):
        load_tree(tmp_path)


@pytest.mark.filterwarnings("ignore:save_checkpoint. this Views was not built")  # a hand-made module, on purpose
def test_ties_need_the_same_strides_and_either_name_and_nan_is_equal_to_itself(tmp_path):
    """load_state_into: a buffer that is the transpose of a square parameter is not tied to it (it shares the
    storage, not the values' layout); a tied pair loads from either name alone; both names holding the same NaN
    values are equal (a diverged model's tied weights)."""
    class Views(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3, 3))
            self.register_buffer("wt", self.w.data.t())
            self.register_buffer("row", self.w.data[1])  # overlaps w: stored as a copy

    saved = Views()
    file = save_checkpoint(saved, tmp_path / "t.safetensors")
    assert set(load_file(file)) == {"w", "wt", "row"}  # the transpose is no tie: kept under its own name
    loaded = load_into(Views(), file)
    assert torch.equal(loaded.w, saved.w) and torch.equal(loaded.row, saved.w[1]) and torch.equal(loaded.wt, saved.w.t())
    w = torch.randn(3, 3)
    into = load_state_into(Views(), {"w": w, "wt": w.t().clone(), "row": w[1].clone()})
    assert torch.equal(into.wt, w.t()) and torch.equal(into.w, w)
    lm = zoo.create_model("transformer_lm_13m", num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                          intermediate_size=16, vocab_size=20, max_position_embeddings=8)
    state = {k: v.clone() for k, v in lm.state_dict().items()}
    embedding = state.pop("model.embed_tokens.weight")
    fresh = zoo.create_model("transformer_lm_13m", num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
                             intermediate_size=16, vocab_size=20, max_position_embeddings=8)
    load_state_into(fresh, state)  # only lm_head.weight, its tied name
    assert torch.equal(fresh.model.embed_tokens.weight, embedding)
    embedding[0, 0] = float("nan")
    from weights import NonFiniteWeightsWarning

    with pytest.warns(NonFiniteWeightsWarning, match="lm_head.weight, model.embed_tokens.weight"):
        load_state_into(fresh, {**state, "model.embed_tokens.weight": embedding, "lm_head.weight": embedding.clone()})
    assert fresh.lm_head.weight[0, 0].isnan()


def test_bad_records_and_paths_are_clear_errors_that_change_nothing(tmp_path):
    """load_into reads a checkpoint's recorded config before copying any weight; save_checkpoint refuses
    extra_metadata that is not text or that would replace the file's own record, and a folder as the path;
    load_checkpoint names a folder as one."""
    m = zoo.create_model("alrnn_m20_p2")
    good = save_checkpoint(m, tmp_path / "good.safetensors")
    meta = read_metadata(good)
    target = zoo.create_model("alrnn_m20_p2")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    for config in ("{M:", "[1]"):
        save_file({k: v * 0 for k, v in load_file(good).items()}, tmp_path / "bad.safetensors",
                  metadata={**meta, "config": config})
        with pytest.raises(CheckpointError, match="recorded config is not a readable mapping"):
            load_into(target, tmp_path / "bad.safetensors")
        assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    for extra in ({"step": 5}, {"model": "other"}):
        with pytest.raises(ValueError, match="extra_metadata must map new names to strings"):
            save_checkpoint(m, tmp_path / "x.safetensors", extra_metadata=extra)
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        save_checkpoint(m, tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_convert_reads_by_content_keeps_metadata_and_records_the_given_config(tmp_path):
    """A safetensors original named .bin converts (its recipe metadata kept); a Git LFS pointer or a truncated
    header named .safetensors is named as such; the config the original was trained with is recorded, so
    load_checkpoint rebuilds that model; without it zoo convert says to give it with --set."""
    from train.cli import main
    from weights.convert import convert, read_original

    small = zoo.create_model("alrnn_m20_p2", M=12)
    save_checkpoint(small, tmp_path / "orig.safetensors", extra_metadata={"recipe": "alrnn-lorenz63"})
    (tmp_path / "orig.bin").write_bytes((tmp_path / "orig.safetensors").read_bytes())
    out = convert(tmp_path / "orig.bin", "alrnn_m20_p2", tmp_path / "conv.safetensors", M=12)
    meta = read_metadata(out)
    assert meta["recipe"] == "alrnn-lorenz63" and meta["converted_from"] == "orig.bin"
    assert _same_outputs(load_checkpoint(out), small)
    (tmp_path / "lfs.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n")
    with pytest.raises(CheckpointError, match="it starts with b'version https://git-lfs.*Git LFS pointer"):
        read_original(tmp_path / "lfs.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "orig.safetensors").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="is a truncated safetensors file: its header needs"):
        read_original(tmp_path / "cut.safetensors")
    torch.save(small.state_dict(), tmp_path / "orig.pth")
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "orig.pth"), "--model", "alrnn_m20_p2", "--out", str(tmp_path / "c.safetensors")])
    main(["convert", str(tmp_path / "orig.pth"), "--model", "alrnn_m20_p2", "--out", str(tmp_path / "c.safetensors"),
          "--set", "M=12"])
    assert load_checkpoint(tmp_path / "c.safetensors").zoo_config.M == 12
    (tmp_path / "orig.safetensors").write_bytes(b"someone else's file")  # the default --out, already taken
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "orig.pth"), "--model", "alrnn_m20_p2", "--set", "M=12"])
    assert (tmp_path / "orig.safetensors").read_bytes() == b"someone else's file"
    double = {k: v.double() for k, v in small.state_dict().items()}
    torch.save(double, tmp_path / "saved.safetensors")  # torch.save, whatever the name
    out = convert(tmp_path / "saved.safetensors", "alrnn_m20_p2", tmp_path / "f64.safetensors", M=12)
    assert {t.dtype for t in load_checkpoint(out).state_dict().values()} == {torch.float64}  # the original's dtype
    torch.save({f"module.{k}": v for k, v in small.state_dict().items()}, tmp_path / "ddp.pth")  # DDP's prefix
    assert _same_outputs(load_checkpoint(convert(tmp_path / "ddp.pth", "alrnn_m20_p2", tmp_path / "d.safetensors",
                                                 M=12)), small)


def test_first_use_conversion_uses_the_manifest_entrys_config(tmp_path, monkeypatch):
    """An original trained with settings other than the defaults (the entry's config) is converted with them,
    so pretrained loading needs no overrides."""
    from weights.manifest import git_blob_sha1

    src = manifest_mod.cache_dir() / "orig_p1.pth"
    src.parent.mkdir(parents=True, exist_ok=True)
    torch.save(zoo.create_model("alrnn_m20_p2", P=1).state_dict(), src)
    entry = {"name": "test_p1", "model": "alrnn_m20_p2", "file": "test_p1.safetensors", "sha256": None,
             "config": {"P": 1}, "original": {"url": None, "file": "orig_p1.pth", "git_blob_sha1": git_blob_sha1(src)}}
    monkeypatch.setattr(manifest_mod, "published_checkpoints", lambda: [entry])
    assert zoo.create_model("alrnn_m20_p2", pretrained="test_p1").zoo_config.P == 1


def test_shipped_files_are_in_the_sorted_form_and_a_pointer_is_named(tmp_path, monkeypatch):
    """Every shipped file is written as our writer writes it (header keys sorted: resaving gives the same bytes);
    a shipped file replaced by a Git LFS pointer is named as one."""
    from safetensors import safe_open

    from weights.checkpoint import save_safetensors

    for path in sorted((manifest_mod.PACKAGE_DIR / "files").glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        again = save_safetensors(load_file(path), tmp_path / path.name, meta)
        assert again.read_bytes() == path.read_bytes(), path.name
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "alrnn_m20_p2_lorenz63.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.setattr(manifest_mod, "PACKAGE_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=r"it is a Git LFS pointer, not the file; restore it from the paperzoo "
                                              r"repository \(`git lfs pull` in a checkout\)"):
        zoo.create_model("alrnn_m20_p2", pretrained=True)
    # a cached file (converted or downloaded) is no repository's: delete and fetch again, not `git lfs pull`
    cached = tmp_path / "pointer.safetensors"
    cached.write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(CheckpointError, match=r"it is a Git LFS pointer, not the file; delete it and fetch it again"):
        manifest_mod.verify_sha256(cached, "0" * 64)


def test_load_into_a_compiled_or_data_parallel_model_and_non_finite_weights_warn(tmp_path):
    """save_checkpoint unwraps torch.compile and DataParallel; load_into does too (it refused their prefixed keys).
    NaN/inf weights load, with a warning naming them."""
    from weights import NonFiniteWeightsWarning

    source = zoo.create_model("ib_mlp_tanh")
    path = save_checkpoint(source, tmp_path / "ib.safetensors")
    for wrap in (torch.compile, torch.nn.DataParallel):
        target = zoo.create_model("ib_mlp_tanh")
        wrapped = wrap(target)
        assert load_into(wrapped, path) is wrapped
        assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    with torch.no_grad():
        source.linears[0].weight[0, 0] = float("nan")
    bad = save_checkpoint(source, tmp_path / "nan.safetensors")
    with pytest.warns(NonFiniteWeightsWarning, match=r"1 tensors hold NaN or inf: linears.0.weight"):
        load_checkpoint(bad)


def test_config_values_are_plain_finite_numbers_and_rates_are_probabilities():
    import numpy as np

    assert type(zoo.create_model("alrnn_m20_p2", M=np.int64(30)).zoo_config.M) is int  # JSON-writable
    with pytest.raises(ValueError, match="tabular_mlp: dropout must be a finite number, got nan"):
        zoo.create_model("tabular_mlp", dropout=float("nan"))
    with pytest.raises(ValueError, match=r"dropout is a probability in \[0, 1\), got 1.5"):
        zoo.create_model("hopfield_tabular", dropout=1.5)
    with pytest.raises(ValueError, match="num_attention_heads must be an integer >= 1, got 0"):
        zoo.create_model("transformer_lm_13m", num_hidden_layers=1, num_attention_heads=0)
    with pytest.raises(TypeError, match="a model name is a str"):
        zoo.create_model(None)
    with pytest.raises(TypeError, match="pretrained is True, False or a checkpoint name"):
        zoo.create_model("alrnn_m20_p2", pretrained=1)
    with pytest.raises(TypeError, match=r"a checkpoint name \(a non-empty str\), got ''"):  # '' built random weights
        zoo.create_model("alrnn_m20_p2", pretrained="")


def test_a_checkpoint_gets_the_usual_permissions_and_a_failed_flush_keeps_the_old_file(tmp_path, monkeypatch):
    """atomic_write's temporary file is created 0600; the finished checkpoint has the permissions any new file in
    the folder gets (0666 less the umask), so other users of a shared run folder can read it. A file that cannot
    be flushed to disk (os.fsync fails: a full or failing disk) is an error that leaves the old file whole and no
    temporary file behind, never a checkpoint renamed into place unflushed."""
    model = zoo.create_model("ib_mlp_tanh")
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    (tmp_path / "plain.txt").write_text("x")  # created by open(): the umask's permissions
    assert oct(os.stat(path).st_mode & 0o777) == oct(os.stat(tmp_path / "plain.txt").st_mode & 0o777)
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError, match="Input/output error"):
        save_checkpoint(model, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "plain.txt"]


class _Kinds(torch.nn.Module):
    """A float weight with a tied alias (same storage, offset, shape, strides), a bool mask and two empty buffers
    (both at data pointer 0: equal in all but name)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(2, 3))
        self.register_buffer("alias", self.w.data)
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("empty_a", torch.zeros(0, 3))
        self.register_buffer("empty_b", torch.zeros(0, 3))


def test_empty_buffers_bool_kinds_and_exactly_equal_ties_are_checked_on_loading(tmp_path):
    """Two empty buffers share an identity but for their names and are not one tensor: both are stored and load
    back. A bool buffer takes no integer values (0/1 would pass for True/False only by luck). Names tied in the
    model must hold exactly equal values in a state dict: a difference of 1e-6 is refused too."""
    source = _Kinds()
    with pytest.warns(UserWarning, match="not built by zoo.create_model"):
        path = save_checkpoint(source, tmp_path / "kinds.safetensors")
    assert set(load_file(path)) == {"w", "mask", "empty_a", "empty_b"}  # alias is w: stored once
    target = load_into(_Kinds(), path)
    assert torch.equal(target.w, source.w) and torch.equal(target.alias, source.w)
    assert torch.equal(target.mask, source.mask)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    with pytest.raises(CheckpointError,
                       match=r"mis-typed keys \(1\): mask: checkpoint torch.uint8 vs model torch.bool"):
        load_state_into(_Kinds(), {**state, "mask": state["mask"].to(torch.uint8)})
    with pytest.raises(CheckpointError, match=r"tied in the model, unequal in the checkpoint keys \(1\): alias vs w"):
        load_state_into(_Kinds(), {**state, "alias": state["w"] + 1e-6})


def test_infinite_weights_warn_and_the_message_names_up_to_ten_tensors(tmp_path):
    """Weights that are inf (not NaN) warn as well; the warning names every tensor when there are ten or fewer
    and the first ten then '...' when there are more."""
    from weights import NonFiniteWeightsWarning

    class Many(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            for i in range(n):
                self.register_buffer(f"b{i:02d}", torch.zeros(2))

    for n, names in ((1, "b00"), (10, ", ".join(f"b{i:02d}" for i in range(10))),
                     (11, ", ".join(f"b{i:02d}" for i in range(10)) + ", ...")):
        with pytest.warns(NonFiniteWeightsWarning) as caught:
            load_state_into(Many(n), {f"b{i:02d}": torch.tensor([1.0, float("inf")]) for i in range(n)})
        assert str(caught[0].message) == f"state dict: {n} tensors hold NaN or inf: {names}"


def test_load_checkpoint_puts_the_model_where_map_location_says(tmp_path):
    """load_checkpoint(path, map_location) returns the model on that device (meta here: the only device besides
    the CPU that every machine has), its parameters in the file's dtype."""
    path = save_checkpoint(zoo.create_model("ib_mlp_tanh").double(), tmp_path / "m.safetensors")
    for location in ("meta", torch.device("meta")):
        model = load_checkpoint(path, map_location=location)
        assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.float64)}
    assert {p.device.type for p in load_checkpoint(path).parameters()} == {"cpu"}


def test_a_legacy_pickle_torch_save_file_is_named_as_one(tmp_path):
    """torch.save files of the old, non-zip format start with the pickle protocol byte 0x80; they are named as
    torch.save files (with the way to convert them) like the zip ones, not as unreadable safetensors."""
    model = zoo.create_model("ib_mlp_tanh")
    torch.save(model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert (tmp_path / "legacy.pt").read_bytes()[:1] == b"\x80"
    with pytest.raises(CheckpointError, match=r"legacy.pt is a PyTorch torch.save file, not safetensors; convert it"):
        load_into(model, tmp_path / "legacy.pt")


def test_the_whole_sha256_is_compared_not_a_prefix(tmp_path):
    """verify_sha256 compares all 64 hex digits: a hash differing only in its last digit is a mismatch naming both
    hashes and the remedy; the file's own hash passes."""
    from weights.manifest import verify_sha256

    path = save_checkpoint(zoo.create_model("ib_mlp_tanh"), tmp_path / "m.safetensors")
    actual = sha256_of(path)
    verify_sha256(path, actual)
    near = actual[:63] + ("0" if actual[63] != "0" else "1")
    with pytest.raises(CheckpointError, match=rf"sha256 mismatch for .*m.safetensors: expected {near}, file has "
                                              rf"{actual}; the file is corrupt or not the published one; delete it"):
        verify_sha256(path, near)


def test_an_original_that_is_not_the_published_one_is_refused_before_conversion(tmp_path, monkeypatch):
    """An original in the cache whose git blob id differs from the manifest's (another file under that name, a
    truncated download) is refused with both ids and the URL to download again; nothing is converted or recorded
    in the cache, so the next call does not trust it either."""
    from weights.manifest import git_blob_sha1

    src = manifest_mod.cache_dir() / "orig.pth"
    src.parent.mkdir(parents=True, exist_ok=True)
    torch.save(zoo.create_model("alrnn_m20_p2").state_dict(), src)
    published = "0" * 40
    entry = {"name": "test_orig", "model": "alrnn_m20_p2", "file": "test_orig.safetensors", "sha256": None,
             "original": {"url": "https://example.org/orig.pth", "file": "orig.pth", "git_blob_sha1": published}}
    monkeypatch.setattr(manifest_mod, "published_checkpoints", lambda: [entry])
    for _ in range(2):
        with pytest.raises(CheckpointError, match=rf"orig.pth is not the published original of 'test_orig': its git "
                                                  rf"blob id is {git_blob_sha1(src)}, the authors' repository has "
                                                  rf"{published}. Delete it and download https://example.org/orig.pth"):
            zoo.create_model("alrnn_m20_p2", pretrained="test_orig")
        assert sorted(p.name for p in manifest_mod.cache_dir().iterdir()) == ["orig.pth"]


def test_pretrained_true_takes_the_first_listed_checkpoint_and_a_name_picks_another(tmp_path, monkeypatch):
    """With two published checkpoints for one model, ``pretrained=True`` (and ``load_pretrained`` without a name)
    loads the first one listed, built with its config; ``pretrained="<name>"`` loads that one; an unknown name is
    refused listing both in manifest order."""
    from weights.manifest import NoCheckpointError, load_pretrained

    first, second = zoo.create_model("alrnn_m20_p2", P=1), zoo.create_model("alrnn_m20_p2")
    entries = []
    for name, model, config in (("first", first, {"P": 1}), ("second", second, {})):
        path = save_checkpoint(model, manifest_mod.cache_dir() / f"{name}.safetensors")
        entries.append({"name": name, "model": "alrnn_m20_p2", "file": path.name, "sha256": sha256_of(path),
                        "url": None, "config": config})
    monkeypatch.setattr(manifest_mod, "published_checkpoints", lambda: entries)
    default = zoo.create_model("alrnn_m20_p2", pretrained=True)
    assert default.zoo_config.P == 1 and _same_outputs(default, first)
    named = zoo.create_model("alrnn_m20_p2", pretrained="second")
    assert named.zoo_config.P == 2 and _same_outputs(named, second)
    assert _same_outputs(load_pretrained(zoo.create_model("alrnn_m20_p2", P=1)), first)
    with pytest.raises(NoCheckpointError, match=r"checkpoint 'third' for model 'alrnn_m20_p2'; its checkpoints: "
                                                r"\['first', 'second'\]"):
        zoo.create_model("alrnn_m20_p2", pretrained="third")


def test_a_model_built_outside_the_registry_is_not_compared_on_settings_its_config_lacks(tmp_path):
    """A checkpoint recording a setting (added since) that a model built outside the registry (a Hugging Face
    config, from_pretrained) does not hold loads silently, while a setting both hold is still compared; a registry
    model lacking a recorded setting is named, as it is built from the same config class."""

    from weights import ConfigMismatchWarning
    from weights.checkpoint import config_differences
    from zoo.transformer_lm import TransformerLMConfig, TransformerLMForCausalLM

    registry = zoo.create_model("transformer_lm_13m", num_hidden_layers=1, vocab_size=100)
    recorded = json.loads(read_metadata(save_checkpoint(registry, tmp_path / "lm.safetensors"))["config"])
    newer = tmp_path / "newer.safetensors"  # written by a later version whose config has one more setting
    later = {**read_metadata(tmp_path / "lm.safetensors"), "config": json.dumps({**recorded, "rope_theta": 10000.0})}
    save_file(load_file(tmp_path / "lm.safetensors"), newer, metadata=later)
    outside = TransformerLMForCausalLM(TransformerLMConfig(num_hidden_layers=1, vocab_size=100))
    assert "rope_theta" not in outside.config.to_dict()
    assert config_differences(outside, json.dumps({**recorded, "rope_theta": 10000.0})) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_into(outside, newer)
    assert all(torch.equal(a, b) for a, b in zip(outside.state_dict().values(), registry.state_dict().values()))
    assert config_differences(outside, json.dumps({**recorded, "rope_theta": 1.0, "hidden_size": 128})) == {
        "hidden_size": (128, 256)}
    assert config_differences(registry, json.dumps({**recorded, "rope_theta": 1.0})) == {"rope_theta": (1.0, None)}
    with pytest.warns(ConfigMismatchWarning, match=r"\{'rope_theta': \(10000.0, None\)\}"):
        load_into(zoo.create_model("transformer_lm_13m", num_hidden_layers=1, vocab_size=100), newer)


def test_a_sha256_mismatch_names_the_remedy_for_where_the_file_came_from(tmp_path, monkeypatch):
    """A damaged file shipped in the package is restored from the repository (deleting it would not bring it
    back); a damaged download is fetched again; a file placed by hand (no URL) is replaced by the published one."""
    from weights.manifest import resolve

    monkeypatch.setattr(manifest_mod, "PACKAGE_DIR", tmp_path / "package")
    wrong = "0" * 64
    shipped = save_checkpoint(zoo.create_model("ib_mlp_tanh"), tmp_path / "package" / "files" / "shipped.safetensors")
    entry = {"name": "t", "model": "ib_mlp_tanh", "file": shipped.name, "sha256": wrong, "url": "https://x.org/f"}
    with pytest.raises(CheckpointError, match=rf"sha256 mismatch for {shipped}: .*the file is corrupt or not the "
                                              r"published one; restore it from the paperzoo repository"):
        resolve(entry)
    cached = save_checkpoint(zoo.create_model("ib_mlp_tanh"), manifest_mod.cache_dir() / "cached.safetensors")
    for url, remedy in (("https://x.org/f", "delete it and fetch it again"), (None, "replace it with the published")):
        with pytest.raises(CheckpointError, match=rf"sha256 mismatch for {cached}: .*published one; {remedy}"):
            resolve({**entry, "file": cached.name, "url": url})
    assert sha256_of(shipped) != wrong and resolve({**entry, "sha256": sha256_of(shipped)}) == shipped


def test_a_damaged_training_state_record_is_a_checkpoint_error_naming_the_file(tmp_path):
    """load_tree turns every way its JSON record can be damaged (not JSON, a tensor reference the file lacks, an
    entry that is not a key-value pair, a mapping where a list belongs) into one CheckpointError naming the file,
    so a resume reports the file instead of an internal error."""
    from weights.tree import load_tree

    for i, tree in enumerate(('{"__dict__": [["a", ', '{"__tensor__": "missing"}', '{"__dict__": [["a", 1, 2]]}',
                              '{"__dict__": 5}')):
        path = tmp_path / f"state{i}.safetensors"
        save_file({"x": torch.zeros(1)}, path, metadata={"tree": tree})
        with pytest.raises(CheckpointError, match=rf"{path} is not a readable training-state file \("):
            load_tree(path)
    good = tmp_path / "good.safetensors"
    save_file({"x": torch.ones(2)}, good, metadata={"tree": '{"__dict__": [["w", {"__tensor__": "x"}]]}'})
    assert torch.equal(load_tree(good)["w"], torch.ones(2))


def test_checkpoint_paths_expand_the_home_folder(tmp_path, monkeypatch):
    """'~/runs/m.safetensors' made a folder literally named '~' in the working directory (and read it back from
    there), where `rm -rf ~` would then be the clean-up."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    m = zoo.create_model("alrnn_m20_p1")
    save_checkpoint(m, "~/runs/m.safetensors")
    assert (tmp_path / "home" / "runs" / "m.safetensors").is_file() and not (tmp_path / "~").exists()
    assert torch.equal(load_checkpoint("~/runs/m.safetensors").L, m.L)
    assert torch.equal(load_into(zoo.create_model("alrnn_m20_p1"), "~/runs/m.safetensors").L, m.L)


@pytest.mark.skipif(os.name != "posix", reason="file modes and the dead-writer probe are POSIX")
def test_a_rewrite_keeps_the_files_mode_and_removes_a_killed_writers_temporary_file(tmp_path):
    """A 0600 checkpoint became 0644 when saved again; a writer killed mid-save left its full-size temporary file
    (.NAME.*.tmp) behind for good. The next write of that file removes this host's temporaries whose process is
    gone, and leaves those of live processes (a concurrent writer) alone."""
    import socket
    import subprocess

    path = tmp_path / "m.safetensors"
    m = zoo.create_model("alrnn_m20_p1")
    save_checkpoint(m, path)
    path.chmod(0o600)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    orphan = tmp_path / f".m.safetensors.{host}.{dead.pid}.abc123.tmp"
    live = tmp_path / f".m.safetensors.{host}.{os.getppid()}.def456.tmp"
    other_host = tmp_path / f".m.safetensors.elsewhere.{dead.pid}.ghi789.tmp"
    for f in (orphan, live, other_host):
        f.write_bytes(b"partial")
    save_checkpoint(m, path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert not orphan.exists() and live.exists() and other_host.exists()
    # a writer of another user: signal 0 is refused (PermissionError), so it is alive and its file stays
    others = tmp_path / f".m.safetensors.{host}.{dead.pid}.jkl012.tmp"
    others.write_bytes(b"partial")
    real_kill = os.kill

    def refused(pid, sig):
        if pid == dead.pid:
            raise PermissionError(1, "Operation not permitted")
        return real_kill(pid, sig)

    import unittest.mock

    with unittest.mock.patch.object(os, "kill", refused):
        save_checkpoint(m, path)
    assert others.exists()


def test_atomic_write_flushes_the_file_then_the_rename_in_its_folder(tmp_path, monkeypatch):
    """After a power loss the target must hold the old or the new file: the temporary file is flushed before the
    rename, and the folder (the rename itself) after it; a folder that cannot be flushed (some file systems) does
    not fail the write."""
    import stat

    flushed, real_fsync = [], os.fsync

    def recording(fd):
        flushed.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else
                       "target" if (tmp_path / "f.bin").exists() else "temporary")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    atomic_write(tmp_path / "f.bin", lambda tmp: open(tmp, "wb").close())
    assert flushed == ["temporary", "folder"]

    def no_folders(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(22, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_folders)
    atomic_write(tmp_path / "g.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
    assert (tmp_path / "g.bin").read_bytes() == b"x"
