"""Property tests of the distillation losses (section 4.2 of Czarnecki et al. 2017)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from policy_distill.losses import (
    FD_EPSILON,
    distillation_loss,
    empty_stack_like,
    gradient_distance,
    input_jacobian,
    jvp_logits,
    kl_divergence,
    log_softmax_tangent,
    perturbed_inputs,
    sample_input_directions,
    sample_unit_sphere,
    sequential_jvp,
    sobolev_exact_loss,
    teacher_directional_derivatives,
)


def small_policy(
    seed: int, actions: int = 5, dtype: torch.dtype = torch.float32, activation: type[nn.Module] = nn.Tanh
) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 16), activation(), nn.Linear(16, actions)).to(
        dtype
    )
    net.log_probs = lambda x: torch.log_softmax(net(x), dim=-1)  # type: ignore[attr-defined]
    return net


def random_logp(gen: torch.Generator, b: int = 64, a: int = 6) -> torch.Tensor:
    return torch.log_softmax(3 * torch.randn(b, a, generator=gen), dim=-1)


@pytest.mark.parametrize("direction", ["student_teacher", "teacher_student"])
def test_kl_of_a_policy_with_itself_is_zero_and_otherwise_positive(torch_gen, direction: str) -> None:
    p, q = random_logp(torch_gen), random_logp(torch_gen)
    assert kl_divergence(p, p, direction=direction).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_divergence(p, q, direction=direction).item() > 0.01
    for temperature in (0.5, 2.0):
        got = kl_divergence(p, q, direction=direction, temperature=temperature).item()
        assert got >= 0
        # As documented: both softened to softmax(log p / T), and no T^2 factor. F.kl_div(input,
        # target) is KL(target || input), so the first argument of KL goes in as the target.
        s, t = F.log_softmax(p / temperature, dim=-1), F.log_softmax(q / temperature, dim=-1)
        first, second = (s, t) if direction == "student_teacher" else (t, s)
        expected = F.kl_div(second, first, log_target=True, reduction="batchmean").item()
        assert got == pytest.approx(expected, rel=1e-5)
        assert abs(expected - kl_divergence(p, q, direction=direction).item()) > 0.01  # T matters here
    # Per sample: row b's KL alone, as F.kl_div gives it summed over actions without the batch mean.
    rows = kl_divergence(p, q, direction=direction, per_sample=True)
    first, second = (p, q) if direction == "student_teacher" else (q, p)
    expected_rows = F.kl_div(second, first, log_target=True, reduction="none").sum(-1)
    assert rows.shape == (len(p),) and torch.allclose(rows, expected_rows, rtol=1e-5, atol=1e-7)


def test_kl_matches_the_definition_and_directions_differ(torch_gen) -> None:
    p, q = random_logp(torch_gen, b=1, a=3), random_logp(torch_gen, b=1, a=3)
    manual = sum(math.exp(p[0, a]) * (p[0, a] - q[0, a]) for a in range(3))
    assert kl_divergence(p, q).item() == pytest.approx(float(manual), rel=1e-5)
    assert kl_divergence(p, q, direction="teacher_student").item() == pytest.approx(
        kl_divergence(q, p).item(), rel=1e-6
    )


def test_kl_scale_does_not_grow_with_batch_size(torch_gen) -> None:
    p, q = random_logp(torch_gen, b=50), random_logp(torch_gen, b=50)
    # The same samples repeated 10 times: a mean keeps the value, a sum would multiply it by 10.
    assert kl_divergence(p.repeat(10, 1), q.repeat(10, 1)).item() == pytest.approx(
        kl_divergence(p, q).item(), rel=1e-5
    )


def test_sobolev_term_scale_does_not_grow_with_batch_size(torch_gen) -> None:
    student, teacher = small_policy(0), small_policy(1)
    x = torch.rand(8, 2, 3, 3, generator=torch_gen)
    single, _ = sobolev_exact_loss(student.log_probs, teacher.log_probs, x)
    repeated, _ = sobolev_exact_loss(student.log_probs, teacher.log_probs, x.repeat(4, 1, 1, 1))
    assert repeated.item() == pytest.approx(single.item(), rel=1e-5)


def test_directions_are_uniform_unit_vectors(torch_gen) -> None:
    v = sample_unit_sphere((20000,), 4, generator=torch_gen)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(20000))
    # Uniform on the sphere: E[v v^T] = I / A.
    torch.testing.assert_close(v.T @ v / 20000, torch.eye(4) / 4, atol=0.01, rtol=0)


def estimator_draws(
    student, teacher, x, estimator: str, n: int, gen: torch.Generator, k: int = 1, shared: int = 1
):
    """n independent estimates of the Sobolev term (squared L2) by ``estimator``, ``shared``
    samples per input direction."""
    teacher_logp = teacher.log_probs(x).detach()
    return torch.tensor(
        [
            distillation_loss(
                student.log_probs,
                x,
                teacher_logp,
                teacher=teacher.log_probs,
                alpha=1.0,
                norm="squared_l2",
                num_projections=k,
                generator=gen,
                estimator=estimator,
                student_logits=student,
                student_layers=list(student),
                samples_per_direction=shared,
            ).sobolev.item()
            for _ in range(n)
        ]
    )


def test_projection_estimator_matches_exact_jacobian_loss(torch_gen) -> None:
    student, teacher = small_policy(0), small_policy(1)
    x = torch.rand(6, 2, 3, 3, generator=torch_gen)
    exact, _ = sobolev_exact_loss(student.log_probs, teacher.log_probs, x, norm="squared_l2")

    def draws(n: int, k: int) -> torch.Tensor:
        """n independent estimates of the Sobolev term, each averaging k projections."""
        return estimator_draws(student, teacher, x, "vjp", n, torch_gen, k=k)

    samples = draws(1500, 1)
    # Monte Carlo tolerance: 4 standard errors of the sample mean.
    tolerance = 4 * samples.std().item() / math.sqrt(len(samples))
    assert abs(samples.mean().item() - exact.item()) < tolerance
    # K projections per step average K draws: the same expectation, lower variance.
    k4 = draws(300, 4)
    assert abs(k4.mean().item() - exact.item()) < 4 * k4.std().item() / math.sqrt(len(k4))
    assert k4.std() < samples.std()


def test_sobolev_gradient_reaches_student_and_never_teacher(torch_gen) -> None:
    student, teacher = small_policy(0), small_policy(1)
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.rand(4, 2, 3, 3, generator=torch_gen)
    teacher_logp = teacher.log_probs(x)
    # Sobolev term alone: its gradient must reach every student parameter.
    loss = distillation_loss(
        student.log_probs, x, teacher_logp, teacher=teacher.log_probs, alpha=1.0, generator=torch_gen
    )
    loss.sobolev.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_parameters_get_no_gradient_even_if_trainable(torch_gen) -> None:
    student, teacher = small_policy(0), small_policy(1)
    x = torch.rand(4, 2, 3, 3, generator=torch_gen)
    loss = distillation_loss(
        student.log_probs, x, teacher.log_probs(x), teacher=teacher.log_probs, alpha=1.0, generator=torch_gen
    )
    loss.total.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_input_gradients_agree_with_finite_differences_in_float64() -> None:
    net = small_policy(3, dtype=torch.float64)
    x = torch.rand(2, 2, 3, 3, dtype=torch.float64)
    _, jac = input_jacobian(net.log_probs, x, create_graph=False)  # [A, B, 2, 3, 3]
    eps = 1e-6
    flat = x.flatten(1)
    for i in range(flat.shape[1]):
        step = torch.zeros_like(flat)
        step[:, i] = eps
        plus = net.log_probs((flat + step).view_as(x))
        minus = net.log_probs((flat - step).view_as(x))
        numeric = (plus - minus) / (2 * eps)  # [B, A]
        torch.testing.assert_close(jac.flatten(2)[:, :, i].T, numeric, atol=1e-8, rtol=1e-6)


def test_gradient_distances() -> None:
    a = torch.tensor([[3.0, 0.0]])
    b = torch.tensor([[0.0, 4.0]])
    assert gradient_distance(a, b, "l2").item() == pytest.approx(5.0)
    assert gradient_distance(a, b, "squared_l2").item() == pytest.approx(25.0)
    assert gradient_distance(a, b, "l1").item() == pytest.approx(7.0)
    with pytest.raises(ValueError):
        gradient_distance(a, b, "l3")  # type: ignore[arg-type]


def test_l2_distance_gradient_is_the_composite_formulas_and_zero_where_they_coincide() -> None:
    """The hand-written backward of the l2 distance against autograd through sqrt(sum(d^2)),
    over [B, C, H, W] in both memory formats, and its zero subgradient at a zero norm."""
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    b = torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64)
    b[1] = a[1]  # sample 1: the gradients coincide
    w = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64)
    for fmt in (torch.contiguous_format, torch.channels_last):
        bf = b.contiguous(memory_format=fmt).requires_grad_(True)
        dist = gradient_distance(a.contiguous(memory_format=fmt), bf, "l2")
        (grad,) = torch.autograd.grad((w * dist).sum(), bf)
        expected = (b - a).pow(2).sum(dim=(1, 2, 3)).sqrt()
        torch.testing.assert_close(dist.detach(), expected)
        formula = w[:, None, None, None] * (b - a) / expected.clamp_min(1e-300)[:, None, None, None]
        formula[1] = 0.0
        torch.testing.assert_close(grad, formula)
        assert torch.isfinite(grad).all()
    # [B, A] rows, as the directional estimators compare them.
    rows_a, rows_b = a.flatten(1)[:, :6], b.flatten(1)[:, :6].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gradient_distance(rows_a, rows_b, "l2").sum(), rows_b)
    torch.testing.assert_close(grad[[0, 2]], torch.nn.functional.normalize(rows_b - rows_a)[[0, 2]])
    dist = gradient_distance(a, b.requires_grad_(True), "l2")
    (grad,) = torch.autograd.grad(dist.sum(), b, create_graph=True)
    with pytest.raises(RuntimeError):  # differentiated twice: refused, never a wrong answer
        torch.autograd.grad(grad.sum(), b)


def test_kl_only_loss_needs_no_teacher(torch_gen) -> None:
    student = small_policy(0)
    x = torch.rand(4, 2, 3, 3, generator=torch_gen)
    loss = distillation_loss(student.log_probs, x, random_logp(torch_gen, b=4, a=5), alpha=0.0)
    assert loss.sobolev.item() == 0.0 and loss.total.item() == loss.kl.item() > 0
    with pytest.raises(ValueError, match="needs the teacher"):
        distillation_loss(student.log_probs, x, random_logp(torch_gen, b=4, a=5), alpha=1.0)


def test_bf16_autocast_gives_the_float32_loss_and_parameter_gradients_closely() -> None:
    """distill --precision bf16 trains under autocast: its loss and the student's parameter
    gradients (through the double backward) must stay close to float32's on the real networks."""
    from agents.networks import TeacherNet
    from policy_distill.student import StudentArch, StudentNet

    torch.manual_seed(0)
    teacher, student = TeacherNet(6), StudentNet(StudentArch(num_actions=6))
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.rand(8, 4, 84, 84)
    with torch.no_grad():
        teacher_logp = teacher.log_probs(x)

    def loss_and_grads(bf16: bool) -> tuple[float, torch.Tensor]:
        gen = torch.Generator().manual_seed(1)  # the same directions v both times
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = distillation_loss(
                student.log_probs, x, teacher_logp, teacher=teacher.log_probs, alpha=0.01, generator=gen
            )
        grads = torch.autograd.grad(loss.total, list(student.parameters()))
        return loss.total.item(), torch.cat([g.flatten() for g in grads])

    loss32, grad32 = loss_and_grads(False)
    loss16, grad16 = loss_and_grads(True)
    assert not torch.equal(grad16, grad32)  # autocast did run in bf16
    assert abs(loss16 - loss32) < 0.05 * loss32
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.98
    assert (grad16 - grad32).norm() < 0.2 * grad32.norm()


@pytest.mark.parametrize("estimator", ["jvp", "fd"])
@pytest.mark.parametrize("shared", [1, 3])
def test_input_space_estimators_match_exact_jacobian_loss(torch_gen, estimator: str, shared: int) -> None:
    """E_u ||(J_t - J_s) u||^2 = ||J_t - J_s||_F^2 = A x the exact per-action mean, also when
    ``shared`` samples share each direction (every sample's u is still Rademacher)."""
    student, teacher = small_policy(0, activation=nn.ReLU), small_policy(1)
    x = torch.rand(6, 2, 3, 3, generator=torch_gen)
    exact, _ = sobolev_exact_loss(student.log_probs, teacher.log_probs, x, norm="squared_l2")
    target = exact.item() * 5  # A = 5 actions
    samples = estimator_draws(student, teacher, x, estimator, 1500, torch_gen, shared=shared)
    # Monte Carlo tolerance: 4 standard errors; fd adds its truncation and rounding error (< 1%).
    tolerance = 4 * samples.std().item() / math.sqrt(len(samples)) + (
        0.01 * target if estimator == "fd" else 0
    )
    assert abs(samples.mean().item() - target) < tolerance
    k4 = estimator_draws(student, teacher, x, estimator, 300, torch_gen, k=4, shared=shared)
    assert k4.std() < samples.std()


@pytest.mark.parametrize("first", ["conv", "linear"])
def test_shared_directions_equal_the_same_directions_written_out_per_sample(torch_gen, first: str) -> None:
    """P directions shared by a batch of n P (sample i takes u[i % P]) give the logits, tangent,
    parameter gradients and perturbed inputs that the same directions repeated per sample give:
    the shortcut (the first layer's tangent on P rows) changes the cost, not the value."""
    torch.manual_seed(0)
    if first == "conv":
        net = nn.Sequential(nn.Conv2d(2, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    else:
        net = nn.Sequential(nn.Flatten(), nn.Linear(18, 8), nn.ReLU(), nn.Linear(8, 5))
    x = torch.rand(6, 2, 3, 3, generator=torch_gen).contiguous(memory_format=torch.channels_last)
    u = sample_input_directions(1, x, generator=torch_gen, per_batch=2)
    assert u.shape == (1, 2, 2, 3, 3) and u[0].is_contiguous(memory_format=torch.channels_last)
    repeated = u[0].repeat(3, 1, 1, 1)  # sample i: u[i % 2]
    runs = []
    for directions in (u[0], repeated):
        net.zero_grad()
        logits, tangent = sequential_jvp(list(net), x, directions)
        log_softmax_tangent(logits, tangent)[1].pow(2).sum().backward()
        runs.append((logits.detach(), tangent.detach(), [p.grad.clone() for p in net.parameters()]))
    (l1, t1, g1), (l2, t2, g2) = runs
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(t1, t2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    shared_x, repeated_x = perturbed_inputs(x, u, 0.5)[0], perturbed_inputs(x, repeated[None], 0.5)[0]
    torch.testing.assert_close(shared_x, repeated_x, rtol=0, atol=0)
    assert shared_x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="4 shared directions do not divide the batch of 6"):
        sample_input_directions(1, x, per_batch=4)


def test_jvp_parameter_gradient_equals_the_double_backward_one(torch_gen) -> None:
    """Reverse over forward-mode AD gives the same parameter gradient as differentiating J u
    computed by two reverse passes (the double-VJP trick), on a ReLU convnet."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    x = torch.rand(3, 2, 3, 3, generator=torch_gen)
    u = torch.randn(3, 2, 3, 3, generator=torch_gen)
    _, tangent = jvp_logits(net, x, u)
    tangent.pow(2).sum().backward()
    forward_mode = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    x_r = x.clone().requires_grad_(True)
    logp = torch.log_softmax(net(x_r), dim=-1)
    w = torch.zeros_like(logp, requires_grad=True)
    (jtw,) = torch.autograd.grad((logp * w).sum(), x_r, create_graph=True)
    (ju,) = torch.autograd.grad((jtw * u).sum(), w, create_graph=True)
    torch.testing.assert_close(tangent.detach(), ju.detach(), rtol=1e-4, atol=1e-6)
    ju.pow(2).sum().backward()
    for got, want in zip(forward_mode, (p.grad for p in net.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", ["jvp", "fd"])
def test_input_space_estimators_train_the_student_only(torch_gen, estimator: str) -> None:
    student, teacher = small_policy(0, activation=nn.ReLU), small_policy(1)
    x = torch.rand(4, 2, 3, 3, generator=torch_gen)
    loss = distillation_loss(
        student.log_probs,
        x,
        teacher.log_probs(x).detach(),
        teacher=teacher.log_probs,
        alpha=1.0,
        generator=torch_gen,
        estimator=estimator,
        student_logits=student,
        student_layers=list(student),
    )
    loss.sobolev.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_finite_differences_match_forward_mode_on_the_real_teacher(torch_gen) -> None:
    """The bound behind FD_EPSILON: on the shipped Pong teacher (ReLU convnet, float32) the
    finite-difference directional derivative is within 2% (median over frames) of forward mode."""
    from agents.loading import load_teacher

    teacher = load_teacher("pong")
    x = torch.rand(16, 4, 84, 84, generator=torch_gen)
    u = sample_input_directions(1, x, generator=torch_gen)
    exact = teacher_directional_derivatives(teacher.log_probs, x, u, method="jvp")[0]
    fd = teacher_directional_derivatives(teacher.log_probs, x, u, method="fd", eps=FD_EPSILON)[0]
    relative = (fd - exact).norm(dim=1) / exact.norm(dim=1)
    assert relative.median() < 0.02
    coarse = teacher_directional_derivatives(teacher.log_probs, x, u, method="fd", eps=1e-2)[0]
    assert ((coarse - exact).norm(dim=1) / exact.norm(dim=1)).median() > relative.median()


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_input_directions_are_isotropic_signs_in_the_inputs_layout(torch_gen, memory_format) -> None:
    """Rademacher entries (E[u u^T] = I), fresh per draw, each slice laid out as x is (so that
    x + eps u and the distances copy nothing)."""
    x = torch.rand(64, 4, 6, 6).contiguous(memory_format=memory_format)
    u = sample_input_directions(3, x, generator=torch_gen)
    assert u.shape == (3, *x.shape) and u.dtype == torch.float32
    assert all(u[k].is_contiguous(memory_format=memory_format) for k in range(3))
    assert set(u.unique().tolist()) == {-1.0, 1.0}
    flat = u.reshape(3, -1)
    assert abs(flat.mean().item()) < 4 / math.sqrt(flat.numel())  # 4 standard errors
    assert not torch.equal(u[0], u[1])
    # Second moment: the entries are uncorrelated (off-diagonal of E[u u^T] ~ 0).
    pairs = flat[:, :-1] * flat[:, 1:]
    assert abs(pairs.mean().item()) < 4 / math.sqrt(pairs.numel())
    stack = empty_stack_like(x, 2)
    assert stack[1].is_contiguous(memory_format=memory_format)


def test_sequential_jvp_is_exact_and_its_parameter_gradient_is_forward_modes(torch_gen) -> None:
    """The tangent carried beside a ReLU convnet's forward equals forward-mode AD's, and so do
    the parameter gradients of a loss on it (no finite-difference spikes)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))
    x = torch.rand(3, 2, 3, 3, generator=torch_gen)
    u = sample_input_directions(1, x, generator=torch_gen)[0]
    logits, tangent = sequential_jvp(list(net), x, u)
    torch.testing.assert_close(logits, net(x))
    _, reference = jvp_logits(net, x, u)
    _, mine = log_softmax_tangent(logits, tangent)
    torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-6)
    mine.pow(2).sum().backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    reference.pow(2).sum().backward()
    for a, b in zip(got, (p.grad for p in net.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="Tanh"):
        sequential_jvp([nn.Tanh()], x, u)
