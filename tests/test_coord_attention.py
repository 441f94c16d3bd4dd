import copy
import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.coord_attn import CoordAttn
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import zoo
from layers import CoordAttention
from weights import CheckpointError, load_checkpoint, read_metadata
from weights.convert import convert
from zoo.coord_attention import MOBILENEXT_STAGES

from .conftest import randomize_batchnorm

PARAMS = {  # exact counts, 1000 classes (paper: 3.5M, 3.89M, 3.89M, 3.95M; MobileNeXt 3.5M, +CA 4.09M)
    "mobilenetv2_100": 3_504_872, "mobilenetv2_se_100": 3_888_208, "mobilenetv2_cbam_100": 3_889_808,
    "mobilenetv2_ca_100": 3_950_648, "mobilenext_100": 3_535_416, "mobilenext_ca_100": 3_971_626,
}


# ---------------- the block ----------------

def test_block_equals_timm_coordattn_configured_as_the_paper():
    gen = torch.Generator().manual_seed(0)
    ours = CoordAttention(96)
    randomize_batchnorm(ours, gen)
    theirs = CoordAttn(96, rd_channels=ours.mip, bias=True, act_layer=nn.Hardswish, norm_layer=nn.BatchNorm2d)
    theirs.load_state_dict(ours.state_dict())  # same names: conv1, bn1, conv_h, conv_w
    x = torch.randn(2, 96, 7, 11, generator=gen)
    for mode in (False, True):
        ours.train(mode), theirs.train(mode)
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


@pytest.mark.parametrize("channels, ours_mip, timm_mip", [(96, 8, 8), (144, 8, 8), (384, 12, 16), (960, 30, 40),
                                                         (300, 9, 16), (1000, 31, 40)])  # floor, not ceiling
def test_defaults_differ_from_timm_coordattn(channels, ours_mip, timm_mip):
    ours, theirs = CoordAttention(channels), CoordAttn(channels)
    assert ours.mip == ours.conv1.out_channels == ours_mip  # max(8, C // 32)
    assert theirs.conv1.out_channels == timm_mip  # make_divisible(C / 16 * 2 / 3, 8)
    assert ours.conv1.bias is not None and theirs.conv1.bias is None  # the authors' convs have biases
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(ours) == 3 * channels * ours_mip + ours_mip + 2 * ours_mip + 2 * channels
    assert n(theirs) == 3 * channels * timm_mip + 2 * timm_mip


def test_batchnorm_keeps_the_default_momentum_in_training():
    """The authors' block uses BatchNorm2d's defaults: after one training forward from fresh statistics the running
    mean is 0.1 x the batch mean of conv1's output over the concatenated descriptors (eval outputs depend on it)."""
    torch.manual_seed(0)
    ca = CoordAttention(64).train()
    x = torch.randn(4, 64, 7, 5)
    y = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], 2)  # (B, C, H + W, 1)
    ca(x)
    torch.testing.assert_close(ca.bn1.running_mean, 0.1 * ca.conv1(y).mean((0, 2, 3)), atol=1e-6, rtol=1e-5)


def test_zero_projections_give_quarter_gain():
    ca = CoordAttention(16).eval()
    for conv in (ca.conv_h, ca.conv_w):
        nn.init.zeros_(conv.weight), nn.init.zeros_(conv.bias)
    x = torch.randn(3, 16, 5, 6)
    assert torch.allclose(ca(x), x / 4)  # sigmoid(0) * sigmoid(0) = 1/4


def test_inference_path_equals_the_autograd_path_bit_for_bit():
    """Under no_grad the block multiplies in place (one allocation); the values are those of x * a_h * a_w."""
    torch.manual_seed(0)
    ca = CoordAttention(24).eval()
    for x in (torch.randn(2, 24, 7, 5), torch.randn(2, 24, 7, 5).contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            fast = ca(x)
        assert torch.equal(fast, ca(x).detach())
        (ca(x.requires_grad_()) ** 2).sum().backward()  # the training path still differentiates
        assert x.grad is not None and ca.conv_h.weight.grad is not None


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the input checks' shape tests, fixed in a trace
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # deprecated in torch 2.14, still used
def test_ca_models_trace_and_export():
    """torch.jit.trace records one graph with or without grad (the inference branch made its check fail: 'Graphs
    differed across invocations'), and torch.export gives the eager outputs."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name in ("mobilenetv2_ca_100", "mobilenext_ca_100"):
        model = timm.create_model(name, num_classes=10).eval()
        traced = torch.jit.trace(model, x)
        with torch.no_grad():
            assert torch.allclose(traced(x), model(x), atol=1e-5)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), model(x), atol=1e-5)


def test_equivariant_to_row_permutations_and_to_transposition():
    torch.manual_seed(0)
    ca = CoordAttention(32).eval()
    x = torch.randn(2, 32, 6, 9)
    perm = torch.randperm(6)
    assert torch.allclose(ca(x[:, :, perm]), ca(x)[:, :, perm], atol=1e-6)
    with torch.no_grad():
        ca.conv_w.load_state_dict(ca.conv_h.state_dict())
    assert torch.allclose(ca(x.transpose(2, 3)), ca(x).transpose(2, 3), atol=1e-6)


def test_gates_are_probe_points_and_bad_input_is_named():
    ca = CoordAttention(8)
    seen = {}
    ca.attn_h.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o.shape))
    ca.attn_w.register_forward_hook(lambda m, i, o: seen.__setitem__("w", o.shape))
    ca(torch.randn(2, 8, 5, 7))
    assert seen == {"h": (2, 8, 5, 1), "w": (2, 8, 1, 7)}
    with pytest.raises(ValueError, match=r"\(batch, 8, H, W\), got torch.float32 \(2, 4, 5, 5\)"):
        ca(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"floating tensor .*, got torch.int64"):
        ca(torch.ones(2, 8, 5, 5, dtype=torch.long))


@pytest.mark.parametrize("name", ["mobilenetv2_ca_100", "mobilenext_ca_100"])
def test_models_name_a_wrong_image_shape(name):
    """Both image families check their input alike, with timm's features_only wrapper too, instead of the stem
    conv's own message."""
    for model in (zoo.create_model(name).eval(), timm.create_model(name, features_only=True).eval()):
        for bad in (torch.randn(1, 4, 32, 32), torch.randn(3, 32, 32)):
            with pytest.raises(ValueError, match=rf"x must be floating images of shape \(batch, 3, H, W\), got "
                                                 rf"torch.float32 {re.escape(str(tuple(bad.shape)))}"):
                model(bad)


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # the in_chans=0 model
@pytest.mark.parametrize("name", ["mobilenetv2_100", "mobilenetv2_ca_100", "mobilenext_100"])
def test_models_name_integer_images_and_timms_own_baseline_checks_too(name):
    """Integer pixels (uint8 straight from a decoder) are a named error, not the conv's 'expected scalar type'; the
    baseline, timm's own model, gets the same check when the zoo builds it."""
    model = zoo.create_model(name, num_classes=10).eval()
    with pytest.raises(ValueError, match=r"floating images of shape \(batch, 3, H, W\), got torch.uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got torch.float32 \(3, 32, 32\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match=r"x is torch.float64 but the model is torch.float32"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    no_channels = zoo.create_model(name, num_classes=10, in_chans=0)  # the check read 0 channels as "no conv"
    with pytest.raises(ValueError, match=r"floating images of shape \(batch, 0, H, W\)"):
        no_channels(torch.zeros(1, 3, 32, 32))


@pytest.mark.parametrize("kwargs, error", [
    (dict(channels=True), TypeError), (dict(channels=96.0), TypeError), (dict(channels="96"), TypeError),
    (dict(channels=0), ValueError), (dict(channels=96, reduction=2.0), TypeError), (dict(channels=96, min_mip=0), ValueError),
])
def test_sizes_must_be_positive_ints(kwargs, error):
    name = [k for k in ("min_mip", "reduction", "channels") if k in kwargs][0]
    with pytest.raises(error, match=f"CoordAttention: {name} must be"):
        CoordAttention(**kwargs)


# ---------------- the models ----------------

@pytest.mark.parametrize("name", sorted(PARAMS))
def test_exact_parameter_counts_through_both_registries(name):
    for model in (zoo.create_model(name), timm.create_model(name)):
        assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
        if name.startswith("mobilenetv2_") and name != "mobilenetv2_100":  # the authors' classifier dropout
            assert model.drop_rate == 0.1


def test_mobilenext_ca_before_last_depthwise_gives_the_papers_4_09m():
    model = zoo.create_model("mobilenext_ca_100", attn_position="last_dw")
    assert sum(p.numel() for p in model.parameters()) == 4_088_113


def test_attention_only_in_expansion_blocks():
    model = timm.create_model("mobilenetv2_ca_100")
    assert isinstance(model.blocks[0][0].se, nn.Identity)  # the t = 1 block
    assert sum(isinstance(m, CoordAttention) for m in model.modules()) == 16


@pytest.mark.parametrize("registry", ["zoo", "timm"])
def test_probe_by_glob_reaches_every_gate_of_the_full_model(registry):
    """A Probe with globs on the full MobileNetV2-CA (either registry) attaches to all 16 blocks' a_h and a_w
    and measures exactly what the gates output in that forward."""
    from estimators import Probe
    from estimators.estimator import Estimator

    torch.manual_seed(0)
    model = (zoo.create_model if registry == "zoo" else timm.create_model)("mobilenetv2_ca_100").eval()
    direct = {}
    for name, module in model.named_modules():
        if name.endswith((".attn_h", ".attn_w")):
            module.register_forward_hook(lambda m, i, o, name=name: direct.__setitem__(name, o.mean().item()))
    points = {"*.attn_h": [Estimator("mean", lambda a: a.mean())], "*.attn_w": [Estimator("mean", lambda a: a.mean())]}
    with torch.no_grad(), Probe(model, points, every=1) as probe:
        model(torch.randn(2, 3, 64, 64))
    rows = {r["point"]: r["value"] for r in probe.table()}
    assert len(rows) == 32 and rows.keys() == direct.keys()
    assert all(rows[k] == pytest.approx(direct[k], rel=1e-6) for k in rows)
    assert all(0 < v < 1 for v in rows.values())  # sigmoid gates


def test_features_only_reset_classifier_and_data_config():
    x = torch.randn(2, 3, 64, 64)
    feats = timm.create_model("mobilenetv2_ca_100", features_only=True)(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)]
    feats = timm.create_model("mobilenext_ca_100", features_only=True)(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 32, 32), (144, 16, 16), (192, 8, 8), (384, 4, 4), (1280, 2, 2)]
    for name in ("mobilenetv2_ca_100", "mobilenext_ca_100"):
        model = zoo.create_model(name, num_classes=7).eval()
        assert model(x).shape == (2, 7)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
        unpooled = zoo.create_model(name, num_classes=7).eval()
        unpooled.reset_classifier(0, "")  # timm's convention: no head and no pooling gives the feature map
        assert unpooled(x).shape == (2, 1280, 2, 2)
        cfg = timm.data.resolve_data_config({}, model=model)
        assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875


@pytest.mark.parametrize("name", ["mobilenetv2_100", "mobilenext_100"])  # timm's own model, and ours like it
def test_reset_classifier_follows_the_models_dtype(name):
    model = timm.create_model(name, num_classes=7).to(torch.float64).eval()
    model.reset_classifier(5)
    out = model(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    assert out.shape == (2, 5) and out.dtype == torch.float64


def test_mobilenext_feature_levels_are_timms_strides():
    """One feature per reduction (the last stage reaching it), as timm's EfficientNet builder lists them."""
    modules = [f["module"] for f in timm.create_model("mobilenext_100").feature_info]
    assert modules == ["conv_stem", "blocks.1", "blocks.2", "blocks.4", "blocks.7"]
    x = torch.randn(1, 3, 64, 64)
    for kwargs, reductions in (({}, [2, 4, 8, 16, 32]), (dict(out_indices=(1, 2, 3, 4)), [4, 8, 16, 32])):
        ours = timm.create_model("mobilenext_ca_100", features_only=True, **kwargs)
        v2 = timm.create_model("mobilenetv2_ca_100", features_only=True, **kwargs)
        assert ours.feature_info.reduction() == v2.feature_info.reduction() == reductions
        assert [f.shape[2:] for f in ours(x)] == [f.shape[2:] for f in v2(x)]


def test_mobilenext_forward_intermediates_equal_the_feature_model(tmp_path):
    """timm's forward_intermediates / prune_intermediate_layers: the maps equal features_only's with the same
    weights (loaded through timm's pretrained path), the final features equal forward_features, and pruning keeps
    the stages the chosen maps need."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("mobilenext_ca_100").eval()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    feats = timm.create_model("mobilenext_ca_100", features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors"))).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert len(maps) == 5 and all(torch.equal(a, b) for a, b in zip(maps, feats(x)))
        assert torch.equal(final, model.forward_features(x))
        some = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        assert [m.shape[1] for m in some] == [144, 384] and torch.equal(some[1], maps[3])
        assert model.prune_intermediate_layers([1, 3]) == [1, 3] and len(model.blocks) == 5
        assert type(model.classifier) is nn.Identity and model.num_features == 384
        assert torch.equal(model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)[1], maps[3])
    with pytest.raises(ValueError, match="output_fmt must be 'NCHW'"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_features_only_loads_a_pretrained_file_strictly(tmp_path):
    gen = torch.Generator().manual_seed(0)
    full = timm.create_model("mobilenetv2_ca_100").eval()
    randomize_batchnorm(full, gen)
    state = full.state_dict()
    torch.save(state, tmp_path / "good.pth")
    load = lambda f: timm.create_model("mobilenetv2_ca_100", pretrained=True, features_only=True,
                                       pretrained_cfg_overlay=dict(file=str(tmp_path / f))).eval()
    feats, x = load("good.pth"), torch.randn(2, 3, 64, 64, generator=gen)
    with torch.no_grad():
        got, expected = feats(x), full.forward_intermediates(x, intermediates_only=True)
    assert len(got) == len(expected) == 5 and all(torch.equal(a, b) for a, b in zip(got, expected))
    assert not {"num_classes", "classifier"} & feats.pretrained_cfg.keys()  # timm's cfg for a feature model
    state["blocks.1.0.se.conv_x.weight"] = state.pop("blocks.1.0.se.conv_h.weight")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match=r"blocks\.1\.0\.se\.conv_h\.weight"):
        load("bad.pth")


def test_mobilenext_drop_path_follows_timms_builder():
    """Block k of K (all stages) with a skip drops its residual branch with probability rate * k / K, timm's
    rule; in eval mode nothing changes, and a dropped sample leaves the block as its input."""
    torch.manual_seed(0)
    plain = timm.create_model("mobilenext_100").eval()
    dropping = timm.create_model("mobilenext_100", drop_path_rate=1.0).eval()
    dropping.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), dropping(x))
    blocks = [b for stage in dropping.blocks for b in stage]
    assert len(blocks) == sum(n for _, _, n, _ in MOBILENEXT_STAGES) == 20
    via_zoo = zoo.create_model("mobilenext_ca_100", drop_path_rate=0.4)  # our registry takes it as timm does
    rates = {k: b.drop_path.drop_prob for k, b in enumerate(b for stage in via_zoo.blocks for b in stage) if b.has_skip}
    assert len(rates) > 10 and all(rate == pytest.approx(0.4 * k / 20) for k, rate in rates.items())
    for k, block in enumerate(blocks):
        assert block.drop_path.drop_prob == k / 20 if block.has_skip else isinstance(block.drop_path, nn.Identity)
    block = dropping.blocks[4][2].train()  # k = 10: p = 0.5
    h = torch.randn(16, 384, 4, 4)
    with torch.no_grad():
        out = block(h)
        block.drop_path.eval()
        branch = block(h) - h  # train-mode BN: the same branch, kept for every sample
    dropped = [torch.equal(o, i) for o, i in zip(out, h)]
    assert 0 < sum(dropped) < 16
    kept = ~torch.tensor(dropped)
    assert torch.allclose(out[kept], h[kept] + branch[kept] / 0.5, atol=1e-5)


def test_mobilenext_grad_checkpointing_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    model = timm.create_model("mobilenext_ca_100", drop_rate=0.0).train()
    ckpt = copy.deepcopy(model)  # the same weights and BN buffers
    ckpt.set_grad_checkpointing()
    calls = []
    ckpt.blocks[2].register_forward_pre_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for m in (model, ckpt):
        outs.append(m(x))
        outs[-1].square().sum().backward()
    assert len(calls) == 2  # the stage ran again in backward
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), ckpt.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_mobilenext_group_matcher_gives_timms_parameter_groups():
    from timm.models import group_parameters

    model = timm.create_model("mobilenext_100")
    # stem, then the 8 stages or the 20 blocks, then the unmatched classifier
    assert len(group_parameters(model, model.group_matcher(coarse=True))) == 1 + 8 + 1
    assert len(group_parameters(model, model.group_matcher())) == 1 + 20 + 1


def test_mobilenext_starts_from_timms_efficientnet_init():
    """timm's _init_weight_goog: convs from N(0, 2 / (k^2 C_out / groups)), BN (1, 0), classifier bias 0."""
    torch.manual_seed(0)
    block = timm.create_model("mobilenext_ca_100").blocks[7][0]
    dw, pw = block.conv_dw2.conv, block.conv_expand.conv
    assert dw.groups == dw.out_channels == 1280 and dw.kernel_size == (3, 3) and pw.kernel_size == (1, 1)
    assert dw.weight.std().item() == pytest.approx(math.sqrt(2 / 9), rel=0.1)
    assert pw.weight.std().item() == pytest.approx(math.sqrt(2 / 1280), rel=0.1)
    model = timm.create_model("mobilenext_100")
    assert not model.classifier.bias.any() and torch.equal(model.conv_stem.bn.weight, torch.ones(32))


def _conv_bn(x, cna, stride=1):
    """A ConvNormAct's conv and eval-mode BN, written with F (no activation)."""
    conv, bn = cna.conv, cna.bn
    y = F.conv2d(x, conv.weight, None, stride, conv.kernel_size[0] // 2, 1, conv.groups)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_sandglass_block_computes_its_equation():
    """y = dw2_bn(expand_relu6(reduce_bn(ca(dw1_relu6(x))))) (+ x at stride 1 with in == out), by hand."""
    gen = torch.Generator().manual_seed(0)
    model = timm.create_model("mobilenext_ca_100").eval()
    randomize_batchnorm(model, gen)

    def by_hand(block, x, stride):
        y = block.attn1(F.relu6(_conv_bn(x, block.conv_dw1)))
        y = F.relu6(_conv_bn(_conv_bn(y, block.conv_reduce), block.conv_expand))
        return _conv_bn(y, block.conv_dw2, stride)

    skip, strided = model.blocks[2][1], model.blocks[0][0]  # 192 -> 192 at stride 1; 32 -> 96 at stride 2
    for block in (skip, strided):
        assert isinstance(block.attn1, CoordAttention) and isinstance(block.attn2, nn.Identity)
    x = torch.randn(2, 192, 8, 8, generator=gen)
    with torch.no_grad():
        got, expected = skip(x), by_hand(skip, x, 1) + x
    assert skip.has_skip and torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 32, 16, 16, generator=gen)
    with torch.no_grad():
        got, expected = strided(x), by_hand(strided, x, 2)
    assert not strided.has_skip and got.shape == (2, 96, 8, 8) and torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_macs_at_224_against_the_paper():
    """Conv and linear MACs from torch's flop counter (the README's table), plus CA's elementwise gating
    x * a_h * a_w, 2 C H W multiplies per CA module, which the counter does not see."""
    def macs(name, **kwargs):
        model = zoo.create_model(name, **kwargs).eval()
        gating = []
        for module in model.modules():
            if isinstance(module, CoordAttention):
                module.register_forward_hook(lambda mod, args, out: gating.append(2 * args[0][0].numel()))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, 224, 224))
        return counter.get_total_flops() // 2, sum(gating)  # flop_counter counts a multiply-add as 2 FLOPs

    assert macs("mobilenetv2_100") == (300_774_272, 0)  # paper: 300M
    assert macs("mobilenetv2_se_100") == (301_150_208, 0)  # paper: 300M
    assert macs("mobilenetv2_cbam_100") == (302_524_960, 0)  # paper: 300M
    assert macs("mobilenetv2_ca_100") == (306_666_368, 3_800_832)  # 310.5M with the gating; paper: 310M
    assert macs("mobilenext_100") == (311_342_592, 0)  # paper: 300M
    assert macs("mobilenext_ca_100") == (316_327_936, 3_136_000)  # 319.5M; paper: 330M
    assert macs("mobilenext_ca_100", attn_position="last_dw") == (318_485_504, 6_955_648)  # 325.4M; paper: 330M


# ---------------- the official checkpoint ----------------

MBV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _official_blocks():
    """(in, out, stride, expansion) of the authors' MBV2_CA features.1 .. features.17."""
    blocks, chs = [], 32
    for t, c, n, s in MBV2_STAGES:
        for i in range(n):
            blocks.append((chs, c, s if i == 0 else 1, t))
            chs = c
    return blocks


def _official_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A random state dict in the key layout and shapes of the authors' mbv2_ca.py."""
    state = {}

    def conv(name, cin, cout, k=1, groups=1, bias=False):
        state[f"{name}.weight"] = torch.randn(cout, cin // groups, k, k, generator=gen) * (groups / (cin * k * k)) ** 0.5
        if bias:
            state[f"{name}.bias"] = 0.1 * torch.randn(cout, generator=gen)

    def bn(name, c):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=gen)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=gen)
        state[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
        state[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=gen)
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("features.0.0", 3, 32, 3), bn("features.0.1", 32)
    for k, (cin, cout, _, t) in enumerate(_official_blocks(), 1):
        p, hid = f"features.{k}.conv", cin * t
        if t == 1:
            conv(f"{p}.0", hid, hid, 3, groups=hid), bn(f"{p}.1", hid), conv(f"{p}.3", hid, cout), bn(f"{p}.4", cout)
            continue
        mip = max(8, hid // 32)
        conv(f"{p}.0", cin, hid), bn(f"{p}.1", hid), conv(f"{p}.3", hid, hid, 3, groups=hid), bn(f"{p}.4", hid)
        conv(f"{p}.6.conv1", hid, mip, bias=True), bn(f"{p}.6.bn1", mip)
        conv(f"{p}.6.conv2", mip, hid, bias=True), conv(f"{p}.6.conv3", mip, hid, bias=True)
        conv(f"{p}.7", hid, cout), bn(f"{p}.8", cout)
    conv("conv.0", 320, 1280), bn("conv.1", 1280)
    state["classifier.1.weight"] = 0.01 * torch.randn(1000, 1280, generator=gen)
    state["classifier.1.bias"] = torch.zeros(1000)
    return state


def _official_forward(s: dict[str, torch.Tensor], x: torch.Tensor, calibrate: bool = False) -> torch.Tensor:
    """The authors' MBV2-CA forward (eval mode), written functionally over their key names. ``calibrate=True``
    first sets every BatchNorm's running statistics to those of ``x``, so random weights pass a signal."""
    def conv(x, p, stride=1, groups=1):
        w = s[f"{p}.weight"]
        return F.conv2d(x, w, s.get(f"{p}.bias"), stride, w.shape[-1] // 2, 1, groups)

    def bn(x, p):
        if calibrate:
            s[f"{p}.running_mean"], s[f"{p}.running_var"] = x.mean((0, 2, 3)), x.var((0, 2, 3))
        return F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"])

    def ca(x, p):
        h, w = x.shape[2:]
        y = torch.cat([x.mean(3, keepdim=True), x.mean(2, keepdim=True).transpose(2, 3)], 2)
        y_h, y_w = F.hardswish(bn(conv(y, f"{p}.conv1"), f"{p}.bn1")).split([h, w], 2)
        return x * conv(y_h, f"{p}.conv2").sigmoid() * conv(y_w, f"{p}.conv3").sigmoid().transpose(2, 3)

    x = F.relu6(bn(conv(x, "features.0.0", 2), "features.0.1"))
    for k, (cin, cout, stride, t) in enumerate(_official_blocks(), 1):
        p = f"features.{k}.conv"
        if t == 1:
            y = bn(conv(F.relu6(bn(conv(x, f"{p}.0", stride, cin), f"{p}.1")), f"{p}.3"), f"{p}.4")
        else:
            y = F.relu6(bn(conv(x, f"{p}.0"), f"{p}.1"))
            y = ca(F.relu6(bn(conv(y, f"{p}.3", stride, cin * t), f"{p}.4")), f"{p}.6")
            y = bn(conv(y, f"{p}.7"), f"{p}.8")
        x = x + y if stride == 1 and cin == cout else y
    x = F.relu6(bn(conv(x, "conv.0"), "conv.1"))
    return F.linear(x.mean((2, 3)), s["classifier.1.weight"], s["classifier.1.bias"])


@pytest.fixture(scope="module")
def official():
    state = _official_state(torch.Generator().manual_seed(0))
    x = torch.randn(10, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _official_forward(state, x[2:], calibrate=True)
        expected = _official_forward(state, x[:2])
    assert (expected[0] - expected[1]).abs().max() > 0.1 * expected.abs().max()  # the inputs matter
    return state, x[:2], expected


def test_converter_maps_all_490_official_tensors_and_outputs_are_identical(official, tmp_path):
    state, x, expected = official
    assert len(state) == 490 and "features.2.conv.6.conv1.weight" in state
    torch.save(state, tmp_path / "mbv2_ca.pth")
    out = convert(tmp_path / "mbv2_ca.pth", "mobilenetv2_ca_100", tmp_path / "mbv2_ca.safetensors")
    model = load_checkpoint(out).eval()
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_timm_pretrained_path_loads_the_original_file(official, tmp_path):
    state, x, expected = official
    torch.save(state, tmp_path / "mbv2_ca.pth")
    model = timm.create_model("mobilenetv2_ca_100", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "mbv2_ca.pth"))).eval()
    with torch.no_grad():
        assert torch.allclose(model(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_converter_names_unmapped_and_misshaped_keys(official, tmp_path):
    state = dict(official[0])
    state["features.18.conv.0.weight"] = torch.zeros(1)
    state["features.2.conv.6.conv2.weight"] = torch.zeros(96, 4, 1, 1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        convert(tmp_path / "bad.pth", "mobilenetv2_ca_100", tmp_path / "bad.safetensors")
    assert "unexpected keys (1): features.18.conv.0.weight" in str(err.value)
    assert "blocks.1.0.se.conv_h.weight: checkpoint (96, 4, 1, 1) vs model (96, 8, 1, 1)" in str(err.value)
    assert not (tmp_path / "bad.safetensors").exists()


# ---------------- the offline task ----------------

def test_digits_task_batches_are_pure_and_the_report_draws_ca_gates(tmp_path):
    from train.recipe import load_recipe
    from train.tasks import make_task

    task = make_task(load_recipe("mbv2-ca-digits", ["data.size=16"]))
    assert len(task.data["y_train"]) == 1348 and len(task.data["y_test"]) == 449
    assert abs(float(task.data["x_train"].mean())) < 1e-5 and float(task.data["x_train"].std()) == pytest.approx(1, abs=1e-4)
    a, b = (task.batch(8, torch.Generator().manual_seed(3)) for _ in range(2))
    assert a["x"].shape == (8, 1, 16, 16) and torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    model = zoo.create_model("mobilenetv2_ca_100", num_classes=10, in_chans=1).eval()
    loss, extra = task.loss(model, a)
    logits = model(a["x"])
    assert loss.item() == pytest.approx(F.cross_entropy(logits, a["y"]).item(), rel=1e-5)
    assert extra["acc"] == (logits.argmax(-1) == a["y"]).float().mean().item()
    assert [p.name for p in task.report(model, tmp_path)] == ["attention.png"] and (tmp_path / "attention.png").stat().st_size > 0
    assert task.report(zoo.create_model("mobilenetv2_100", num_classes=10, in_chans=1), tmp_path) == []


# ---------------- the published checkpoint through the manifest ----------------

def test_git_blob_id_is_gits_own(tmp_path):
    from weights.manifest import git_blob_sha1

    (tmp_path / "hello").write_bytes(b"hello\n")
    assert git_blob_sha1(tmp_path / "hello") == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`


def test_manifest_lists_the_authors_file_by_its_git_blob_id():
    from weights import checkpoints_for

    (entry,) = checkpoints_for("mobilenetv2_ca_100")
    assert entry["original"]["url"] == "https://github.com/houqb/CoordAttention/raw/main/mbv2_ca.pth"
    assert entry["original"]["git_blob_sha1"] == "07b6640600b7d767acfaebcf5ddb801b675073df"
    assert entry["sha256"] is None and entry["reported"]["top1"] == 74.3 and entry["license"].startswith("MIT")


def _published(monkeypatch, original: dict) -> dict:
    """The real manifest entry with the test's file standing in for the authors' (its git blob id and URL)."""
    import weights.manifest as manifest_mod

    real = manifest_mod.checkpoints_for("mobilenetv2_ca_100")[0]
    entry = {**real, "original": {**real["original"], **original}}
    monkeypatch.setattr(manifest_mod, "published_checkpoints", lambda: [entry])
    return entry


def test_pretrained_converts_the_verified_original_once_and_both_registries_load_it(official, tmp_path, monkeypatch):
    from weights.manifest import cache_dir, git_blob_sha1, sha256_of

    state, x, expected = official
    cache_dir().mkdir(parents=True)
    torch.save(state, cache_dir() / "mbv2_ca.pth")
    _published(monkeypatch, {"git_blob_sha1": git_blob_sha1(cache_dir() / "mbv2_ca.pth")})
    close = dict(rtol=1e-4, atol=1e-5 * expected.abs().max().item())

    model = zoo.create_model("mobilenetv2_ca_100", pretrained=True).eval()
    converted = cache_dir() / "mobilenetv2_ca_100_in1k.safetensors"
    assert (cache_dir() / "mobilenetv2_ca_100_in1k.safetensors.sha256").read_text().strip() == sha256_of(converted)
    (cache_dir() / "mbv2_ca.pth").unlink()  # from now on the converted file alone serves
    with torch.no_grad():
        assert torch.allclose(model(x), expected, **close)
        assert torch.allclose(timm.create_model("mobilenetv2_ca_100", pretrained=True).eval()(x), expected, **close)

    # fine-tuning: another label set keeps the body and re-initialises the classifier, in both registries
    for few in (zoo.create_model("mobilenetv2_ca_100", pretrained=True, num_classes=3),
                timm.create_model("mobilenetv2_ca_100", pretrained=True, num_classes=3)):
        assert few.classifier.weight.shape == (3, 1280)
        assert torch.equal(few.blocks[1][0].se.conv_h.weight, model.blocks[1][0].se.conv_h.weight)
    feats = timm.create_model("mobilenetv2_ca_100", pretrained=True, features_only=True).eval()
    assert torch.equal(feats.conv_stem.weight, model.conv_stem.weight) and len(feats(x)) == 5

    converted.write_bytes(converted.read_bytes()[:-1] + b"\0")  # corrupted on disk: caught by the recorded sha256
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        zoo.create_model("mobilenetv2_ca_100", pretrained=True)


def test_pretrained_refuses_a_file_that_is_not_the_published_one(official, monkeypatch):
    from weights.manifest import cache_dir

    cache_dir().mkdir(parents=True)
    torch.save(official[0], cache_dir() / "mbv2_ca.pth")  # not the authors' bytes: its git blob id differs
    with pytest.raises(CheckpointError, match="07b6640600b7d767acfaebcf5ddb801b675073df"):
        zoo.create_model("mobilenetv2_ca_100", pretrained=True)
    assert not (cache_dir() / "mobilenetv2_ca_100_in1k.safetensors").exists()


def test_pretrained_offline_says_what_to_download_and_where(monkeypatch):
    from weights.manifest import cache_dir

    _published(monkeypatch, {"url": "http://127.0.0.1:9/mbv2_ca.pth"})
    for build in (zoo.create_model, timm.create_model):
        with pytest.raises(FileNotFoundError) as err:
            build("mobilenetv2_ca_100", pretrained=True)
        assert "http://127.0.0.1:9/mbv2_ca.pth" in str(err.value) and str(cache_dir() / "mbv2_ca.pth") in str(err.value)
    with pytest.raises(KeyError, match="no published checkpoint"):
        timm.create_model("mobilenetv2_se_100", pretrained=True)


def test_zoo_convert_installs_the_published_original_into_the_cache(official, tmp_path, monkeypatch, capsys):
    import json

    from train.cli import main
    from weights.manifest import cache_dir, git_blob_sha1, resolve, sha256_of

    torch.save(official[0], tmp_path / "mbv2_ca.pth")
    _published(monkeypatch, {"git_blob_sha1": git_blob_sha1(tmp_path / "mbv2_ca.pth")})
    main(["convert", str(tmp_path / "mbv2_ca.pth"), "--model", "mobilenetv2_ca_100"])
    report = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert report["manifest_entry"] == "mobilenetv2_ca_100_in1k"
    assert report["file"] == str(cache_dir() / "mobilenetv2_ca_100_in1k.safetensors")
    assert report["sha256"] == sha256_of(report["file"])
    with torch.no_grad():
        got = zoo.create_model("mobilenetv2_ca_100", pretrained=True).eval()(official[1])
    assert torch.allclose(got, official[2], rtol=1e-4, atol=1e-5 * official[2].abs().max().item())
    # the printed manifest entry publishes the conversion: its full sha256 is what a load then checks
    published = report["manifest"]
    assert len(published["sha256"]) == 64 and published["sha256"] == report["sha256"]
    assert published["converted_from"] == {"file": "mbv2_ca.pth", "sha256": sha256_of(tmp_path / "mbv2_ca.pth"),
                                           "git_blob_sha1": git_blob_sha1(tmp_path / "mbv2_ca.pth")}
    assert {published[k] for k in ("name", "model", "file")} == {"mobilenetv2_ca_100_in1k", "mobilenetv2_ca_100",
                                                                 "mobilenetv2_ca_100_in1k.safetensors"}
    assert resolve(published) == cache_dir() / published["file"]
    (cache_dir() / published["file"]).write_bytes(b"not the published file")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve(published)


def test_conversion_is_byte_deterministic(official, tmp_path):
    """Two conversions of one original in one environment are the same bytes (sorted metadata), so a published
    sha256 identifies a conversion. The metadata records the torch version, so another torch gives another
    sha256: why the shipped entry identifies the authors' file by its git blob id and records the conversion's
    sha256 beside it at conversion time."""
    from weights.manifest import sha256_of

    torch.save(official[0], tmp_path / "mbv2_ca.pth")
    a = convert(tmp_path / "mbv2_ca.pth", "mobilenetv2_ca_100", tmp_path / "a.safetensors")
    b = convert(tmp_path / "mbv2_ca.pth", "mobilenetv2_ca_100", tmp_path / "b.safetensors")
    assert sha256_of(a) == sha256_of(b)
    assert read_metadata(a)["torch"] == torch.__version__


def test_finetune_recipe_starts_from_the_published_weights(official, tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from train import fit, load_recipe
    from weights.manifest import cache_dir, git_blob_sha1

    cache_dir().mkdir(parents=True)
    torch.save(official[0], cache_dir() / "mbv2_ca.pth")
    _published(monkeypatch, {"git_blob_sha1": git_blob_sha1(cache_dir() / "mbv2_ca.pth")})
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(3):
            (tmp_path / "data" / split / str(c)).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / split / str(c) / f"{i}.png")
    recipe = load_recipe("mbv2-ca-finetune", [f"data.path={tmp_path / 'data'}", "data.size=32", "data.workers=0",
                                              "train.steps=1", "train.batch_size=8", "train.eval_every=0",
                                              "train.ckpt_every=0", "optim.lr=0.0", "schedule.warmup=0"])
    fit(recipe, out=tmp_path / "run")
    tuned = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert tuned.classifier.weight.shape == (3, 1280)  # num_classes from the folder, classifier re-initialised
    assert torch.equal(tuned.blocks[1][0].se.conv_h.weight, official[0]["features.2.conv.6.conv2.weight"])
    assert torch.equal(tuned.conv_stem.weight, official[0]["features.0.0.weight"])


def test_digits_evaluation_loss_is_the_mean_over_all_test_images():
    """The digits task evaluates in chunks (256 images, fewer than the test set's 449): test_loss is the mean
    cross-entropy over every test image, as one direct computation gives."""
    from train import load_recipe
    from train.tasks import make_task

    task = make_task(load_recipe("mbv2-ca-digits", ["data.size=8"]))
    x, y = task.data["x_test"], task.data["y_test"]
    assert 256 < len(y) < 512 and len(y) % 256  # more than one chunk, the last one shorter
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        direct = float(F.cross_entropy(model(x), y))
    assert task.evaluate(model)["test_loss"] == pytest.approx(direct, rel=1e-5)


# ---------------- added by the mutation sweep ----------------

def test_block_names_inputs_that_are_not_four_dimensional():
    """A 3-D or 5-D tensor whose second axis matches the channels is named by the block's own message, not by a
    failed unpacking of its spatial sizes."""
    ca = CoordAttention(8)
    for shape in ((2, 8, 5), (2, 8, 3, 4, 5)):
        with pytest.raises(ValueError, match=rf"\(batch, 8, H, W\), got torch.float32 {re.escape(str(shape))}"):
            ca(torch.randn(*shape))


def test_squeeze_excitation_ablation_is_hu_et_al_with_relu():
    """The SE baseline of the ablation is Hu et al.'s block, y = x * sigmoid(W2 ReLU(W1 mean_hw(x) + b1) + b2)
    with C // 24 hidden units, checked by hand on an expansion block of the full model."""
    torch.manual_seed(0)
    se = timm.create_model("mobilenetv2_se_100").blocks[1][0].se.eval()
    assert se.conv_reduce.out_channels == 96 // 24
    x = torch.randn(2, 96, 5, 6)
    squeeze = x.mean((2, 3))
    hidden = squeeze @ se.conv_reduce.weight[:, :, 0, 0].T + se.conv_reduce.bias
    assert (hidden < 0).any()  # the non-linearity matters on these inputs
    gate = torch.sigmoid(hidden.clamp(min=0) @ se.conv_expand.weight[:, :, 0, 0].T + se.conv_expand.bias)
    with torch.no_grad():
        assert torch.allclose(se(x), x * gate[:, :, None, None], atol=1e-6)


def test_sandglass_block_checks_its_settings_and_skips_only_at_stride_1():
    """A stride-2 block downsamples in its last depthwise conv (so it needs one) and has no identity skip even
    when in_chs == out_chs; at stride 1 with in == out, a branch that outputs zero (last BN scaled to 0) leaves
    y = x exactly. attn_position names one of the two places."""
    from layers import SandglassBlock
    from zoo.coord_attention import attention_layer

    with pytest.raises(ValueError, match=r"stride must be 1, or 2 with dw_last=True; got stride=2, dw_last=False"):
        SandglassBlock(16, 16, 2, 8, dw_last=False)
    with pytest.raises(ValueError, match=r"got stride=3"):
        SandglassBlock(16, 16, 3, 8)
    with pytest.raises(ValueError, match=r"attn_position must be 'first_dw' or 'last_dw', got 'middle'"):
        SandglassBlock(16, 16, 1, 8, attn_layer=attention_layer("ca"), attn_position="middle")
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)
    strided = SandglassBlock(16, 16, 2, 8).eval()
    with torch.no_grad():
        assert not strided.has_skip and strided(x).shape == (2, 16, 4, 4)
    same = SandglassBlock(16, 16, 1, 8).eval()
    nn.init.zeros_(same.conv_dw2.bn.weight), nn.init.zeros_(same.conv_dw2.bn.bias)
    with torch.no_grad():
        assert same.has_skip and torch.equal(same(x), x)


def test_mobilenext_stem_is_conv_bn_relu6():
    """MobileNeXt's stem is a 3x3 stride-2 conv to 32 channels, BN and ReLU6 (the authors' code): on bright
    inputs many activations are capped at 6, by hand."""
    torch.manual_seed(0)
    model = timm.create_model("mobilenext_100").eval()
    x = 20 * torch.randn(1, 3, 16, 16)
    stem = model.conv_stem
    with torch.no_grad():
        got, pre = stem(x), _conv_bn(x, stem, stride=2)
    assert (pre > 6).float().mean() > 0.1 and torch.allclose(got, pre.clamp(0, 6), atol=1e-5)


def test_mobilenext_prunes_the_classifier_of_a_truncated_model_even_when_asked_to_keep_it():
    """prune_intermediate_layers(prune_head=False) on a model cut before its last stage still replaces the
    classifier (it no longer fits the features), so the truncated model runs and returns its feature map."""
    model = timm.create_model("mobilenext_100").eval()
    assert model.prune_intermediate_layers([1, 2], prune_head=False) == [1, 2]
    assert isinstance(model.classifier, nn.Identity) and model.num_features == 192
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 192, 4, 4)
    whole = timm.create_model("mobilenext_100")
    whole.prune_intermediate_layers(4, prune_head=False)  # nothing cut: the classifier stays
    assert isinstance(whole.classifier, nn.Linear) and whole.classifier.out_features == 1000


def test_checkpoint_filter_reads_a_data_parallel_state(official):
    """A state saved from nn.DataParallel (keys under 'module.') maps like the plain one, key for key."""
    from zoo.coord_attention import checkpoint_filter_fn

    model = timm.create_model("mobilenetv2_ca_100")
    plain = checkpoint_filter_fn(dict(official[0]), model)
    wrapped = checkpoint_filter_fn({f"module.{k}": v for k, v in official[0].items()}, model)
    assert wrapped.keys() == plain.keys() == model.state_dict().keys()


def test_mobilenetv2_baseline_shares_the_ablations_dropout():
    """Our registry builds all four MobileNetV2 variants with the CA authors' classifier dropout 0.1 (timm's own
    mobilenetv2_100 has none by default), so the ablation compares like with like."""
    for name in ("mobilenetv2_100", "mobilenetv2_se_100", "mobilenetv2_cbam_100", "mobilenetv2_ca_100"):
        assert zoo.create_model(name).drop_rate == 0.1
    assert timm.create_model("mobilenetv2_100").drop_rate == 0.0


def test_digits_are_half_pixel_bilinear_upsamplings_and_the_settings_are_checked():
    """At size 16 each standardised image is a 2x bilinear upsampling with half-pixel centres (output j reads
    source j/2 - 1/4, clamped): such images are fixed by P = U R, U the 16x8 upsampling and R a left inverse, and
    P keeps constants, so the standardisation does not matter. Nearest or corner-aligned resizing is not fixed by
    P. Sizes below 8 and fractions outside (0, 1) are refused; the test count is the nearest whole number."""
    from train import load_recipe
    from train.tasks import make_task
    from train.tasks.image import load_digits_images

    U, R = torch.zeros(16, 8), torch.zeros(8, 16)
    U[0, 0] = U[15, 7] = 1.0
    for i in range(7):
        U[2 * i + 1, i], U[2 * i + 1, i + 1], U[2 * i + 2, i], U[2 * i + 2, i + 1] = 0.75, 0.25, 0.25, 0.75
        R[i, 2 * i + 1], R[i, 2 * i + 2] = 1.5, -0.5
    R[7, 14], R[7, 13] = 1.5, -0.5
    assert torch.allclose(R @ U, torch.eye(8))
    P = U @ R
    data = make_task(load_recipe("mbv2-ca-digits", ["data.size=16"])).data
    x = torch.cat([data["x_train"], data["x_test"]])[:, 0]
    assert x.shape == (1797, 16, 16) and not torch.allclose(P, torch.eye(16))
    assert torch.allclose(P @ x @ P.T, x, atol=1e-5)
    for size, fraction in ((7, 0.25), (16, 0.0), (16, 1.0)):
        with pytest.raises(ValueError, match="size must be >= 8 and test_fraction in"):
            load_digits_images(size, fraction, 0)
    assert len(load_digits_images(8, 0.1, 0)["y_test"]) == 180  # 179.7 test images, rounded


def test_digits_loss_smooths_labels_and_held_out_batches_are_distinct_test_images():
    """task_args.label_smoothing = e gives -(1 - e) log p_y - e mean_k log p_k per image (Szegedy et al.);
    held-out batches are distinct rows of the test split, training samples distinct rows of the training split,
    and the evaluation reports test accuracy and loss and training accuracy."""
    from train import load_recipe
    from train.tasks import make_task

    task = make_task(load_recipe("mbv2-ca-digits", ["data.size=8", "task_args.label_smoothing=0.2"]))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    batch = task.batch(32, torch.Generator().manual_seed(0))
    loss, _ = task.loss(model, batch)
    logp = model(batch["x"]).log_softmax(-1)
    by_hand = -(0.8 * logp.gather(1, batch["y"][:, None])[:, 0] + 0.2 * logp.mean(-1)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    unsmoothed = load_recipe("mbv2-ca-digits", ["data.size=8"])
    del unsmoothed["task_args"]["label_smoothing"]  # as sigma-vit-digits: no setting means no smoothing
    loss, _ = make_task(unsmoothed).loss(model, batch)
    assert loss.item() == pytest.approx(-logp.gather(1, batch["y"][:, None]).mean().item(), rel=1e-6)
    for draw, split in ((task.held_out_batch, "test"), (task.train_sample, "train")):
        rows = task.data[f"x_{split}"].flatten(1)
        n = len(rows)
        got = draw(n, torch.Generator().manual_seed(1))
        match = torch.cdist(got["x"].flatten(1), rows).argmin(1)
        assert torch.equal(got["x"].flatten(1), rows[match]) and torch.equal(got["y"], task.data[f"y_{split}"][match])
        assert len(set(match.tolist())) == n  # every row once
    assert sorted(task.evaluate(model.eval())) == ["test_acc", "test_loss", "train_acc"]


def test_digits_report_draws_the_first_ca_blocks_channel_mean_gates(tmp_path, monkeypatch):
    """attention.png's lower row shows mean_c a_h(i) a_w(j) of the model's first CoordAttention block (named in
    the y label) for each of the six images, as hooks on that block's probe points measure it."""
    import train.plots
    from train import load_recipe
    from train.tasks import make_task

    task = make_task(load_recipe("mbv2-ca-digits", ["data.size=16"]))
    torch.manual_seed(0)
    model = zoo.create_model("mobilenetv2_ca_100", num_classes=10, in_chans=1).eval()
    first = next(name for name, m in model.named_modules() if isinstance(m, CoordAttention))
    block = model.get_submodule(first)
    seen = {}
    block.attn_h.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o))
    block.attn_w.register_forward_hook(lambda m, i, o: seen.__setitem__("w", o))
    figures = []
    save = train.plots.save_figure
    monkeypatch.setattr(train.plots, "save_figure",
                        lambda fig, path, **kw: figures.append(fig) or save(fig, path, **kw))
    task.report(model, tmp_path)
    expected = (seen["h"] * seen["w"]).mean(1)  # (6, H, W)
    assert expected.shape == (6, 4, 4) and first == "blocks.1.0.se"  # 16 px: stem and block stride 2
    (fig,) = figures
    shown = [torch.as_tensor(ax.get_images()[0].get_array()) for ax in fig.axes[6:12]]
    assert all(torch.allclose(s.float(), e, atol=1e-6) for s, e in zip(shown, expected))
    assert fig.axes[6].get_ylabel().startswith(first)
