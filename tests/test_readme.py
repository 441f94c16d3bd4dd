"""The README's Python examples run as written, in a fresh directory, with their placeholders bound.

A placeholder is a name an example leaves to the reader (``x``, ``stream``, ``my_model``...); ``PLACEHOLDERS``
binds each to a real object of the kind the example's comment describes. An example that needs the internet
(published weights not in the cache) must fail offline with the actionable message of ``weights.manifest``.
"""
import re
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = [block for lang, block in re.findall(r"```(\w*)\n(.*?)```", README.read_text(), re.S) if lang == "python"]


def _hflayers_model():
    from tests.test_hopfield_layers import HFLAYERS_64, hflayers_state
    return types.SimpleNamespace(state_dict=lambda: hflayers_state(HFLAYERS_64))


def _checkpoint_on_disk():
    import zoo
    from weights import save_checkpoint
    save_checkpoint(zoo.create_model("alrnn_m20_p2"), "other.safetensors")


# placeholder bindings, keyed by a line that identifies the example
PLACEHOLDERS = {
    'load_into(m, "other.safetensors")': lambda: _checkpoint_on_disk() or {},
    "h.load_state_dict(hflayers_model.state_dict())": lambda: {
        "hflayers_model": _hflayers_model(), "stored": torch.randn(8, 30, 64), "state": torch.randn(8, 5, 64),
        "projection": torch.randn(8, 30, 64), "pad": torch.zeros(8, 30, dtype=torch.bool),
        "instances": torch.randn(8, 30, 64)},
    "apply_sigma_reparam(my_model": lambda: {"my_model": __import__("timm").create_model("vit_tiny_patch16_224")},
    'm.loss(torch.arange(4), x)': lambda: {"x": torch.randn(4, 400, 2), "stream": torch.randn(2, 60, 2)},
}
SLOW = ('fit(load_recipe("alrnn-lorenz63"', 'timm.create_model("vit_base_patch16_224_sigma")')  # 20 s or more each
OFFLINE_DOWNLOAD = 'zoo.create_model("mobilenetv2_ca_100", pretrained=True)'


def _example_params():
    for i, block in enumerate(EXAMPLES):
        marks = [pytest.mark.slow] if any(s in block for s in SLOW) else []
        yield pytest.param(block, id=f"example{i}-" + block.splitlines()[1][:30].strip(), marks=marks)


def test_readme_has_python_examples_for_every_family():
    assert len(EXAMPLES) >= 8, "the README lost its Python examples"
    unbound = [key for key in PLACEHOLDERS if not any(key in block for block in EXAMPLES)]
    assert not unbound, f"PLACEHOLDERS keys match no README example any more: {unbound}"


@pytest.mark.parametrize("block", list(_example_params()))
def test_readme_example_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAPERZOO_CACHE", str(tmp_path / "cache"))  # published weights: not downloaded before

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    namespace = {"__name__": "readme_example"}
    for key, bind in PLACEHOLDERS.items():
        if key in block:
            namespace.update(bind())
    code = compile(block, "README example", "exec")
    if OFFLINE_DOWNLOAD in block:  # runs up to the download, which must explain how to get the file by hand
        with pytest.raises(FileNotFoundError, match=r"could not download .*Download https://.* by hand and save it as"):
            exec(code, namespace)
        assert "m" in namespace and "feats" in namespace, "the lines before the download did not run"
    else:
        exec(code, namespace)
