"""sigmaReparam (Zhai et al. 2023): the reparametrised layers, the converter and the zoo variants."""
import copy
import math
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import zoo
from layers import SigmaConv2d, SigmaLinear, apply_sigma_reparam, remove_sigma_reparam
from weights import load_checkpoint, save_checkpoint


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Flatten(), nn.LayerNorm(8 * 6 * 6),
                         nn.Linear(8 * 6 * 6, 32), nn.GELU(), nn.Linear(32, 5))


def with_spectrum(out: int, fan_in: int, singular_values: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(out, len(singular_values), generator=g))[0]
    V = torch.linalg.qr(torch.randn(fan_in, len(singular_values), generator=g))[0]
    return U @ torch.diag(torch.tensor(singular_values)) @ V.T


def test_conversion_is_in_place_with_clean_keys_and_same_function():
    net, x = small_net(), torch.randn(4, 3, 6, 6)
    before = net(x)
    weight = net[4].weight
    apply_sigma_reparam(net)
    assert isinstance(net[0], SigmaConv2d) and isinstance(net[4], SigmaLinear) and isinstance(net[3], nn.LayerNorm)
    assert net[4].weight is weight  # same parameter object: an optimizer holding it stays valid
    assert sorted(k for k in net.state_dict() if k.startswith("4.")) == ["4.bias", "4.gamma", "4.u", "4.v", "4.weight"]
    torch.testing.assert_close(net[4].gamma, torch.linalg.matrix_norm(weight.detach(), 2).reshape(1))
    torch.testing.assert_close(net[0].gamma, torch.linalg.matrix_norm(net[0].weight.detach().flatten(1), 2).reshape(1))
    net.eval()
    torch.testing.assert_close(net(x), before, atol=1e-6, rtol=0)
    net.train()
    torch.testing.assert_close(net(x), before, atol=1e-6, rtol=0)  # one power iteration from the exact vectors


def test_sigma_converges_to_the_spectral_norm_from_a_changed_weight():
    layer = apply_sigma_reparam(nn.Linear(48, 64))
    with torch.no_grad():
        layer.weight.copy_(with_spectrum(64, 48, [3.0, 1.5, 1.0, 0.5], seed=1))  # u, v now stale
    exact = torch.linalg.matrix_norm(layer.weight.detach(), 2)
    x = torch.randn(2, 48)
    for _ in range(6):
        layer(x)
    assert abs(layer.sigma.item() - exact.item()) < 1e-3
    assert abs(layer.sigma.item() - 3.0) < 1e-3


def test_a_training_forward_runs_exactly_one_power_iteration_and_restart_sets_only_the_names_given():
    """From known u0: v = W^T u0 / |W^T u0|, then u = W v / |W v| (paper Alg. 1), once per training forward;
    restart_reparam(names) resets only those of u, v, gamma, to the top singular triplet of the current weight."""
    torch.manual_seed(0)
    layer = apply_sigma_reparam(nn.Linear(6, 5))
    W = layer.weight.detach().clone()
    u0 = torch.nn.functional.normalize(torch.randn(5), dim=0)
    with torch.no_grad():
        layer.u.copy_(u0)
    layer.train()(torch.randn(2, 6))
    v1 = torch.nn.functional.normalize(W.T @ u0, dim=0)
    torch.testing.assert_close(layer.v, v1, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer.u, torch.nn.functional.normalize(W @ v1, dim=0), atol=1e-6, rtol=0)
    gamma, v = layer.gamma.detach().clone(), layer.v.clone()
    layer.restart_reparam(names=("u",))
    U, S, Vh = torch.linalg.svd(W)
    assert torch.equal(layer.gamma.detach(), gamma) and torch.equal(layer.v, v)
    assert abs(abs(float(layer.u @ U[:, 0])) - 1) < 1e-5  # the top left singular vector (either sign)
    layer.restart_reparam()
    assert layer.gamma.item() == pytest.approx(S[0].item(), rel=1e-5)
    assert layer.sigma.item() == pytest.approx(S[0].item(), rel=1e-5)


def test_sigma_tracks_the_spectral_norm_during_training():
    torch.manual_seed(0)
    net = apply_sigma_reparam(nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1)))
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    x, y = torch.randn(128, 16), torch.randn(128, 1)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    for layer in (net[0], net[2]):
        exact = torch.linalg.matrix_norm(layer.weight.detach(), 2).item()
        assert abs(layer.sigma.item() - exact) < 1e-3 * max(1.0, exact)


def test_effective_weight_has_spectral_norm_gamma_and_gradients_reach_weight_and_gamma():
    layer = apply_sigma_reparam(nn.Linear(20, 30))
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    w_hat = layer.reparametrized_weight()
    assert abs(torch.linalg.matrix_norm(w_hat.detach(), 2).item() - 0.7) < 1e-5
    layer(torch.randn(5, 20)).square().sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.gamma.grad is not None and layer.gamma.grad.abs().item() > 0
    assert "u" not in dict(layer.named_parameters()) and not layer.u.requires_grad


def test_gradient_of_sigma_is_orthogonal_to_weight_direction_scaling():
    """W_hat is invariant to scaling W (sigma(cW) = c sigma(W)), so dL/dW is orthogonal to W: <grad, W> = 0."""
    layer = apply_sigma_reparam(nn.Linear(12, 9))
    layer.eval()
    layer(torch.randn(7, 12)).sin().sum().backward()
    assert abs((layer.weight.grad * layer.weight.detach()).sum().item()) < 1e-5


def test_eval_forwards_never_write_buffers_and_training_forwards_do():
    layer = apply_sigma_reparam(nn.Linear(10, 10))
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))
    u, v = layer.u.clone(), layer.v.clone()
    layer.eval()
    for _ in range(3):
        layer(torch.randn(4, 10))
    assert torch.equal(layer.u, u) and torch.equal(layer.v, v)
    layer.train()
    layer(torch.randn(4, 10))
    assert not torch.equal(layer.u, u)


def test_two_training_forwards_before_one_backward():
    layer = apply_sigma_reparam(nn.Linear(6, 6))
    loss = layer(torch.randn(3, 6)).sum() + layer(torch.randn(3, 6)).sum()
    loss.backward()  # the second forward's buffer update must not invalidate the first graph
    assert torch.isfinite(layer.weight.grad).all()


def test_bf16_autocast_keeps_the_power_iteration_and_sigma_in_the_weights_dtype():
    """Under bf16 autocast the power iteration and sigma are the fp32 ones exactly (a bf16 sigma would be off by
    up to 2^-8), and the gradient of W_hat still reaches W and gamma."""
    layers = [apply_sigma_reparam(nn.Linear(48, 32)) for _ in range(2)]
    layers[1].load_state_dict(layers[0].state_dict())
    with torch.no_grad():
        for layer in layers:
            layer.weight.add_(0.3 * torch.randn(32, 48, generator=torch.Generator().manual_seed(1)))
    plain = layers[0].reparametrized_weight()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layers[1].reparametrized_weight()
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    assert torch.equal(layers[1].u, layers[0].u) and torch.equal(layers[1].v, layers[0].v)
    mixed.sum().backward()
    assert layers[1].weight.grad.abs().sum() > 0 and layers[1].gamma.grad.abs().sum() > 0
    meta = apply_sigma_reparam(nn.Linear(48, 32)).to("meta")  # shape inference on the meta device: no autocast there
    assert meta(torch.empty(5, 48, device="meta")).shape == (5, 32)


def test_folded_model_equals_converted_model():
    net, x = apply_sigma_reparam(small_net(1)), torch.randn(4, 3, 6, 6)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    net.eval()
    converted = net(x)
    remove_sigma_reparam(net)
    assert type(net[0]) is nn.Conv2d and type(net[4]) is nn.Linear
    assert sorted(k for k in net.state_dict() if k.startswith("4.")) == ["4.bias", "4.weight"]
    torch.testing.assert_close(net(x), converted, atol=1e-6, rtol=1e-5)


def test_subclasses_of_linear_and_conv2d_stay_plain_with_a_warning_naming_them():
    """timm's StdConv2d (weight standardisation) and Conv2dSame ('same' padding in its forward) use their weight
    their own way, so they are not converted; they were skipped silently, leaving a partly reparametrised model."""
    from timm.layers import Conv2dSame, StdConv2d

    net = nn.Sequential(StdConv2d(3, 4, 3), Conv2dSame(4, 4, 3, stride=2), nn.Conv2d(4, 4, 1), nn.Flatten(),
                        nn.LazyLinear(2))
    net(torch.randn(1, 3, 8, 8))
    with pytest.warns(UserWarning, match=r"left 2 selected layers plain: 0 \(StdConv2d\), 1 \(Conv2dSame\)\."):
        apply_sigma_reparam(net)
    assert type(net[0]) is StdConv2d and type(net[1]) is Conv2dSame and isinstance(net[2], SigmaConv2d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_sigma_reparam(nn.Sequential(StdConv2d(3, 4, 3), nn.Conv2d(4, 4, 1)), exclude=("0",))


def test_include_exclude_and_remove_norms():
    net = apply_sigma_reparam(small_net(), include=("*",), exclude=("0", "6"), remove_norms=True)
    assert type(net[0]) is nn.Conv2d and isinstance(net[4], SigmaLinear) and type(net[6]) is nn.Linear
    assert isinstance(net[3], nn.Identity)
    rms = apply_sigma_reparam(nn.Sequential(nn.Linear(4, 4), nn.RMSNorm(4), nn.Linear(4, 2)), remove_norms=True)
    assert isinstance(rms[1], nn.Identity)  # LLaMA-style RMSNorm goes too
    with pytest.warns(UserWarning, match=r"left 2 selected layers plain: model \(MultiheadAttention\), out_proj "
                                         r"\(NonDynamicallyQuantizableLinear\)"):
        mha = apply_sigma_reparam(nn.MultiheadAttention(8, 2))
    assert not isinstance(mha.out_proj, SigmaLinear)  # its weight is read directly, never through forward
    with pytest.raises(TypeError, match="include"):
        apply_sigma_reparam(small_net(), include="*")
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        apply_sigma_reparam("net")
    # a misspelt glob is an error, not a model left plain (include) or converted where it was to stay plain (exclude)
    with pytest.raises(ValueError, match=r"include patterns \['blcks.\*'\] match no module name"):
        apply_sigma_reparam(small_net(), include=("blcks.*",))
    with pytest.raises(ValueError, match=r"exclude patterns \['head'\] match no module name"):
        apply_sigma_reparam(small_net(), exclude=("head",))
    with pytest.raises(ValueError, match=r"\['zzz'\] match no module name of \w+; names look like"):  # none near
        apply_sigma_reparam(small_net(), exclude=("zzz",))
    frozen = apply_sigma_reparam(small_net().requires_grad_(False))  # a frozen layer's gamma is frozen too
    assert not any(p.requires_grad for p in frozen.parameters())


@pytest.mark.parametrize("backend", ["eager", pytest.param("aot_eager", marks=pytest.mark.slow)])
def test_torch_compile_matches_eager(backend):
    """Dynamo graph capture ("eager"), plus AOT autograd's functionalisation of the buffer updates ("aot_eager",
    what inductor also runs; ~70 s here): same outputs, gradients and buffer updates as the uncompiled model."""
    net, eager, x = apply_sigma_reparam(small_net(2)), apply_sigma_reparam(small_net(2)), torch.randn(4, 3, 6, 6)
    compiled = torch.compile(net, backend=backend)
    for _ in range(2):
        compiled(x).square().sum().backward()
        eager(x).square().sum().backward()
    torch.testing.assert_close(net[4].u, eager[4].u)
    torch.testing.assert_close(net[4].weight.grad, eager[4].weight.grad)
    torch.testing.assert_close(net[0].gamma.grad, eager[0].gamma.grad)
    net.eval(), eager.eval()
    torch.testing.assert_close(compiled(x), eager(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_runs_one_power_iteration(reentrant):
    """The recomputation in backward must not iterate again: same gradients and u, v as without checkpointing.
    W is moved off its SVD so that a second iteration would visibly change them (by 0.3 to 0.6 here)."""
    torch.manual_seed(0)
    net = apply_sigma_reparam(nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.weight.add_(torch.randn_like(layer.weight))
    plain, checkpointed, x = copy.deepcopy(net), copy.deepcopy(net), torch.randn(5, 8, requires_grad=reentrant)
    plain(x).square().sum().backward()
    torch.utils.checkpoint.checkpoint(checkpointed, x, use_reentrant=reentrant).square().sum().backward()
    for p, q in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=0, rtol=0)
    for p, q in zip(plain.buffers(), checkpointed.buffers()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_timm_grad_checkpointing_of_a_sigma_vit_equals_the_plain_step():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=2, num_classes=3)
    with torch.no_grad():
        vit.blocks[0].attn.qkv.weight.mul_(torch.rand_like(vit.blocks[0].attn.qkv.weight))
    plain, checkpointed, x = copy.deepcopy(vit), copy.deepcopy(vit), torch.randn(2, 3, 32, 32)
    checkpointed.set_grad_checkpointing(True)
    plain(x).square().sum().backward()
    checkpointed(x).square().sum().backward()
    torch.testing.assert_close(plain.blocks[0].attn.qkv.u, checkpointed.blocks[0].attn.qkv.u, atol=0, rtol=0)
    torch.testing.assert_close(plain.blocks[0].attn.qkv.weight.grad, checkpointed.blocks[0].attn.qkv.weight.grad)


# ---- zoo variants ----

def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_vit_base_sigma_exact_parameter_count():
    with torch.device("meta"):
        plain = timm.create_model("vit_base_patch16_224", num_classes=0)
        sigma = timm.create_model("vit_base_patch16_224_sigma", num_classes=0)
    assert count(plain) == 85_798_656
    assert count(sigma) == 85_760_305 == 85_798_656 - 38_400 + 49
    assert sum(isinstance(m, (SigmaLinear, SigmaConv2d)) for m in sigma.modules()) == 49
    assert not any(isinstance(m, nn.LayerNorm) for m in sigma.modules())


def test_vit_sigma_zoo_names_build_and_keep_function_of_normless_vit():
    assert {"vit_tiny_patch16_224_sigma", "vit_small_patch16_224_sigma", "vit_base_patch16_224_sigma"} <= set(
        zoo.list_models("vit_*_sigma"))
    torch.manual_seed(0)
    m = zoo.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=2, num_classes=3)
    assert isinstance(m.patch_embed.proj, SigmaConv2d) and isinstance(m.blocks[0].attn.qkv, SigmaLinear)
    assert isinstance(m.head, SigmaLinear) and isinstance(m.blocks[1].norm2, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    y = m(x)
    plain = remove_sigma_reparam(m)
    torch.testing.assert_close(plain(x), y, atol=1e-5, rtol=1e-5)
    # timm's reset_classifier keeps "every Linear reparametrised"; the LayerNorm baseline gets a plain head
    swapped = zoo.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=2)
    swapped.reset_classifier(7)
    assert isinstance(swapped.head, SigmaLinear) and swapped.head.out_features == 7
    baseline = zoo.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=2, reparam=False,
                                remove_norms=False)
    baseline.reset_classifier(7)
    assert type(baseline.head) is nn.Linear
    for bad in (torch.randn(3, 32, 32), torch.randn(1, 4, 32, 32), torch.zeros(1, 3, 32, 32, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=rf"x must be floating images of shape \(batch, 3, H, W\), got {bad.dtype}"):
            m(bad)  # named, not timm's unpacking error or the conv's


def test_vit_sigma_features_only_gives_the_blocks_intermediates():
    """timm's ``features_only=True`` (its ViTs' feature getter): the chosen blocks' outputs as maps, equal to the
    full model's ``forward_intermediates`` with the same weights; still reparametrised, probe points kept."""
    import timm

    torch.manual_seed(0)
    kw = dict(img_size=32, patch_size=8, depth=3)
    full = timm.create_model("vit_tiny_patch16_224_sigma", num_classes=0, **kw).eval()
    feats = timm.create_model("vit_tiny_patch16_224_sigma", features_only=True, out_indices=(0, 2), **kw).eval()
    feats.model.load_state_dict(full.state_dict())
    assert feats.feature_info.channels() == [192, 192] and isinstance(feats.model.blocks[0].attn.qkv, SigmaLinear)
    assert "model.blocks.2.attn.probs" in dict(feats.named_modules())
    x = torch.randn(2, 3, 32, 32)
    got, expected = feats(x), full.forward_intermediates(x, indices=(0, 2), intermediates_only=True)
    assert [tuple(f.shape) for f in got] == [(2, 192, 4, 4)] * 2
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_vit_attention_probes_equal_timms_explicit_attention_and_the_baseline_flag():
    """blocks.N.attn.probs carries what timm's own non-fused path computes as attention probabilities; the fused
    forward is untouched. reparam=False builds timm's plain pre-LN ViT (the paper's baseline)."""
    from estimators import Probe, attention_entropy

    torch.manual_seed(0)
    base = zoo.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=2, num_classes=3,
                            reparam=False, remove_norms=False).eval()
    assert not any(isinstance(m, (SigmaLinear, SigmaConv2d)) for m in base.modules())
    assert isinstance(base.blocks[0].norm1, nn.LayerNorm)
    x = torch.randn(2, 3, 32, 32)
    seen = []
    hook = base.blocks[1].attn.probs.register_forward_hook(lambda mod, inp, out: seen.append(out))
    y = base(x)
    hook.remove()
    base.blocks[1].attn.fused_attn = False
    reference = []
    hook = base.blocks[1].attn.attn_drop.register_forward_hook(lambda mod, inp, out: reference.append(out))
    torch.testing.assert_close(base(x), y, atol=1e-5, rtol=1e-5)
    hook.remove()
    torch.testing.assert_close(seen[0], reference[0], atol=1e-6, rtol=1e-6)
    assert not [k for k in base.state_dict() if "probs" in k]
    sigma = zoo.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=2, num_classes=3)
    with Probe(sigma, {"blocks.*.attn.probs": [attention_entropy()]}, every=1, max_samples=None) as probe:
        sigma(x)
        probe.step()
    rows = [r for r in probe.table() if r["estimator"] == "attention_entropy/mean"]
    assert {r["point"] for r in rows} == {"blocks.0.attn.probs", "blocks.1.attn.probs"}
    with pytest.raises(ValueError, match="remove_norms=False"):
        zoo.create_model("vit_tiny_patch16_224_sigma", reparam=False)
    with pytest.raises(ValueError, match=r"vit_tiny_patch16_224_sigma: depth must be an integer >= 1 \(transformer "
                                         r"blocks\), got 0"):  # it failed later, saying the model had no Attention
        timm.create_model("vit_tiny_patch16_224_sigma", depth=0)


def test_attention_probe_reuses_the_blocks_qkv_so_a_probed_training_step_is_unchanged():
    """The probe reads the qkv projection the block computed: a probed training forward runs each sigmaReparam
    qkv's power iteration once, as an unprobed one does (same output, same u and v), also in a deep copy."""
    import copy

    from estimators import Probe, attention_entropy

    torch.manual_seed(0)
    model = zoo.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=2, num_classes=3).train()
    with torch.no_grad():  # weights moved since the last power iteration, as after an optimizer step
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    probed, x = copy.deepcopy(model), torch.randn(2, 3, 32, 32)
    with Probe(probed, {"blocks.*.attn.probs": [attention_entropy()]}, every=1, max_samples=None) as probe:
        out_probed = probed(x)
        probe.step()
    assert {r["point"] for r in probe.table()} == {"blocks.0.attn.probs", "blocks.1.attn.probs"}
    assert torch.equal(out_probed, model(x))
    for (name, mine), (_, theirs) in zip(model.named_buffers(), probed.named_buffers()):
        assert torch.equal(mine, theirs), name
    from layers import attention_logit_norms

    before = [b.clone() for b in model.buffers()]
    attention_logit_norms(model.blocks[0].attn, torch.randn(2, 17, 192))  # only reads u, v, in training mode too
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    for bad in (torch.randn(2, 17, 10), torch.randn(17, 192)):  # other tokens than the attention takes
        with pytest.raises(ValueError, match=r"x must be the attention's input tokens \(B, N, 192\)"):
            attention_logit_norms(model.blocks[0].attn, bad)


def test_zero_or_non_finite_weights_are_refused_before_anything_is_converted():
    """gamma = sigma(W_0) = 0 would freeze a zero-initialised layer at W_hat = 0 (and divide 0 by 0): refused by
    name, with the model left as it was; exclude= leaves such a layer plain."""
    net = small_net()
    with torch.no_grad():
        net[6].weight.zero_()
    with pytest.raises(ValueError, match=r"weight of 6 is all zeros or not finite"):
        apply_sigma_reparam(net)
    assert not any(isinstance(m, (SigmaLinear, SigmaConv2d)) for m in net.modules())
    apply_sigma_reparam(net, exclude=("6",))
    assert isinstance(net[4], SigmaLinear) and type(net[6]) is nn.Linear
    assert torch.isfinite(net(torch.randn(2, 3, 6, 6))).all()
    net = small_net()
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight of 0 is all zeros or not finite"):
        apply_sigma_reparam(net)
    with pytest.raises(ValueError, match="weight_init='jax'"):  # timm's jax init zeroes the classifier head
        timm.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=1, num_classes=3,
                          weight_init="jax")


def test_vit_sigma_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    m = zoo.create_model("vit_tiny_patch16_224_sigma", img_size=32, patch_size=8, depth=2, num_classes=3)
    m(torch.randn(2, 3, 32, 32))  # a training forward moves u, v
    m.eval()
    x = torch.randn(2, 3, 32, 32)
    save_checkpoint(m, tmp_path / "vit.safetensors")
    loaded = load_checkpoint(tmp_path / "vit.safetensors").eval()
    torch.testing.assert_close(loaded(x), m(x), atol=0, rtol=0)
    torch.testing.assert_close(loaded.blocks[0].attn.qkv.u, m.blocks[0].attn.qkv.u, atol=0, rtol=0)


def test_vit_sigma_loads_a_converted_checkpoint_through_timms_pretrained_path(tmp_path):
    """timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...)) loads a converted model's
    state dict bit for bit; for another num_classes the head starts new, reparametrised with its own u (one entry
    per class), and the rest loads; features_only loads too. Without a file the error says how to give one."""
    torch.manual_seed(0)
    small = dict(img_size=32, patch_size=8, depth=2)
    m = timm.create_model("vit_tiny_patch16_224_sigma", num_classes=10, **small)
    m(torch.randn(2, 3, 32, 32))  # a training forward moves u, v
    m.eval()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "sigma.safetensors")
    overlay = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "sigma.safetensors"), num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    same = timm.create_model("vit_tiny_patch16_224_sigma", num_classes=10, **small, **overlay).eval()
    torch.testing.assert_close(same(x), m(x), atol=0, rtol=0)
    new_head = timm.create_model("vit_tiny_patch16_224_sigma", num_classes=4, **small, **overlay).eval()
    assert isinstance(new_head.head, SigmaLinear) and new_head.head.u.shape == (4,)
    assert torch.equal(new_head.blocks[1].mlp.fc2.weight, m.blocks[1].mlp.fc2.weight)
    assert torch.equal(new_head.blocks[1].mlp.fc2.gamma, m.blocks[1].mlp.fc2.gamma)
    features = timm.create_model("vit_tiny_patch16_224_sigma", features_only=True, out_indices=2, **small, **overlay)
    assert [tuple(f.shape) for f in features(x)] == [(2, 192, 4, 4)] * 2
    with pytest.raises(ValueError, match=r"no published sigmaReparam checkpoint.*pretrained_cfg_overlay=dict\(file="):
        timm.create_model("vit_tiny_patch16_224_sigma", pretrained=True)


def _true_sigma(layer) -> float:
    return torch.linalg.matrix_norm(layer.weight.detach().flatten(1), 2).item()


def test_vit_sigma_pretrained_adapts_to_in_chans_img_size_patch_size_and_a_new_head(tmp_path):
    """As timm adapts its own ViTs: in_chans=1 sums the kernel's channels, so a grey image gives what the colour
    model gives for that image in all three channels (u, v, gamma of the new kernel keep its effective weight);
    img_size resamples pos_embed and patch_size the kernel (it failed on their shapes); and when num_classes
    differs from the weights' config, timm re-initialises head.weight, so the head's gamma, u and v are new too
    (they were the old head's: a stored sigma of a random projection, ||W_hat|| 54x gamma)."""
    torch.manual_seed(0)
    small = dict(img_size=32, patch_size=4, depth=2)
    m = timm.create_model("vit_tiny_patch16_224_sigma", num_classes=10, **small)
    torch.optim.SGD(m.parameters(), lr=0.05).zero_grad()
    m(torch.randn(4, 3, 32, 32)).square().mean().backward()  # the training forward moves u and v off their start
    m.eval()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, tmp_path / "sigma.safetensors")
    weights = dict(file=str(tmp_path / "sigma.safetensors"), num_classes=10, input_size=(3, 32, 32))

    def load(overlay=weights, **kwargs):
        return timm.create_model("vit_tiny_patch16_224_sigma", pretrained=True, pretrained_cfg_overlay=overlay,
                                 **{**small, **kwargs}).eval()

    grey = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(load(num_classes=10, in_chans=1)(grey), m(grey.expand(-1, 3, -1, -1)),
                               atol=1e-5, rtol=1e-5)
    assert load(num_classes=10, img_size=64)(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    resampled = load(num_classes=10, patch_size=8).patch_embed.proj
    assert resampled.sigma.item() == pytest.approx(_true_sigma(resampled), rel=1e-5)
    assert resampled.v.shape == (3 * 8 * 8,)
    head = load({**weights, "num_classes": 1000}, num_classes=10).head  # timm re-initialises head.weight
    assert head.sigma.item() == pytest.approx(_true_sigma(head), rel=1e-5)
    assert head.gamma.item() == pytest.approx(_true_sigma(head), rel=1e-5)


def test_zoo_convert_fits_a_vit_sigma_checkpoint_like_timms_pretrained_path(tmp_path):
    """``zoo convert`` (weights.convert) finds the family's checkpoint_filter_fn: a 32-pixel checkpoint converts
    into a 64-pixel model (pos_embed resampled) and gives what timm's pretrained=True path gives; it refused the
    shape before. Another in_chans, which only timm's loader adapts, is a named shape mismatch."""
    from weights import CheckpointError
    from weights.convert import convert

    torch.manual_seed(0)
    small = dict(patch_size=8, depth=2, num_classes=10)
    m = timm.create_model("vit_tiny_patch16_224_sigma", img_size=32, **small).eval()
    torch.save(m.state_dict(), tmp_path / "vit32.pth")
    converted = load_checkpoint(convert(tmp_path / "vit32.pth", "vit_tiny_patch16_224_sigma",
                                        tmp_path / "vit64.safetensors", img_size=64, **small)).eval()
    via_timm = timm.create_model("vit_tiny_patch16_224_sigma", img_size=64, pretrained=True, **small,
                                 pretrained_cfg_overlay=dict(file=str(tmp_path / "vit32.pth"), num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    assert converted.pos_embed.shape == (1, 65, 192)
    torch.testing.assert_close(converted(x), via_timm(x), atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="patch_embed.proj.weight"):
        convert(tmp_path / "vit32.pth", "vit_tiny_patch16_224_sigma", tmp_path / "grey.safetensors", img_size=32,
                in_chans=1, **small)


def test_transformer_lm_sigma_counts_and_same_initial_function():
    with torch.device("meta"):
        assert count(zoo.create_model("transformer_lm_13m_sigma")) == 12_585_472 + 24
    torch.manual_seed(0)
    small = dict(num_hidden_layers=2, vocab_size=100, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=16, dropout=0.0)
    torch.manual_seed(0)
    plain = zoo.create_model("transformer_lm_13m", **small).eval()
    torch.manual_seed(0)
    sigma = zoo.create_model("transformer_lm_13m_sigma", **small).eval()
    assert isinstance(sigma.model.layers[0].attn.qkv, SigmaLinear) and type(sigma.lm_head) is nn.Linear
    assert sigma.lm_head.weight is sigma.model.embed_tokens.weight  # still tied
    ids = torch.randint(0, 100, (2, 12))
    torch.testing.assert_close(sigma(ids).logits, plain(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("remove_norms", [False, True])
def test_transformer_lm_sigma_round_trips_through_the_auto_classes(tmp_path, remove_norms):
    """save_pretrained records the sigma config type, so AutoModelForCausalLM rebuilds the converted model and
    gamma, u, v load back (a plain model would drop them and compute another function)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    small = dict(num_hidden_layers=1, vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=16, dropout=0.0, remove_norms=remove_norms)
    model = zoo.create_model("transformer_lm_13m_sigma", **small)
    model.train()(torch.randint(0, 50, (2, 8)))  # one power iteration moves u, v
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SigmaLinear):
                m.gamma.mul_(3.0)
    model.eval().save_pretrained(tmp_path / "lm")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    assert type(loaded) is type(model) and loaded.config.remove_norms is remove_norms
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0, msg=key)
    ids = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight


def test_transformer_lm_sigma_loads_files_without_gamma_u_v(tmp_path):
    """A folded model's file (its config still the sigma type) and the plain LM's file lack gamma, u, v: they start
    from the loaded weights as conversion sets them, so the loaded model computes what the file's weights do
    (before, transformers left them as uninitialised memory: NaN logits). AutoModel gives the sigma backbone."""
    from transformers import AutoModel, AutoModelForCausalLM

    from zoo.sigma_reparam import TransformerLMSigmaForCausalLM, TransformerLMSigmaModel

    torch.manual_seed(0)
    small = dict(num_hidden_layers=2, vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=16, dropout=0.0)
    ids = torch.randint(0, 50, (2, 8))
    model = zoo.create_model("transformer_lm_13m_sigma", **small)
    model.train()(ids)
    with torch.no_grad():
        model.model.layers[0].ffn[0].gamma.mul_(3.0)
    expected = model.eval()(ids).logits
    remove_sigma_reparam(model).save_pretrained(tmp_path / "folded")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "folded").eval()
    assert isinstance(loaded.model.layers[0].ffn[0], SigmaLinear)
    torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
    plain = zoo.create_model("transformer_lm_13m", **small).eval()
    plain.save_pretrained(tmp_path / "plain")
    converted = TransformerLMSigmaForCausalLM.from_pretrained(tmp_path / "plain").eval()
    torch.testing.assert_close(converted(ids).logits, plain(ids).logits, atol=1e-5, rtol=1e-5)
    qkv = converted.model.layers[1].attn.qkv
    torch.testing.assert_close(qkv.gamma, torch.linalg.matrix_norm(qkv.weight, 2).reshape(1))
    assert type(AutoModel.from_pretrained(tmp_path / "folded")) is TransformerLMSigmaModel


@pytest.mark.parametrize("reparam, qk_scale", [(False, 4.0), (True, 4.0), (False, 1e-3), (True, 1e-3)])
def test_vit_attention_entropy_obeys_the_papers_lower_bound(reparam, qk_scale):
    """Theorem 3.1 on a ViT block: the logits are exactly scale x~ W~_Q^T W~_K x~ (biases absorbed), and every row's
    entropy is at least the bound of sigma_w * sigma_x, for the plain and the reparametrised model."""
    from estimators import attention_entropy_lower_bound
    from layers import attention_logit_norms

    torch.manual_seed(1)
    kw = dict(img_size=32, patch_size=8, depth=2, num_classes=3)
    model = zoo.create_model("vit_tiny_patch16_224_sigma", **kw, **({} if reparam else dict(reparam=False, remove_norms=False)))
    model.eval()
    with torch.no_grad():  # sharper attention (the bound is ~0 there), or near-uniform (the bound is near log N)
        model.blocks[0].attn.qkv.weight.mul_(qk_scale)
        if reparam:
            model.blocks[0].attn.qkv.gamma.mul_(qk_scale)
    attn, seen = model.blocks[0].attn, {}
    hooks = [attn.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0])),
             attn.probs.register_forward_hook(lambda m, i, out: seen.__setitem__("p", out))]
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 3)
    for h in hooks:
        h.remove()
    x, p = seen["x"], seen["p"].double()
    sigma_w, sigma_x = attention_logit_norms(attn, x)
    B, N, _ = x.shape
    with torch.no_grad():
        q, k, _ = attn.qkv(x).double().reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    logits = attn.scale * q @ k.transpose(-1, -2)
    assert float((torch.linalg.matrix_norm(logits, 2) / (sigma_w * sigma_x[:, None])).max()) <= 1 + 1e-9
    torch.testing.assert_close(p, logits.softmax(-1), atol=1e-6, rtol=1e-5)  # the probe's probabilities
    entropy = -torch.special.xlogy(p, p).sum(-1)  # (B, heads, N)
    bound = attention_entropy_lower_bound(sigma_w[None] * sigma_x[:, None], N)  # (B, heads)
    assert (entropy >= bound[..., None] - 1e-6).all()  # float32 logits: entropies are good to ~1e-7
    if qk_scale < 1:
        assert float(bound.min()) > 1.0  # a comparison with teeth: log N = 2.83 here


def test_remove_keeps_frozen_layers_frozen_and_stores_gamma_over_sigma_times_w():
    """remove_sigma_reparam folds each layer to W_hat = (gamma / u^T W v) W from its stored u, v, with the weight's
    own requires_grad: a frozen layer's folded weight stays frozen (a fine-tuning setup survives export), a
    trainable one stays trainable."""
    net = apply_sigma_reparam(small_net(2))
    net[0].requires_grad_(False)  # frozen conv (weight, bias, gamma)
    with torch.no_grad():
        for layer, factor in ((net[0], 0.5), (net[4], 1.7), (net[6], 3.0)):  # gamma != sigma: W_hat != W
            layer.gamma.mul_(factor)
    sigma = {i: net[i].u @ net[i].weight.detach().flatten(1) @ net[i].v for i in (0, 4, 6)}
    expected = {i: net[i].gamma.detach() / sigma[i] * net[i].weight.detach() for i in (0, 4, 6)}
    remove_sigma_reparam(net)
    assert not net[0].weight.requires_grad and not net[0].bias.requires_grad
    assert net[4].weight.requires_grad and net[6].weight.requires_grad
    for i, folded in expected.items():
        torch.testing.assert_close(net[i].weight.detach(), folded, atol=1e-6, rtol=1e-6)
    trainable = sorted(name.split(".")[0] for name, p in net.named_parameters() if p.requires_grad)
    assert trainable == ["3", "3", "4", "4", "6", "6"]  # the LayerNorm and the two Linears


def test_restart_reparam_by_default_resets_u_v_and_gamma_so_the_layer_computes_its_plain_weight():
    """restart_reparam() with no names sets all three of u, v and gamma from the current weight's top singular
    triplet (as for a checkpoint that holds none of them): afterwards W_hat = W exactly, whatever they were."""
    layer = apply_sigma_reparam(nn.Linear(48, 64))
    with torch.no_grad():
        layer.weight.copy_(with_spectrum(64, 48, [2.5, 1.0, 0.3], seed=3))
        layer.u.copy_(torch.nn.functional.normalize(torch.randn(64), dim=0))
        layer.v.copy_(torch.nn.functional.normalize(torch.randn(48), dim=0))
        layer.gamma.fill_(7.0)
    layer.restart_reparam()
    U, S, Vh = torch.linalg.svd(layer.weight.detach())
    assert S[0].item() == pytest.approx(2.5, rel=1e-5) and layer.gamma.item() == pytest.approx(2.5, rel=1e-5)
    assert abs(abs(float(layer.u @ U[:, 0])) - 1) < 1e-5 and abs(abs(float(layer.v @ Vh[0])) - 1) < 1e-5
    assert layer.sigma.item() == pytest.approx(2.5, rel=1e-5)
    torch.testing.assert_close(layer.folded_weight(), layer.weight.detach(), atol=1e-6, rtol=1e-5)
    x = torch.randn(3, 48)
    torch.testing.assert_close(layer.eval()(x), nn.functional.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_attention_probe_applies_the_blocks_q_and_k_norms_before_the_softmax():
    """A timm Attention with qk_norm: the probe's probabilities are softmax(scale LN_q(q) LN_k(k)^T), what timm's
    own non-fused path computes, not those of the raw q, k; attention_logit_norms refuses such a block."""
    from timm.models.vision_transformer import Attention

    from layers import add_attention_probes, attention_logit_norms

    torch.manual_seed(0)
    block = Attention(16, num_heads=2, qkv_bias=True, qk_norm=True, norm_layer=nn.LayerNorm)
    model = add_attention_probes(nn.Sequential(block)).eval()
    attn = model[0]
    with torch.no_grad():  # non-trivial norm parameters, and a q/k scale the norms undo
        for norm in (attn.q_norm, attn.k_norm):
            norm.weight.copy_(0.5 + torch.rand(8))
            norm.bias.normal_()
        attn.qkv.weight.mul_(5.0)
    x = torch.randn(2, 6, 16)
    seen, reference = [], []
    hook = attn.probs.register_forward_hook(lambda m, i, out: seen.append(out))
    fused = model(x)
    hook.remove()
    attn.fused_attn = False
    hook = attn.attn_drop.register_forward_hook(lambda m, i, out: reference.append(out))
    torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-5)
    hook.remove()
    torch.testing.assert_close(seen[0], reference[0], atol=1e-6, rtol=1e-6)
    q, k, _ = attn.qkv(x).reshape(2, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
    raw = (attn.scale * q @ k.transpose(-1, -2)).softmax(-1)
    assert (raw - seen[0]).abs().max() > 1e-2  # the norms matter here
    with pytest.raises(ValueError, match="this attention normalises q/k"):
        attention_logit_norms(attn, x)


def test_attention_logit_norms_absorb_the_qkv_bias_as_a_column():
    """With nonzero qkv biases the logits are scale [x, 1] W~_Q^T W~_K [x, 1]^T: sigma_w is scale times the spectral
    norm of W~_Q^T W~_K per head with the bias as the extra column (by hand here), sigma_x that of X~ X~^T, and the
    logits never exceed their product (dropping the bias column breaks both)."""
    from timm.models.vision_transformer import Attention

    from layers import attention_logit_norms

    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True).eval()
    with torch.no_grad():
        attn.qkv.bias.normal_(0.0, 3.0)  # large next to the weights: most of the logits
    x = torch.randn(3, 5, 16)
    sigma_w, sigma_x = attention_logit_norms(attn, x)
    w = torch.cat([attn.qkv.weight, attn.qkv.bias[:, None]], 1).detach().double()
    xt = torch.cat([x.double(), torch.ones(3, 5, 1, dtype=torch.float64)], -1)
    for h in range(2):
        wq, wk = w[8 * h:8 * (h + 1)], w[16 + 8 * h:16 + 8 * (h + 1)]
        assert sigma_w[h].item() == pytest.approx(attn.scale * torch.linalg.matrix_norm(wq.T @ wk, 2).item(), rel=1e-9)
    torch.testing.assert_close(sigma_x, torch.linalg.matrix_norm(xt @ xt.transpose(1, 2), 2), rtol=1e-9, atol=0)
    with torch.no_grad():
        q, k, _ = attn.qkv(x).double().reshape(3, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    logits = attn.scale * q @ k.transpose(-1, -2)
    assert float((torch.linalg.matrix_norm(logits, 2) / (sigma_w * sigma_x[:, None])).max()) <= 1 + 1e-9
    no_bias = Attention(16, num_heads=2, qkv_bias=False)  # no bias: a zero column, the plain bilinear bound
    sigma_w0, _ = attention_logit_norms(no_bias, x)
    wq, wk = no_bias.qkv.weight.detach().double()[:8], no_bias.qkv.weight.detach().double()[16:24]
    assert sigma_w0[0].item() == pytest.approx(no_bias.scale * torch.linalg.matrix_norm(wq.T @ wk, 2).item(), rel=1e-9)


def test_attention_probe_gives_a_query_with_every_key_masked_a_row_of_zeros():
    """timm's fused attention gives such a query a finite output; the probe recorded a NaN row, which stopped the
    entropy estimator. Now the row is 0 and attention_entropy leaves it out, as for the LMs' padding queries."""
    from timm.models.vision_transformer import Attention

    from estimators import Probe, attention_entropy
    from layers import add_attention_probes, attention_logit_norms

    torch.manual_seed(0)
    model = add_attention_probes(nn.Sequential(Attention(16, num_heads=2))).eval()
    keep = torch.ones(5, 5, dtype=torch.bool)
    keep[-1] = False
    with Probe(model, {"0.probs": [attention_entropy()]}) as probe:
        seen = []
        model[0].probs.register_forward_hook(lambda m, i, out: seen.append(out))
        model[0](torch.randn(2, 5, 16), attn_mask=keep)
    assert torch.equal(seen[0][..., -1, :], torch.zeros(2, 2, 5)) and torch.isfinite(seen[0]).all()
    assert all(math.isfinite(r["value"]) for r in probe.table())
    with pytest.raises(TypeError, match="attn must be a timm vision_transformer.Attention"):
        attention_logit_norms(nn.Linear(4, 4), torch.randn(1, 3, 4))


@pytest.mark.parametrize("mask", ["causal", "bool", "float", "positional"])
def test_attention_probe_applies_the_calls_mask_as_the_block_does(mask):
    """A timm Attention called with attn_mask (bool: True attends; float: added) or is_causal: the probe's
    probabilities equal timm's own non-fused ones for that call, and a masked key gets no probability (it used
    to record the unmasked softmax); the mask of one call does not leak into the next, unmasked one."""
    from timm.models.vision_transformer import Attention

    from layers import add_attention_probes

    torch.manual_seed(0)
    attn = add_attention_probes(nn.Sequential(Attention(16, num_heads=2, qkv_bias=True)))[0].eval()
    x, keep = torch.randn(2, 6, 16), torch.rand(6, 6) > 0.4
    keep.fill_diagonal_(True)
    call = {"causal": ((x,), {"is_causal": True}), "bool": ((x,), {"attn_mask": keep}),
            "float": ((x,), {"attn_mask": torch.zeros(6, 6).masked_fill(~keep, float("-inf"))}),
            "positional": ((x, keep), {})}[mask]
    forbidden = torch.ones(6, 6, dtype=torch.bool).triu(1) if mask == "causal" else ~keep

    def probabilities(fused: bool, args, kwargs):
        attn.fused_attn, seen = fused, []
        point = attn.probs if fused else attn.attn_drop  # the non-fused path's probabilities pass attn_drop
        hook = point.register_forward_hook(lambda m, i, out: seen.append(out))
        with torch.no_grad():
            attn(*args, **kwargs)
        hook.remove()
        return seen[-1]

    probed = probabilities(True, *call)
    torch.testing.assert_close(probed, probabilities(False, *call), atol=1e-6, rtol=1e-6)
    assert forbidden.any() and probed[..., forbidden].abs().max() == 0
    unmasked = probabilities(True, (x,), {})
    torch.testing.assert_close(unmasked, probabilities(False, (x,), {}), atol=1e-6, rtol=1e-6)
    assert unmasked[..., forbidden].min() > 0


def test_a_partly_zero_weight_converts_and_a_norm_layer_alone_cannot_lose_its_norm():
    """Only an all-zero (or non-finite) W_0 is refused: a weight with zero rows (a pruned unit) has sigma > 0 and
    converts, computing the same function. A model that is itself a LayerNorm cannot be replaced in place, so
    remove_norms refuses it by name instead of silently keeping it."""
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight[1:3] = 0.0
    x = torch.randn(3, 6)
    before = layer(x)
    apply_sigma_reparam(layer)
    assert isinstance(layer, SigmaLinear) and layer.gamma.item() > 0
    torch.testing.assert_close(layer.eval()(x), before, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="model is itself a norm layer"):
        apply_sigma_reparam(nn.LayerNorm(4), remove_norms=True)


def test_transformer_lm_sigma_remove_norms_drops_every_layernorm():
    """remove_norms=True is the paper's 'sigmaReparam without LayerNorm' LM: no LayerNorm left and exactly their
    parameters fewer (2 x hidden each); the default keeps them."""
    small = dict(num_hidden_layers=2, vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=16, dropout=0.0)
    kept = zoo.create_model("transformer_lm_13m_sigma", **small)
    removed = zoo.create_model("transformer_lm_13m_sigma", **small, remove_norms=True)
    norms = [m for m in kept.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and not any(isinstance(m, nn.LayerNorm) for m in removed.modules())
    assert count(kept) - count(removed) == sum(count(m) for m in norms) == len(norms) * 2 * 16


def test_vit_sigma_features_only_defaults_to_the_last_three_blocks():
    """Without out_indices, features_only gives the last 3 blocks' outputs, as timm's own ViTs do."""
    torch.manual_seed(0)
    feats = timm.create_model("vit_tiny_patch16_224_sigma", features_only=True, img_size=32, patch_size=8, depth=5)
    assert feats.feature_info.module_name() == ["blocks.2", "blocks.3", "blocks.4"]
    assert [tuple(f.shape) for f in feats(torch.randn(1, 3, 32, 32))] == [(1, 192, 4, 4)] * 3


def test_attention_entropy_scripts_draw_a_run_with_or_without_a_label(tmp_path, monkeypatch):
    """benchmarks/attention_entropy_plot.py and attention_entropy_bound.py take RUN_DIR[:LABEL] (a directory alone
    was an IndexError or an unpacking error); the bound script writes its table beside the figure (.md), with
    one row per checkpoint and every (image, head, query) row at or above Theorem 3.1's bound."""
    from pathlib import Path

    from train import fit, load_recipe

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import attention_entropy_bound
    import attention_entropy_plot

    run = tmp_path / "vit"
    fit(load_recipe("sigma-vit-digits", ["model_args.depth=1", "train.steps=2", "train.batch_size=8",
                                         "train.eval_every=0", "train.ckpt_every=1", "train.log_every=1",
                                         "probe.every=1"]), run)
    attention_entropy_plot.main([str(run), "--out", str(tmp_path / "plot.png")])
    attention_entropy_plot.main([f"{run}:sigma", "--out", str(tmp_path / "plot2.png")])
    assert (tmp_path / "plot.png").stat().st_size > 5_000 and (tmp_path / "plot2.png").is_file()
    attention_entropy_bound.main([str(run), "--images", "2", "--out", str(tmp_path / "bound.png")])
    table = (tmp_path / "bound.md").read_text().splitlines()
    rows = [line.split(" | ") for line in table[2:]]
    assert [(r[0], r[1]) for r in rows] == [("| vit", "1"), ("| vit", "2")]  # steps 1 and 2, labelled by the folder
    above, total = rows[0][-1].removesuffix(" |").split(" / ")
    assert above == total and int(total) == 2 * 3 * 65  # images x heads x queries, all at or above the bound


def test_digits_at_another_size_than_the_vits_are_named_before_training(tmp_path):
    """sigma-vit-digits with data.size=16 for a 32-pixel ViT failed inside timm's first forward (an assertion
    traceback); the folder path already named it. Now both say which setting to change, before any step."""
    from train import fit, load_recipe

    with pytest.raises(ValueError, match=r"the model takes 32x32 images \(model_args.img_size=32\) but the data are "
                                         r"16x16 \(data.size=16\); set data.size=32, or model_args.img_size=16"):
        fit(load_recipe("sigma-vit-digits", ["model_args.depth=1", "data.size=16", "train.steps=1"]), tmp_path / "r")
    assert not (tmp_path / "r" / "model.safetensors").exists()
