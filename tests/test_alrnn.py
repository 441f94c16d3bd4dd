import pytest
import torch

import zoo
from layers import ALRNNCell


def test_cell_implements_the_equation():
    torch.manual_seed(0)
    cell = ALRNNCell(M=6, P=2)
    z = torch.randn(5, 6)
    phi = torch.cat([z[:, :4], z[:, 4:].clamp_min(0)], 1)
    expected = cell.A * z + phi @ cell.W.T + cell.h
    assert torch.allclose(cell(z), expected, atol=1e-6)


def test_cell_is_affine_within_a_subregion():
    torch.manual_seed(0)
    cell = ALRNNCell(M=5, P=2)
    z = torch.randn(5)
    z[3:] = torch.tensor([0.7, -0.4])  # fixed sign pattern (+, -)
    d = torch.tensor([1.0, 1, 1, 1, 0])  # identity units and the active ReLU pass, the inactive one is 0
    J = torch.diag(cell.A) + cell.W * d
    dz = 1e-3 * torch.randn(5)
    dz[3:] = 0.01 * dz[3:]  # stay in the same subregion
    assert torch.allclose(cell(z + dz) - cell(z), J @ dz, atol=1e-6)


def test_initialisation_as_the_authors():
    torch.manual_seed(0)
    cell = ALRNNCell(M=20, P=2)
    assert (cell.A > 0).all() and (cell.A <= 1).all()
    assert torch.equal(cell.h, torch.zeros(20))
    assert cell.W.std().item() == pytest.approx(0.01, rel=0.2)


def test_subregion_code_is_the_relu_sign_pattern():
    cell = ALRNNCell(M=4, P=2)
    z = torch.tensor([[0.0, 0.0, -1.0, -1.0], [0.0, 0.0, 1.0, -1.0], [0.0, 0.0, -1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert cell.subregion(z).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"z must be latent states \(\.\.\., M=4\), got \(4, 3\)"):
        cell.subregion(z[:, :3])  # observations, not latents: a code came back silently


def test_teacher_forcing_every_step_equals_one_step_predictions():
    torch.manual_seed(0)
    m = zoo.create_model("alrnn_m20_p2")
    x = torch.randn(2, 12, 3)
    pred = m(x, forcing_interval=1, alpha=1.0)
    # with full forcing, step t's prediction comes from [x_{t-1}; latent part carried from the model]
    z = m.initial_state(x[:, 0])
    for t in range(1, 12):
        z = m.cell(z)
        assert torch.allclose(pred[:, t - 1], z[:, :3], atol=1e-6)
        z = torch.cat([x[:, t], z[:, 3:]], 1)


def test_free_run_matches_unforced_rollout_and_generate():
    torch.manual_seed(0)
    m = zoo.create_model("alrnn_m20_p2")
    x = torch.randn(3, 30, 3)
    unforced = m(x, forcing_interval=10**6)
    gen = m.generate(x[:, 0], 30)
    assert torch.allclose(unforced, gen[:, 1:], atol=1e-6)
    n_step = m.n_step_prediction(x[0], 5)
    assert torch.allclose(n_step[0], m.generate(x[0, :1], 6)[0, 5], atol=1e-6)
    batched = m.n_step_prediction(x, 5)  # (B, T, N): every sequence on its own
    assert batched.shape == (3, 25, 3) and torch.allclose(batched[0], n_step, atol=1e-6)


def test_bad_inputs_get_errors_that_name_the_fix():
    m = zoo.create_model("alrnn_m20_p2")
    x = torch.randn(2, 20, 3)
    with pytest.raises(TypeError, match=r"x is torch.float64 but the model is torch.float32"):
        m(x.double())
    with pytest.raises(TypeError, match="x0 of generate is torch.float16"):
        m.generate(x[:, 0].half(), 5)
    for steps in (0, True):  # a bool is not a step count
        with pytest.raises(ValueError, match="steps must be an integer >= 1"):
            m.generate(x[:, 0], steps)
    with pytest.raises(ValueError, match=r"n must be an integer in \[0, T-1\] = \[0, 19\]"):
        m.n_step_prediction(x, 20)
    with pytest.raises(ValueError, match=r"\(time, N=3\) or \(batch, time, N=3\)"):
        m.n_step_prediction(x[0, 0], 1)
    with pytest.raises(ValueError, match="at least one time step"):
        m(x[:, :0])
    assert m(x[:, :1]).shape == (2, 0, 3)  # one step: the initial state, nothing to predict


def test_gtf_alpha_zero_is_free_running():
    torch.manual_seed(0)
    m = zoo.create_model("alrnn_m20_p2")
    x = torch.randn(2, 20, 3)
    assert torch.allclose(m(x, forcing_interval=1, alpha=0.0), m(x, forcing_interval=10**6), atol=1e-6)


def test_bad_inputs_are_named():
    m = zoo.create_model("alrnn_m20_p2")
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, N=3\)"):
        m(torch.randn(2, 10, 4))
    with pytest.raises(ValueError, match="forcing_interval"):
        m(torch.randn(2, 10, 3), forcing_interval=0)
    with pytest.raises(ValueError, match="0 <= P <= M"):
        zoo.create_model("alrnn_m20_p2", P=30)


@pytest.mark.parametrize("forcing_interval,alpha", [(16, 1.0), (5, 0.3), (1, 1.0), (1000, 1.0)])
def test_fused_rollout_matches_autograd_through_the_cell_loop(forcing_interval, alpha):
    """The hand-written backward of the teacher-forced rollout equals autograd through cell() steps (fp64), for
    the weights and for the data x (an encoder or a soft-forcing target upstream gets its gradient)."""
    torch.manual_seed(0)
    m = zoo.create_model("alrnn_m20_p2").double()
    with torch.no_grad():
        m.cell.h.normal_()
        m.cell.W.normal_(0, 0.3)  # ReLU units switch sign along the way
    x = torch.randn(4, 41, 3, dtype=torch.float64, requires_grad=True)
    z, looped = m.initial_state(x[:, 0]), []
    for t in range(1, x.shape[1]):
        z = m.cell(z)
        looped.append(z[:, :3])
        if t % forcing_interval == 0:
            z = torch.cat([alpha * x[:, t] + (1 - alpha) * z[:, :3], z[:, 3:]], 1)
    looped = torch.stack(looped, 1)
    weights = torch.randn_like(looped)
    expected = torch.autograd.grad((looped * weights).sum(), [*m.parameters(), x])
    fused = m(x, forcing_interval=forcing_interval, alpha=alpha)
    got = torch.autograd.grad((fused * weights).sum(), [*m.parameters(), x])
    torch.testing.assert_close(fused, looped, rtol=1e-12, atol=0)
    assert expected[-1][:, 1:].abs().sum() > 0 or forcing_interval >= x.shape[1]  # forced steps pass a gradient
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10 * e.abs().max().item())


def test_authors_pytorch_checkpoint_converts_and_runs_their_recursion(tmp_path):
    """A state dict in the authors' tutorial layout (A, W, h, B with z_1 = x_1 B, z_1[:N] = x_1) converts, and the
    converted model's free run equals their recursion written out here."""
    from weights import load_checkpoint
    from weights.convert import convert

    torch.manual_seed(1)
    M, P, N = 20, 2, 3
    theirs = {"A": torch.rand(M) * 0.9, "W": 0.2 * torch.randn(M, M), "h": 0.1 * torch.randn(M), "B": torch.rand(N, M) - 0.5}
    torch.save(theirs, tmp_path / "lorenz_m20_p2")
    m = load_checkpoint(convert(tmp_path / "lorenz_m20_p2", "alrnn_m20_p2", tmp_path / "lorenz.safetensors"))
    x0 = torch.randn(4, N)
    z = x0 @ theirs["B"]
    z[:, :N] = x0
    expected = [z[:, :N]]
    for _ in range(29):
        relu_part = torch.cat([z[:, : M - P], z[:, M - P:].clamp_min(0)], 1)
        z = theirs["A"] * z + relu_part @ theirs["W"].T + theirs["h"]
        expected.append(z[:, :N])
    torch.testing.assert_close(m.generate(x0, 30), torch.stack(expected, 1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"B must be \(N=3, M\)"):
        torch.save(theirs | {"B": torch.randn(4, M)}, tmp_path / "bad")
        convert(tmp_path / "bad", "alrnn_m20_p2", tmp_path / "bad.safetensors")


def test_dsr_free_run_is_shared_until_the_parameters_change():
    """The final evaluation and the report share one free run; an optimizer step (in-place update) makes a new one."""
    from train import load_recipe
    from train.tasks import make_task

    from .conftest import SMALL_DSR

    recipe = load_recipe("alrnn-lorenz63", SMALL_DSR)
    task = make_task(recipe)
    model = zoo.create_model(recipe["model"], **recipe["model_args"])
    task.prepare(model)
    first = task.free_run(model)
    assert task.free_run(model) is first
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    again = task.free_run(model)
    assert again is not first and not torch.equal(again[0], first[0])
    # a float64 model (a converted float64 original) evaluates on the same float32 data: cast, not refused
    metrics = task.evaluate(model.double())
    assert metrics["subregions"] >= 1 and metrics["PE_20"] == pytest.approx(task.evaluate(model.float())["PE_20"],
                                                                            rel=1e-3)
    assert torch.isfinite(task.loss(model.double(), task.held_out_batch(4, torch.Generator().manual_seed(0)))[0])
