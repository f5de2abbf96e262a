"""Distillation losses: KL between policies and Sobolev (input-gradient matching) terms.

Paper: W. M. Czarnecki, S. Osindero, M. Jaderberg, G. Swirszcz, R. Pascanu, "Sobolev Training
for Neural Networks", NeurIPS 2017. Section 4.2 (policy distillation):

    min_theta  KL(pi(s|theta) || pi*(s))
               + alpha * E_v || grad_s <log pi*(s), v> - grad_s <log pi(s|theta), v> ||

with v uniform on the unit sphere of R^|A| and the expectation estimated by Monte Carlo.
Section 4.1 (regression) uses the exact gradient of a scalar output with squared-L2 distances.

Three estimators of the Sobolev term (``SobolevEstimator``), all of the distance between the
teacher's and the student's input Jacobians of log pi, J_t and J_s (``[A, D]`` per frame):

- ``vjp`` (the paper's): v uniform on the unit sphere of R^A, ``|| J_t^T v - J_s^T v ||``; one
  teacher VJP, the student's input-gradient with ``create_graph`` and a double backward.
- ``jvp``: u with i.i.d. Rademacher (+-1) entries in input space (E[u u^T] = I_D),
  ``|| J_t u - J_s u ||``, directional derivatives by forward-mode AD; the student's parameter
  gradient is reverse-over-forward, no double backward.
- ``fd``: the same u; the teacher's J_t u by a finite difference, ``(f_t(x + eps u) - f_t(x)) /
  eps``: one extra teacher forward, f_t(x) being the stored teacher log-probabilities; the
  student's J_s u exactly, by carrying the tangent beside its forward pass
  (:func:`sequential_jvp`), with an ordinary backward. No teacher VJP, no double backward.

``jvp`` and ``fd`` can share each direction u between n samples of a batch
(``samples_per_direction``; ``distill``'s default is 1, none shared): every sample's estimate stays
unbiased, and the directions are drawn, and the student's first convolution applied to them, for
B / n frames instead of B.

For squared-L2 distances E_v ||dJ^T v||^2 = ||dJ||_F^2 / A and E_u ||dJ u||^2 = ||dJ||_F^2: the
estimators target the same quantity up to the factor A, with variances of the same order, since
both are quadratic forms of a rank-A matrix (``alpha`` is re-chosen per estimator, the scales
differ).

Every loss here is a mean over samples, never a sum, so its scale does not grow with the batch.
Shapes: ``B`` batch, ``A`` actions, ``D...`` input dims (``4, 84, 84`` for Atari frames).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad as fwAD
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from policy_distill.strided_conv import memory_format_of

KLDirection = Literal["student_teacher", "teacher_student"]
GradNorm = Literal["l2", "squared_l2", "l1"]
SobolevEstimator = Literal["vjp", "jvp", "fd"]
SOBOLEV_ESTIMATORS: tuple[str, ...] = ("vjp", "jvp", "fd")
FD_EPSILON = 1e-4
"""Finite-difference step of the ``fd`` estimator, in units of the [0, 1] pixel scale times a
+-1 direction. Chosen by measurement in float32 against forward-mode AD on the Pong teacher, 64
uniform-noise frames (tests/test_losses.py keeps the bound): median relative error of the
teacher's directional derivative 1.5% at 1e-5 and 0.58% at 3e-5 (float32 rounding dominates),
0.41% at 1e-4, 0.99% at 3e-4, 3.2% at 1e-3 and 12% at 1e-2 (ReLU kinks crossed)."""
LogProbFn = Callable[[Tensor], Tensor]
"""``[B, D...] float -> [B, A]`` log-probabilities (a policy's ``log_probs``)."""


def kl_divergence(
    student_logp: Tensor,
    teacher_logp: Tensor,
    *,
    direction: KLDirection = "student_teacher",
    temperature: float = 1.0,
    per_sample: bool = False,
) -> Tensor:
    """Mean KL divergence between two categorical policies (``per_sample``: one per row).

    ``student_teacher`` (the paper's, section 4.2):
        KL(pi || pi*) = (1/B) sum_b sum_a pi(a|s_b) (log pi(a|s_b) - log pi*(a|s_b))
    ``teacher_student`` swaps the roles (Hinton et al.'s distillation direction).

    With ``temperature`` T != 1 both distributions are first softened to softmax(log p / T),
    which equals softmax(logits / T).

    Args:
        student_logp: ``[B, A]`` log-probabilities of the student.
        teacher_logp: ``[B, A]`` log-probabilities of the teacher (no gradient flows to it).

    Returns:
        Scalar: the mean over the batch of the per-sample KL (>= 0); ``[B]`` with ``per_sample``.
    """
    if temperature != 1.0:
        student_logp = torch.log_softmax(student_logp / temperature, dim=-1)
        teacher_logp = torch.log_softmax(teacher_logp / temperature, dim=-1)
    teacher_logp = teacher_logp.detach()
    if direction == "student_teacher":
        p_logp, q_logp = student_logp, teacher_logp
    elif direction == "teacher_student":
        p_logp, q_logp = teacher_logp, student_logp
    else:
        raise ValueError(f"unknown KL direction {direction!r}")
    kl = (p_logp.exp() * (p_logp - q_logp)).sum(dim=-1)
    return kl if per_sample else kl.mean()


def sample_unit_sphere(
    shape: tuple[int, ...],
    num_actions: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Directions drawn uniformly on the unit sphere of R^A: ``[*shape, A]``.

    A normalised standard Gaussian is uniform on the sphere (Muller 1959).
    """
    v = torch.randn((*shape, num_actions), generator=generator, device=device)
    return v / v.norm(dim=-1, keepdim=True)


def input_vjp(
    outputs: Tensor, inputs: Tensor, v: Tensor, *, create_graph: bool, retain_graph: bool | None = None
) -> Tensor:
    """Per-sample input-gradient of a projection: ``grad_x <f(x_b), v_b>`` for every b.

    Because sample b's output depends only on input b, one vector-Jacobian product of
    ``sum_b <f(x_b), v_b>`` gives all B gradients at once.

    Args:
        outputs: ``[B, A]`` = f(inputs), still attached to the graph.
        inputs: ``[B, D...]`` with ``requires_grad``.
        v: ``[B, A]`` projection directions.
        create_graph: True to differentiate the result again (the student's side).
        retain_graph: Keep the graph for another product (default: ``create_graph``).

    Returns:
        ``[B, D...]`` gradients.
    """
    (grad,) = torch.autograd.grad(
        (outputs * v).sum(), inputs, create_graph=create_graph, retain_graph=retain_graph
    )
    return grad


class _PerSampleNorm(torch.autograd.Function):
    """``||d_b||_2`` over ``dims`` for each sample b, with a one-pass backward.

    Written out because the composite forms cost passes over ``[B, 4, 84, 84]`` tensors (~3 ms
    each in a ~110 ms ``vjp`` step): ``pow``/``sum``/``sqrt`` takes four in its backward,
    ``torch.linalg.vector_norm`` three (it divides and masks at full size before multiplying).
    Here the backward scales ``d`` by ``grad / norm`` per sample, a single multiply. At a zero
    norm (the two gradients coincide) it gives the zero subgradient, not NaN.
    """

    @staticmethod
    def forward(ctx: Any, d: Tensor, dims: tuple[int, ...]) -> Tensor:
        norm = torch.linalg.vector_norm(d, ord=2, dim=dims)
        ctx.save_for_backward(d, norm)
        return norm

    @staticmethod
    @once_differentiable  # the loss is differentiated once; a second time raises, never lies
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        d, norm = ctx.saved_tensors
        scale = (grad / norm).masked_fill(norm == 0, 0.0).to(d.dtype)
        return d * scale.view(scale.shape + (1,) * (d.dim() - scale.dim())), None


def gradient_distance(a: Tensor, b: Tensor, norm: GradNorm = "l2") -> Tensor:
    """Per-sample distance between two gradient fields ``[B, D...]`` -> ``[B]``.

    ``l2`` is the paper's ||a - b||_2; ``squared_l2`` is ||a - b||_2^2; ``l1`` is ||a - b||_1.
    """
    # Every norm here is symmetric, and b - a differentiates to b without a negation pass: on
    # [B, 4, 84, 84] input gradients each elementwise pass costs ~3 ms of a ~110 ms step.
    diff = b - a
    # Reduce over the sample's dims in place of ``flatten(1)``, which copies a channels_last tensor.
    dims = tuple(range(1, diff.dim()))
    if norm == "l2":
        return _PerSampleNorm.apply(diff, dims)
    if norm == "squared_l2":
        return diff.pow(2).sum(dim=dims)
    if norm == "l1":
        return diff.abs().sum(dim=dims)
    raise ValueError(f"unknown gradient norm {norm!r}")


@dataclass(frozen=True)
class DistillLoss:
    """The terms of one distillation loss evaluation (scalars, ``total`` differentiable)."""

    total: Tensor
    kl: Tensor
    sobolev: Tensor


def teacher_projected_gradients(teacher: LogProbFn, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """The teacher's Sobolev targets: one forward and one VJP per projection.

    Args:
        teacher: Frozen teacher ``log_probs`` (parameters need no gradient).
        x: ``[B, D...]`` float inputs (not modified).
        v: ``[K, B, A]`` directions.

    Returns:
        ``(teacher_logp [B, A] detached, grads [K, B, D...] detached)``.
    """
    x_t = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logp = teacher(x_t)
        last = v.shape[0] - 1
        if last == 0:  # one projection (the default): no copy into a stack
            grad = input_vjp(logp, x_t, v[0], create_graph=False)
            # In x's layout, as the stack's slices are (a no-op for the shipped teachers, whose
            # input gradient already comes back that way).
            return logp.detach(), grad.contiguous(memory_format=memory_format_of(x)).unsqueeze(0)
        grads = empty_stack_like(x, last + 1)
        for k in range(last + 1):
            grads[k] = input_vjp(logp, x_t, v[k], create_graph=False, retain_graph=k < last)
    return logp.detach(), grads


def sobolev_projection_loss(
    student_logp: Tensor,
    x: Tensor,
    teacher_grads: Tensor,
    v: Tensor,
    *,
    norm: GradNorm = "l2",
) -> Tensor:
    """Stochastic Sobolev term of section 4.2, averaged over samples and K projections.

        (1/(K B)) sum_k sum_b || grad_s <log pi*(s_b), v_kb> - grad_s <log pi(s_b|theta), v_kb> ||

    Args:
        student_logp: ``[B, A]`` student log-probabilities computed from ``x``.
        x: ``[B, D...]`` the student's input, with ``requires_grad``.
        teacher_grads: ``[K, B, D...]`` from :func:`teacher_projected_gradients` with the same v.
        v: ``[K, B, A]`` unit directions.
        norm: Per-sample distance (see :func:`gradient_distance`).

    Returns:
        Scalar, differentiable w.r.t. the student's parameters (double backward).
    """
    total = student_logp.new_zeros(())
    for k in range(v.shape[0]):
        # create_graph keeps the graph alive for the next projection and the final backward.
        g_s = input_vjp(student_logp, x, v[k], create_graph=True)
        total = total + gradient_distance(teacher_grads[k], g_s, norm).mean()
    return total / v.shape[0]


def input_jacobian(log_prob_fn: LogProbFn, x: Tensor, *, create_graph: bool) -> tuple[Tensor, Tensor]:
    """Full input Jacobian of log pi: |A| vector-Jacobian products, one per action.

    Args:
        log_prob_fn: ``[B, D...] -> [B, A]``.
        x: ``[B, D...]`` float inputs.
        create_graph: True to differentiate the Jacobian again.

    Returns:
        ``(logp [B, A], jacobian [A, B, D...])`` with ``jacobian[a, b] = grad_x log pi(a|x_b)``.
    """
    x_in = x if x.requires_grad else x.detach().requires_grad_(True)
    with torch.enable_grad():
        logp = log_prob_fn(x_in)
        eye = torch.eye(logp.shape[1], device=logp.device, dtype=logp.dtype)
        last = logp.shape[1] - 1
        rows = [
            input_vjp(
                logp,
                x_in,
                eye[a].expand_as(logp),
                create_graph=create_graph,
                retain_graph=create_graph or a < last,
            )
            for a in range(last + 1)
        ]
    return logp, torch.stack(rows)


def sobolev_exact_loss(
    student: LogProbFn, teacher: LogProbFn, x: Tensor, *, norm: GradNorm = "squared_l2"
) -> tuple[Tensor, Tensor]:
    """Exact Jacobian-matching term: the mean over actions of per-action gradient distances.

        (1/(A B)) sum_b sum_a dist( grad_s log pi*(a|s_b), grad_s log pi(a|s_b|theta) )

    For ``squared_l2`` this equals the expectation that :func:`sobolev_projection_loss`
    estimates, since E_v[v v^T] = I / A for v uniform on the unit sphere:
    E_v ||dJ^T v||^2 = ||dJ||_F^2 / A. For ``l2``/``l1`` it is the standard-basis analogue.

    Returns:
        ``(loss scalar, student_logp [B, A])``.
    """
    _, j_teacher = input_jacobian(teacher, x, create_graph=False)
    x_s = x.detach().requires_grad_(True)
    student_logp, j_student = input_jacobian(student, x_s, create_graph=True)
    per_action = torch.stack(
        [gradient_distance(j_teacher[a].detach(), j_student[a], norm) for a in range(j_student.shape[0])]
    )
    return per_action.mean(), student_logp


def empty_stack_like(x: Tensor, k: int, *, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised ``[K, *x.shape]`` tensor whose every ``[k]`` slice has ``x``'s memory format.

    ``torch.stack`` of channels_last tensors returns a contiguous stack, and every later
    elementwise op between a slice of it and a channels_last tensor then pays a layout-converting
    copy of the whole input-sized tensor (measured: 20-35 ms for 200 frames on two CPU cores,
    about the cost of a whole KL step). Writing into this instead keeps one layout throughout.
    """
    dtype = x.dtype if dtype is None else dtype
    if memory_format_of(x) == torch.channels_last:
        b, c, h, w = x.shape
        return torch.empty((k, b, h, w, c), dtype=dtype, device=x.device).permute(0, 1, 4, 2, 3)
    return torch.empty((k, *x.shape), dtype=dtype, device=x.device)


def sample_input_directions(
    k: int, x: Tensor, *, generator: torch.Generator | None = None, per_batch: int = 0
) -> Tensor:
    """Rademacher directions u in input space (entries +-1), ``[K, P, D...]`` float32, for the
    ``jvp`` / ``fd`` estimators, each ``[k]`` slice in ``x``'s memory format.

    ``per_batch`` P > 0 draws P directions shared by the batch, sample i taking ``u[:, i % P]``
    (P must divide B; see :func:`broadcast_directions`); 0 draws one per sample (P = B). Each
    sample's estimate stays unbiased either way; sharing correlates the estimates of samples
    that share a direction, and saves drawing B directions and the first layer's tangent on
    them (:func:`sequential_jvp`).

    Any u with independent zero-mean unit-variance entries has E[u u^T] = I, so E ||dJ u||^2 =
    ||dJ||_F^2 holds as for u ~ N(0, I); among such distributions the Rademacher one gives the
    quadratic-form estimate its smallest variance (Hutchinson 1990: 2 (tr(Q^2) - sum_i Q_ii^2)
    against the Gaussian's 2 tr(Q^2)). It is also cheap: the signs are the sign bits of random
    bytes, drawn as 64-bit words, 4x faster on the CPU than ``torch.randn`` of the same size
    (5 against 20 ms for 200 frames), which matters beside a KL step of about 30 ms.
    """
    if per_batch > 0:
        if x.shape[0] % per_batch:
            raise ValueError(f"{per_batch} shared directions do not divide the batch of {x.shape[0]}")
        x = x[:per_batch]
    out = empty_stack_like(x, k, dtype=torch.float32)
    # Fill the storage in its physical order: the entries are i.i.d., so the layout is free.
    physical = out.permute(0, 1, 3, 4, 2) if out.dim() == 5 and not out.is_contiguous() else out
    n = physical.numel()
    words = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device)
    words.random_(-(2**63), 2**63 - 1, generator=generator)  # every bit uniform
    signs = words.view(torch.int8)[:n].view(physical.shape)
    # An arithmetic shift spreads the sign bit (-1 or 0); or-ing 1 maps those to -1 and +1.
    physical.copy_(signs.bitwise_right_shift(7).bitwise_or_(1))
    return out


def broadcast_directions(t: Tensor, batch: int) -> Tensor:
    """``[P, ...]`` per-direction values over a batch of ``batch`` = n P samples, sample i taking
    row ``i % P``: ``[batch, ...]`` (a materialised copy in ``t``'s memory format; ``t`` itself when
    P = batch)."""
    p = t.shape[0]
    if p == batch:
        return t
    out = torch.empty((batch, *t.shape[1:]), dtype=t.dtype, device=t.device)
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    out.view(batch // p, *t.shape).copy_(t)
    return out


def _batch_groups(a: Tensor, p: int) -> Tensor:
    """``[n P, ...]`` viewed as ``[n, P, ...]`` (a view in any memory format: only dim 0 splits)."""
    return a.view(a.shape[0] // p, p, *a.shape[1:])


def log_softmax_tangent(logits: Tensor, logits_tangent: Tensor) -> tuple[Tensor, Tensor]:
    """log-softmax and its directional derivative from those of the logits.

    d log softmax(z) = dz - <softmax(z), dz>. Written out because PyTorch's forward-mode rules
    for ``log_softmax`` and ``logsumexp`` modify a saved tensor in place, which breaks the
    reverse-mode pass over them (the student's parameter gradient).

    Args:
        logits: ``[B, A]``; logits_tangent: ``[B, A]``.

    Returns:
        ``(log_probs [B, A], tangent [B, A])``, both differentiable.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    dz = logits_tangent.float()
    return logp, dz - (logp.exp() * dz).sum(dim=-1, keepdim=True)


def jvp_logits(logits_fn: Callable[[Tensor], Tensor], x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Forward-mode AD: ``(log pi(x) [B, A], J u [B, A])`` from a logits function.

    Differentiable with respect to the function's parameters (reverse over forward).

    Args:
        logits_fn: ``[B, D...] -> [B, A]`` logits (a network's ``forward``).
        x: ``[B, D...]`` float inputs; u: ``[B, D...]`` directions.
    """
    with fwAD.dual_level():
        out = logits_fn(fwAD.make_dual(x.detach(), u.to(x.dtype)))
        logits, tangent = fwAD.unpack_dual(out)
    return log_softmax_tangent(logits, tangent)


def sequential_jvp(layers: Sequence[nn.Module], x: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Logits and their exact directional derivative ``J u`` for a chain of Conv2d / Linear /
    ReLU / Flatten layers, by carrying the tangent beside the forward pass.

    A ReLU network is linear between kinks, so J u is the same chain of convolutions and
    matrix products applied to u without biases, each ReLU passing the tangent where its
    primal is positive: one more forward's worth of ops on standard kernels. Measured on two
    CPU cores for the student and 200 frames, forward + backward: 0.8x the time of PyTorch's
    forward-mode AD and 0.9x that of a finite difference, and unlike a finite difference its
    parameter gradient has no 1/eps spikes from units whose kink falls between x and x + eps u.

    Args:
        layers: The network in order (``[B, D...] -> [B, A]``).
        x: ``[B, D...]`` inputs; u: ``[P, D...]`` directions, sample i taking ``u[i % P]``
            (P = B: one per sample). With P < B the tangent stays at P rows through the layers
            before the first ReLU (the first convolution, the costliest, runs on P frames, not
            B) and is broadcast over the batch by the ReLU's mask.

    Returns:
        ``(logits [B, A], tangent [B, A])``, both differentiable w.r.t. the layers' parameters.
    """
    h, t = x, u.to(x.dtype)
    batch, shared = x.shape[0], u.shape[0]
    if batch % shared:
        raise ValueError(f"{shared} directions do not divide the batch of {batch}")
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            h = layer(h)
            t = F.conv2d(t, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        elif isinstance(layer, nn.Linear):
            h, t = layer(h), F.linear(t, layer.weight)
        elif isinstance(layer, nn.ReLU):
            h = torch.relu(h)
            if t.shape[0] == batch:
                t = t * (h > 0)  # the ReLU's derivative, a constant mask (zero a.e. in theta)
            else:  # the mask broadcasts the shared tangent over the batch: [n, P, ...] * [P, ...]
                # (the product keeps the mask's layout, so the reshape is a view)
                t = (_batch_groups(h > 0, shared) * t).reshape(h.shape)
        elif isinstance(layer, nn.Flatten):
            h, t = layer(h), layer(t)
        else:
            raise TypeError(
                f"sequential_jvp handles Conv2d, Linear, ReLU and Flatten, not {type(layer).__name__}"
            )
    if t.shape[0] != batch:  # no ReLU met: a linear chain
        t = broadcast_directions(t, batch)
    return h, t


def perturbed_inputs(x: Tensor, u: Tensor, eps: float) -> list[Tensor]:
    """``x + eps u_k`` in float32 for each of the K directions (one fused add each, no temporary).

    Args:
        x: ``[B, D...]``; u: ``[K, P, D...]``, sample i taking ``u[:, i % P]``. Returns K
        tensors ``[B, D...]`` in ``x``'s layout.
    """
    x32 = x.float()
    if u.shape[1] == x.shape[0]:
        return [torch.add(x32, u[k], alpha=eps) for k in range(len(u))]
    shared, out = u.shape[1], []
    for k in range(len(u)):  # [n, P, D...] + [P, D...], written in x's layout
        perturbed = torch.empty_like(x32)
        torch.add(_batch_groups(x32, shared), u[k], alpha=eps, out=_batch_groups(perturbed, shared))
        out.append(perturbed)
    return out


def finite_differences(fn: LogProbFn, perturbed: list[Tensor], base: Tensor, eps: float) -> Tensor:
    """Forward differences ``(f(x + eps u_k) - f(x)) / eps``, ``[K, B, A]``, in float32.

    Float32 even under bf16 autocast: a difference of bf16 outputs keeps no digits.

    Args:
        fn: ``[B, D...] -> [B, A]``; perturbed: from :func:`perturbed_inputs`;
        base: ``[B, A]`` f(x), computed in float32.
    """
    with torch.autocast(base.device.type, enabled=False):
        return torch.stack([(fn(xp).float() - base.float()) / eps for xp in perturbed])


def teacher_directional_derivatives(
    teacher: LogProbFn,
    x: Tensor,
    u: Tensor,
    *,
    teacher_logp: Tensor | None = None,
    method: Literal["jvp", "fd"] = "jvp",
    eps: float = FD_EPSILON,
) -> Tensor:
    """The teacher's Sobolev targets for input directions: ``J_t u``, ``[K, B, A]``, no gradient.

    Args:
        teacher: Frozen teacher ``log_probs``.
        x: ``[B, D...]`` float inputs; u: ``[K, P, D...]`` directions (sample i: ``u[:, i % P]``).
        teacher_logp: ``[B, A]`` the teacher's log pi(x) (stored in the dataset): f(x) for ``fd``.
        method: ``jvp`` (forward-mode AD) or ``fd`` (one teacher forward per direction).
        eps: The finite-difference step.
    """
    with torch.no_grad():
        if method == "fd":
            with torch.autocast(x.device.type, enabled=False):
                base = teacher(x.float()) if teacher_logp is None else teacher_logp
                return finite_differences(teacher, perturbed_inputs(x, u, eps), base.float(), eps)
        out = []
        for k in range(len(u)):
            with fwAD.dual_level():
                tangent = broadcast_directions(u[k].to(x.dtype), x.shape[0])
                out.append(fwAD.unpack_dual(teacher(fwAD.make_dual(x, tangent))).tangent.float())
        return torch.stack(out)


def sobolev_directional_loss(
    teacher_derivs: Tensor, student_derivs: Tensor, *, norm: GradNorm = "l2"
) -> Tensor:
    """The input-space Sobolev term: mean over K directions and B samples of
    ``dist(J_t u, J_s u)`` over the A actions.

    Args:
        teacher_derivs: ``[K, B, A]`` detached; student_derivs: ``[K, B, A]`` differentiable.
    """
    k, b, a = student_derivs.shape
    return gradient_distance(
        teacher_derivs.reshape(k * b, a).detach(), student_derivs.reshape(k * b, a), norm
    ).mean()


def distillation_loss(
    student: LogProbFn,
    x: Tensor,
    teacher_logp: Tensor,
    *,
    teacher: LogProbFn | None = None,
    alpha: float = 0.0,
    num_projections: int = 1,
    norm: GradNorm = "l2",
    kl_direction: KLDirection = "student_teacher",
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    estimator: SobolevEstimator = "vjp",
    student_logits: Callable[[Tensor], Tensor] | None = None,
    student_layers: Sequence[nn.Module] | None = None,
    eps: float = FD_EPSILON,
    samples_per_direction: int = 1,
) -> DistillLoss:
    """KL plus, when ``alpha > 0``, the stochastic Sobolev term, from one student forward.

    Args:
        student: Student ``log_probs``.
        x: ``[B, D...]`` float inputs in [0, 1].
        teacher_logp: ``[B, A]`` teacher log-probabilities (stored in the dataset).
        teacher: Teacher ``log_probs``, needed only when ``alpha > 0``.
        alpha: Weight of the Sobolev term (0: KL only, no double backward).
        num_projections: K, Monte Carlo directions per sample.
        norm, kl_direction, temperature: see the functions above.
        generator: RNG for the directions (v in action space, or u in input space).
        estimator: ``vjp`` (the paper's), ``jvp`` or ``fd`` (see the module docstring).
        student_logits: The student's logits function (``forward``), needed by ``jvp``.
        student_layers: The student's layers in order (:func:`sequential_jvp`), needed by ``fd``.
        eps: The ``fd`` estimator's step.
        samples_per_direction: ``jvp`` / ``fd``: n samples share each input direction, P = B / n
            directions per batch, sample i taking direction i mod P (:func:`sample_input_directions`).
    """
    if alpha <= 0.0:
        student_logp = student(x)
        kl = kl_divergence(student_logp, teacher_logp, direction=kl_direction, temperature=temperature)
        return DistillLoss(total=kl, kl=kl, sobolev=kl.new_zeros(()))
    if teacher is None:
        raise ValueError("the Sobolev term needs the teacher (alpha > 0)")
    if estimator in ("jvp", "fd"):
        if x.shape[0] % samples_per_direction:
            raise ValueError(
                f"samples_per_direction {samples_per_direction} does not divide the batch of {x.shape[0]}"
            )
        per_batch = x.shape[0] // samples_per_direction
        u = sample_input_directions(num_projections, x, generator=generator, per_batch=per_batch)
        if estimator == "jvp":
            if student_logits is None:
                raise ValueError("the jvp estimator needs the student's logits function")
            if u.shape[1] != x.shape[0]:  # forward mode needs full-batch tangents: broadcast once
                full = empty_stack_like(x, num_projections, dtype=u.dtype)
                for k in range(num_projections):
                    full[k] = broadcast_directions(u[k], x.shape[0])
                u = full
            t_derivs = teacher_directional_derivatives(teacher, x, u, method="jvp")
            pairs = [jvp_logits(student_logits, x, u[k]) for k in range(num_projections)]
            student_logp = pairs[0][0]
            s_derivs = torch.stack([tangent for _, tangent in pairs])
        else:
            if student_layers is None:
                raise ValueError("the fd estimator needs the student's layers")
            t_derivs = teacher_directional_derivatives(
                teacher, x, u, teacher_logp=teacher_logp, method="fd", eps=eps
            )
            # The student's side is exact, not a finite difference: differentiating a difference
            # quotient gives 1/eps-sized parameter gradients on units whose ReLU kink falls
            # between x and x + eps u, which killed students at alpha 0.01 (docs/estimators.md).
            pairs = [sequential_jvp(student_layers, x, u[k]) for k in range(num_projections)]
            tangents = [log_softmax_tangent(logits, tangent) for logits, tangent in pairs]
            student_logp = tangents[0][0]
            s_derivs = torch.stack([tangent for _, tangent in tangents])
        kl = kl_divergence(student_logp, teacher_logp, direction=kl_direction, temperature=temperature)
        sob = sobolev_directional_loss(t_derivs, s_derivs, norm=norm)
        return DistillLoss(total=kl + alpha * sob, kl=kl, sobolev=sob)
    if estimator != "vjp":
        raise ValueError(f"unknown Sobolev estimator {estimator!r}; use one of {SOBOLEV_ESTIMATORS}")
    v = sample_unit_sphere(
        (num_projections, x.shape[0]), teacher_logp.shape[1], generator=generator, device=x.device
    )
    _, teacher_grads = teacher_projected_gradients(teacher, x, v)
    x_s = x.detach().requires_grad_(True)
    student_logp = student(x_s)
    kl = kl_divergence(student_logp, teacher_logp, direction=kl_direction, temperature=temperature)
    sob = sobolev_projection_loss(student_logp, x_s, teacher_grads, v, norm=norm)
    return DistillLoss(total=kl + alpha * sob, kl=kl, sobolev=sob)


def value_and_gradient_loss(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, dy: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Section 4.1's objective for a scalar-output model: values plus exact input-gradients.

        (1/N) sum_i (f(x_i) - m(x_i))^2 + || grad f(x_i) - grad_x m(x_i) ||_2^2

    Built from :func:`input_vjp` and :func:`gradient_distance`, the same code as the Atari term.

    Args:
        model: ``[N, D] -> [N]``.
        x: ``[N, D]`` inputs.
        y: ``[N]`` target values.
        dy: ``[N, D]`` target gradients, or None to train on values only.

    Returns:
        ``(total, value_mse, grad_mse)``; ``grad_mse`` is zero (and not computed) when ``dy`` is None.
    """
    if dy is None:
        value_mse = (model(x) - y).pow(2).mean()
        return value_mse, value_mse, value_mse.new_zeros(())
    x_in = x.detach().requires_grad_(True)
    pred = model(x_in)
    grad = input_vjp(pred[:, None], x_in, torch.ones_like(pred)[:, None], create_graph=True)
    value_mse = (pred - y).pow(2).mean()
    grad_mse = gradient_distance(dy, grad, "squared_l2").mean()
    return value_mse + grad_mse, value_mse, grad_mse
