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


def test_cell_with_no_relu_units_is_linear_and_with_all_relu_units_a_plain_relu_rnn():
    """P = 0 is the purely linear RNN z -> (diag(A) + W) z + h (one subregion, code 0 everywhere); P = M rectifies
    every unit, z -> A z + W max(z, 0) + h. Both ends of 0 <= P <= M are legal models."""
    torch.manual_seed(0)
    linear, relu = ALRNNCell(M=5, P=0), ALRNNCell(M=5, P=5)
    with torch.no_grad():
        for cell in (linear, relu):
            cell.h.normal_()
            cell.W.normal_(0, 0.5)
    z = torch.randn(7, 5)
    torch.testing.assert_close(linear(z), z @ (torch.diag(linear.A) + linear.W).T + linear.h)
    torch.testing.assert_close(relu(z), relu.A * z + z.clamp_min(0) @ relu.W.T + relu.h)
    assert linear.subregion(z).tolist() == [0] * 7
    assert relu.subregion(torch.tensor([[1.0, -1, -1, -1, 1]])).tolist() == [1 + 16]


def test_cell_on_a_time_axis_equals_the_cell_on_each_state():
    """forward on states (B, T, M) (the 3-D path) maps every state on its own, as on (B*T, M)."""
    torch.manual_seed(0)
    cell = ALRNNCell(M=6, P=3)
    with torch.no_grad():
        cell.W.normal_(0, 0.5)
        cell.h.normal_()
    z = torch.randn(2, 4, 6)
    torch.testing.assert_close(cell(z), cell(z.reshape(8, 6)).reshape(2, 4, 6), atol=1e-6, rtol=0)
    phi = torch.cat([z[..., :3], z[..., 3:].clamp_min(0)], -1)
    torch.testing.assert_close(cell(z), cell.A * z + phi @ cell.W.T + cell.h, atol=1e-6, rtol=0)


def test_subregion_code_counts_a_unit_at_exactly_zero_as_off():
    """The code is sum_i [z_{M-P+i} > 0] 2^i: a ReLU unit at exactly 0 is in its off region, where phi*(0) = 0
    and the rollout's derivative phi*'(0) = 0 put it (a >= would give that state the other region's symbol)."""
    cell = ALRNNCell(M=3, P=2)
    assert cell.subregion(torch.tensor([[5.0, 0.0, 0.0], [5.0, 0.0, 1.0], [5.0, 1.0, -0.0]])).tolist() == [0, 2, 1]


def test_initial_A_is_diag_K_over_its_largest_eigenvalue():
    """A = diag(K) / max|eig(K)|, K = R^T R / M + I, R ~ N(0, 1) (M x M): for large M, diag(K) concentrates at 2
    and the top eigenvalue at 1 + (1 + 1)^2 = 5 (Marchenko-Pastur edge), so A ~ 0.4 with a spread of ~0.02.
    Without the identity (A ~ 0.25), without the 1/M (A ~ 0.25) or with a square root (A ~ 0.9) it is not."""
    torch.manual_seed(0)
    A = ALRNNCell(M=200, P=2).A.detach()
    assert 0.37 < A.mean().item() < 0.44, A.mean()
    assert 0.01 < A.std().item() < 0.04 and A.max().item() < 0.6


def test_initial_W_is_gaussian_with_std_one_hundredth_and_h_is_zero():
    """W ~ 0.01 N(0, 1) as the authors: over 200 x 200 entries the sample std is within 3% of 0.01 (its standard
    error is 0.35%), the mean within 4 standard errors of 0 and the kurtosis that of a Gaussian; h starts at 0. A
    scale of 0.011 or 0.009, a uniform draw even of the same std (kurtosis 1.8) or a nonzero h would show."""
    torch.manual_seed(0)
    cell = ALRNNCell(M=200, P=2)
    W = cell.W.detach()
    assert W.std().item() == pytest.approx(0.01, rel=0.03)
    assert abs(W.mean().item()) < 4 * 0.01 / 200
    kurtosis = ((W - W.mean()) ** 4).mean() / W.var(unbiased=False) ** 2  # 3 for a Gaussian, 1.8 for a uniform
    assert kurtosis.item() == pytest.approx(3.0, abs=0.15)
    assert torch.equal(cell.h.detach(), torch.zeros(200))


def test_forced_rollout_refuses_a_forcing_schedule_or_states_of_the_wrong_size():
    """forced must have one entry per step and z0 be (B, M) with x's batch: a longer schedule would be cut to
    the steps, a shorter one fails with a bare IndexError inside the autograd Function, without these checks."""
    cell = ALRNNCell(M=4, P=2)
    z0, x = torch.zeros(2, 4), torch.zeros(2, 3, 1)
    for forced in ([True] * 2, [True] * 4):
        with pytest.raises(ValueError, match=rf"forced has {len(forced)} entries for 3 steps"):
            cell.forced_rollout(z0, x, forced)
    for bad_z0, bad_x in ((torch.zeros(2, 5), x), (torch.zeros(4), x), (z0, torch.zeros(3, 3, 1)), (z0, x[0])):
        with pytest.raises(ValueError, match=r"z0 must be \(B, M=4\) and x \(B, T, N\)"):
            cell.forced_rollout(bad_z0, bad_x, [False] * 3)
    assert cell.forced_rollout(z0, x, [False] * 3).shape == (2, 3, 4)


def test_model_refuses_no_observed_units_and_a_forcing_weight_outside_zero_one():
    """N = 0 would read out nothing; alpha outside [0, 1] extrapolates past the data instead of mixing."""
    with pytest.raises(ValueError, match=r"0 < N <= M, got N=0"):
        zoo.create_model("alrnn_m20_p2", N=0)
    m = zoo.create_model("alrnn_m20_p2")
    for alpha in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha a number in \\[0, 1\\]"):
            m(torch.randn(2, 10, 3), forcing_interval=2, alpha=alpha)


def _scaling_alrnn(a: float):
    """An AL-RNN whose map is z -> a z (A = a, W = 0, h = 0): every quantity of the DSR task has a closed form."""
    m = zoo.create_model("alrnn_m20_p2")
    with torch.no_grad():
        m.cell.A.fill_(a)
        m.cell.W.zero_()
        m.cell.h.zero_()
    return m


def test_dsr_task_loss_and_metrics_by_hand_for_a_scaling_map():
    """For z -> a z every DSR output is known: with a = 1, forcing every 3rd step at alpha = 0.5, the predictions
    are p_1 = x_0, p_t = s_{t-1} with s = p, mixed to (x_t + p_t) / 2 after steps 3, 6, ...; the loss is their
    MSE against x_1..x_T. With a = 0.9 the free run from the first test state is 0.9^t x_0, PE_n compares
    x_{t+n} with 0.9^n x_t, D_stsp is KL(test || generated) of that run and lambda_max = log(0.9) / dt."""
    import math

    from estimators.dynamics import state_space_divergence
    from train import load_recipe
    from train.tasks import make_task

    from .conftest import SMALL_DSR

    task = make_task(load_recipe("alrnn-lorenz63", [*SMALL_DSR, "task_args.alpha=0.5", "task_args.forcing_interval=3",
                                                    "data.noise=0"]))
    x = task.held_out_batch(3, torch.Generator().manual_seed(0))["x"]
    state, preds = x[:, 0], []
    for t in range(1, x.shape[1]):
        preds.append(state)
        state = 0.5 * x[:, t] + 0.5 * state if t % 3 == 0 else state
    expected = (torch.stack(preds, 1) - x[:, 1:]).square().mean()
    assert task.loss(_scaling_alrnn(1.0), {"x": x})[0].item() == pytest.approx(expected.item(), rel=1e-5)

    model, test_x, n = _scaling_alrnn(0.9), task.test_x, task.pe_steps
    x_gen = 0.9 ** torch.arange(len(test_x), dtype=torch.float64)[:, None] * test_x[0].double()
    torch.testing.assert_close(task.free_run(model)[0], x_gen.float())
    metrics = task.evaluate(model)
    assert metrics[f"PE_{n}"] == pytest.approx((test_x[n:] - 0.9 ** n * test_x[:-n]).square().mean().item(), rel=1e-4)
    assert metrics["D_stsp"] == pytest.approx(state_space_divergence(test_x, x_gen.float()).item(), rel=1e-6)
    assert metrics["lambda_max"] == pytest.approx(math.log(0.9) / 0.01, rel=1e-6)
    assert metrics["subregions"] == 1  # a scaled state keeps its signs


def test_dsr_windows_reach_the_last_step_and_noise_has_the_set_std():
    """Windows of seq_len + 1 steps start anywhere in [0, T - seq_len - 1], the last one included; training
    batches add N(0, data.noise^2) to the windows, the held-out ones are clean; the test trajectory is another
    simulation (seed + 1) scaled by the training statistics."""
    from train import load_recipe
    from train.tasks import make_task

    from .conftest import SMALL_DSR

    task = make_task(load_recipe("alrnn-lorenz63", [*SMALL_DSR, "data.noise=0.25"]))  # seq_len 40
    torch.testing.assert_close(task.train_x.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(task.train_x.std(0), torch.ones(3), atol=1e-4, rtol=0)
    assert (task.test_x[:100] - task.train_x[:100]).abs().max() > 0.1
    assert task.settling(torch.zeros(20000, 20)) == 1000 and task.settling(torch.zeros(500, 20)) == 50
    full = task.train_x
    task.train_x, task.test_x = full[:41], full[:42]
    torch.testing.assert_close(task.train_sample(1, torch.Generator())["x"], full[None, :41], atol=0, rtol=0)
    both = task.held_out_batch(2, torch.Generator().manual_seed(0))["x"]
    assert sorted(int((w[0] == full[:2]).all(1).nonzero()) for w in both) == [0, 1]
    noisy = task.batch(64, torch.Generator().manual_seed(3))["x"]
    task.noise = 0.0
    clean = task.batch(64, torch.Generator().manual_seed(3))["x"]
    assert (noisy - clean).std().item() == pytest.approx(0.25, rel=0.05)


def test_forcing_settings_are_checked_where_they_are_given():
    """A float forcing_interval ran (2.5 forced every 5 steps, as 5); the DSR task named alpha = 1.5 and an interval
    of 0 only at the first training step, and called a seq_len equal to the trajectory 'longer' than it."""
    m = zoo.create_model("alrnn_m20_p2")
    x = torch.randn(2, 12, 3)
    for interval, alpha in ((2.5, 1.0), (0, 1.0), (4, 1.5), (4, True)):
        with pytest.raises(ValueError, match="forcing_interval must be an integer >= 1 and alpha a number in"):
            m(x, forcing_interval=interval, alpha=alpha)
    from train import load_recipe
    from train.tasks import make_task

    small = ["data.train_steps=300", "data.test_steps=200", "data.transient=10"]
    for override, message in (("task_args.forcing_interval=0", r"task_args.forcing_interval must be an integer >= 1"),
                              ("task_args.alpha=1.5", r"task_args.alpha .* must lie in \[0, 1\], got 1.5"),
                              ("task_args.seq_len=300", r"seq_len=300 needs windows of seq_len \+ 1 = 301 steps; the "
                                                        r"training trajectory has 300")):
        with pytest.raises(ValueError, match=message):
            make_task(load_recipe("alrnn-lorenz63", [*small, override]))


def test_bf16_autocast_leaves_forward_generation_and_predictions_in_float32():
    """The rollout turned autocast off but the initial state L x_1 and the free-running map did not: under CPU
    bf16 autocast forward moved by 1.3e-4 and a 50-step generation by 1.5e-3. Now all equal float32's exactly."""
    torch.manual_seed(0)
    m = zoo.create_model("alrnn_m20_p2")
    x = torch.randn(2, 30, 3)
    plain = (m(x, forcing_interval=4), m.generate(x[:, 0], 50), m.n_step_prediction(x, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = (m(x, forcing_interval=4), m.generate(x[:, 0], 50), m.n_step_prediction(x, 5))
    for a, b in zip(plain, autocast):
        assert b.dtype == torch.float32 and torch.equal(a, b)
