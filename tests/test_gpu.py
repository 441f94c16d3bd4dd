"""The families on an accelerator: the same numbers on the device as on the CPU (or as a closed form).

Every test here is marked ``gpu`` (deselected by default; ``python -m pytest -m gpu`` runs them) and runs on
``torch.device($PAPERZOO_TEST_DEVICE)``, default ``cuda``; on a machine without CUDA they skip. To check the tests
themselves without a GPU: ``PAPERZOO_TEST_DEVICE=cpu python -m pytest tests/test_gpu.py -m gpu``.

fp32 comparisons run with TF32 off (cuDNN convolutions use TF32 by default), so the device computes in the
precision it is compared against; bf16 comparisons state their own, looser tolerance.
"""
import copy
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from .conftest import SMALL_DSR, gaussian_pair, killed_at_call, randomize_batchnorm, train_losses

DEVICE = torch.device(os.environ.get("PAPERZOO_TEST_DEVICE", "cuda"))
CPU = torch.device("cpu")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                       reason="needs CUDA (or PAPERZOO_TEST_DEVICE=cpu to run these checks on the CPU)"),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on_device(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on DEVICE (the original stays on the CPU as the reference)."""
    return copy.deepcopy(module).to(DEVICE)


def assert_on_device(*tensors: torch.Tensor) -> None:
    for t in tensors:
        assert t.device.type == DEVICE.type, t.device


# ---- 1. the training loop ----------------------------------------------------------------------------------

def _dsr_task():
    from train.tasks.dsr import DSRTask
    return DSRTask


def _classification_task():
    from train.tasks.classification import ClassificationTask
    return ClassificationTask


# 30 steps, checkpoints every 10, a loss row every step (SMALL_DSR); Adam so that 30 steps visibly lower the loss
IB_TINY = ["train.steps=30", "train.batch_size=128", "train.eval_every=0", "train.ckpt_every=10", "train.log_every=1",
           "optim={name: adam, lr: 0.02}"]


@pytest.mark.parametrize("name, extra, task", [
    # hand-written BPTT (autocast off inside the rollout); a 500-step test trajectory keeps the evaluations short
    ("alrnn-lorenz63", SMALL_DSR + ["optim={name: adam, lr: 0.01}", "data.test_steps=500"], _dsr_task),
    ("ib-tanh-12bit", IB_TINY, _classification_task),  # linear layers really run in bf16; binning MI at the end
], ids=["alrnn-lorenz63", "ib-tanh-12bit"])
def test_fit_on_device_in_bf16_loss_falls_and_resume_repeats_thetrain_losses(tmp_path, name, extra, task):
    """fit() with train.device=DEVICE and train.precision=bf16: finite losses that fall, and a run killed during
    step 25 (after the checkpoint at step 20) and resumed gives the same losses and weights as an uninterrupted run:
    bit for bit on the CPU, to 1e-3 on CUDA (see below)."""
    from train import fit, load_recipe
    from weights import load_checkpoint

    recipe = load_recipe(name, extra + [f"train.device={DEVICE}", "train.precision=bf16", "train.threads=null"])
    fit(recipe, tmp_path / "straight")
    a = train_losses(tmp_path / "straight")
    assert list(a) == list(range(1, 31))
    values = list(a.values())
    assert all(math.isfinite(v) for v in values)
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < 0.9 * first, (first, last)

    with killed_at_call(task(), "loss", 25), pytest.raises(KeyboardInterrupt):
        fit(recipe, tmp_path / "resumed")
    fit(recipe, tmp_path / "resumed", resume=True)
    b = train_losses(tmp_path / "resumed")
    assert list(b) == list(a)
    ma = load_checkpoint(tmp_path / "straight" / "model.safetensors")
    mb = load_checkpoint(tmp_path / "resumed" / "model.safetensors")
    if DEVICE.type == "cpu":  # the same batches, RNG and optimizer state after the resume: identical losses
        assert a == b
        for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(va, vb), k
    else:
        # On an H100 two uninterrupted alrnn-lorenz63 runs in bf16 with the recipe's probe already differ from step 7
        # at ~3e-7 (relative); fp32, or bf16 without the probe, repeat bit for bit. A wrong resume (other batches,
        # RNG or optimizer state) changes the losses after step 20 by percents, so 1e-3 still tells them apart.
        worst = max(abs(b[s] - a[s]) / abs(a[s]) for s in a)
        assert worst < 1e-3, {s: (a[s], b[s]) for s in a if a[s] != b[s]}
        for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
            torch.testing.assert_close(vb, va, rtol=1e-3, atol=1e-4, msg=lambda m: f"{k}: {m}")


# ---- 2. estimators -----------------------------------------------------------------------------------------

def test_ksg_and_kl_on_device_equal_cpu_and_the_gaussian_closed_form():
    """KSG on device tensors (the fused kernels where Triton runs, and the chunked brute force) equals the CPU
    estimate (KD-tree) with the same k and data, for both variants and any chunk size, and lies within 0.04 nats of
    -1/2 log(1 - rho^2) as on the CPU."""
    from estimators import knn, knn_fused, kozachenko_leonenko_entropy, ksg_mutual_information

    x, y = gaussian_pair(2000, 0.75)
    truth = -0.5 * math.log(1 - 0.75 ** 2)  # 0.4133 nats
    xd, yd = x.to(DEVICE), y.to(DEVICE)
    for variant in (1, 2):
        cpu = ksg_mutual_information(x, y, k=3, variant=variant).item()
        dev = ksg_mutual_information(xd, yd, k=3, variant=variant)
        assert_on_device(dev)
        assert dev.item() == pytest.approx(cpu, abs=1e-6)
        assert dev.item() == pytest.approx(truth, abs=0.04)
        chunked = ksg_mutual_information(xd, yd, k=3, variant=variant, chunk_size=97, method="brute").item()
        assert chunked == pytest.approx(cpu, abs=1e-6)  # 21 chunks, the last one short
    if knn_fused.available(xd, yd, 3):  # on a grid: ties at the k-th distance and at distance 0
        grid_x, grid_y = (2 * xd).round(), (2 * yd).round()
        for variant in (1, 2):
            fused = knn_fused.ksg_counts_fused(grid_x, grid_y, 7, variant)
            brute = knn._ksg_counts_brute(grid_x, grid_y, 7, variant, 300)
            assert all(torch.equal(a, b.to(a.dtype)) for a, b in zip(fused, brute))
    # float32 inputs and 3 x 2 dimensions: brute force on both devices, the same neighbours
    g = torch.Generator().manual_seed(1)
    x3 = torch.randn(1500, 3, generator=g)
    y2 = 0.7 * x3[:, :2] + 0.5 * torch.randn(1500, 2, generator=g)
    cpu = ksg_mutual_information(x3, y2, k=5, method="brute", chunk_size=200).item()
    assert ksg_mutual_information(x3.to(DEVICE), y2.to(DEVICE), k=5, chunk_size=64).item() == pytest.approx(cpu, abs=1e-6)
    # Kozachenko-Leonenko entropy of a 2-D standard normal: log(2 pi e), device == CPU
    z = torch.randn(3000, 2, generator=g, dtype=torch.float64)
    h_cpu = kozachenko_leonenko_entropy(z).item()
    h_dev = kozachenko_leonenko_entropy(z.to(DEVICE), chunk_size=500).item()
    assert h_dev == pytest.approx(h_cpu, abs=1e-6)
    assert h_dev == pytest.approx(math.log(2 * math.pi * math.e), abs=0.05)


def test_ksg_in_a_probe_on_a_device_model_against_a_cpu_target():
    """A Probe records a device model's probe point on the device; the bound CPU target is moved to it."""
    from estimators import Probe, ksg_mi, ksg_mutual_information
    from layers import ProbePoint

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)
            self.h = ProbePoint()

        def forward(self, x):
            return self.h(self.lin(x))

    x, y = gaussian_pair(800, 0.75, seed=6)
    net = on_device(Net())
    with Probe(net, {"h": [ksg_mi(target=y)]}, max_samples=600) as probe:
        net(x.float().to(DEVICE))
    row = probe.table()[0]
    # a monotone (affine) map of x keeps the ranks, so the value is KSG of (x, y) itself, up to the float32 rounding
    # of the device's Linear: one neighbour count of 600 moving across a distance tie shifts the mean by about
    # 1 / (600 n_x), 3.5e-5 on an H100 (a target paired with the wrong rows would give about 0)
    assert row["value"] == pytest.approx(ksg_mutual_information(x[:600], y[:600]).item(), abs=2e-4)


def test_dse_on_device_equals_cpu_and_closed_forms():
    from estimators import diffusion_spectral_entropy, diffusion_spectral_mutual_information

    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 10, generator=g)
    for sigma, t in ((2.0, 1), (4.0, 2)):
        cpu = diffusion_spectral_entropy(x, sigma=sigma, t=t).item()
        dev = diffusion_spectral_entropy(x.to(DEVICE), sigma=sigma, t=t)
        assert_on_device(dev)
        assert dev.item() == pytest.approx(cpu, abs=1e-6)
    far = 1e3 * torch.randn(64, 3, generator=g)  # P = I: every eigenvalue 1, S_D = log2 N = 6 bits
    assert diffusion_spectral_entropy(far.to(DEVICE), sigma=1.0).item() == pytest.approx(6.0, abs=1e-6)
    # two far-apart clusters labelled by cluster: S_D = 1 bit, I_D = H(Y) = 1 bit (as on the CPU)
    x2 = torch.cat([torch.zeros(50, 2), torch.full((50, 2), 1e3)]) + 1e-3 * torch.randn(100, 2, generator=g)
    labels = torch.arange(100) // 50
    assert diffusion_spectral_entropy(x2.to(DEVICE), sigma=1.0).item() == pytest.approx(1.0, abs=1e-3)
    dev_mi = diffusion_spectral_mutual_information(x2.to(DEVICE), labels.to(DEVICE), sigma=1.0).item()
    assert dev_mi == pytest.approx(diffusion_spectral_mutual_information(x2, labels, sigma=1.0).item(), abs=1e-6)
    assert dev_mi == pytest.approx(1.0, abs=1e-3)


def test_attention_entropy_on_device_closed_forms_and_cpu():
    from estimators import attention_entropy_per_head

    b, lq, lk = 2, 3, 8
    uniform = torch.full((b, 1, lq, lk), 1 / lk, device=DEVICE)
    onehot = torch.zeros(b, 1, lq, lk, device=DEVICE)
    onehot[..., 0] = 1
    out = attention_entropy_per_head(torch.cat([uniform, onehot], 1))
    assert_on_device(out["mean"])
    assert out["head_0"].item() == pytest.approx(math.log(8), abs=1e-6)
    assert out["head_1"].item() == 0.0
    assert out["mean"].item() == pytest.approx(math.log(8) / 2, abs=1e-6)
    probs = torch.randn(4, 3, 7, 11, generator=torch.Generator().manual_seed(0)).mul(3).softmax(-1)
    cpu, dev = attention_entropy_per_head(probs), attention_entropy_per_head(probs.to(DEVICE), base="bits")
    for key in cpu:
        assert dev[key].item() == pytest.approx(cpu[key].item() / math.log(2), abs=1e-5), key


# ---- 3. Hopfield layer -------------------------------------------------------------------------------------

NO_NORMS = {f"normalize_{w}{a}": False for w in ("stored_pattern", "state_pattern", "pattern_projection")
            for a in ("", "_affine")}


def _naive_hopfield_fp64(h, y, r, pad, heads):
    """Z = softmax(beta R W_Q (Y W_K)^T) Y W_V per head (hflayers' W_V maps Y directly), then W_O; fp64 on the CPU."""
    core = h.association_core
    w, b = core.in_proj_weight.detach().double(), core.in_proj_bias.detach().double()
    e = w.shape[1]
    y, r = y.double(), r.double()
    bsz, s, l_ = y.shape[0], y.shape[1], r.shape[1]
    q = F.linear(r, w[:e], b[:e]).view(bsz, l_, heads, -1).transpose(1, 2)
    k = F.linear(y, w[e:2 * e], b[e:2 * e]).view(bsz, s, heads, -1).transpose(1, 2)
    v = F.linear(y, w[2 * e:], b[2 * e:]).view(bsz, s, heads, -1).transpose(1, 2)
    scores = core.scaling * q @ k.transpose(-1, -2)
    z = scores.masked_fill(pad[:, None, None, :], float("-inf")).softmax(-1) @ v
    z = z.transpose(1, 2).reshape(bsz, l_, -1)
    return F.linear(z, core.out_proj.weight.detach().double(), core.out_proj.bias.detach().double())


def test_hopfield_one_step_sdpa_on_device_equals_the_naive_update_in_fp64():
    from layers import Hopfield

    torch.manual_seed(0)
    h = Hopfield(input_size=32, num_heads=4, **NO_NORMS).eval()
    with torch.no_grad():
        for p in h.parameters():
            p.normal_(0, 0.3)  # non-zero biases, logits of order one
    y, r = torch.randn(3, 11, 32), torch.randn(3, 6, 32)
    pad = torch.zeros(3, 11, dtype=torch.bool)
    pad[0, 7:] = True
    ref = _naive_hopfield_fp64(h, y, r, pad, heads=4)
    dev = on_device(h)
    yd, rd = y.to(DEVICE), r.to(DEVICE)
    with torch.no_grad():
        out = dev((yd, rd, yd), stored_pattern_padding_mask=pad.to(DEVICE))
        out_cpu_mask = dev((yd, rd, yd), stored_pattern_padding_mask=pad)  # the layer moves a CPU mask itself
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            out_bf16 = dev((yd, rd, yd), stored_pattern_padding_mask=pad.to(DEVICE))
    assert_on_device(out)
    scale = ref.abs().max().item()
    assert (out.double().cpu() - ref).abs().max().item() < 1e-5 * scale
    assert torch.equal(out_cpu_mask, out)
    assert out_bf16.dtype == torch.bfloat16
    rel = ((out_bf16.double().cpu() - ref).norm() / ref.norm()).item()
    assert rel < 3e-2, rel  # bf16 keeps 8 mantissa bits: ~0.4% per rounding, a few roundings deep


def test_hopfield_iterated_update_on_device_equals_the_rule_by_hand():
    """update_steps_max=3 (the explicit association path, per-head convergence flags on the device), fp64."""
    from layers import Hopfield

    torch.manual_seed(0)
    y, r = torch.randn(2, 12, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    static = dict(stored_pattern_as_static=True, state_pattern_as_static=True, pattern_projection_as_static=True,
                  disable_out_projection=True, **NO_NORMS)
    h = Hopfield(scaling=0.5, update_steps_max=3, update_steps_eps=1e-12, **static)
    xi = r
    for _ in range(3):
        xi = torch.softmax(0.5 * xi @ y.transpose(1, 2), -1) @ y
    ref = torch.softmax(0.5 * xi @ y.transpose(1, 2), -1) @ y
    out = on_device(h)((y.to(DEVICE), r.to(DEVICE), y.to(DEVICE)))
    assert_on_device(out)
    assert (out.cpu() - ref).abs().max().item() < 1e-10


# ---- 4. Grassmann LM ---------------------------------------------------------------------------------------

TINY_LM = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, intermediate_size=64, max_position_embeddings=64)


def _tiny_lm(kind: str):
    torch.manual_seed(0)
    if kind == "grassmann":
        from zoo.grassmann import GrassmannLMConfig, GrassmannLMForCausalLM
        return GrassmannLMForCausalLM(GrassmannLMConfig(**TINY_LM, reduced_dim=6, windows=[1, 2, 4])).eval()
    from zoo.transformer_lm import TransformerLMConfig, TransformerLMForCausalLM
    return TransformerLMForCausalLM(TransformerLMConfig(**TINY_LM, num_attention_heads=4)).eval()


@pytest.mark.parametrize("kind", ["grassmann", "transformer"])
def test_lm_on_device_generate_cached_equals_uncached_and_is_causal(kind):
    model = _tiny_lm(kind)
    dev = on_device(model)
    ids = torch.randint(1, 50, (2, 20), generator=torch.Generator().manual_seed(1))
    ids_d = ids.to(DEVICE)
    with torch.no_grad():
        logits = dev(ids_d).logits
        assert_on_device(logits)
        assert (logits.cpu() - model(ids).logits).abs().max().item() < 1e-4  # the device computes the CPU's function
        for t in (0, 7, 18):  # changing token t+1 leaves outputs <= t untouched and changes output t+1
            ids2 = ids_d.clone()
            ids2[:, t + 1] = (ids2[:, t + 1] + 1) % 50
            logits2 = dev(ids2).logits
            assert (logits2[:, : t + 1] - logits[:, : t + 1]).abs().max().item() < 1e-5
            assert (logits2[:, t + 1] - logits[:, t + 1]).abs().max().item() > 1e-4
    prompt = ids_d[:, :5]
    kw = dict(max_new_tokens=40, do_sample=False, return_dict_in_generate=True, output_logits=True)
    cached, plain = dev.generate(prompt, **kw), dev.generate(prompt, use_cache=False, **kw)
    assert_on_device(cached.sequences)
    assert torch.equal(cached.sequences, plain.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(cached.logits, plain.logits)) < 1e-4
    on_cpu = model.generate(ids[:, :5], max_new_tokens=40, do_sample=False)
    assert torch.equal(cached.sequences.cpu(), on_cpu)
    if kind == "grassmann":  # left padding: positions counted over the mask on the device
        long, short = torch.tensor([[5, 9, 3, 7, 2, 8]]), torch.tensor([[4, 6, 1]])
        batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)]).to(DEVICE)
        mask = (torch.arange(6) >= torch.tensor([[0], [3]])).long().to(DEVICE)
        together = dev.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False)
        for row, seq in enumerate((long, short)):
            alone = dev.generate(seq.to(DEVICE), max_new_tokens=10, do_sample=False)
            assert torch.equal(together[row, 6:], alone[0, seq.shape[1]:])


# ---- 5. sigmaReparam ---------------------------------------------------------------------------------------

def _small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Flatten(), nn.LayerNorm(8 * 6 * 6),
                         nn.Linear(8 * 6 * 6, 32), nn.GELU(), nn.Linear(32, 5))


def test_sigma_reparam_conversion_on_device_keeps_the_function_and_sigma_converges():
    from layers import SigmaConv2d, SigmaLinear, apply_sigma_reparam

    net = _small_net().to(DEVICE)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    with torch.no_grad():
        before = net(x)
    apply_sigma_reparam(net)  # SVD of the weights on the device
    assert isinstance(net[0], SigmaConv2d) and isinstance(net[4], SigmaLinear)
    assert_on_device(net[4].u, net[4].v, net[4].gamma, net[0].u)
    exact = torch.linalg.matrix_norm(net[4].weight.detach().double(), 2).item()
    assert net[4].gamma.item() == pytest.approx(exact, rel=1e-5)
    for mode in (False, True):  # eval reads u, v; a training forward first runs one power iteration
        net.train(mode)
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)

    layer = apply_sigma_reparam(nn.Linear(48, 64)).to(DEVICE)
    g = torch.Generator().manual_seed(1)
    U = torch.linalg.qr(torch.randn(64, 4, generator=g))[0]
    V = torch.linalg.qr(torch.randn(48, 4, generator=g))[0]
    with torch.no_grad():  # a weight with spectrum 3, 1.5, 1, 0.5: u, v are now stale
        layer.weight.copy_((U @ torch.diag(torch.tensor([3.0, 1.5, 1.0, 0.5])) @ V.T).to(DEVICE))
    xs = torch.randn(2, 48, device=DEVICE)
    for _ in range(20):  # power iteration: error ~ (1.5 / 3)^(2 n)
        layer(xs)
    exact = torch.linalg.matrix_norm(layer.weight.detach(), 2).item()
    assert layer.sigma.item() == pytest.approx(exact, rel=1e-5)
    assert layer.sigma.item() == pytest.approx(3.0, rel=1e-5)


def test_sigma_reparam_torch_compile_on_device_equals_eager():
    """torch.compile (inductor) of a converted net: the same outputs (1e-4, fp32), gradients of every parameter
    (gamma included) and power-iteration buffers as the eager twin, over two training steps."""
    from layers import apply_sigma_reparam

    net = apply_sigma_reparam(_small_net(2)).to(DEVICE)
    eager = apply_sigma_reparam(_small_net(2)).to(DEVICE)
    compiled = torch.compile(net)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    for _ in range(2):
        out_c, out_e = compiled(x), eager(x)
        torch.testing.assert_close(out_c, out_e, atol=1e-4, rtol=1e-4)
        out_c.square().sum().backward()
        out_e.square().sum().backward()
    for (name, p), q in zip(net.named_parameters(), eager.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-3, msg=lambda m: f"{name}: {m}")
    assert net[0].gamma.grad.abs().item() > 0 and net[4].gamma.grad.abs().item() > 0
    torch.testing.assert_close(net[4].u, eager[4].u, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(net[0].v, eager[0].v, atol=1e-5, rtol=1e-5)


# ---- 6. Facet ----------------------------------------------------------------------------------------------

def test_facet_fp64_on_device_equals_cpu_and_forces_are_minus_the_energy_gradient():
    pytest.importorskip("ase")
    pytest.importorskip("vesin")
    from ase.build import bulk

    import zoo
    from zoo.atoms import graph_from_atoms
    from zoo.facet_calculator import FacetCalculator

    torch.manual_seed(0)
    m = zoo.create_model("facet_small", channels=8, layers=2, knots=8, cutoff=4.0).double()
    with torch.no_grad():
        m.set_statistics({29: -0.3, 79: 0.2}, 0.7, 12.0)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((1, 1, 2))
    atoms.numbers[::3] = 79
    atoms.rattle(0.1, rng=np.random.default_rng(1))
    graph = graph_from_atoms(atoms, m.config.cutoff)
    ref = m.predict(graph, stress=True)
    dev = on_device(m)
    out = dev.predict(graph.to(DEVICE), stress=True)
    assert_on_device(out["energy"], out["forces"], out["stress"])
    for key in ("energy", "forces", "stress"):
        scale = ref[key].abs().max().item()
        assert (out[key].detach().cpu() - ref[key].detach()).abs().max().item() <= 1e-8 * scale, key
    forces = out["forces"].detach().cpu().numpy()
    h = 1e-4
    for a in range(4):  # central differences of the device energy, 4 atoms x 3 directions
        for k in range(3):
            e = []
            for sign in (1, -1):
                shifted = atoms.copy()
                shifted.positions[a, k] += sign * h
                with torch.no_grad():
                    e.append(dev(graph_from_atoms(shifted, m.config.cutoff).to(DEVICE)).item())
            assert forces[a, k] == pytest.approx(-(e[0] - e[1]) / (2 * h), abs=1e-5), (a, k)
    atoms.calc = FacetCalculator(m, device=DEVICE)  # the ASE calculator on the device
    assert atoms.get_potential_energy() == pytest.approx(ref["energy"].item(), rel=1e-8)
    assert np.abs(atoms.get_forces() - ref["forces"].numpy()).max() <= 1e-8 * ref["forces"].abs().max().item()


# ---- 7. PV-RNN ---------------------------------------------------------------------------------------------

def _tiny_pvrnn():
    import zoo
    torch.manual_seed(0)
    return zoo.create_model("pvrnn_small", n_sequences=4, seq_len=30)


def test_pvrnn_error_regression_on_device_equals_cpu_with_the_same_samples(monkeypatch):
    """Error regression samples z with torch.randn_like, whose device stream differs from the CPU's; with the
    samples drawn from one CPU generator for both (and fp64 so Adam sees the same gradient signs), predictions,
    errors and posteriors on the device equal the CPU's. Then, with the device's own sampling (fp32), the window
    error falls as on the CPU."""
    from train.data.pfsm import pfsm_sequences

    model = _tiny_pvrnn().double()
    stream, _ = pfsm_sequences(3, 16, period=10, seed=1)
    stream = stream.double()

    def run(m, device):
        gen = torch.Generator().manual_seed(0)
        with monkeypatch.context() as patch:
            patch.setattr(torch, "randn_like",
                          lambda t, **kw: torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device))
            return m.error_regression(stream.to(device), window=6, iterations=5, lr=0.1, horizon=2)

    ref, out = run(model, CPU), run(on_device(model), DEVICE)
    assert_on_device(out["prediction"])
    for key in ("prediction", "error", "window_error_before", "window_error_after"):
        torch.testing.assert_close(out[key].cpu(), ref[key], rtol=1e-7, atol=1e-9, msg=lambda m: f"{key}: {m}")
    for k in range(2):
        torch.testing.assert_close(out["post_mu"][k].cpu(), ref["post_mu"][k], rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(out["post_sigma"][k].cpu(), ref["post_sigma"][k], rtol=1e-7, atol=1e-9)
    assert (ref["window_error_after"] < ref["window_error_before"]).float().mean() > 0.5

    dev = on_device(_tiny_pvrnn())
    torch.manual_seed(0)
    r = dev.error_regression(stream.float().to(DEVICE), window=6, iterations=15, lr=0.1, horizon=2)
    S = 16 - 6 - 2 + 1
    assert r["prediction"].shape == (3, S, 2, 2) and r["error"].shape == (3, S)
    assert all(torch.isfinite(v).all() for v in (r["prediction"], r["error"], *r["post_sigma"]))
    assert r["window_error_after"].mean() < 0.95 * r["window_error_before"].mean()
    no_iter = dev.error_regression(stream.float().to(DEVICE), window=6, iterations=0, horizon=2)
    torch.testing.assert_close(no_iter["window_error_after"], no_iter["window_error_before"])


# ---- 8. coordinate attention -------------------------------------------------------------------------------

def test_mobilenetv2_ca_channels_last_on_device_equals_nchw_cpu():
    import zoo

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = zoo.create_model("mobilenetv2_ca_100").eval()
    randomize_batchnorm(model, gen)
    x = torch.randn(2, 3, 96, 96, generator=gen)
    dev = on_device(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        out = dev(x.to(DEVICE).contiguous(memory_format=torch.channels_last))
    assert_on_device(out)
    assert out.shape == (2, 1000)
    scale = ref.abs().max().item()
    assert (out.float().cpu() - ref).abs().max().item() < 1e-4 * scale
